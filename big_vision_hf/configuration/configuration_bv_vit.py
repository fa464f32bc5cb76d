"""Configuration of big_vision's ViT (``big_vision/models/vit.py``)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# Reference: Table 2 of https://arxiv.org/abs/2106.04560, as transcribed in big_vision
# `models/vit.py:decode_variant` (commit 0127fb6). (width, depth, mlp_dim, num_heads)
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

POSEMB_TYPES = ("learn", "sincos2d")
POOL_TYPES = ("gap", "map", "tok", "0", "none")


def decode_variant(variant: str | None) -> dict:
    """``"So400m/14"`` -> big_vision model kwargs, as big_vision ``vit.decode_variant``."""
    if variant is None:
        return {}
    size, patch = variant, {}
    if "/" in variant:
        size, p = variant.split("/")
        patch = {"patch_size": (int(p), int(p))}
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r} in variant {variant!r}; known: {', '.join(VIT_SIZES)}")
    width, depth, mlp_dim, num_heads = VIT_SIZES[size]
    return {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads, **patch}


def pair(x) -> list[int]:
    return [int(x), int(x)] if isinstance(x, int) else [int(v) for v in x]


def check_widths(hidden_size: int, num_heads: int, posemb: str | None = None, what: str = "") -> None:
    """The checks of a transformer config: ``hidden_size`` split evenly over the heads; with a vit.py ``posemb``,
    ``"learn"`` or ``"sincos2d"``, the latter needing a width divisible by 4 (big_vision ``posemb_sincos_2d``).
    ``what`` names the tower in the messages (``"decoder "``)."""
    if posemb is not None and posemb not in POSEMB_TYPES:
        raise ValueError(f"Unknown posemb type: {posemb!r}; expected one of {POSEMB_TYPES}")
    if hidden_size % num_heads:
        raise ValueError(f"{what}hidden_size {hidden_size} is not divisible by {num_heads} heads")
    if posemb == "sincos2d" and hidden_size % 4:
        raise ValueError(f"sincos2d posemb needs {what}hidden_size divisible by 4 (big_vision posemb_sincos_2d)")


@strict
class BvFlaxBlockConfig(PreTrainedConfig):
    """The fields every big_vision transformer block reads, at flax's defaults: the base of the tower configs.

    ``layer_norm_eps``: flax ``nn.LayerNorm``'s 1e-6; ``hidden_act``: ``"gelu_pytorch_tanh"`` (flax ``nn.gelu`` is
    the tanh approximation); ``dropout`` / ``attention_dropout``: big_vision's dropout rates (0 at inference).

    Example:
        >>> from big_vision_hf import BvViTConfig
        >>> BvViTConfig().layer_norm_eps, BvViTConfig(dropout=0.1).dropout
        (1e-06, 0.1)
    """

    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    dropout: float = 0.0
    attention_dropout: float = 0.0


@strict
class BvViTTrunkConfig(BvFlaxBlockConfig):
    r"""The ViT trunk's fields (ViT-B/16 defaults) and their checks, shared by `BvViTConfig` and `BvNaFlexViTConfig`:
    the shared encoder (`BvViTEncoder`) and the heads read them.

    Args:
        hidden_size: big_vision ``width``.
        num_hidden_layers: big_vision ``depth``.
        intermediate_size: big_vision ``mlp_dim`` (``None`` there means ``4 * width``).
        num_attention_heads: big_vision ``num_heads``.
        patch_size: the patch size ``[height, width]``.
        num_channels: channels of the image (3).
        representation_size: big_vision ``rep_size``: ``None`` (False), or the width of the ``pre_logits``
            Dense + tanh layer (``True`` in big_vision means ``width``).
        head_zeroinit: big_vision ``head_zeroinit``; only affects fresh initialisation.
        parallel_block: ViT-22B (https://arxiv.org/abs/2302.05442, not in big_vision) parallel layers:
            ``y = LN(x); x + MLP(y) + Attention(y)``. Off for every big_vision checkpoint.
        qk_layernorm: ViT-22B QK normalisation: LayerNorm (scale only, per head) on queries and keys before ``q.k``.
        qkv_bias: ``False`` drops the q/k/v projection biases (ViT-22B); ``True`` for big_vision checkpoints.
        layer_norm_eps, hidden_act, dropout, attention_dropout: see `BvFlaxBlockConfig` (``dropout``: after posemb,
            attention output and MLP).

    Example:
        >>> from big_vision_hf import BvViTConfig
        >>> BvViTConfig(patch_size=14).patch_size
        [14, 14]
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    patch_size: list[int] | tuple[int, ...] | int = (16, 16)
    num_channels: int = 3
    representation_size: int | None = None
    head_zeroinit: bool = True
    parallel_block: bool = False
    qk_layernorm: bool = False
    qkv_bias: bool = True

    def __post_init__(self, **kwargs):
        self.patch_size = pair(self.patch_size)
        check_widths(self.hidden_size, self.num_attention_heads)
        super().__post_init__(**kwargs)


@strict
class BvViTConfig(BvViTTrunkConfig):
    r"""Configuration of a big_vision ViT (``big_vision.models.vit._Model``).

    Field names follow transformers; each names the big_vision field it holds. The trunk's fields (sizes,
    ``patch_size``, ``representation_size``, the ViT-22B options, ...) are `BvViTTrunkConfig`'s.

    Args:
        image_size: the input resolution ``[height, width]`` the posemb grid was made for (big_vision
            derives it from the input at init; we store it).
        posemb: ``"learn"`` or ``"sincos2d"`` (big_vision ``posemb``).
        pool_type: ``"gap"``, ``"map"``, ``"tok"``, ``"0"`` or ``"none"`` (big_vision ``pool_type``).

    Example:
        >>> from big_vision_hf import BvViTConfig
        >>> config = BvViTConfig.from_variant("S/16", pool_type="gap", posemb="sincos2d", representation_size=384)
        >>> config.hidden_size, config.patch_size
        (384, [16, 16])
    """

    model_type = "bv_vit"

    image_size: list[int] | tuple[int, ...] | int = (224, 224)
    posemb: str = "learn"
    pool_type: str = "gap"

    def __post_init__(self, **kwargs):
        self.image_size = pair(self.image_size)
        check_widths(self.hidden_size, self.num_attention_heads, self.posemb)
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"Unknown pool type: {self.pool_type!r}; expected one of {POOL_TYPES}")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of ``image_size``: the native posemb grid."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> "BvViTConfig":
        """Builds a config from a big_vision variant string (``"B/16"``), overridable by keyword."""
        return cls(**{**bv_kwargs_to_config(decode_variant(variant)), **overrides})


