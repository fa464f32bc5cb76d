"""big_vision NaFlex ViT (``proj.image_text.naflex_vit``) -> `BvNaFlexViTModel` / `...ForImageClassification`,
and the export of a converted model into transformers' ``Siglip2VisionModel`` (:func:`export_to_siglip2`).

The tree is the ViT's, except ``embedding/kernel`` (a Dense ``[p*p*3, D]`` on flattened patches, not a conv),
``pos_embedding`` (``[nposemb, nposemb, D]``, not ``[1, N, D]``) and the optional ``patchln_pre``/``patchln_post``.
The ViT's layout passes (``fix_old_checkpoints``, scan -> loop) and rule helpers are reused; the posemb is kept
out of them: big_vision ``naflex_vit.load = vit.load``, whose ``fix_old_checkpoints`` reads ``pos_embedding``
as ``[1, N, D]`` and would cut the first row off a posemb with ``nposemb == k**2 + 1`` (5, 10, 17, ...).

A NaFlex tree has the ViT's names, so the family must be named: ``--model-name proj.image_text.naflex_vit``.

SigLIP 2 NaFlex two towers (``proj.image_text.two_towers`` with ``image_model="proj.image_text.naflex_vit"``) are
built here too (:func:`build_naflex_two_towers`, called by the two-tower builder): by default into our exact
`BvSiglipModel` with a `BvNaFlexViTModel` image tower, or with ``target="transformers"`` (CLI ``--target
transformers``) into transformers' ``Siglip2Model``, which is close but not exact; the folder's model card then
carries its measured deviation from the exact class (:func:`siglip2_model_parity_note`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..configuration.configuration_bv_naflex import BvNaFlexViTConfig, bv_kwargs_to_naflex_config
from ..configuration.configuration_bv_vit import BV_VIT_KWARGS
from ..modeling.modeling_bv_naflex import BvNaFlexViTForImageClassification, BvNaFlexViTModel
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import infer_vit_config, prepare_vit_params
from .export import save_folder
from .family import Built, Family
from .mapping import (
    Rule,
    Transform,
    dense,
    encoder_rules,
    identity,
    layer_norm,
    linear,
    map_head_rules,
)
from .model_card import conversion_card

NAME = "proj.image_text.naflex_vit"

# big_vision name -> BvNaFlexViTModel name.
NAFLEX_RULES = [
    *layer_norm("patchln_pre", "embeddings.patchln_pre"),
    Rule("embedding/kernel", "embeddings.patch_embedding.weight", dense),
    Rule("embedding/bias", "embeddings.patch_embedding.bias"),
    *layer_norm("patchln_post", "embeddings.patchln_post"),
    Rule("pos_embedding", "embeddings.position_embedding", identity),
    *encoder_rules("Transformer", "encoder"),
    *map_head_rules("MAPHead_0", "map_head"),
    *linear("pre_logits", "pre_logits"),
]


def prepare_naflex_params(params: dict[str, LazyArray], prefix: str = "") -> dict[str, LazyArray]:
    """The ViT layout passes on a NaFlex (sub-)tree, with the 3-D ``pos_embedding`` kept out of them."""
    params = dict(params)
    posemb = params.pop(prefix + "pos_embedding", None)
    params = prepare_vit_params(params, prefix)
    if posemb is not None:
        params[prefix + "pos_embedding"] = posemb
    return params


def infer_naflex_config(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None, prefix: str = ""
) -> tuple[dict, int | None]:
    """What the arrays tell, checked against big_vision's ``config.model`` (``num_classes`` or None).
    ``image_size`` is ignored (NaFlex takes any size; the argument mirrors `infer_vit_config`).

    Width, depth, heads, MLP, pool and ``rep_size`` come from `infer_vit_config` run on the shapes a ViT with the
    same patch size would have; ``patch_size`` from ``embedding/kernel [p*p*3, D]``; ``nposemb`` from
    ``pos_embedding``.
    """
    p = prefix
    kwargs = bv_kwargs_to_naflex_config(dict(model_kwargs or {}))
    num_classes_kw = (model_kwargs or {}).get("num_classes")
    if p + "embedding/kernel" not in params:
        raise CheckpointError(f"not a big_vision NaFlex ViT checkpoint: no {p}embedding/kernel array")
    kernel = params[p + "embedding/kernel"]
    if len(kernel.shape) != 2:
        raise CheckpointError(
            f"{p}embedding/kernel has shape {kernel.shape}; NaFlex's is a Dense [p*p*3, width] (a 4-D conv kernel "
            "means a plain ViT: --model-name vit)"
        )
    if p + "pos_embedding" not in params:
        raise CheckpointError(f"not a big_vision NaFlex ViT checkpoint: no {p}pos_embedding array (learn_2d posemb)")
    patch_dim, width = kernel.shape
    patch = math.isqrt(patch_dim // 3)
    if patch * patch * 3 != patch_dim:
        raise CheckpointError(f"{p}embedding/kernel takes {patch_dim} inputs, not p*p*3 for a square patch")
    posemb = params[p + "pos_embedding"].shape
    if len(posemb) != 3 or posemb[0] != posemb[1]:
        raise CheckpointError(f"{p}pos_embedding has shape {posemb}; NaFlex's is [nposemb, nposemb, width]")

    # The ViT inference on a view with a ViT-shaped kernel and no learned posemb (shapes only; nothing is read).
    view = {k: v for k, v in params.items() if k != p + "pos_embedding"}
    view[p + "embedding/kernel"] = LazyArray((patch, patch, 3, width), kernel.dtype, kernel.loader, kernel.source)
    vit_keys = {v: k for k, v in BV_VIT_KWARGS.items()}
    vit_kwargs = {vit_keys[k]: v for k, v in kwargs.items() if k in vit_keys and k not in ("posemb", "patch_size")}
    if num_classes_kw is not None:
        vit_kwargs["num_classes"] = num_classes_kw
    vit_config, num_classes = infer_vit_config(view, vit_kwargs, prefix=p)

    config = {k: v for k, v in vit_config.items() if k not in ("posemb", "image_size")}
    given_patch = kwargs.get("patch_size")
    if given_patch is not None and list(given_patch) != [patch, patch]:
        raise CheckpointError(f"model config says patch_size={list(given_patch)} but embedding/kernel is for {patch}")
    config["patch_size"] = [patch, patch]
    given_n = kwargs.get("nposemb")
    if given_n is not None and given_n != posemb[0]:
        raise CheckpointError(f"model config says nposemb={given_n} but pos_embedding is {posemb[0]}x{posemb[1]}")
    config["nposemb"] = posemb[0]
    if kwargs.get("posemb") is not None:
        config["posemb"] = kwargs["posemb"]
    for flag in ("patchln_pre", "patchln_post"):
        present = p + f"{flag}/scale" in params
        if kwargs.get(flag) is not None and bool(kwargs[flag]) != present:
            has = "has" if present else "lacks"
            raise CheckpointError(f"model config says {flag}={kwargs[flag]} but the checkpoint {has} it")
        config[flag] = present
    return config, num_classes


def build_naflex(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvNaFlexViTModel` or its classifier for a NaFlex ViT checkpoint (nothing read yet).

    ``image_size`` is meaningless for NaFlex (any aspect ratio and size up to ``max_num_patches``) and ignored.
    """
    params = prepare_naflex_params(params)
    config_kwargs, num_classes = infer_naflex_config(params, model_kwargs)
    return Built.base_or_classifier(params, NAFLEX_RULES, num_classes,
                                    (BvNaFlexViTModel, BvNaFlexViTForImageClassification), "vit.", BvNaFlexViTConfig,
                                    config_kwargs)


