"""Configuration of big_vision's FlexiViT (``big_vision/models/proj/flexi/vit.py``): a ViT plus two grids."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_bv_vit import BvViTConfig, pair

# big_vision flexi `_Model` has gap|map|tok only ("0"/"none" raise there: "Unknown pool type").
FLEXI_POOL_TYPES = ("gap", "map", "tok")


@strict
class BvFlexiViTConfig(BvViTConfig):
    r"""Configuration of a big_vision FlexiViT (``big_vision.models.proj.flexi.vit._Model``).

    Every `BvViTConfig` field keeps its meaning, except:

    Args:
        patch_size: big_vision ``patch_size``: the size ``[height, width]`` at which the patch-embedding kernel is
            STORED (32x32 for the released models). Any other patch size is served at run time by PI-resizing it.
        posemb_size: big_vision ``posemb_size``: the grid ``[height, width]`` at which the posemb is stored (7x7 for
            the released models); it is resized to the patch grid of every call.
        seqhw: big_vision ``seqhw``: the default patch grid side (``int`` or ``[h, w]``); the patch size is then
            ``image_size // seqhw`` of each input. ``None``: the stored ``patch_size`` is used as is.
        image_size: the default input resolution ``[height, width]`` (240 for the released models); it does not
            size any weight.
        pool_type: ``"gap"``, ``"map"`` or ``"tok"`` (big_vision flexi has no ``"0"``/``"none"``).

    FlexiViT has neither ``rep_size`` nor dropout in big_vision; ``representation_size`` must stay ``None``.

    Example:
        >>> from big_vision_hf import BvFlexiViTConfig
        >>> config = BvFlexiViTConfig.from_variant("B", pool_type="tok", seqhw=15)
        >>> config.patch_size, config.posemb_size, config.grid_size
        ([32, 32], [7, 7], (7, 7))
    """

    model_type = "bv_flexivit"

    # big_vision flexi `_Model` defaults (commit 0127fb6); 240px is configs/proj/flexivit `res=240`.
    patch_size: list[int] | tuple[int, ...] | int = (32, 32)
    image_size: list[int] | tuple[int, ...] | int = (240, 240)
    posemb_size: list[int] | tuple[int, ...] | int = (7, 7)
    seqhw: list[int] | tuple[int, ...] | int | None = None

    def __post_init__(self, **kwargs):
        self.posemb_size = pair(self.posemb_size)
        self.seqhw = None if self.seqhw is None else pair(self.seqhw)
        if self.pool_type not in FLEXI_POOL_TYPES:
            raise ValueError(f"Unknown pool type: {self.pool_type!r}; FlexiViT supports {FLEXI_POOL_TYPES}")
        if self.representation_size is not None:
            raise ValueError("big_vision FlexiViT has no rep_size (pre_logits layer); representation_size must be None")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The native posemb grid: ``posemb_size`` (big_vision stores it there whatever the image size)."""
        return (self.posemb_size[0], self.posemb_size[1])


# big_vision flexi `_Model` fields that `BvViTConfig` does not have, and the ViT ones it accepts
# (`vit.decode_variant` gives width/depth/mlp_dim/num_heads/patch_size); others are a TypeError there.
BV_FLEXI_ONLY_KWARGS = ("posemb_size", "seqhw")
BV_FLEXI_VIT_KWARGS = (
    "variant", "num_classes", "patch_size", "width", "depth", "mlp_dim", "num_heads", "posemb", "pool_type",
    "head_zeroinit",
)


def split_flexi_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """big_vision flexi ``config.model`` -> (ViT kwargs for ``bv_kwargs_to_config``, ``{posemb_size, seqhw}``)."""
    unknown = sorted(set(kwargs) - set(BV_FLEXI_ONLY_KWARGS) - set(BV_FLEXI_VIT_KWARGS))
    if unknown:
        known = ", ".join(BV_FLEXI_VIT_KWARGS + BV_FLEXI_ONLY_KWARGS)
        raise ValueError(f"unknown big_vision FlexiViT option(s) {', '.join(unknown)}; known: {known}")
    vit = {k: v for k, v in kwargs.items() if k in BV_FLEXI_VIT_KWARGS}
    flexi = {k: v for k, v in kwargs.items() if k in BV_FLEXI_ONLY_KWARGS}
    return vit, flexi
