"""big_vision MLP-Mixer (``big_vision/models/mlp_mixer.py``) -> `BvMixerModel` / `BvMixerForImageClassification`.

Reads as a table: each row maps one big_vision parameter (after the layout pass) to ours. The layout pass
mirrors big_vision ``mlp_mixer.load``: flax ``convert_pre_linen``, then the legacy ``Mixer/encoderblock_*`` tree of
the paper's checkpoints (``gs://mixer_models/...``) renamed to the ``MixerBlock_*`` layout.
"""

from __future__ import annotations

import math
import re

from ..configuration.configuration_bv_mixer import BvMixerConfig, bv_kwargs_to_config
from ..configuration.configuration_bv_vit import pair
from ..modeling.modeling_bv_mixer import BvMixerForImageClassification, BvMixerModel
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import Rule, conv, convert_pre_linen, layer_norm, linear

_BLOCK, _LAYER = r"MixerBlock_(\d+)", "layers.{0}"

# big_vision name -> BvMixerModel name.
MIXER_RULES = [
    Rule("stem/kernel", "patch_embedding.weight", conv),
    Rule("stem/bias", "patch_embedding.bias"),
    *layer_norm(f"{_BLOCK}/LayerNorm_0", f"{_LAYER}.layer_norm1"),
    *linear(f"{_BLOCK}/token_mixing/Dense_0", f"{_LAYER}.token_mixing.fc1"),
    *linear(f"{_BLOCK}/token_mixing/Dense_1", f"{_LAYER}.token_mixing.fc2"),
    *layer_norm(f"{_BLOCK}/LayerNorm_1", f"{_LAYER}.layer_norm2"),
    *linear(f"{_BLOCK}/channel_mixing/Dense_0", f"{_LAYER}.channel_mixing.fc1"),
    *linear(f"{_BLOCK}/channel_mixing/Dense_1", f"{_LAYER}.channel_mixing.fc2"),
    *layer_norm("pre_head_layer_norm", "post_layernorm"),
]


# ---------------------------------------------------------------------------------------------------------
# Layout pass (big_vision mlp_mixer.load)
# ---------------------------------------------------------------------------------------------------------

_LEGACY_DENSE = re.compile(r"Mixer/encoderblock_(\d+)/(token|channel)_mixing_phase_0/(kernel|bias)([12])")
_LEGACY_BLOCK = re.compile(r"Mixer/encoderblock_(\d+)/(.+)")


def _squeezed(array: LazyArray) -> LazyArray:
    shape = tuple(s for s in array.shape if s != 1)
    return array.derive(lambda x: x.reshape(shape), shape, ".squeeze()") if shape != tuple(array.shape) else array