def naflex_image_processor_for(config, preprocessing: str = "resize", max_num_patches: int = 256):
    """The folder's processor: big_vision's NaFlex eval pp at ``max_num_patches`` (256 in the SigLIP 2 README)."""
    from ..processing.image_processing_bv_naflex import BvNaFlexImageProcessor

    processor = BvNaFlexImageProcessor(patch_size=config.patch_size[0], max_num_patches=max_num_patches)
    return processor, processor.pp_string()


FAMILY = Family(
    name=NAME,
    build=build_naflex,
    summary="NaFlex ViT (proj/image_text/naflex_vit.py), SigLIP 2's image tower at any aspect ratio; name it",
    processor=naflex_image_processor_for,
    classes=("BvNaFlexViTModel", "BvNaFlexViTForImageClassification"),
)



# ---------------------------------------------------------------------------------------------------------
# Export into transformers' Siglip2VisionModel (numerically close, not exact)
# ---------------------------------------------------------------------------------------------------------


def siglip2_vision_state_dict(model: BvNaFlexViTModel) -> dict[str, torch.Tensor]:
    """Our NaFlex state dict under ``Siglip2VisionModel`` names (the posemb flattened ``[n*n, D]``; the MAP head's
    q/k/v packed into ``nn.MultiheadAttention.in_proj``)."""
    sd = model.state_dict()
    out = {}
    for name, value in sd.items():
        if name.startswith("encoder.post_layernorm."):
            out[name[len("encoder."):]] = value
        elif name == "embeddings.position_embedding":
            out["embeddings.position_embedding.weight"] = value.reshape(-1, value.shape[-1])
        elif name.startswith("map_head."):
            rest = name[len("map_head."):]
            if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                continue
            out["head." + rest] = value
        else:
            out[name] = value
    if model.map_head is not None:
        att = "map_head.attention."
        for kind in ("weight", "bias"):
            out[f"head.attention.in_proj_{kind}"] = torch.cat([sd[f"{att}{p}_proj.{kind}"] for p in "qkv"], dim=0)
    return out


