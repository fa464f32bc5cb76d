"""Configuration of big_vision's NaFlex ViT (``big_vision/models/proj/image_text/naflex_vit.py``), SigLIP 2 NaFlex."""

from __future__ import annotations

import re
import sys

from huggingface_hub.dataclasses import strict

from .configuration_bv_vit import BV_SIZE_KWARGS, BvViTTrunkConfig, same_names, translate_bv_kwargs

# big_vision naflex `_Model.__call__`: "map" | "gap" | "max" | "none" (no "tok"/"0": there is no [cls]).
NAFLEX_POOL_TYPES = ("map", "gap", "max", "none")
_POSEMB = re.compile(r"learn_2d(?:\((\d+)\))?")
# NaViT (https://arxiv.org/abs/2307.06304, sec. 2.1): factorised learned posembs phi_y(y) + phi_x(x), indexed by the
# patch index ("factorized") or read at the patch's fractional position in the image ("factorized_fractional").
FACTORIZED_POSEMBS = ("factorized", "factorized_fractional")


@strict
class BvNaFlexViTConfig(BvViTTrunkConfig):
    r"""Configuration of a big_vision NaFlex ViT (``big_vision.models.proj.image_text.naflex_vit._Model``).

    Field names follow transformers (as `BvViTConfig`, whose shared encoder reads them); each names the big_vision
    field it holds. The trunk's fields are `BvViTTrunkConfig`'s; ``patch_size`` is the size the patches were cut
    with (big_vision's model does not know it: its ``embedding`` Dense takes flattened ``p*p*3`` patches; the
    converter reads it from the kernel shape), and ``dropout`` is the ``Encoder1DBlock`` dropout (naflex has no
    ``dropout`` field; always 0 there).

    Args:
        posemb: big_vision ``posemb``: ``"learn_2d(L)"`` or ``"learn_2d"`` (= ``"learn_2d(64)"``, big_vision's
            default). ``L`` is the side of the canvas the posemb is resized onto: tokens at ``yidx`` or
            ``xidx >= L`` get a NaN posemb, as in big_vision (see ``_pos_emb_resize``). Not in big_vision, NaViT's
            factorised posembs: ``"factorized"`` (two learned ``[nposemb, D]`` tables indexed by the patch row and
            column, added) and ``"factorized_fractional"`` (the same tables read at the patch centre's fractional
            position ``(i + 0.5) / side``, linearly interpolated: any grid).
        nposemb: big_vision ``nposemb``: the stored learned posemb is ``nposemb x nposemb`` (16 for SigLIP 2); the
            length of each factorised table.
        pool_type: ``"map"``, ``"gap"``, ``"max"`` or ``"none"`` (big_vision ``pool_type``; pads are masked out).
        patchln_pre: big_vision ``patchln_pre``: LayerNorm on the flattened patches (Dual PatchNorm).
        patchln_post: big_vision ``patchln_post``: LayerNorm after the patch embedding (Dual PatchNorm).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
        >>> config = BvNaFlexViTConfig.from_variant("B/16", pool_type="map", nposemb=16)
        >>> config.hidden_size, config.posemb_canvas_size
        (768, 64)
    """

    model_type = "bv_naflex_vit"

    posemb: str = "learn_2d(64)"  # big_vision naflex `_Model.posemb` default
    nposemb: int = 16  # SigLIP 2 NaFlex checkpoints (big_vision's default None must be overwritten)
    pool_type: str = "gap"  # big_vision naflex `_Model.pool_type` default
    patchln_pre: bool = False
    patchln_post: bool = False

    def __post_init__(self, **kwargs):
        if not _POSEMB.fullmatch(self.posemb) and self.posemb not in FACTORIZED_POSEMBS:
            raise ValueError(
                f"Unknown posemb: {self.posemb!r}; NaFlex supports 'learn_2d', 'learn_2d(L)', {FACTORIZED_POSEMBS}"
            )
        if self.pool_type not in NAFLEX_POOL_TYPES:
            raise ValueError(f"Unknown pool type: {self.pool_type!r}; NaFlex supports {NAFLEX_POOL_TYPES}")
        super().__post_init__(**kwargs)

    @property
    def posemb_canvas_size(self) -> int:
        """``L`` of ``posemb="learn_2d(L)"`` (64 for plain ``"learn_2d"``, as big_vision ``posemb_grid_size or 64``):
        patches at row/column ``>= L`` get a NaN posemb. ``"factorized"``: ``nposemb``; ``"factorized_fractional"``
        has no limit (``sys.maxsize``)."""
        if self.posemb == "factorized":
            return self.nposemb
        if self.posemb == "factorized_fractional":
            return sys.maxsize
        m = _POSEMB.fullmatch(self.posemb)
        return int(m.group(1)) if m.group(1) else 64

    @property
    def patch_dim(self) -> int:
        """Length of a flattened patch, ``p*p*C`` (the ``embedding`` Dense's input)."""
        return self.patch_size[0] * self.patch_size[1] * self.num_channels

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> "BvNaFlexViTConfig":
        """Builds a config from a big_vision variant string (``"So400m/16"``), overridable by keyword."""
        return cls(**{**bv_kwargs_to_naflex_config({"variant": variant}), **overrides})


# big_vision naflex `_Model` kwargs -> BvNaFlexViTConfig fields (`patch_size` comes from `decode_variant`).
BV_NAFLEX_KWARGS = {
    **BV_SIZE_KWARGS,
    **same_names("patch_size", "pool_type", "head_zeroinit", "posemb", "nposemb", "patchln_pre", "patchln_post"),
    "rep_size": "representation_size",
}
# big_vision kwargs that change nothing in a PyTorch model (layout, remat, matmul dtype).
BV_NAFLEX_NO_EFFECT = ("scan", "remat_policy", "dtype_mm")


def bv_kwargs_to_naflex_config(kwargs: dict) -> dict:
    """Translates big_vision naflex ``Model`` kwargs (a ``config.model`` / ``config.model.image`` dict)."""
    return translate_bv_kwargs(kwargs, BV_NAFLEX_KWARGS, "NaFlex", BV_NAFLEX_NO_EFFECT)