def fix_old_checkpoints(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """Old Mixer layouts -> the current one, as big_vision ``mlp_mixer.load`` does before ``merge_params``.

    The paper's checkpoints keep the blocks under ``Mixer/encoderblock_{i}`` with the MLPs flattened into
    ``{token,channel}_mixing_phase_0/{kernel,bias}{1,2}`` (squeezed on load), ``Mixer/encoder_norm`` for the
    pre-head norm and ``embedding`` for the stem.
    """
    params = convert_pre_linen(params)
    if not any(name.startswith("Mixer/") for name in params):
        return params
    out = {}
    for name, array in params.items():
        if name.startswith("embedding/"):
            out["stem/" + name[len("embedding/"):]] = array
        elif name.startswith("Mixer/encoder_norm/"):
            out["pre_head_layer_norm/" + name[len("Mixer/encoder_norm/"):]] = array
        elif m := _LEGACY_DENSE.fullmatch(name):
            block, kind, param, n = m.groups()
            out[f"MixerBlock_{block}/{kind}_mixing/Dense_{int(n) - 1}/{param}"] = _squeezed(array)
        elif m := _LEGACY_BLOCK.fullmatch(name):
            out[f"MixerBlock_{m.group(1)}/{m.group(2)}"] = array
        elif name.startswith("Mixer/"):  # big_vision: assert k.startswith("encoderblock_")
            raise CheckpointError(f"legacy Mixer checkpoint has an unexpected array {name!r} under 'Mixer/'")
        else:
            out[name] = array
    return out


# ---------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------


def infer_mixer_config(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None
) -> tuple[dict, int | None]:
    """Everything the arrays' shapes tell (hidden, blocks, MLP widths, patch, token count, classes).

    ``model_kwargs`` (big_vision ``config.model``) are checked against the shapes. The image size comes from
    ``image_size`` if given (its patch grid must have the checkpoint's token count), else from a square grid.
    Returns ``(BvMixerConfig kwargs, num_classes or None)``.
    """
    model_kwargs = dict(model_kwargs or {})
    num_classes_kw = model_kwargs.pop("num_classes", None)
    given = bv_kwargs_to_config(model_kwargs)

    def shape(name):
        if name not in params:
            tops = ", ".join(sorted({k.split("/")[0] for k in params})[:8])
            raise CheckpointError(f"not a big_vision MLP-Mixer checkpoint: no {name!r} array (top-level names: {tops})")
        return params[name].shape

    kh, kw, channels, hidden = shape("stem/kernel")
    num_tokens, tokens_mlp = shape("MixerBlock_0/token_mixing/Dense_0/kernel")
    channels_mlp = shape("MixerBlock_0/channel_mixing/Dense_0/kernel")[1]
    depth = 1 + max(int(m.group(1)) for k in params if (m := re.match(r"MixerBlock_(\d+)/", k)))
    inferred = dict(
        hidden_size=hidden, num_hidden_layers=depth, tokens_mlp_dim=tokens_mlp, channels_mlp_dim=channels_mlp,
        patch_size=[kh, kw], num_channels=channels,
    )
    for key, value in inferred.items():
        if key in given and given[key] != value:
            raise CheckpointError(f"model config says {key}={given[key]!r} but the checkpoint arrays have {value!r}")
    config = {**given, **inferred}

    if image_size is not None:
        config["image_size"] = pair(image_size)
        grid = [math.ceil(s / p) for s, p in zip(config["image_size"], (kh, kw))]
        if grid[0] * grid[1] != num_tokens:
            raise CheckpointError(
                f"image size {config['image_size']} gives a {grid[0]}x{grid[1]} patch grid but the token-mixing "
                f"weights are for {num_tokens} tokens"
            )
    else:
        g = math.isqrt(num_tokens)
        if g * g != num_tokens:
            raise CheckpointError(f"the Mixer mixes {num_tokens} tokens, not a square grid: pass --image-size H W")
        config["image_size"] = [g * kh, g * kw]

    num_classes = shape("head/kernel")[1] if "head/kernel" in params else None
    if num_classes_kw is not None and num_classes is not None and num_classes_kw != num_classes:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but head/kernel has {num_classes}")
    if num_classes_kw and num_classes is None:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but the checkpoint has no head")
    return config, num_classes


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def build_mixer(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """The Mixer or its classifier for an ``mlp_mixer`` checkpoint (nothing read yet)."""
    params = fix_old_checkpoints(params)
    config_kwargs, num_classes = infer_mixer_config(params, model_kwargs, image_size)
    return Built.base_or_classifier(params, MIXER_RULES, num_classes, (BvMixerModel, BvMixerForImageClassification),
                                    "mixer.", BvMixerConfig, config_kwargs)


FAMILY = Family(
    name="mlp_mixer",
    build=build_mixer,
    summary="MLP-Mixer (models/mlp_mixer.py), also the paper's legacy Mixer/ layout",
    signatures=(("stem/kernel", "pre_head_layer_norm/scale"), ("Mixer/",), ("MixerBlock_0/",)),
    classes=("BvMixerModel", "BvMixerForImageClassification"),
)