def siglip2_unsupported(config: BvNaFlexViTConfig) -> list[str]:
    problems = []
    if config.patchln_pre or config.patchln_post:
        problems.append("patchln_pre/patchln_post (Dual PatchNorm)")
    if config.pool_type not in ("map", "none"):
        problems.append(f"pool_type={config.pool_type!r} (Siglip2VisionModel pools with MAP or not at all)")
    if config.representation_size:
        problems.append("rep_size (pre_logits layer)")
    if config.patch_size[0] != config.patch_size[1]:
        problems.append(f"non-square patch {config.patch_size}")
    return problems


def to_siglip2_vision_model(model: BvNaFlexViTModel):
    """A ``transformers.Siglip2VisionModel`` with our weights (fp32). Raises for what it cannot represent."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    if isinstance(model, BvNaFlexViTForImageClassification):
        raise ValueError(
            "Siglip2VisionModel has no classification head (and Siglip2ForImageClassification mean-pools instead of "
            "using the MAP head): export `model.vit` (the features) instead"
        )
    config = model.config
    problems = siglip2_unsupported(config)
    if problems:
        raise ValueError("Siglip2VisionModel cannot represent: " + "; ".join(problems))
    s2_config = Siglip2VisionConfig(**siglip2_vision_kwargs(config))
    s2 = Siglip2VisionModel(s2_config).eval()
    s2.load_state_dict(siglip2_vision_state_dict(model), strict=True)
    return s2.to(model.dtype)


def synthetic_naflex_inputs(config: BvNaFlexViTConfig, num_tokens: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic batch: random patches in [-1, 1] on a wide, a square, a tall and a 1x1 grid, padded to
    ``num_tokens``; no side exceeds the posemb canvas ``L`` (big_vision gives NaN beyond it)."""
    rng = np.random.default_rng(seed)
    cap = config.posemb_canvas_size
    side = min(cap, max(1, math.isqrt(num_tokens)))
    wide_h = max(1, side // 2)
    shapes = [(wide_h, min(cap, num_tokens // wide_h)), (side, side), (min(cap, num_tokens), 1), (1, 1)]
    pixel_values = rng.uniform(-1, 1, (len(shapes), num_tokens, config.patch_dim)).astype(np.float32)
    mask = np.zeros((len(shapes), num_tokens), np.int64)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
        pixel_values[i, h * w :] = 0
    return {
        "pixel_values": torch.from_numpy(pixel_values),
        "pixel_attention_mask": torch.from_numpy(mask),
        "spatial_shapes": torch.tensor(shapes, dtype=torch.long),
    }


@torch.no_grad()
def siglip2_deviation(model: BvNaFlexViTModel, siglip2_model, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences Siglip2VisionModel vs our exact model: ``pooler_output`` and patch tokens of
    ``last_hidden_state`` (pads excluded)."""
    ours = model(**inputs)
    theirs = siglip2_model(**inputs)
    valid = inputs["pixel_attention_mask"].bool()
    out = {"last_hidden_state": float((ours.last_hidden_state - theirs.last_hidden_state)[valid].abs().max())}
    if ours.pooler_output is not None and theirs.pooler_output is not None and model.config.pool_type == "map":
        out["pooler_output"] = float((ours.pooler_output - theirs.pooler_output).abs().max())
    return out


def export_to_siglip2(
    model: BvNaFlexViTModel,
    out_dir: str,
    max_num_patches: int = 256,
    inputs: dict[str, torch.Tensor] | None = None,
    source: str = "",
) -> tuple[str, dict[str, float]]:
    """Writes a ``Siglip2VisionModel`` folder (no remote code) from a converted NaFlex model; returns
    ``(out_dir, measured deviation)``.

    The deviation from our exact class (max abs error, fp32, patch tokens only) is measured on ``inputs`` (a
    processor output), or on a synthetic batch (:func:`synthetic_naflex_inputs`), and written into the model card.
    Known differences: transformers resizes the posemb per image (before 5.25 with ``F.interpolate``, which is
    wrong on 1-wide grids) and has no ``L``-canvas cap (big_vision gives NaN beyond ``L`` patches per side); its pad
    *queries* attend to patches (only keys are
    masked), so pad positions differ; its image processor resizes uint8 images with PIL instead of big_vision's
    float TF antialiased bilinear (the folder holds transformers' ``Siglip2ImageProcessorPil``). Not
    representable (raises): Dual PatchNorm, ``gap``/``max`` pooling, ``rep_size``, a classification head.

    A two-tower SigLIP 2 NaFlex checkpoint converts into ``Siglip2Model`` directly: :func:`build_naflex_two_towers`
    (``target="transformers"``).
    """
    from transformers import Siglip2ImageProcessorPil

    model = model.float().eval()
    s2 = to_siglip2_vision_model(model)
    if inputs is None:
        inputs = synthetic_naflex_inputs(model.config, num_tokens=min(max_num_patches, 4 * model.config.nposemb**2))
    deviation = siglip2_deviation(model, s2, inputs)
    figures = ", ".join(f"{k} {v:.1e}" for k, v in deviation.items())
    note = (
        f"exported to transformers `Siglip2VisionModel`; max abs difference from the exact big_vision_hf "
        f"`BvNaFlexViTModel` (fp32, patch tokens only, {inputs['pixel_values'].shape[0]} images): {figures}. "
        "Differences: posemb resize (no L-canvas cap; before transformers 5.25 F.interpolate, wrong on 1-wide "
        "grids), pad queries unmasked, and the image processor (PIL uint8 bilinear, not big_vision's float "
        "antialiased resize_to_sequence)."
    )
    s2.config.bv_model_name = NAME
    s2.config.bv_model_config = getattr(model.config, "bv_model_config", {})
    processor = Siglip2ImageProcessorPil(patch_size=model.config.patch_size[0], max_num_patches=max_num_patches)
    card = conversion_card(s2, NAME, source or os.path.basename(out_dir.rstrip("/")), parity_note=note)
    save_folder(s2, out_dir, processor, card, remote_code=False)
    return out_dir, deviation


#: ``pos_embedding [n, n, D]`` -> ``Siglip2VisionEmbeddings.position_embedding.weight [n*n, D]`` (row-major, as
#: Siglip2 reshapes it back).
flatten_posemb = Transform("flatten_posemb", lambda x: x.reshape(-1, x.shape[-1]), lambda s: (s[0] * s[1], s[2]),
                           layout_only=True)


# The sizes our tower configs and transformers' ``Siglip*Config`` s name alike: copied by name.
SIGLIP_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def same_fields(config, names: tuple[str, ...]) -> dict:
    """``{name: config.name}`` for ``names`` (``config[name]`` for a dict), for fields named alike on both sides."""
    return {k: config[k] if isinstance(config, dict) else getattr(config, k) for k in names}


def siglip2_vision_kwargs(config: BvNaFlexViTConfig) -> dict:
    """``Siglip2VisionConfig`` kwargs of a NaFlex tower."""
    return dict(
        **same_fields(config, (*SIGLIP_SIZES, "num_channels", "hidden_act", "layer_norm_eps", "attention_dropout")),
        patch_size=config.patch_size[0],
        num_patches=config.nposemb**2,
        vision_use_head=config.pool_type == "map",
    )
