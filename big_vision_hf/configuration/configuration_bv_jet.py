"""Configuration of big_vision's Jet normalizing flow (``big_vision/models/proj/jet/jet.py``, arXiv:2412.15129).

Jet maps an image to a latent of the same shape by a stack of affine coupling layers whose scale and shift come
from a small ViT. Couplings split the patch tokens either along the channels (``"channels"``: a frozen random
permutation, then halves) or along the tokens (``"spatial"``: a frozen checkerboard / stripes permutation, then
halves); ``kinds`` and the two ``*_coupling_projs`` lists are cycled over the couplings as big_vision's
``_interleave_couplings`` does (`coupling_schedule`).
"""

from __future__ import annotations

import itertools

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import check_widths, same_names, translate_bv_kwargs

COUPLING_KINDS = ("channels", "spatial")
CHANNEL_PROJS = ("random",)
SPATIAL_PROJS = ("checkerboard", "checkerboard-inv", "vstripes", "vstripes-inv", "hstripes", "hstripes-inv")


@strict
class BvJetConfig(PreTrainedConfig):
    r"""Configuration of a big_vision Jet flow (``big_vision.models.proj.jet.jet.Model``).

    Args:
        num_couplings: big_vision ``depth``: the number of coupling layers.
        num_hidden_layers: big_vision ``block_depth``: ViT blocks in each coupling's network.
        hidden_size: big_vision ``emb_dim``: width of each coupling's ViT.
        num_attention_heads: big_vision ``num_heads``.
        intermediate_size: the ViT MLP width; big_vision's coupling passes no ``mlp_dim``, so ``vit.Encoder`` uses
            ``4 * emb_dim`` (``None`` here means that too).
        scale_factor: big_vision ``scale_factor``: the coupling scale is ``sigmoid(raw) * scale_factor``.
        patch_size: big_vision ``ps``: the image is cut into ``ps x ps`` patches, the tokens of the flow.
        image_size: side of the (square) input; big_vision reads it from the input at init (the posemb and the
            spatial permutations have one entry per patch) and re-assembles the output as a square grid.
        num_channels: image channels (3; a JetFormer adaptor sees its latent patches as ``num_channels`` channels).
        kinds: big_vision ``kinds``, cycled over the couplings: ``"channels"`` or ``"spatial"``.
        channels_coupling_projs: big_vision ``channels_coupling_projs`` (only ``"random"``), cycled over the channel
            couplings; they only decide how fresh permutation masks are drawn (checkpoints store the masks).
        spatial_coupling_projs: big_vision ``spatial_coupling_projs`` (``checkerboard``, ``vstripes``, ``hstripes``,
            each optionally ``-inv``), cycled over the spatial couplings.
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"`` (flax ``nn.gelu`` is the tanh approximation).
        dropout: dropout in the ViT blocks (big_vision ``vit.Encoder`` default 0).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_jet import BvJetConfig
        >>> config = BvJetConfig(num_couplings=4, image_size=16, patch_size=4, hidden_size=32, num_attention_heads=2)
        >>> [kind for kind, _, _ in config.coupling_schedule]
        ['channels', 'channels', 'spatial', 'channels']
        >>> config.coupling_schedule[2]
        ('spatial', 'zero', 'checkerboard')
        >>> config.patch_dim, config.num_patches
        (48, 16)
    """

    model_type = "bv_jet"

    num_couplings: int = 2
    num_hidden_layers: int = 1
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    scale_factor: float = 2.0
    patch_size: int = 4
    image_size: int = 64
    num_channels: int = 3
    kinds: list[str] | tuple[str, ...] = ("channels", "channels", "spatial")
    channels_coupling_projs: list[str] | tuple[str, ...] = ("random",)
    spatial_coupling_projs: list[str] | tuple[str, ...] = ("checkerboard", "checkerboard-inv")
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        self.kinds = [str(k) for k in self.kinds]
        self.channels_coupling_projs = [str(k) for k in self.channels_coupling_projs]
        self.spatial_coupling_projs = [str(k) for k in self.spatial_coupling_projs]
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size  # vit.Encoder(mlp_dim=None)
        for kind in self.kinds:
            if kind not in COUPLING_KINDS:
                raise ValueError(f"Unknown coupling kind: {kind!r}; expected one of {COUPLING_KINDS}")
        for kind in self.channels_coupling_projs:
            if kind not in CHANNEL_PROJS:
                raise ValueError(f"Unknown channels coupling proj {kind!r}; expected one of {CHANNEL_PROJS}")
        for kind in self.spatial_coupling_projs:
            if kind not in SPATIAL_PROJS:
                raise ValueError(f"Unknown spatial coupling proj {kind!r}; expected one of {SPATIAL_PROJS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.patch_dim % 2 or self.num_patches % 2:
            raise ValueError(f"couplings halve the channels ({self.patch_dim}) and the tokens ({self.num_patches}) of "
                             "a patch grid: both must be even")
        check_widths(self.hidden_size, self.num_attention_heads)
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens of the flow (big_vision ``n``): ``(image_size / ps)**2``."""
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """Channels of a token (big_vision ``c``): ``num_channels * ps * ps``."""
        return self.num_channels * self.patch_size**2

    @property
    def coupling_schedule(self) -> list[tuple[str, str, str]]:
        """``(kind, channel proj, spatial proj)`` per coupling, as big_vision ``Model._interleave_couplings``: the
        three lists are cycled independently; the unused projection of each coupling is ``"zero"`` (an all-zero
        placeholder matrix in the checkpoint)."""
        kinds = itertools.cycle(self.kinds)
        channel = itertools.cycle(self.channels_coupling_projs)
        spatial = itertools.cycle(self.spatial_coupling_projs)
        schedule = []
        for _ in range(self.num_couplings):
            kind = next(kinds)
            schedule.append((kind, next(channel), "zero") if kind == "channels" else (kind, "zero", next(spatial)))
        return schedule


# big_vision `jet.Model` kwargs -> BvJetConfig fields.
BV_JET_KWARGS = {
    "depth": "num_couplings",
    "block_depth": "num_hidden_layers",
    "emb_dim": "hidden_size",
    "num_heads": "num_attention_heads",
    "ps": "patch_size",
    **same_names("scale_factor", "kinds", "channels_coupling_projs", "spatial_coupling_projs"),
}


def bv_jet_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``jet.Model`` kwargs (``config.model``, or JetFormer's ``config.adaptor.model``) into
    `BvJetConfig` fields."""
    return translate_bv_kwargs(kwargs, BV_JET_KWARGS, "proj.jet.jet", variant=None)