def same_names(*names: str) -> dict[str, str]:
    """``{name: name}``: the part of a kwargs table (big_vision name -> ours) whose names do not change."""
    return dict(zip(names, names))


# big_vision's transformer sizes -> ours, for every model whose kwargs use vit.py's names.
BV_SIZE_KWARGS = {
    "width": "hidden_size",
    "depth": "num_hidden_layers",
    "mlp_dim": "intermediate_size",
    "num_heads": "num_attention_heads",
}
# big_vision `vit.Model` kwargs -> BvViTConfig fields.
BV_VIT_KWARGS = {
    **BV_SIZE_KWARGS,
    **same_names("patch_size", "posemb", "pool_type", "dropout", "head_zeroinit"),
    "rep_size": "representation_size",
}
# big_vision kwargs that change nothing in a PyTorch model (layout, remat, matmul dtype).
BV_VIT_NO_EFFECT = ("scan", "remat_policy", "dtype_mm")


def rep_size_width(rep_size, width: int | None):
    """big_vision ``rep_size`` -> the ``pre_logits`` width: ``True`` means ``width`` (``vit._Model``:
    ``rep_size = self.width if self.rep_size is True else self.rep_size``), ``False``/``0``/``None`` no layer. With
    ``width`` unknown (``None``), ``True`` stays ``True`` for whoever knows it (the converter, from the arrays)."""
    if rep_size is True:
        return width if width is not None else True
    return rep_size or None


def translate_bv_kwargs(
    kwargs: dict,
    fields: dict[str, str],
    what: str,
    no_effect: tuple[str, ...] = (),
    variant=decode_variant,
    variant_key: str = "variant",
) -> dict:
    """big_vision model kwargs (a ``config.model`` dict) -> config fields, for every family: the one translator.

    ``variant(kwargs[variant_key])`` expands the variant string (``"B/16"``) into big_vision kwargs (``variant=None``:
    the family has no variants); explicit
    kwargs win over it, as in big_vision's models. ``fields`` maps big_vision names to ours; names in
    ``no_effect`` change nothing in PyTorch (``scan``, ``remat_policy``); ``num_classes`` is skipped unless
    ``fields`` maps it (the converter decides base model vs classifier from the arrays). Anything else is a
    ``ValueError`` naming it. big_vision's size conventions are resolved here once: ``mlp_dim=None`` is
    ``4 * width`` and ``rep_size`` goes through `rep_size_width`.
    """
    kwargs = dict(kwargs)
    expanded = variant(kwargs.pop(variant_key, None)) if variant is not None else {}
    out = {fields[k]: v for k, v in expanded.items() if k in fields}
    for key, value in kwargs.items():
        if key in no_effect or (key == "num_classes" and key not in fields):
            continue
        if key not in fields:
            raise ValueError(f"unknown big_vision {what} option {key!r}; known: {', '.join(fields)}")
        out[fields[key]] = value
    if "representation_size" in out:
        out["representation_size"] = rep_size_width(out["representation_size"], out.get("hidden_size"))
    if "intermediate_size" in out and out["intermediate_size"] is None and "hidden_size" in out:
        out["intermediate_size"] = 4 * out["hidden_size"]
    return out


def bv_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``vit.Model`` kwargs (a ``config.model`` dict) into ``BvViTConfig`` fields."""
    return translate_bv_kwargs(kwargs, BV_VIT_KWARGS, "ViT", BV_VIT_NO_EFFECT)
