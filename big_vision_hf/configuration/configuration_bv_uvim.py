"""Configurations of big_vision's UViM (``big_vision/models/proj/uvim/``, https://arxiv.org/abs/2205.10337).

UViM solves a dense task in two stages: the stage I VQ-VAE (``uvim/vit.py``, `BvUViMVQVAEConfig`) compresses the
task's label map (panoptic semantics + instances, depth bins, colours) into a short sequence of discrete codes,
with the image as context; the stage II "vision-to-text transformer" (``uvim/vtt.py``, `BvUViMVTTConfig`) predicts
that code sequence from the image, like a captioner. The stage II vocabulary is the stage I codebook shifted by one
(``trainers/proj/uvim/train.py``: token = code + 1, 0 is the decoder's start token).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import (
    BvFlaxBlockConfig,
    BvViTConfig,
    check_widths,
    pair,
    same_names,
    translate_bv_kwargs,
)


def _target_shapes(targets, what: str) -> dict[str, list[int]]:
    """``{"semantics": (134, 256), ...}`` -> ``{"semantics": [134, 256], ...}``; refuses anything else."""
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"{what} must be a non-empty dict of target name -> shape, got {targets!r}")
    out = {}
    for name, shape in targets.items():
        shape = [int(s) for s in (shape if isinstance(shape, (list, tuple)) else [shape])]
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"{what}[{name!r}] must be a shape of positive sizes, got {shape}")
        out[str(name)] = shape
    return out


@strict
class BvUViMVQVAEConfig(BvFlaxBlockConfig):
    r"""Configuration of UViM's stage I VQ-VAE (``big_vision.models.proj.uvim.vit.Model``).

    A ViT encoder over the label map's patches (each target one-hot or valued per patch pixel, e.g.
    ``semantics [134, 256]``: 134 classes x 16*16 pixels) plus the image's patch embedding (``with_encoder_ctx``),
    resized or projected down to ``code_len`` tokens, quantised against a codebook of ``codebook_size`` words; a ViT
    decoder maps the codes back (plus the image again, ``with_decoder_ctx``) to per-patch logits of each target.
    Field names follow transformers; each names the big_vision field it holds.

    Args:
        inputs: big_vision ``inputs``: target name -> shape of one patch's input (``{"depth": [256, 256]}``: 256
            depth bins x 16*16 pixels). The model embeds each with a ``DenseGeneral`` over these trailing axes.
        outputs: big_vision ``outputs``: target name -> shape of one patch's logits (every public config uses
            ``outputs = inputs``); ``None`` means the same as ``inputs``.
        image_size: big_vision ``input_size`` ``[H, W]``: the label map's (and context image's) resolution.
        patch_size: big_vision ``patch_size`` ``[h, w]``.
        code_len: big_vision ``code_len``: codes per example (256 in the public models; a square number when
            ``bottleneck_resize``).
        hidden_size: big_vision ``width``.
        encoder_layers: big_vision ``enc_depth``.
        decoder_layers: big_vision ``dec_depth``.
        intermediate_size: big_vision ``mlp_dim`` (``None`` there means ``4 * width``).
        num_attention_heads: big_vision ``num_heads``.
        posemb: big_vision ``posemb``: ``"learn"`` or ``"sincos2d"`` (encoder and decoder alike).
        codebook_size: big_vision ``dict_size``: words in the VQ dictionary (``state/dictionary``).
        codeword_dim: big_vision ``codeword_dim``: width of a codeword (``None``: ``hidden_size``).
        with_encoder_ctx: big_vision ``with_encoder_ctx``: add the image's patch embedding to the encoder input.
        with_decoder_ctx: big_vision ``with_decoder_ctx``: add the image's patch embedding to the decoder input.
        bottleneck_resize: big_vision ``bottleneck_resize``: go from the patch grid to ``sqrt(code_len)^2`` codes and
            back by ``jax.image.resize(..., "linear")`` (antialiased when shrinking); otherwise by the learned
            ``bottleneck_downsample`` / ``bottleneck_upsample`` matrices.
        quantize: big_vision ``quantize``: ``False`` decodes the unquantised bottleneck (codes are still returned).
        zero_decoder_seq: big_vision ``zero_decoder_seq``: the decoder sees zeros instead of the codewords (an
            ablation: only the context image reaches the decoder).
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"``: flax ``nn.gelu`` defaults to the tanh approximation.
        dropout: big_vision ``dropout`` (in the encoder and decoder blocks).
        head_zeroinit: big_vision ``head_zeroinit``: zero ``head_*`` kernels at fresh initialisation.

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_uvim import BvUViMVQVAEConfig
        >>> config = BvUViMVQVAEConfig(inputs={"depth": [16, 64]}, image_size=32, patch_size=8, code_len=4,
        ...                            hidden_size=32, encoder_layers=1, decoder_layers=1, num_attention_heads=2,
        ...                            codebook_size=8, bottleneck_resize=True)
        >>> config.grid_size, config.code_grid, config.outputs
        ((4, 4), (2, 2), {'depth': [16, 64]})
    """

    model_type = "bv_uvim_vqvae"

    inputs: dict | None = None
    outputs: dict | None = None
    image_size: list[int] | tuple[int, ...] | int = (256, 256)  # big_vision uvim vit defaults
    patch_size: list[int] | tuple[int, ...] | int = (8, 8)
    code_len: int = 256
    hidden_size: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    intermediate_size: int | None = None
    num_attention_heads: int = 12
    posemb: str = "learn"
    codebook_size: int = 512
    codeword_dim: int | None = None
    with_encoder_ctx: bool = False
    with_decoder_ctx: bool = False
    bottleneck_resize: bool = False
    quantize: bool = True
    zero_decoder_seq: bool = False
    num_channels: int = 3
    head_zeroinit: bool = True

    def __post_init__(self, **kwargs):
        self.inputs = _target_shapes(self.inputs if self.inputs is not None else {"labels": [2, 64]}, "inputs")
        self.outputs = _target_shapes(self.outputs if self.outputs is not None else self.inputs, "outputs")
        self.image_size, self.patch_size = pair(self.image_size), pair(self.patch_size)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size  # vit.MlpBlock: mlp_dim or 4 * width
        if self.codeword_dim is None:
            self.codeword_dim = self.hidden_size
        check_widths(self.hidden_size, self.num_attention_heads, self.posemb)
        if any(s % p for s, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.bottleneck_resize and round(self.code_len**0.5) ** 2 != self.code_len:
            # big_vision rounds sqrt(code_len) and resizes to that square: another code_len could not round-trip.
            raise ValueError(f"bottleneck_resize needs a square code_len, got {self.code_len}")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(h, w)``: big_vision ``grid_size = input_size // patch_size``."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def code_grid(self) -> tuple[int, int] | None:
        """The ``(l, l)`` grid of the codes with ``bottleneck_resize`` (``l = round(sqrt(code_len))``), else None."""
        side = round(self.code_len**0.5)
        return (side, side) if self.bottleneck_resize else None

    @property
    def task(self) -> str | None:
        """The big_vision task these targets belong to (``trainers/proj/uvim/*_task.py``), from their names:
        ``"panoptic"`` (``semantics`` + ``instances``), ``"depth"``, ``"colorization"`` (``color``), else None."""
        keys = set(self.outputs)
        return {frozenset({"semantics", "instances"}): "panoptic", frozenset({"depth"}): "depth",
                frozenset({"color"}): "colorization"}.get(frozenset(keys))


# big_vision `uvim.vit.Model` kwargs of the ViT trunk -> config fields; GIVT's ViT VAE (`proj.givt.vit`, adapted
# from `uvim/vit.py`) takes them too.
BV_VIT_VAE_TRUNK_KWARGS = {
    "input_size": "image_size",
    "width": "hidden_size",
    "enc_depth": "encoder_layers",
    "dec_depth": "decoder_layers",
    "mlp_dim": "intermediate_size",
    "num_heads": "num_attention_heads",
    **same_names("patch_size", "code_len", "posemb", "codeword_dim", "bottleneck_resize", "dropout", "head_zeroinit"),
}
# big_vision `uvim.vit.Model` kwargs -> BvUViMVQVAEConfig fields.
BV_UVIM_VQVAE_KWARGS = {
    **BV_VIT_VAE_TRUNK_KWARGS,
    **same_names("inputs", "outputs", "with_encoder_ctx", "with_decoder_ctx", "quantize", "zero_decoder_seq"),
    "dict_size": "codebook_size",
}
# Training-only (dictionary learning, code dropout, multi-host statistics) or unused by `uvim.vit.Model`'s forward.
BV_UVIM_VQVAE_NO_EFFECT = (
    "dict_momentum", "min_count", "statistics_axis_name", "code_dropout", "reinit", "rep_size",
)


def bv_vqvae_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``proj.uvim.vit.Model`` kwargs (the stage I ``config.model`` or a stage II config's
    ``config.oracle.model``) into `BvUViMVQVAEConfig` fields."""
    return translate_bv_kwargs(kwargs, BV_UVIM_VQVAE_KWARGS, "proj.uvim.vit", BV_UVIM_VQVAE_NO_EFFECT, variant=None)


@strict
class BvUViMVTTConfig(BvFlaxBlockConfig):
    r"""Configuration of UViM's stage II vision-to-text transformer (``big_vision.models.proj.uvim.vtt.Model``).

    An image encoder (``EmbedPatches`` conv + ``pos_embedding_encoder`` + ``vit.Encoder``: a plain ViT without
    pooling, `BvViTConfig` in ``vision_config``) and an autoregressive decoder over the guide codes: token embedding
    (``EmbedTargets``) + ``pos_embedding_decoder``, pre-LN blocks of causal self-attention, cross-attention to the
    image tokens (both without biases) and an MLP (with biases), then ``LayerNorm`` and ``LogitsDense``. big_vision
    gives the encoder and the decoder the same ``num_layers``, ``num_heads``, ``mlp_dim``, ``emb_dim`` and
    ``posemb_type``; the converter writes them into both.

    Args:
        vision_config: the image encoder (`BvViTConfig` with ``pool_type="none"``): big_vision ``patches.size``,
            ``input_size``, ``emb_dim``, ``num_layers``, ``mlp_dim``, ``num_heads``, ``posemb_type``.
        vocab_size: big_vision ``vocab_size``: stage I ``dict_size + 1`` (token 0 is the start/pad token).
        hidden_size: big_vision ``emb_dim`` (decoder width).
        num_hidden_layers: big_vision ``num_layers`` (decoder blocks ``EncDecBlock{i}``).
        num_attention_heads: big_vision ``num_heads``.
        intermediate_size: big_vision ``mlp_dim``.
        max_position_embeddings: big_vision ``seq_len``: the code sequence length (stage I ``code_len``); also the
            number of tokens `generate` produces.
        posemb: big_vision ``posemb_type`` of ``pos_embedding_decoder``: ``"learn"`` or ``"sincos2d"`` (on a
            ``1 x seq_len`` grid).
        zero_decoder_seq: big_vision ``zero_decoder_seq``: the decoder's token embeddings are zeroed (an ablation).
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"``: flax ``nn.gelu`` defaults to the tanh approximation.
        dropout: big_vision ``dropout_rate`` (after the embeddings, attention and MLP of the decoder blocks).
        attention_dropout: dropout on the attention weights (big_vision ``dropout_rate`` too).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_uvim import BvUViMVTTConfig
        >>> config = BvUViMVTTConfig(
        ...     vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...                    "intermediate_size": 64, "patch_size": 8, "image_size": 32, "pool_type": "none"},
        ...     vocab_size=17, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...     max_position_embeddings=4)
        >>> config.vision_config.grid_size, config.codebook_size
        ((4, 4), 16)
    """

    model_type = "bv_uvim_vtt"
    sub_configs_defaults = {"vision_config": BvViTConfig}

    vision_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 32_000  # big_vision vtt defaults
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 256
    posemb: str = "sincos2d"
    zero_decoder_seq: bool = False
    is_encoder_decoder: bool = True
    decoder_start_token_id: int | None = 0  # vtt.shift_right pads with 0; decode.py starts from token 0
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # train.py decodes with eos_token=-1: always seq_len tokens
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = {}
        if isinstance(self.vision_config, dict):  # the encoder is never pooled
            self.vision_config = {"pool_type": "none", **self.vision_config}
        check_widths(self.hidden_size, self.num_attention_heads, self.posemb)
        super().__post_init__(**kwargs)
        if self.vision_config.pool_type != "none":
            raise ValueError(f"the VTT encoder is not pooled: vision_config.pool_type must be 'none', "
                             f"got {self.vision_config.pool_type!r}")

    @property
    def codebook_size(self) -> int:
        """The stage I codebook this model's tokens index (token = code + 1)."""
        return self.vocab_size - 1

    @property
    def image_size(self) -> list[int]:
        """The encoder's input resolution."""
        return self.vision_config.image_size


# big_vision `uvim.vtt.Model` kwargs -> (BvUViMVTTConfig field, vision_config field); None: not on that side.
BV_UVIM_VTT_KWARGS = {
    "num_heads": ("num_attention_heads", "num_attention_heads"),
    "num_layers": ("num_hidden_layers", "num_hidden_layers"),
    "mlp_dim": ("intermediate_size", "intermediate_size"),
    "emb_dim": ("hidden_size", "hidden_size"),
    "posemb_type": ("posemb", "posemb"),
    "dropout_rate": ("dropout", "dropout"),
    "vocab_size": ("vocab_size", None),
    "seq_len": ("max_position_embeddings", None),
    "zero_decoder_seq": ("zero_decoder_seq", None),
    "input_size": (None, "image_size"),
    "patches": (None, "patch_size"),
}


def bv_vtt_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``proj.uvim.vtt.Model`` kwargs (the stage II ``config.model``) into `BvUViMVTTConfig`
    kwargs with a ``vision_config`` dict: the shared sizes go to both sides, as big_vision uses them.
    ``patches`` is big_vision's ``ConfigDict(size=(p, p))`` (or the size itself)."""
    kwargs = dict(kwargs)
    patches = kwargs.get("patches")
    if isinstance(patches, dict):
        if set(patches) != {"size"}:
            raise ValueError(f"big_vision proj.uvim.vtt option patches={patches!r}: only patches.size is used")
        kwargs["patches"] = patches["size"]
    flat = translate_bv_kwargs(kwargs, {k: k for k in BV_UVIM_VTT_KWARGS}, "proj.uvim.vtt", variant=None)
    decoder, vision = {}, {}
    for key, value in flat.items():
        ours, theirs = BV_UVIM_VTT_KWARGS[key]
        if ours is not None:
            decoder[ours] = value
        if theirs is not None:
            vision[theirs] = value
    return {**decoder, "vision_config": vision}
