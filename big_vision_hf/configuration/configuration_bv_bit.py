"""Configuration of big_vision's BiT ResNets: ``models/bit_paper.py`` (ResNet-v2) and ``models/bit.py`` (ResNet-v1).

One config serves both, because they share every knob (width multiplier, depth, GroupNorm + weight-standardised
convolutions, a Dense head) and differ only in the block wiring, padding and two epsilons, which
``architecture`` selects:

* ``"resnetv2"``: big_vision ``bit_paper.Model``, the BiT paper's pre-activation ResNet (public BiT-S/M and
  FunMatch distill weights). Explicit symmetric padding, GN eps 1e-5, WS eps 1e-10 under the square root, a final
  GN + ReLU before pooling.
* ``"resnetv1"``: big_vision ``bit.Model``, post-activation units with a GN after every conv (trained from scratch
  by ``configs/bit_i1k.py``). TF ``SAME`` padding, flax ``nn.GroupNorm`` eps 1e-6, WS eps 1e-5 added to the std.
"""

from __future__ import annotations

import re

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import translate_bv_kwargs

ARCHITECTURES = ("resnetv2", "resnetv1")

# big_vision `models/bit.py:get_block_desc` (commit 0127fb6): units per stage for each named depth.
# 18/34 are absent there too: they need a non-bottleneck unit.
BLOCK_DESC: dict[int, list[int]] = {
    26: [2, 2, 2, 2],  # "From timm, gets ~75% on ImageNet."
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
    200: [3, 24, 36, 3],
}

# Per architecture: (GroupNorm eps, weight-standardisation eps), from the big_vision files named above.
_DEFAULT_EPS = {
    "resnetv2": (1e-5, 1e-10),  # bit_paper.GroupNorm: standardize(eps=1e-5); StdConv: standardize(eps=1e-10)
    "resnetv1": (1e-6, 1e-5),  # flax nn.GroupNorm default epsilon; bit.StdConv: weight_standardize(eps=1e-5)
}


def get_block_desc(depth: int | list[int] | tuple[int, ...]) -> list[int]:
    """big_vision ``bit.get_block_desc``: ``50`` -> ``[3, 4, 6, 3]``; a list of units per stage is kept."""
    if isinstance(depth, int):
        if depth not in BLOCK_DESC:
            raise ValueError(f"unknown BiT depth {depth}; known: {', '.join(map(str, BLOCK_DESC))}, or units per stage")
        return list(BLOCK_DESC[depth])
    return [int(d) for d in depth]


def decode_variant(variant: str | None) -> dict:
    """``"R50x3"`` (the BiT paper's names) -> big_vision kwargs ``{"depth": 50, "width": 3}``."""
    if variant is None:
        return {}
    match = re.fullmatch(r"R(\d+)x(\d+)", variant)
    if not match:
        raise ValueError(f"BiT variant {variant!r} must be 'R<depth>x<width>', e.g. 'R50x1'")
    return {"depth": int(match.group(1)), "width": int(match.group(2))}


@strict
class BvBiTConfig(PreTrainedConfig):
    r"""Configuration of a big_vision BiT ResNet (``bit_paper.Model`` or ``bit.Model``).

    Field names follow transformers' ``BitConfig`` where one exists; each names the big_vision field it holds.

    Args:
        architecture: ``"resnetv2"`` (big_vision ``models/bit_paper.py``) or ``"resnetv1"`` (``models/bit.py``).
        width_factor: big_vision ``width``, the multiplier of the 64-channel root (``int(64 * width)`` channels;
            a float such as 0.5 is allowed, as in big_vision).
        depths: big_vision ``depth``: 26/50/101/152/200, or the number of units per stage; stored as the list.
        num_channels: input channels (the root conv's input depth).
        num_groups: GroupNorm groups (32 in both big_vision files).
        group_norm_eps: ``None`` takes the architecture's value: 1e-5 (``bit_paper.GroupNorm``) or 1e-6 (flax
            ``nn.GroupNorm``).
        weight_standardization_eps: ``None`` takes the architecture's value: 1e-10, inside the square root
            (``bit_paper.StdConv``), or 1e-5, added to the std (``bit.StdConv``).
        head_zeroinit: big_vision ``bit_paper`` ``head_zeroinit`` (``bit.py`` always zero-inits its head); only
            affects fresh initialisation.
        image_size: the resolution ``[height, width]`` the checkpoint was trained or evaluated at. The network
            takes any size; this only sets the image processor's default.

    Example:
        >>> from big_vision_hf import BvBiTConfig
        >>> config = BvBiTConfig.from_variant("R50x3")
        >>> config.depths, config.hidden_sizes
        ([3, 4, 6, 3], [768, 1536, 3072, 6144])
    """

    model_type = "bv_bit"

    architecture: str = "resnetv2"
    width_factor: int | float = 1
    depths: list[int] | tuple[int, ...] | int = 50
    num_channels: int = 3
    num_groups: int = 32
    group_norm_eps: float | None = None
    weight_standardization_eps: float | None = None
    head_zeroinit: bool = True
    image_size: list[int] | tuple[int, ...] | int = (224, 224)

    def __post_init__(self, **kwargs):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture: {self.architecture!r}; expected one of {ARCHITECTURES}")
        self.depths = get_block_desc(self.depths)
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"every stage needs at least one unit, got depths={self.depths}")
        if self.width_factor <= 0 or self.root_width < 1:
            raise ValueError(f"width_factor={self.width_factor} gives {self.root_width} root channels")
        if self.root_width % self.num_groups:  # every GN width is a multiple of the root width
            raise ValueError(f"{self.root_width} root channels are not divisible by num_groups={self.num_groups}")
        gn_eps, ws_eps = _DEFAULT_EPS[self.architecture]
        self.group_norm_eps = gn_eps if self.group_norm_eps is None else self.group_norm_eps
        if self.weight_standardization_eps is None:
            self.weight_standardization_eps = ws_eps
        size = self.image_size
        self.image_size = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
        super().__post_init__(**kwargs)

    @property
    def root_width(self) -> int:
        """Channels of the root conv, big_vision ``int(64 * width)``; stage ``i`` has ``root_width * 2**i`` mid
        channels and 4 times that at its output."""
        return int(64 * self.width_factor)

    @property
    def hidden_sizes(self) -> list[int]:
        """Output channels of each stage (bottleneck expansion 4)."""
        return [self.root_width * 2**i * 4 for i in range(len(self.depths))]

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> "BvBiTConfig":
        """Builds a config from a BiT name (``"R101x3"``), overridable by keyword."""
        return cls(**{**bv_kwargs_to_config(decode_variant(variant)), **overrides})


# big_vision `bit_paper.Model` / `bit.Model` kwargs -> BvBiTConfig fields, per architecture.
BV_BIT_KWARGS = {
    "resnetv2": {"width": "width_factor", "depth": "depths", "head_zeroinit": "head_zeroinit"},
    "resnetv1": {"width": "width_factor", "depth": "depths"},  # bit.Model has no head_zeroinit: always zeros
}


def bv_kwargs_to_config(kwargs: dict, architecture: str = "resnetv2") -> dict:
    """Translates big_vision ``bit_paper.Model`` / ``bit.Model`` kwargs (a ``config.model`` dict) into fields."""
    out = translate_bv_kwargs(kwargs, BV_BIT_KWARGS[architecture], f"BiT ({architecture})", variant=None)
    return {"architecture": architecture, **{k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}}
