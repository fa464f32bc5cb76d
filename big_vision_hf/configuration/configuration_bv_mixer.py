"""Configuration of big_vision's MLP-Mixer (``big_vision/models/mlp_mixer.py``)."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import pair, same_names, translate_bv_kwargs

# Reference: Table 1 of https://arxiv.org/abs/2105.01601, as transcribed in big_vision
# `models/mlp_mixer.py:Model` (commit 0127fb6). (hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim);
# parameter counts are ours at 224px with a 1000-class head.
MIXER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "S": (512, 8, 256, 2048),  # 18.5M params at /16
    "B": (768, 12, 384, 3072),  # 59.9M params at /16
    "L": (1024, 24, 512, 4096),  # 208.2M params at /16
    "H": (1280, 32, 640, 5120),  # 432.4M params at /14
}


def decode_variant(variant: str | None) -> dict:
    """``"B/16"`` -> big_vision ``mlp_mixer.Model`` kwargs (the size and patch are both required there)."""
    if variant is None:
        return {}
    size, sep, patch = variant.partition("/")
    if not sep or not patch.isdigit():
        raise ValueError(f"Mixer variant {variant!r} must be '<size>/<patch>', e.g. 'B/16'")
    if size not in MIXER_SIZES:
        raise ValueError(f"unknown Mixer size {size!r} in variant {variant!r}; known: {', '.join(MIXER_SIZES)}")
    hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim = MIXER_SIZES[size]
    return {
        "hidden_dim": hidden_dim,
        "num_blocks": num_blocks,
        "tokens_mlp_dim": tokens_mlp_dim,
        "channels_mlp_dim": channels_mlp_dim,
        "patch_size": (int(patch), int(patch)),
    }


@strict
class BvMixerConfig(PreTrainedConfig):
    r"""Configuration of a big_vision MLP-Mixer (``big_vision.models.mlp_mixer.MlpMixer``).

    Field names follow transformers; each names the big_vision field it holds.

    Args:
        hidden_size: big_vision ``hidden_dim``.
        num_hidden_layers: big_vision ``num_blocks``.
        tokens_mlp_dim: big_vision ``tokens_mlp_dim`` (hidden width of the token-mixing MLP).
        channels_mlp_dim: big_vision ``channels_mlp_dim`` (hidden width of the channel-mixing MLP).
        patch_size: big_vision ``patch_size`` as ``[height, width]``.
        image_size: the input resolution ``[height, width]``. The token-mixing Dense acts over the token
            axis, so the number of tokens (the patch grid of this size) is baked into the weights.
        num_channels: input channels (the ``stem`` conv's input depth).
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"``: flax ``nn.gelu`` defaults to the tanh approximation.
        stoch_depth: big_vision ``stoch_depth``: the drop probability of the last block; block ``i`` drops
            each residual branch with ``i / max(num_blocks - 1, 1) * stoch_depth`` in training.

    Example:
        >>> from big_vision_hf import BvMixerConfig
        >>> config = BvMixerConfig.from_variant("B/16", image_size=224)
        >>> config.hidden_size, config.tokens_mlp_dim, config.num_tokens
        (768, 384, 196)
    """

    model_type = "bv_mixer"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    tokens_mlp_dim: int = 384
    channels_mlp_dim: int = 3072
    patch_size: list[int] | tuple[int, ...] | int = (16, 16)
    image_size: list[int] | tuple[int, ...] | int = (224, 224)
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    stoch_depth: float = 0.0

    def __post_init__(self, **kwargs):
        self.patch_size = pair(self.patch_size)
        self.image_size = pair(self.image_size)
        if not 0.0 <= self.stoch_depth < 1.0:
            raise ValueError(f"stoch_depth must be in [0, 1), got {self.stoch_depth}")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of ``image_size``; rounded up, as the flax stem conv pads ``SAME``."""
        return (math.ceil(self.image_size[0] / self.patch_size[0]), math.ceil(self.image_size[1] / self.patch_size[1]))

    @property
    def num_tokens(self) -> int:
        """The sequence length the token-mixing MLPs were built for."""
        return self.grid_size[0] * self.grid_size[1]

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> "BvMixerConfig":
        """Builds a config from a big_vision variant string (``"B/16"``), overridable by keyword."""
        return cls(**{**bv_kwargs_to_config(decode_variant(variant)), **overrides})


# big_vision `mlp_mixer.Model` kwargs -> BvMixerConfig fields.
BV_MIXER_KWARGS = {
    "hidden_dim": "hidden_size",
    "num_blocks": "num_hidden_layers",
    **same_names("tokens_mlp_dim", "channels_mlp_dim", "patch_size", "stoch_depth"),
}
# big_vision kwargs that change nothing in a PyTorch model (`MlpMixer.model_name` is an unused field).
BV_MIXER_NO_EFFECT = ("model_name",)


def bv_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``mlp_mixer.Model`` kwargs (a ``config.model`` dict) into ``BvMixerConfig`` fields."""
    out = translate_bv_kwargs(kwargs, BV_MIXER_KWARGS, "MLP-Mixer", BV_MIXER_NO_EFFECT, variant=decode_variant)
    if "patch_size" in out:
        out["patch_size"] = pair(out["patch_size"])
    return out
