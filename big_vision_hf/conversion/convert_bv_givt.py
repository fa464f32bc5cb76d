"""big_vision GIVT checkpoints -> `BvGivtModel`, `BvGivtCNNVAEModel`, `BvGivtViTVAEModel`: three families.

- ``proj.givt.givt`` (``givt.py``): the transformer. Scanned decoders stack ``decoder/EncDecBlock/...`` on axis 1
  (``param_scan_axis = 1``, also for 1-D leaves), scanned encoders ``encoder/encoderblock/...`` on axis 0; both are
  unstacked by the layout pass. An adaptor trained with the GIVT (``generative.py`` stores it under
  ``params_adaptor/``) becomes ``BvGivtModel.adaptor``.
- ``proj.givt.cnn`` (``cnn.py``): the ImageNet VAEs. The public files (``vae_imagenet_2012_beta_*_params``, no
  extension) are flax msgpack training states of a MaskGIT-derived ("malib") trainer; big_vision's
  ``cnn.load(malib_ckpt=True, use_ema_params=True)`` keeps ``ema_params/*`` renamed to ``cnn_*`` and drops the rest
  (generator / discriminator / optimizer state, step). So does the layout pass (``use_ema_params: false`` in
  ``--model-config`` takes ``g_params/`` instead); such a tree sets ``malib_ckpt`` (the [0, 1] input convention) unless
  the config says otherwise. A ``.npz`` with ``cnn_encoder/``, ``cnn_decoder/`` (``cnn.load`` without ``malib_ckpt``)
  is read as is.
- ``proj.givt.vit`` (``vit.py``): the panoptic / depth VAEs (``vit.Encoder`` trees, scanned on axis 0 or not).

Sizes come from the arrays; what they cannot tell (GIVT's ``style``, ``seq_len`` vs the label token, the classes vs
the special labels, ``fix_square_plus``, ``scale_tol``, the mixture layout when ambiguous; the VAEs' ``inout_specs``,
``input_size``, activation, ``malib_ckpt``) comes from the big_vision ``config.model`` kwargs (the zoo entries carry
them) and is checked against the arrays.

    big-vision-hf convert givt_imagenet_2012_causal_params.npz givt-causal/       # zoo entry: kwargs supplied
    big-vision-hf convert vae_imagenet_2012_beta_5e-5_params vae-5e-5/           # flax msgpack, malib layout
"""

from __future__ import annotations

import json
import math
import os
import re

from ..configuration.configuration_bv_givt import (
    BvGivtCNNVAEConfig,
    BvGivtConfig,
    BvGivtViTVAEConfig,
    bv_kwargs_to_cnn_vae_config,
    bv_kwargs_to_givt_config,
    bv_kwargs_to_vit_vae_config,
)
from ..modeling.modeling_bv_givt import BvGivtModel
from ..modeling.modeling_bv_givt_vae import BvGivtCNNVAEModel, BvGivtViTVAEModel
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_uvim import VIT_VAE_TRUNK_RULES
from .export import save_folder
from .family import Built, Family
from .mapping import Rule, attention, conv, encoder_rules, layer_norm, linear, map_params, unstack_scan
from .model_card import render_model_card
from .zoo import find_entry

_GIVT_PAPER = "https://arxiv.org/abs/2312.02116"


def _shape(params: dict[str, LazyArray], name: str, what: str) -> tuple[int, ...]:
    """The shape of a required array, or a one-line error saying which family the tree looks like instead."""
    if name not in params:
        from .families import FAMILIES  # families imports this module

        looks = [f.name for f in FAMILIES if f.matches(set(params))]
        tops = ", ".join(sorted({k.split("/")[0] for k in params})[:8])
        hint = f"; it looks like a {looks[0]} checkpoint" if looks else ""
        raise CheckpointError(f"not a {what} checkpoint: no {name!r} array (top-level names: {tops}){hint}")
    return tuple(params[name].shape)


def _indices(params: dict[str, LazyArray], pattern: str) -> list[int]:
    """The ``N`` of names matching ``pattern`` (a regex with one group), sorted; they must be 0..n-1."""
    found = sorted({int(m.group(1)) for k in params if (m := re.match(pattern, k))})
    if found != list(range(len(found))):
        raise CheckpointError(f"expected consecutive indices 0..n-1 for {pattern!r}, found {found}")
    return found


