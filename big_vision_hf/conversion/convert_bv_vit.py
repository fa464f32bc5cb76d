"""big_vision ViT (``big_vision/models/vit.py``) -> `BvViTModel` / `BvViTForImageClassification`.

Reads as a table: each row maps one big_vision parameter (after the layout passes) to ours. The layout
passes mirror big_vision's loader: ``fix_old_checkpoints`` (with flax ``convert_pre_linen``) and
``scan_to_pyloop``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..configuration.configuration_bv_vit import BvViTConfig, bv_kwargs_to_config, rep_size_width
from ..modeling.modeling_bv_vit import BvViTForImageClassification, BvViTModel, resample_posemb
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import (
    Rule,
    conv,
    convert_pre_linen,
    encoder_rules,
    identity,
    linear,
    map_head_rules,
    map_params,
    unstack_scan,
    with_head,
)

# big_vision name -> BvViTModel name.
VIT_RULES = [
    Rule("embedding/kernel", "embeddings.patch_embedding.weight", conv),
    Rule("embedding/bias", "embeddings.patch_embedding.bias"),
    Rule("pos_embedding", "embeddings.position_embedding", identity),
    Rule("cls", "embeddings.cls_token"),
    *encoder_rules("Transformer", "encoder"),
    *map_head_rules("MAPHead_0", "map_head"),
    *linear("pre_logits", "pre_logits"),
]


# ---------------------------------------------------------------------------------------------------------
# Layout passes (big_vision vit.fix_old_checkpoints, vit.scan_to_pyloop)
# ---------------------------------------------------------------------------------------------------------


def fix_old_checkpoints(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """Old ViT layouts -> the current one, as big_vision ``vit.fix_old_checkpoints`` (one ``if`` per layout)."""
    params = convert_pre_linen(params)
    # Original ViT paper variant had posemb in a module: Transformer/posembed_input/pos_embedding.
    # Widely used version before 2022 had posemb in Encoder: Transformer/pos_embedding.
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in params:
            params["pos_embedding"] = params.pop(old)
    # Old vit.py concatenated [cls] first and then added posemb (N+1 posembs): split the cls row off and
    # fold it into the cls token.
    if "pos_embedding" in params:
        pe = params["pos_embedding"]
        n = pe.shape[1]
        if math.isqrt(n) ** 2 + 1 == n:
            rest_shape = (pe.shape[0], n - 1, pe.shape[2])
            params["pos_embedding"] = pe.derive(lambda x: x[:, 1:], rest_shape, "[:, 1:]")
            if "cls" in params:
                cls = params["cls"]
                params["cls"] = LazyArray(
                    cls.shape, cls.dtype, lambda: cls.load() + pe.load()[:, :1], cls.source, "cls"
                )
    # MAP-head variants during ViT-G development had it inlined at the top level.
    if "probe" in params:
        inlined = ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0", "LayerNorm_0")
        for key in [k for k in params if k.split("/")[0] in inlined]:
            params["MAPHead_0/" + key] = params.pop(key)
    return params


def to_loop_layout(params: dict[str, LazyArray], root: str = "Transformer") -> dict[str, LazyArray]:
    """``nn.scan`` checkpoints (``{root}/encoderblock/...`` with a leading depth axis) -> ``encoderblock_{i}``."""
    return unstack_scan(params, f"{root}/encoderblock/", f"{root}/encoderblock_{{}}/", axis=0)


# ---------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------


def infer_vit_config(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None, prefix: str = ""
) -> tuple[dict, int | None]:
    """Everything the arrays' shapes tell (width, depth, heads, mlp, patch, posemb, pool, rep_size, classes).

    ``model_kwargs`` (big_vision ``config.model``) fill in what shapes cannot tell (``pool_type`` "0" or
    "none" vs "gap"; the image size of a sincos posemb) and are checked against the shapes.
    Returns ``(BvViTConfig kwargs, num_classes or None)``.
    """
    p = prefix
    model_kwargs = dict(model_kwargs or {})
    num_classes_kw = model_kwargs.pop("num_classes", None)
    given = bv_kwargs_to_config(model_kwargs)

    def shape(name):
        if p + name not in params:
            raise CheckpointError(f"not a big_vision ViT checkpoint: no {p + name!r} array")
        return params[p + name].shape

    kh, kw, channels, width = shape("embedding/kernel")
    heads = shape("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")[1]
    mlp = shape("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")[1]
    blocks = [k[len(p):] for k in params if k.startswith(p + "Transformer/encoderblock_")]
    depth = 1 + max(int(k.split("/")[1].split("_")[1]) for k in blocks)
    inferred = dict(
        hidden_size=width, num_hidden_layers=depth, intermediate_size=mlp, num_attention_heads=heads,
        patch_size=[kh, kw], num_channels=channels,
    )
    if p + "MAPHead_0/probe" in params:
        inferred["pool_type"] = "map"
    elif p + "cls" in params:
        inferred["pool_type"] = "tok"
    inferred["posemb"] = "learn" if p + "pos_embedding" in params else "sincos2d"
    inferred["representation_size"] = shape("pre_logits/kernel")[1] if p + "pre_logits/kernel" in params else None

    if "representation_size" in given:
        given["representation_size"] = rep_size_width(given["representation_size"], width)
    for key, value in inferred.items():
        if key in given and given[key] is not None and _norm(given[key]) != _norm(value):
            raise CheckpointError(f"model config says {key}={given[key]!r} but the checkpoint arrays have {value!r}")
    config = {**given, **inferred}
    config.setdefault("pool_type", "gap")
    if config["pool_type"] in ("map", "tok") and inferred.get("pool_type") != config["pool_type"]:
        raise CheckpointError(f"pool_type={config['pool_type']!r} needs arrays the checkpoint does not have")

    # Image size: given > from a (square) learned posemb grid > 224.
    if image_size is not None:
        config["image_size"] = image_size if not isinstance(image_size, int) else [image_size, image_size]
    elif config["posemb"] == "learn":
        n = shape("pos_embedding")[1]
        g = math.isqrt(n)
        if g * g != n:
            raise CheckpointError(f"learned posemb has {n} positions, not a square grid: pass --image-size H W")
        config["image_size"] = [g * kh, g * kw]
    else:
        config["image_size"] = [224, 224]

    num_classes = shape("head/kernel")[1] if p + "head/kernel" in params else None
    if num_classes_kw is not None and num_classes is not None and num_classes_kw != num_classes:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but head/kernel has {num_classes}")
    if num_classes_kw and num_classes is None:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but the checkpoint has no head")
    return config, num_classes


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def prepare_vit_params(params: dict[str, LazyArray], prefix: str = "") -> dict[str, LazyArray]:
    """Layout passes on a ViT (sub-)tree; names outside ``prefix`` are left alone."""
    inside = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    outside = {k: v for k, v in params.items() if not k.startswith(prefix)}
    inside = to_loop_layout(fix_old_checkpoints(inside))
    return {**outside, **{prefix + k: v for k, v in inside.items()}}


def fit_posemb(mapped: dict[str, LazyArray], key: str, config: BvViTConfig) -> None:
    """Resamples a learned posemb stored for another grid, as big_vision ``vit.load`` -> ``resample_posemb``."""
    if key not in mapped:
        return
    pe = mapped[key]
    n_new = config.grid_size[0] * config.grid_size[1]
    if pe.shape[1] == n_new:
        return
    g_old = math.isqrt(pe.shape[1])
    if g_old * g_old != pe.shape[1]:
        raise CheckpointError(f"cannot resample a {pe.shape[1]}-position posemb: not a square grid")

    def resample(x: np.ndarray) -> np.ndarray:
        return resample_posemb(torch.from_numpy(x), (g_old, g_old), config.grid_size).numpy()

    mapped[key] = pe.derive(resample, (1, n_new, pe.shape[2]), "(resampled)")


def build_vit(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """The ViT or its classifier (``head`` present) for a ``vit`` checkpoint; nothing is read yet."""
    params = prepare_vit_params(params)
    config_kwargs, num_classes = infer_vit_config(params, model_kwargs, image_size)
    if image_size is None and config_kwargs.get("posemb") != "learn":  # a registered checkpoint brings its size
        raise CheckpointError("the checkpoint's sincos2d posemb does not tell the resolution it was trained at: pass "
                              "--image-size H [W] (or --name for a registered checkpoint, see `big-vision-hf list`)")
    cls, rules, head = with_head(VIT_RULES, num_classes, BvViTModel, BvViTForImageClassification, "vit.")
    config = BvViTConfig(**config_kwargs, **head)
    mapped = map_params(params, rules)
    fit_posemb(mapped, ("vit." if head else "") + "embeddings.position_embedding", config)
    return Built(cls, config, mapped)


FAMILY = Family(
    name="vit",
    build=build_vit,
    summary="ViT (models/vit.py): AugReg, DeiT-3, 'better plain ViT', SigLIP image towers",
    # The paper's legacy Mixer files and GIVT's ViT VAE (proj.givt.vit) have embedding/kernel too.
    signatures=(("embedding/kernel", "!Mixer/", "!decoder_head/kernel"),),
    classes=("BvViTModel", "BvViTForImageClassification"),
)
