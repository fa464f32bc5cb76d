"""big_vision Jet (``big_vision/models/proj/jet/jet.py``) -> `BvJetModel`.

A Jet checkpoint holds the two frozen permutation stacks ``channel_coupling_masks-FREEZE_ME [depth, c, c]`` and
``spatial_coupling_masks-FREEZE_ME [depth, n, n]`` and the coupling networks ``couplings/dnn/...``, every array of
which carries the couplings on axis 0 (``nn.scan``); the layout pass unstacks them into ``couplings_{i}/`` (each
layer read alone), then the table maps one coupling at a time. JetFormer's adaptor is the same tree under
``params_adaptor/`` (``convert_bv_jetformer`` uses :func:`jet_rules` and :func:`infer_jet_config` with a prefix).

Sizes come from the arrays; ``ps`` (big_vision's ``Model`` default 4) is a kwarg the arrays cannot tell apart from
the image size (``c = 3 ps^2``, ``n = (H / ps)^2``; for JetFormer's adaptor the channels are known, so ``ps`` is read
from ``c`` too). ``kinds`` is checked against the masks (a channel coupling has a non-zero channel permutation and an
all-zero spatial one, and the reverse); when it is not given, the per-coupling kinds the masks show are used.

    big-vision-hf convert jet.npz jet/ --model-config '{"depth": 32, "block_depth": 2, "emb_dim": 512, "num_heads": 8,
        "ps": 4, "kinds": ["channels", "channels", "channels", "channels", "spatial"]}'
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..configuration.configuration_bv_jet import BvJetConfig, bv_jet_kwargs_to_config
from ..modeling.modeling_bv_jet import BvJetModel
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import Rule, encoder_rules, linear, map_params, unstack_scan

CHANNEL_MASKS, SPATIAL_MASKS = "channel_coupling_masks-FREEZE_ME", "spatial_coupling_masks-FREEZE_ME"
BV_JET_DEFAULT_PS = 4  # big_vision jet.Model default


def jet_rules(num_couplings: int, bv_prefix: str = "", hf_prefix: str = "") -> list[Rule]:
    """big_vision Jet names (after :func:`prepare_jet_params`) -> `BvJetModel` names."""
    rules = [
        Rule(bv_prefix + re.escape(CHANNEL_MASKS), hf_prefix + "channel_coupling_masks"),
        Rule(bv_prefix + re.escape(SPATIAL_MASKS), hf_prefix + "spatial_coupling_masks"),
    ]
    for i in range(num_couplings):
        bv, hf = f"{bv_prefix}couplings_{i}/dnn", f"{hf_prefix}couplings.{i}.dnn"
        rules += [
            *linear(f"{bv}/init_proj", f"{hf}.init_proj"),
            Rule(f"{bv}/posemb", f"{hf}.position_embedding"),
            *encoder_rules(f"{bv}/vit", f"{hf}.encoder"),
            *linear(f"{bv}/final_proj", f"{hf}.final_proj"),
        ]
    return rules


def prepare_jet_params(params: dict[str, LazyArray], prefix: str = "") -> dict[str, LazyArray]:
    """``{prefix}couplings/...`` stacked on axis 0 -> ``{prefix}couplings_{i}/...`` (big_vision scans the couplings)."""
    return unstack_scan(params, f"{prefix}couplings/", f"{prefix}couplings_{{}}/", axis=0)


def _shape(params: dict[str, LazyArray], name: str, what: str) -> tuple[int, ...]:
    if name not in params:
        raise CheckpointError(f"not a big_vision {what} checkpoint: no {name!r} array")
    return tuple(params[name].shape)


def infer_jet_config(params: dict[str, LazyArray], kwargs: dict | None, prefix: str = "", what: str = "Jet",
                     channels: int | None = None) -> dict:
    """`BvJetConfig` fields from the (stacked, raw) arrays' shapes and big_vision ``jet.Model`` kwargs.

    ``channels``: the input's channels when known (JetFormer's adaptor), which gives ``ps`` from the arrays. Reads
    the two permutation stacks, to check ``kinds`` against them (or to read the kinds from them when ``kinds`` is not
    given). Raises a one-line ``CheckpointError`` naming what disagrees.
    """
    kwargs = dict(kwargs or {})
    fields = bv_jet_kwargs_to_config(kwargs)
    depth, c, _ = _shape(params, prefix + CHANNEL_MASKS, what)
    _, n, _ = _shape(params, prefix + SPATIAL_MASKS, what)
    dnn = f"{prefix}couplings/dnn"
    _, half, emb = _shape(params, f"{dnn}/init_proj/kernel", what)
    block = re.compile(rf"{re.escape(dnn)}/vit/encoderblock_(\d+)/")
    blocks = sorted({int(m.group(1)) for k in params if (m := block.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise CheckpointError(f"{what}: expected {dnn}/vit/encoderblock_0.. (one per block_depth), found {blocks}")
    heads = _shape(params, f"{dnn}/vit/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", what)[2]
    mlp = _shape(params, f"{dnn}/vit/encoderblock_0/MlpBlock_0/Dense_0/kernel", what)[2]
    if any(k.startswith(f"{dnn}/MultiHeadDotProductAttention") for k in params):
        raise CheckpointError(f"{what}: a class-conditional Jet (DNN context cross-attention, {dnn}/"
                              "MultiHeadDotProductAttention_0) is not supported")
    default_ps = math.isqrt(c // channels) if channels and c % channels == 0 else BV_JET_DEFAULT_PS
    ps = int(fields.get("patch_size", default_ps))
    grid = math.isqrt(n)
    num_channels = c // (ps * ps)
    if grid * grid != n or num_channels * ps * ps != c or half * 2 != c or channels not in (None, num_channels):
        raise CheckpointError(f"{what}: masks [{depth}, {c}, {c}] / [{depth}, {n}, {n}] do not fit a square image "
                              f"cut into ps={ps} patches" + (f" of {channels} channels" if channels else "")
                              + f" (n must be a square, c a multiple of ps^2 = {ps * ps})")
    inferred = dict(num_couplings=depth, num_hidden_layers=len(blocks), hidden_size=emb, num_attention_heads=heads,
                    intermediate_size=mlp, patch_size=ps, image_size=grid * ps, num_channels=num_channels)
    for key, value in inferred.items():
        if key in fields and fields[key] != value:
            raise CheckpointError(f"{what} config says {key}={fields[key]!r} but the checkpoint arrays have {value!r}")
    found = _mask_kinds(params, prefix, depth)
    config = {**fields, **inferred}
    if "kinds" not in config:
        if "?" in found:
            raise CheckpointError(f"{what}: cannot tell the coupling kinds from the permutation masks ({found})")
        config["kinds"] = found
    expected = [kind for kind, _, _ in BvJetConfig(**config).coupling_schedule]
    if found != expected:
        raise CheckpointError(f"{what}: the permutation masks give coupling kinds {found}, the config's kinds cycle "
                              f"gives {expected}; pass the checkpoint's `kinds` in --model-config")
    return config


def _mask_kinds(params: dict[str, LazyArray], prefix: str, depth: int) -> list[str]:
    """Per coupling: ``"channels"`` (non-zero channel permutation only), ``"spatial"``, or ``"?"``."""
    channel = np.abs(params[prefix + CHANNEL_MASKS].load()).reshape(depth, -1).sum(1) > 0
    spatial = np.abs(params[prefix + SPATIAL_MASKS].load()).reshape(depth, -1).sum(1) > 0
    return ["channels" if c and not s else "spatial" if s and not c else "?" for c, s in zip(channel, spatial)]


def build_jet(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvJetModel` for a big_vision Jet checkpoint (reads only the two permutation stacks, to check ``kinds``)."""
    config = infer_jet_config(params, model_kwargs)
    if image_size is not None and tuple(np.broadcast_to(image_size, 2).tolist()) != (config["image_size"],) * 2:
        raise CheckpointError(f"Jet works at the resolution its posemb and permutations were made for "
                              f"({config['image_size']}), not {image_size}")
    config = BvJetConfig(**config)
    mapped = map_params(prepare_jet_params(params), jet_rules(config.num_couplings))
    return Built(BvJetModel, config, mapped)


def jet_card_usage(model) -> str:
    """The card's usage: the flow, its inverse and the bits per dimension."""
    size = model.config.image_size
    return f"""```python
import torch
from transformers import AutoModel

model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True).eval()
images = torch.rand(2, {model.config.num_channels}, {size}, {size}) * 2 - 1   # in [-1, 1] (big_vision value_range)
out = model(images)                       # out.z (same shape), out.logdet, out.loss = mean bits per dimension
x, logdet = model.inverse(out.z)          # back to the images
bpd = model.bits_per_dim(images, generator=torch.Generator().manual_seed(0))  # dequantised with U[0, 1/127.5)
```

The loss is big_vision's bits per dimension, so the model fine-tunes with `Trainer` (`pixel_values` batches)."""


FAMILY = Family(
    name="proj.jet.jet",
    build=build_jet,
    summary="Jet normalizing flow (proj/jet/jet.py): images <-> latents, exact bits per dimension",
    signatures=((CHANNEL_MASKS, "couplings/"),),
    card_usage=jet_card_usage,
    classes=("BvJetModel",),
)