def _check(fields: dict, key: str, value, what: str) -> None:
    if key in fields and fields[key] != value:
        raise CheckpointError(f"{what} config says {key}={fields[key]!r} but the checkpoint arrays have {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# proj.givt.givt
# ---------------------------------------------------------------------------------------------------------------


def givt_rules() -> list[Rule]:
    """big_vision ``givt.Model`` names (loop layout) -> `BvGivtModel` names."""
    block, layer = r"decoder/EncDecBlock(\d+)", "decoder.layers.{0}"
    adaptor = r"params_adaptor/modules_(\d+)"
    return [
        Rule("EmbedLabels/embedding", "label_embedding.weight"),
        *linear("EmbedTargets", "latent_embedding"),
        Rule("decoder/pos_emb", "decoder.position_embedding"),
        Rule(f"{block}/LayerNorm1/scale", f"{layer}.layer_norm1.weight"),
        *attention(f"{block}/SelfAttn", f"{layer}.self_attn"),  # bias-free: the bias rules match nothing
        Rule(f"{block}/LayerNorm2/scale", f"{layer}.layer_norm2.weight"),
        *attention(f"{block}/CrossAttn", f"{layer}.cross_attn"),
        Rule(f"{block}/LayerNorm3/scale", f"{layer}.layer_norm3.weight"),
        *linear(f"{block}/MLP/Dense_0", f"{layer}.mlp.fc1"),
        *linear(f"{block}/MLP/Dense_1", f"{layer}.mlp.fc2"),
        *layer_norm("decoder/LayerNorm", "decoder.norm"),
        *linear("decoder/LogitsDense", "decoder.head"),
        Rule("EmbedPatches/kernel", "image_encoder.patch_embedding.weight", conv),
        Rule("EmbedPatches/bias", "image_encoder.patch_embedding.bias"),
        Rule("pos_embedding_encoder", "image_encoder.position_embedding"),
        *encoder_rules("encoder", "image_encoder.encoder"),
        Rule(rf"{adaptor}/gn_(\d)/scale", "adaptor.blocks.{0}.norm{1}.weight"),
        Rule(rf"{adaptor}/gn_(\d)/bias", "adaptor.blocks.{0}.norm{1}.bias"),
        Rule(rf"{adaptor}/Conv_(\d)/kernel", "adaptor.blocks.{0}.conv{1}.weight", conv),
    ]


def prepare_givt_params(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """Scan -> loop layout: the decoder stacks its blocks on axis 1, the ViT encoder on axis 0 (big_vision
    ``Decoder``: ``param_scan_axis = 1``; ``vit.Encoder``: axis 0)."""
    params = unstack_scan(params, "decoder/EncDecBlock/", "decoder/EncDecBlock{}/", axis=1)
    return unstack_scan(params, "encoder/encoderblock/", "encoder/encoderblock_{}/", axis=0)


def _mixture_layouts(num_logits: int, out_dim: int) -> list[dict]:
    """Every (num_mixtures, per_channel_mixtures, multivariate) whose head has ``num_logits`` outputs."""
    d, found = out_dim, []
    if num_logits % (3 * d) == 0:
        found.append({"num_mixtures": num_logits // (3 * d), "per_channel_mixtures": True, "multivariate": False})
    if num_logits % (1 + 2 * d) == 0:
        found.append({"num_mixtures": num_logits // (1 + 2 * d), "per_channel_mixtures": False, "multivariate": False})
    if num_logits == d * d + d:
        found.append({"num_mixtures": 1, "per_channel_mixtures": True, "multivariate": True})
    return found


def infer_givt_config(params: dict[str, LazyArray], model_kwargs: dict | None) -> dict:
    """`BvGivtConfig` fields: sizes from the (loop-layout) arrays, the rest from the big_vision kwargs, checked."""
    what = "proj.givt.givt"
    try:
        fields = bv_kwargs_to_givt_config(dict(model_kwargs or {}))
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None
    out_dim, width = _shape(params, "EmbedTargets/kernel", "GIVT (proj.givt.givt)")
    _shape(params, "EmbedLabels/embedding", what)
    length = _shape(params, "decoder/pos_emb", what)[1]
    num_logits = _shape(params, "decoder/LogitsDense/kernel", what)[1]
    layers = _indices(params, r"decoder/EncDecBlock(\d+)/")
    if not layers:
        raise CheckpointError(f"{what}: no decoder blocks (decoder/EncDecBlock/ or decoder/EncDecBlock0/)")
    _, heads, _ = _shape(params, "decoder/EncDecBlock0/SelfAttn/query/kernel", what)
    mlp = _shape(params, "decoder/EncDecBlock0/MLP/Dense_0/kernel", what)[1]
    inferred = dict(hidden_size=width, out_dim=out_dim, num_hidden_layers=len(layers), num_attention_heads=heads,
                    intermediate_size=mlp)
    for key, value in inferred.items():
        _check(fields, key, value, what)
    config = {**fields, **inferred}
    style = config.get("style", "ar")
    seq_len = length - int(style == "masked")  # a masked decoder also sees the label token
    _check(fields, "seq_len", seq_len, f"{what} (style={style!r}, decoder/pos_emb of length {length})")
    config["seq_len"] = seq_len
    if not {"num_mixtures", "per_channel_mixtures", "multivariate"} & set(fields):
        layouts = _mixture_layouts(num_logits, out_dim)
        if len(layouts) != 1:
            raise CheckpointError(f"{what}: a head of {num_logits} outputs for {out_dim}-dimensional tokens fits "
                                  f"{len(layouts)} mixture layouts; pass num_mixtures and per_channel_mixtures")
        config.update(layouts[0])
    if "EmbedPatches/kernel" in params:
        ph, pw, channels, _ = _shape(params, "EmbedPatches/kernel", what)
        num_patches = _shape(params, "pos_embedding_encoder", what)[1]
        enc = dict(config.get("encoder_config") or {})
        if "image_size" not in enc:
            side = math.isqrt(num_patches)
            if side * side != num_patches:
                raise CheckpointError(f"{what}: pos_embedding_encoder has {num_patches} patches, not a square grid; "
                                      "pass input_size")
            enc["image_size"] = [side * ph, side * pw]
        enc_layers = len(_indices(params, r"encoder/encoderblock_(\d+)/"))
        enc_heads = _shape(params, "encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", what)[1]
        enc_mlp = _shape(params, "encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel", what)[1]
        found = dict(num_hidden_layers=enc_layers, patch_size=[ph, pw], hidden_size=width,
                     num_attention_heads=enc_heads, intermediate_size=enc_mlp, num_channels=channels)
        for key, value in found.items():
            if key in enc and key != "hidden_size" and list(_pair(enc[key])) != list(_pair(value)):
                raise CheckpointError(f"{what} config gives the encoder {key}={enc[key]!r} but the checkpoint arrays "
                                      f"have {value!r}")
        grid = [s // p for s, p in zip(_pair(enc["image_size"]), (ph, pw))]
        if grid[0] * grid[1] != num_patches:
            raise CheckpointError(f"{what}: input_size {enc['image_size']} gives {grid[0]}x{grid[1]} patches but "
                                  f"pos_embedding_encoder has {num_patches}")
        config["encoder_config"] = {**enc, **found, "pool_type": "none", "posemb": "learn"}
    elif config.get("encoder_config"):
        raise CheckpointError(f"{what}: the config has an encoder (num_layers > 0) but the checkpoint has no "
                              "EmbedPatches / encoder arrays")
    if any(k.startswith("params_adaptor/") for k in params):
        blocks = _indices(params, r"params_adaptor/modules_(\d+)/")
        half_bottleneck = _shape(params, "params_adaptor/modules_0/Conv_0/kernel", what)[3]
        _check(config, "adaptor_num_blocks", len(blocks), what)
        bottleneck = config.get("adaptor_bottleneck_channels") or out_dim
        if bottleneck // 2 != half_bottleneck:
            bottleneck = 2 * half_bottleneck
            _check(fields, "adaptor_bottleneck_channels", bottleneck, what)
        config.update(adaptor_num_blocks=len(blocks), adaptor_bottleneck_channels=bottleneck)
    elif config.get("adaptor_num_blocks"):
        raise CheckpointError(f"{what}: the config has an adaptor but the checkpoint has no params_adaptor/ arrays")
    return config


def _pair(value) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def build_givt(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> Built:
    """`BvGivtModel` for a big_vision GIVT checkpoint (nothing read yet)."""
    params = prepare_givt_params(params)
    config = BvGivtConfig(**infer_givt_config(params, model_kwargs))
    what = "proj.givt.givt"
    num_logits = _shape(params, "decoder/LogitsDense/kernel", what)[1]
    if config.num_logits != num_logits:
        raise CheckpointError(
            f"{what}: the head has {num_logits} outputs but num_mixtures={config.num_mixtures}, per_channel_mixtures="
            f"{config.per_channel_mixtures}, multivariate={config.multivariate} give {config.num_logits}")
    vocab = _shape(params, "EmbedLabels/embedding", what)[0]
    if config.label_vocab_size != vocab:
        specials = ", ".join(config.special_labels) or "none"
        raise CheckpointError(
            f"{what}: EmbedLabels has {vocab} rows but num_labels={config.num_classes} with style={config.style!r}, "
            f"mask_style={config.mask_style!r}, drop_labels_probability={config.drop_labels_probability} gives "
            f"{config.label_vocab_size} (special labels: {specials}); pass the checkpoint's big_vision config")
    return Built(BvGivtModel, config, map_params(params, givt_rules()))


# ---------------------------------------------------------------------------------------------------------------
# proj.givt.cnn
# ---------------------------------------------------------------------------------------------------------------

def prepare_cnn_params(params: dict[str, LazyArray], use_ema_params: bool = True) -> tuple[dict, bool]:
    """``(params in the cnn_encoder/, cnn_decoder/ layout, whether the tree was a malib training state)``, as
    big_vision ``cnn.load``: a malib state keeps ``ema_params/*`` (or ``g_params/*``) renamed ``cnn_*`` and drops
    everything else (the other weights, optimizer state and step counter of the training state)."""
    tops = {name.split("/")[0] for name in params}
    if not {"ema_params", "g_params"} & tops:
        return params, False
    prefix = "ema_params/" if use_ema_params else "g_params/"
    selected = {"cnn_" + k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if not selected:
        raise CheckpointError(f"a malib VAE checkpoint without {prefix} arrays (top-level names: "
                              f"{', '.join(sorted(tops))})")
    for name, array in selected.items():
        array.name = name
    return selected, True


def cnn_rules(config: BvGivtCNNVAEConfig) -> list[Rule]:
    """big_vision ``cnn.Model`` names -> `BvGivtCNNVAEModel` names; flax numbers the convs in creation order."""
    levels = len(config.channel_multipliers)
    down = levels - 1 if config.conv_downsample else 0

    def res_blocks(bv: str, hf: str) -> list[Rule]:
        block, ours = rf"{bv}/ResBlock_(\d+)", hf + ".res_blocks.{0}"
        return [*layer_norm(f"{block}/GroupNorm_0", f"{ours}.norm1"),
                Rule(f"{block}/Conv_0/kernel", f"{ours}.conv1.weight", conv),
                *layer_norm(f"{block}/GroupNorm_1", f"{ours}.norm2"),
                Rule(f"{block}/Conv_1/kernel", f"{ours}.conv2.weight", conv),
                Rule(f"{block}/Conv_2/kernel", f"{ours}.shortcut.weight", conv)]

    def conv_layer(bv: str, hf: str) -> list[Rule]:
        return [Rule(f"{bv}/kernel", f"{hf}.weight", conv), Rule(f"{bv}/bias", f"{hf}.bias")]

    rules = [
        Rule("cnn_encoder/Conv_0/kernel", "encoder.conv_in.weight", conv),
        *res_blocks("cnn_encoder", "encoder"),
        *[r for j in range(down) for r in conv_layer(f"cnn_encoder/Conv_{j + 1}", f"encoder.downsample.{j}")],
        *layer_norm("cnn_encoder/GroupNorm_0", "encoder.norm_out"),
        *conv_layer(f"cnn_encoder/Conv_{down + 1}", "encoder.conv_out"),
        *conv_layer("cnn_decoder/Conv_0", "decoder.conv_in"),
        *res_blocks("cnn_decoder", "decoder"),
        *[r for j in range(levels - 1) for r in conv_layer(f"cnn_decoder/Conv_{j + 1}", f"decoder.upsample.{j}")],
        *layer_norm("cnn_decoder/GroupNorm_0", "decoder.norm_out"),
        *conv_layer(f"cnn_decoder/Conv_{levels}", "decoder.conv_out"),
    ]
    return rules


def infer_cnn_config(params: dict[str, LazyArray], fields: dict, malib: bool) -> dict:
    """`BvGivtCNNVAEConfig` fields: every size from the arrays, checked against the kwargs."""
    what = "proj.givt.cnn"
    filters = _shape(params, "cnn_encoder/Conv_0/kernel", "GIVT CNN VAE (proj.givt.cnn)")[3]
    channels = _shape(params, "cnn_encoder/Conv_0/kernel", what)[2]
    enc_convs = len(_indices(params, r"cnn_encoder/Conv_(\d+)/"))
    dec_convs = len(_indices(params, r"cnn_decoder/Conv_(\d+)/"))
    levels = dec_convs - 1  # conv_in, one conv per upsampling, conv_out
    conv_downsample = enc_convs > 2
    if levels < 1 or enc_convs not in (2, levels + 1):
        raise CheckpointError(f"{what}: {enc_convs} encoder and {dec_convs} decoder convs fit no channel_multipliers")
    res = len(_indices(params, r"cnn_encoder/ResBlock_(\d+)/"))
    if res % (levels + 1):
        raise CheckpointError(f"{what}: {res} encoder ResBlocks for {levels} resolutions (expected a multiple of "
                              f"{levels + 1})")
    per_level = res // (levels + 1)
    widths = [_shape(params, f"cnn_encoder/ResBlock_{i * per_level}/Conv_1/kernel", what)[3] for i in range(levels)]
    if any(w % filters for w in widths):
        raise CheckpointError(f"{what}: level widths {widths} are not multiples of filters={filters}")
    inferred = dict(filters=filters, num_res_blocks=per_level, channel_multipliers=[w // filters for w in widths],
                    conv_downsample=conv_downsample,
                    codeword_dim=_shape(params, f"cnn_encoder/Conv_{enc_convs - 1}/kernel", what)[3] // 2,
                    num_channels=channels)
    out_channels = _shape(params, f"cnn_decoder/Conv_{levels}/kernel", what)[3]
    if out_channels != channels:
        raise CheckpointError(f"{what}: the encoder reads {channels} channels but the decoder writes {out_channels}")
    for key, value in inferred.items():
        _check(fields, key, value, what)
    config = {**fields, **inferred}
    config.setdefault("malib_ckpt", malib)
    return config


def build_cnn_vae(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> Built:
    """`BvGivtCNNVAEModel` for a ``proj.givt.cnn`` checkpoint: a malib msgpack state or a ``cnn_*`` ``.npz``."""
    kwargs = dict(model_kwargs or {})
    use_ema = bool(kwargs.pop("use_ema_params", True))  # big_vision config.vae.model_load
    params, malib = prepare_cnn_params(params, use_ema)
    try:
        fields = bv_kwargs_to_cnn_vae_config(kwargs)
    except ValueError as e:
        raise CheckpointError(f"proj.givt.cnn: {e}") from None
    config = BvGivtCNNVAEConfig(**infer_cnn_config(params, fields, malib))
    return Built(BvGivtCNNVAEModel, config, map_params(params, cnn_rules(config)))


# ---------------------------------------------------------------------------------------------------------------
# proj.givt.vit
# ---------------------------------------------------------------------------------------------------------------

VIT_VAE_RULES = [
    Rule("embedding/kernel", "embedding.weight", conv),
    Rule("embedding/bias", "embedding.bias"),
    *VIT_VAE_TRUNK_RULES,  # uvim/vit.py's
    *linear("decoder_head", "decoder_head"),
]


def build_vit_vae(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> Built:
    """`BvGivtViTVAEModel` for a ``proj.givt.vit`` checkpoint (scanned or not)."""
    what = "proj.givt.vit"
    params = unstack_scan(params, "encoder/encoderblock/", "encoder/encoderblock_{}/", axis=0)
    params = unstack_scan(params, "decoder/encoderblock/", "decoder/encoderblock_{}/", axis=0)
    kwargs = dict(model_kwargs or {})
    ph, pw, in_channels, width = _shape(params, "embedding/kernel", "GIVT ViT VAE (proj.givt.vit)")
    codeword_dim = _shape(params, "decoder_stem/kernel", what)[0]
    head_out = _shape(params, "decoder_head/kernel", what)[1]
    learned = "pos_embedding_encoder" in params
    # What the arrays tell, in big_vision's kwarg names: given kwargs must agree, missing ones are filled.
    inferred = dict(
        width=width, patch_size=[ph, pw], codeword_dim=codeword_dim, posemb="learn" if learned else "sincos2d",
        mlp_dim=_shape(params, "encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel", what)[1],
        num_heads=_shape(params, "encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", what)[1],
        enc_depth=len(_indices(params, r"encoder/encoderblock_(\d+)/")),
        dec_depth=len(_indices(params, r"decoder/encoderblock_(\d+)/")),
        bottleneck_resize="bottleneck_downsample" not in params)
    if "bottleneck_downsample" in params:
        inferred["code_len"] = _shape(params, "bottleneck_downsample", what)[1]
    if "input_size" in kwargs:
        h, w = _pair(kwargs["input_size"])
        if learned and (h // ph) * (w // pw) != _shape(params, "pos_embedding_encoder", what)[1]:
            raise CheckpointError(f"{what}: input_size {[h, w]} gives {(h // ph) * (w // pw)} patches but "
                                  f"pos_embedding_encoder has {_shape(params, 'pos_embedding_encoder', what)[1]}")
    elif learned:
        num_patches = _shape(params, "pos_embedding_encoder", what)[1]
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise CheckpointError(f"{what}: {num_patches} patches are not a square grid: pass input_size")
        inferred["input_size"] = [side * ph, side * pw]
    else:
        raise CheckpointError(f"{what}: a sincos2d posemb has no array to read the grid from: pass input_size")
    for key, value in inferred.items():
        given = kwargs.get(key, value)
        if (_pair(given) if key in ("patch_size", "input_size") else given) != value:
            raise CheckpointError(f"{what} config says {key}={given!r} but the checkpoint arrays have {value!r}")
        kwargs.setdefault(key, value)
    try:
        fields = bv_kwargs_to_vit_vae_config(kwargs)
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None
    enc = fields["encoder_config"]
    if enc["num_channels"] != in_channels:
        raise CheckpointError(f"{what}: the embedding reads {in_channels} channels but inout_specs give "
                              f"{enc['num_channels']} (pass the checkpoint's inout_specs)")
    config = BvGivtViTVAEConfig(**fields)
    if head_out != config.num_output_channels * ph * pw:
        raise CheckpointError(f"{what}: decoder_head has {head_out} outputs, inout_specs give "
                              f"{config.num_output_channels} channels x {ph}x{pw} pixels")
    return Built(BvGivtViTVAEModel, config, map_params(params, VIT_VAE_RULES))


# ---------------------------------------------------------------------------------------------------------------
# Folders: processor, card
# ---------------------------------------------------------------------------------------------------------------


def _processor(model) -> tuple[object | None, str]:
    """The folder's image processor: the conditioning image of a UViM-style GIVT (big_vision ``pp_predict``:
    ``decode|resize(512)|value_range(-1, 1)``) or the CNN VAE's input; none for label-map VAEs and class-conditional
    GIVTs."""
    from ..processing.image_processing_bv import BvImageProcessor

    config = model.config
    if config.model_type == "bv_givt" and config.encoder_config is not None:
        h, w = config.encoder_config.image_size
        pp = f"decode|resize({h if h == w else (h, w)})|value_range(-1, 1)"
    elif config.model_type == "bv_givt_cnn_vae":
        s = config.image_size
        # big_vision's ImageNet eval pp resizes with method="bicubic", antialias=True, which BvImageProcessor does not
        # implement: its default (area) resize is used instead.
        pp = f"decode|resize_small({s})|central_crop({s})|value_range(-1, 1)"
    else:
        return None, ""
    return BvImageProcessor.from_pp(pp), pp


def _usage(model) -> str:
    config = model.config
    if config.model_type == "bv_givt" and config.encoder_config is None:
        return """```python
import torch
from transformers import AutoModel

givt = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
vae = AutoModel.from_pretrained("path/to/its/vae/folder", trust_remote_code=True)
latents = givt.generate(class_labels=[207, 360], seed=0).latents   # sampling defaults: the checkpoint's config
images = vae.decode(latents)                                         # [B, 3, H, W] in [-1, 1]
```

With `big_vision_hf` installed, `BvGivtPipeline.from_pretrained(givt_folder, vae_folder)([207, 360], seed=0).images`
returns PIL images (progress bar, classifier-free guidance via `cfg_weight=...`)."""
    if config.model_type == "bv_givt":
        return """```python
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
givt = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
vae = AutoModel.from_pretrained("path/to/its/vae/folder", trust_remote_code=True)
latents = givt.generate(pixel_values=processor(Image.open("photo.jpg"), return_tensors="pt")["pixel_values"],
                        seed=0).latents
logits = vae.decode(latents)   # per task output: [B, classes, H, W]
```

With `big_vision_hf` installed, `BvGivtPipeline.from_pretrained(givt_folder, vae_folder)(images=[...]).predictions`
returns panoptic (class, instance) maps or depth maps, post-processed as big_vision does."""
    return """```python
from transformers import AutoModel

vae = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
mean, logvar = vae.encode(pixel_values)    # [B, tokens, latent_dim] each
reconstruction = vae.decode(mean)
```"""


def write_givt_folder(built: Built, checkpoint: str, out_dir: str, model_kwargs: dict, *, dtype, max_shard_size,
                      progress: bool) -> str:
    """The folder of a GIVT family: weights, config, processor (if any), remote code and a card whose usage is the
    model's (sampling / VAE), not the image-feature one."""
    model = built.instantiate(dtype, progress)
    model.config.bv_model_config = model_kwargs
    processor, pp = _processor(model)
    entry = find_entry(checkpoint)
    source = entry.url if entry else os.path.basename(checkpoint)
    title = entry.name if entry else os.path.splitext(os.path.basename(checkpoint.split(":")[0]))[0]
    provenance = [
        f"Source checkpoint: `{source}`",
        f"big_vision model: `{built.family}`, `config.model = {json.dumps(model_kwargs)}`",
        f"Parameters: {sum(p.numel() for p in model.parameters()):,}",
        f"Paper: {entry.paper if entry and entry.paper else _GIVT_PAPER}",
        "Parity: the port matches big_vision's original code within 1e-4 (fp32) on random weights "
        "(`tests/test_bv_givt.py`).",
    ]
    if pp:
        provenance.append(f"Preprocessing (big_vision pp string reproduced by the image processor): `{pp}`")
    intro = (f"A [big_vision](https://github.com/google-research/big_vision) `{built.family}` checkpoint "
             "(GIVT, Generative Infinite-Vocabulary Transformers) converted to PyTorch with `big_vision_hf` "
             "(`big-vision-hf convert`). The conversion is strict: every parameter array was used and every "
             "parameter filled.")
    card = render_model_card(f"{title} ({type(model).__name__})", [(None, intro), ("Usage", _usage(model)),
                                                                      ("Provenance", provenance)],
                             pipeline_tag=_pipeline_tag(model.config),
                             tags=["big_vision", "big_vision_hf", model.config.model_type, "givt"],
                             license=entry.license if entry else "apache-2.0", metadata={"source_checkpoint": source})
    return save_folder(model, out_dir, processor, card, max_shard_size=max_shard_size)


def _pipeline_tag(config) -> str:
    if config.model_type != "bv_givt":
        return "image-feature-extraction"  # a VAE: images (label maps) <-> latents
    return "unconditional-image-generation" if config.encoder_config is None else "image-to-image"


def givt_family(**fields) -> Family:
    """The record of a GIVT-project model: no builder options; `write_givt_folder` writes its folder."""
    return Family(options=(), write_folder=write_givt_folder, **fields)


GIVT = givt_family(
    name="proj.givt.givt",
    build=build_givt,
    summary="GIVT (proj/givt/givt.py): causal or MaskGIT transformer over VAE latents, Gaussian-mixture head, "
            "sampling",
    signatures=(("EmbedTargets/kernel", "decoder/LogitsDense/kernel"),),
    classes=("BvGivtModel",),
)

CNN_VAE = givt_family(
    name="proj.givt.cnn",
    build=build_cnn_vae,
    summary="GIVT's CNN beta-VAE (proj/givt/cnn.py): the ImageNet VAEs, flax msgpack or .npz",
    signatures=(("cnn_encoder/Conv_0/kernel",), ("ema_params/encoder/Conv_0/kernel",)),
    classes=("BvGivtCNNVAEModel",),
)

VIT_VAE = givt_family(
    name="proj.givt.vit",
    build=build_vit_vae,
    summary="GIVT's ViT beta-VAE (proj/givt/vit.py): the panoptic / depth VAEs (label maps <-> latents)",
    signatures=(("encoder_head/kernel", "decoder_stem/kernel", "decoder_head/kernel"),),
    classes=("BvGivtViTVAEModel",),
)
