"""Configurations of big_vision's GIVT (``big_vision/models/proj/givt/``, https://arxiv.org/abs/2312.02116).

GIVT ("Generative Infinite-Vocabulary Transformers") models the real-valued latent sequence of a β-VAE with a
transformer decoder whose input is a linear projection of the latent vectors and whose output parametrises a
Gaussian mixture. Three models, one configuration each:

- `BvGivtConfig` (``givt.py``): the transformer, causal (``style="ar"``) or MaskGIT-style (``style="masked"``),
  class-conditional (a label embedding with a ``NOLABEL`` entry for classifier-free guidance) or conditioned on an
  image through a ViT encoder and cross-attention (the UViM-style panoptic / depth models), with the optional
  invertible iRevNet adaptor of ``adaptor.py`` between the VAE latents and the transformer.
- `BvGivtCNNVAEConfig` (``cnn.py``): the convolutional β-VAE of the ImageNet models (VQ-GAN / MaskGIT layout).
- `BvGivtViTVAEConfig` (``vit.py``): the ViT β-VAE of the panoptic / depth models (a fork of UViM's VQ-VAE).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_bv_uvim import BV_VIT_VAE_TRUNK_KWARGS
from .configuration_bv_vit import BvViTConfig, check_widths, pair, same_names, translate_bv_kwargs

STYLES = ("ar", "masked")
MASK_STYLES = ("replace", "concat")
MASK_SCHEDULES = ("cosine", "pow:<exponent>")
# big_vision `decode.generate`'s config keys and `parallel_decode.MaskedGenerationConfig`'s fields.
AR_GENERATION_KEYS = ("temp", "temp_probs", "beam_size", "fan_size", "rand_top_k", "rand_top_k_temp",
                      "cfg_inference_weight")
MASKED_GENERATION_KEYS = ("num_steps", "should_anneal_temperature", "choice_temperature", "ordering", "schedule",
                          "cfg_inference_weight")


def _check_schedule(schedule: str) -> None:
    """big_vision ``givt.apply_mask_schedule`` knows ``"cosine"`` and ``"pow:<exponent>"``."""
    if schedule != "cosine" and not (schedule.startswith("pow:") and _is_float(schedule[4:])):
        raise ValueError(f"unknown mask schedule {schedule!r}; expected one of {MASK_SCHEDULES}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_keys(value: dict | None, known: tuple[str, ...], what: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict of big_vision sampling options, got {type(value).__name__}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return dict(value)


@strict
class BvGivtConfig(PreTrainedConfig):
    r"""Configuration of a big_vision GIVT (``big_vision.models.proj.givt.givt.Model``).

    Field names follow transformers where one exists; each names the big_vision field it holds. Defaults are
    big_vision's ``givt.Model`` defaults.

    Args:
        hidden_size: big_vision ``emb_dim``: width of the decoder (and of the encoder, which shares it).
        num_hidden_layers: big_vision ``num_decoder_layers`` (``0`` there means ``num_layers``).
        num_attention_heads: big_vision ``num_heads`` (decoder and encoder).
        intermediate_size: big_vision ``mlp_dim`` (decoder and encoder MLPs).
        num_classes: big_vision ``num_labels``: classes of a class-conditional model; ``None`` for the
            image-conditional models (the decoder then starts from label 0, a learned BOS token).
        seq_len: big_vision ``seq_len``: latent tokens per example (VAE ``code_len``).
        out_dim: big_vision ``out_dim``: width of each latent token (VAE ``codeword_dim`` times the pixel-shuffle
            patch area).
        style: big_vision ``style``: ``"ar"`` (GIVT-Causal) or ``"masked"`` (GIVT-MaskGIT).
        mask_style: big_vision ``mask_style`` (masked models): ``"replace"`` (masked tokens -> the ``MASK``
            embedding) or ``"concat"`` (even channels of ``MASK``/``NOMASK`` next to even channels of the token or
            ``REPLACE`` embedding).
        num_mixtures: big_vision ``num_mixtures``: Gaussian components of the output distribution.
        per_channel_mixtures: big_vision ``per_channel_mixtures``: one mixture per channel (independent channels)
            instead of a mixture of ``out_dim``-dimensional diagonal Gaussians.
        multivariate: big_vision ``multivariate``: one full-covariance Gaussian (``num_mixtures`` must be 1).
        fix_square_plus: big_vision ``fix_square_plus``: scales are ``(x + sqrt(x^2 + 4)) / 2``; ``False``
            reproduces the original ``x + sqrt(x^2 + 4) / 2``.
        scale_tol: big_vision ``scale_tol``: lower bound of the scales.
        drop_labels_probability: big_vision ``drop_labels_probability``: label dropout in training (classifier-free
            guidance); ``> 0`` adds the ``NOLABEL`` embedding, ``>= 0.999`` drops every label, also at inference.
        mask_schedule_train: big_vision ``mask_schedule_train`` (masked models, training): ``"cosine"`` or
            ``"pow:<exponent>"``.
        min_masking_rate_training: big_vision ``min_masking_rate_training``.
        zero_embedding_init: big_vision ``zero_embedding_init`` (fresh label embeddings at zero).
        dropout: big_vision ``dec_dropout_rate`` (attention weights, attention output, MLP).
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"``: flax ``nn.gelu`` is the tanh approximation.
        encoder_config: the ViT encoder of the image-conditional models (big_vision ``num_layers > 0``:
            ``EmbedPatches``, ``pos_embedding_encoder``, ``vit.Encoder``), a `BvViTConfig` with ``image_size`` =
            big_vision ``input_size``, ``patch_size`` = ``patches``, ``dropout`` = ``enc_dropout_rate``; ``None``: no
            encoder (big_vision ``num_layers=0``).
        adaptor_num_blocks: big_vision ``config.adaptor.model.num_blocks`` of the iRevNet adaptor
            (``proj.givt.adaptor``, whose parameters ``generative.py`` stores under ``params_adaptor``); 0: none.
        adaptor_bottleneck_channels: big_vision ``num_channels_bottleneck`` (``None``: ``out_dim``).
        adaptor_dropout: big_vision adaptor ``dropout_rate``.
        pixel_shuffle_patch_size: big_vision adaptor ``pixel_shuffle_patch_size``: how the adaptor lays the
            sequence out as an image (``(1, 2)`` for the space-to-depth VAE latents of GIVT-Causal 512px).
        ar_generation_config: big_vision ``config.ar_generation_config`` (``temp``, ``temp_probs``,
            ``cfg_inference_weight``, ``beam_size``, ``fan_size``, ...): the defaults of
            `BvGivtModel.generate` for a causal model.
        masked_generation_config: big_vision ``config.masked_generation_config`` (``num_steps``,
            ``choice_temperature``, ``schedule``, ``cfg_inference_weight``, ...): the defaults of
            `BvGivtModel.generate` for a masked model.

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtConfig
        >>> config = BvGivtConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        ...                       num_classes=10, seq_len=16, out_dim=8, style="masked", mask_style="concat",
        ...                       drop_labels_probability=0.1, per_channel_mixtures=False)
        >>> config.num_logits, config.label_vocab_size, config.special_labels
        (68, 14, {'mask': 10, 'nomask': 11, 'replace': 12, 'nolabel': 13})
    """

    model_type = "bv_givt"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(BvViTConfig, optional=True)}

    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    num_classes: int | None = 1000
    seq_len: int = 256
    out_dim: int = 32
    style: str = "ar"
    mask_style: str = "replace"
    num_mixtures: int = 4
    per_channel_mixtures: bool = True
    multivariate: bool = False
    fix_square_plus: bool = False
    scale_tol: float = 1e-6
    drop_labels_probability: float = 0.0
    mask_schedule_train: str = "cosine"
    min_masking_rate_training: float = 0.3
    zero_embedding_init: bool = False
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    encoder_config: dict | PreTrainedConfig | None = None
    adaptor_num_blocks: int = 0
    adaptor_bottleneck_channels: int | None = None
    adaptor_dropout: float = 0.0
    pixel_shuffle_patch_size: list[int] | tuple[int, ...] = (1, 1)
    ar_generation_config: dict | None = None
    masked_generation_config: dict | None = None

    def __post_init__(self, **kwargs):
        self.pixel_shuffle_patch_size = pair(self.pixel_shuffle_patch_size)
        if self.style not in STYLES:
            raise ValueError(f"unknown GIVT style {self.style!r}; expected one of {STYLES}")
        if self.mask_style not in MASK_STYLES:
            raise ValueError(f"unknown mask_style {self.mask_style!r}; expected one of {MASK_STYLES}")
        _check_schedule(self.mask_schedule_train)
        if self.num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {self.num_mixtures}")
        if self.multivariate and self.num_mixtures != 1:
            raise ValueError("multivariate=True needs num_mixtures=1 (big_vision: 'Cannot do multivariate GMM!')")
        check_widths(self.hidden_size, self.num_attention_heads)
        if self.num_classes is not None and self.num_classes < 1:
            self.num_classes = None  # big_vision `num_labels or 1`: 0 behaves as None
        if self.adaptor_num_blocks and self.out_dim % 2:
            raise ValueError(f"the iRevNet adaptor splits the {self.out_dim} latent channels in halves: "
                             "out_dim must be even")
        self.ar_generation_config = _check_keys(self.ar_generation_config, AR_GENERATION_KEYS, "ar_generation_config")
        self.masked_generation_config = _check_keys(
            self.masked_generation_config, MASKED_GENERATION_KEYS, "masked_generation_config")
        if isinstance(self.encoder_config, dict):  # big_vision: the encoder shares emb_dim, num_heads and mlp_dim
            self.encoder_config = {
                "hidden_size": self.hidden_size, "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size, "layer_norm_eps": self.layer_norm_eps,
                "hidden_act": self.hidden_act, "image_size": (256, 256), "patch_size": (16, 16),  # givt.Model
                **self.encoder_config, "pool_type": "none", "posemb": "learn"}
        super().__post_init__(**kwargs)
        if self.encoder_config is not None and self.encoder_config.hidden_size != self.hidden_size:
            raise ValueError(f"the encoder width {self.encoder_config.hidden_size} must equal hidden_size "
                             f"{self.hidden_size} (big_vision: both are emb_dim)")

    @property
    def num_logits(self) -> int:
        """Width of the head output (big_vision ``Model.num_logits``)."""
        if self.multivariate:
            return self.out_dim**2 + self.out_dim
        if self.per_channel_mixtures:
            return 3 * self.num_mixtures * self.out_dim
        return self.num_mixtures + 2 * self.num_mixtures * self.out_dim

    @property
    def special_labels(self) -> dict[str, int]:
        """Label ids after the classes, in big_vision ``Model.setup``'s order: ``mask`` (masked style), then
        ``nomask`` and ``replace`` (``mask_style="concat"``), then ``nolabel`` (``drop_labels_probability > 0``)."""
        names = []
        if self.style == "masked":
            names = ["mask"] if self.mask_style == "replace" else ["mask", "nomask", "replace"]
        if self.drop_labels_probability > 0:
            names.append("nolabel")
        return {name: (self.num_classes or 0) + i for i, name in enumerate(names)}

    @property
    def label_vocab_size(self) -> int:
        """Rows of the label embedding: ``(num_labels or 1)`` plus the special labels (big_vision ``lookup_size``)."""
        return (self.num_classes or 1) + len(self.special_labels)

    @property
    def decoder_length(self) -> int:
        """Tokens the decoder sees: ``seq_len``, plus the label token of a masked model."""
        return self.seq_len + int(self.style == "masked")

    @property
    def adaptor_grid(self) -> tuple[int, int]:
        """The ``(h, w)`` layout of the sequence for the adaptor (big_vision ``cnn.get_h_w_pixelshuffle``)."""
        return pixel_shuffle_grid(self.seq_len, self.pixel_shuffle_patch_size)


def pixel_shuffle_grid(length: int, patch: tuple[int, int] | list[int]) -> tuple[int, int]:
    """big_vision ``cnn.get_h_w_pixelshuffle``: the ``(h, w)`` grid of ``length`` tokens after a ``(ph, pw)``
    space-to-depth of a square image."""
    ph, pw = patch
    side = int((length * ph * pw) ** 0.5)
    h, w = side // ph, side // pw
    if h * w != length:
        raise ValueError(f"{length} latent tokens are not a square image after a {ph}x{pw} pixel shuffle")
    return h, w


# big_vision `givt.Model` kwargs -> BvGivtConfig fields (the encoder's are assembled into `encoder_config`).
BV_GIVT_KWARGS = {
    "emb_dim": "hidden_size",
    "num_decoder_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "num_labels": "num_classes",
    "dec_dropout_rate": "dropout",
    "num_layers": "num_encoder_layers",
    "patches": "patch_size",
    "input_size": "image_size",
    "enc_dropout_rate": "encoder_dropout",
    **same_names("seq_len", "out_dim", "style", "mask_style", "num_mixtures", "per_channel_mixtures", "multivariate",
                 "fix_square_plus", "scale_tol", "drop_labels_probability", "mask_schedule_train",
                 "min_masking_rate_training", "zero_embedding_init", "posemb_type"),
}
# `scan`/`remat_policy` change the checkpoint layout / memory only; `zero_decoder_seq` is declared but unused.
BV_GIVT_NO_EFFECT = ("scan", "remat_policy", "zero_decoder_seq")
# big_vision `config.adaptor.model` -> adaptor fields (`num_channels` is GIVT's out_dim, as in generative.py).
BV_ADAPTOR_KWARGS = {
    "num_blocks": "adaptor_num_blocks",
    "num_channels_bottleneck": "adaptor_bottleneck_channels",
    "dropout_rate": "adaptor_dropout",
    "pixel_shuffle_patch_size": "pixel_shuffle_patch_size",
}


def bv_kwargs_to_givt_config(kwargs: dict) -> dict:
    """big_vision GIVT kwargs (``config.model``) -> `BvGivtConfig` fields.

    Besides ``givt.Model``'s own kwargs, three top-level entries of a big_vision GIVT config may ride along:
    ``adaptor`` (``config.adaptor.model``), ``ar_generation_config`` and ``masked_generation_config`` (the sampling
    defaults). The encoder kwargs (``num_layers``, ``patches``, ``input_size``, ``enc_dropout_rate``) become
    ``encoder_config``, which shares ``emb_dim``, ``num_heads`` and ``mlp_dim`` with the decoder.
    """
    kwargs = dict(kwargs)
    extra = {key: kwargs.pop(key) for key in ("ar_generation_config", "masked_generation_config") if key in kwargs}
    adaptor = kwargs.pop("adaptor", None) or {}
    if not isinstance(adaptor, dict):
        raise ValueError(f"adaptor must be big_vision's config.adaptor.model dict, got {adaptor!r}")
    if "num_channels" in adaptor:
        if "out_dim" in kwargs and adaptor["num_channels"] != kwargs["out_dim"]:
            raise ValueError(f"adaptor num_channels {adaptor['num_channels']} must be out_dim {kwargs['out_dim']}")
        adaptor = {k: v for k, v in adaptor.items() if k != "num_channels"}
    out = translate_bv_kwargs(kwargs, BV_GIVT_KWARGS, "proj.givt.givt", BV_GIVT_NO_EFFECT, variant=None)
    out.update(translate_bv_kwargs(adaptor, BV_ADAPTOR_KWARGS, "proj.givt.adaptor", variant=None))
    if out.get("posemb_type", "learn") != "learn":
        raise ValueError(f"posemb_type {out['posemb_type']!r}: big_vision's GIVT only supports 'learn'")
    out.pop("posemb_type", None)
    encoder = {key: out.pop(key) for key in ("num_encoder_layers", "patch_size", "image_size", "encoder_dropout")
               if key in out}
    if out.get("num_hidden_layers") == 0:  # big_vision: `num_decoder_layers or num_layers`
        out["num_hidden_layers"] = encoder.get("num_encoder_layers", 0)
    if encoder.get("num_encoder_layers", 0) > 0:  # the widths are the decoder's (see BvGivtConfig.__post_init__)
        out["encoder_config"] = {"num_hidden_layers": encoder["num_encoder_layers"]}
        for key, field in (("image_size", "image_size"), ("patch_size", "patch_size"), ("encoder_dropout", "dropout")):
            if key in encoder:
                out["encoder_config"][field] = encoder[key]
    return {**out, **extra}


# ---------------------------------------------------------------------------------------------------------------
# The VAEs
# ---------------------------------------------------------------------------------------------------------------

ACTIVATIONS = {"swish": "silu", "relu": "relu"}  # big_vision cnn `activation_fn` -> transformers ACT2FN names


@strict
class BvGivtCNNVAEConfig(PreTrainedConfig):
    r"""Configuration of GIVT's convolutional β-VAE (``big_vision.models.proj.givt.cnn.Model``), the VQ-GAN /
    MaskGIT encoder-decoder of the ImageNet VAEs.

    Names are big_vision's (no transformers model has these), except ``hidden_act`` and ``num_channels``.

    Args:
        codeword_dim: big_vision ``codeword_dim``: channels of the latent (16 in the ImageNet VAEs).
        code_len: big_vision ``code_len``: latent tokens per image (``(resolution / 16)^2``; the model does not
            read it, it is recorded for the GIVT that pairs with the VAE).
        filters: big_vision ``filters``: base channel count (128).
        num_res_blocks: big_vision ``num_res_blocks`` per resolution (2).
        channel_multipliers: big_vision ``channel_multipliers`` (``(1, 1, 2, 2, 4)``: 4 downsamplings, /16).
        conv_downsample: big_vision ``conv_downsample``: downsample with a strided 4x4 conv instead of average
            pooling.
        hidden_act: big_vision ``activation_fn``: ``"silu"`` (``"swish"``) or ``"relu"``.
        norm_type: big_vision ``norm_type``; only ``"GN"`` (GroupNorm, 32 groups, eps 1e-6) is supported: the
            checkpoints' ``"BN"`` would need batch statistics they do not carry.
        num_channels: big_vision ``output_dim``: image channels (3).
        malib_ckpt: big_vision ``malib_ckpt``: the model was trained on images in [0, 1] (inputs are rescaled from
            [-1, 1], outputs back) and its log-variance is clipped to [-30, 20]. True for the public ImageNet VAEs.
        pixel_shuffle_patch_size: big_vision ``pixel_shuffle_patch_size``: a space-to-depth of the latent grid
            before flattening (``(1, 2)`` for GIVT-Causal 512px).
        image_size: the resolution the VAE was trained at (not read by the model, which is fully convolutional; for
            the image processor).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtCNNVAEConfig
        >>> config = BvGivtCNNVAEConfig()  # the ImageNet VAEs
        >>> config.downsampling_factor, config.latent_dim
        (16, 16)
    """

    model_type = "bv_givt_cnn_vae"

    codeword_dim: int = 16
    code_len: int = 256
    filters: int = 128
    num_res_blocks: int = 2
    channel_multipliers: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    conv_downsample: bool = False
    hidden_act: str = "silu"
    norm_type: str = "GN"
    num_channels: int = 3
    malib_ckpt: bool = False
    pixel_shuffle_patch_size: list[int] | tuple[int, ...] = (1, 1)
    image_size: int = 256
    group_norm_groups: int = 32
    group_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        self.channel_multipliers = [int(m) for m in self.channel_multipliers]
        self.pixel_shuffle_patch_size = pair(self.pixel_shuffle_patch_size)
        self.hidden_act = ACTIVATIONS.get(self.hidden_act, self.hidden_act)
        if self.hidden_act not in ACTIVATIONS.values():
            raise ValueError(f"unknown activation {self.hidden_act!r}; big_vision cnn knows 'swish' and 'relu'")
        if self.norm_type != "GN":
            raise ValueError(f"norm_type {self.norm_type!r} is not supported: only 'GN' (the GIVT VAEs' norm; 'BN' "
                             "needs batch statistics that big_vision's VAE checkpoints do not carry)")
        if not self.channel_multipliers:
            raise ValueError("channel_multipliers must not be empty")
        widths = [self.filters * m for m in self.channel_multipliers]
        if any(w % self.group_norm_groups for w in widths):
            raise ValueError(f"GroupNorm({self.group_norm_groups}) needs channel counts divisible by "
                             f"{self.group_norm_groups}; filters x channel_multipliers = {widths}")
        super().__post_init__(**kwargs)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def latent_dim(self) -> int:
        """Width of a latent token: ``codeword_dim`` times the pixel-shuffle patch area (GIVT's ``out_dim``)."""
        return self.codeword_dim * self.pixel_shuffle_patch_size[0] * self.pixel_shuffle_patch_size[1]


BV_CNN_VAE_KWARGS = {
    **same_names("codeword_dim", "code_len", "filters", "num_res_blocks", "channel_multipliers", "conv_downsample",
                 "norm_type", "malib_ckpt", "pixel_shuffle_patch_size"),
    "activation_fn": "hidden_act",
    "output_dim": "num_channels",
}
# `code_dropout` acts in training only (vae.Model.code_dropout_fn); `dtype` is the compute dtype.
BV_CNN_VAE_NO_EFFECT = ("code_dropout", "dtype")


def bv_kwargs_to_cnn_vae_config(kwargs: dict) -> dict:
    """big_vision ``proj.givt.cnn.Model`` kwargs (``config.vae.model``) -> `BvGivtCNNVAEConfig` fields."""
    return translate_bv_kwargs(kwargs, BV_CNN_VAE_KWARGS, "proj.givt.cnn", BV_CNN_VAE_NO_EFFECT, variant=None)


def _inout_specs(specs) -> list[list] | None:
    """big_vision's ``{"semantics": (0, 134), ...}`` (name -> input channel, classes) -> the ordered list
    ``[["semantics", 0, 134], ...]`` (a list, because the order sets the channel layout and JSON writers may sort
    dict keys); such a list is accepted as well. ``None`` stays None (an RGB VAE)."""
    if specs is None:
        return None
    if isinstance(specs, dict):
        items = [(name, spec) for name, spec in specs.items()]
    elif isinstance(specs, (list, tuple)) and all(isinstance(e, (list, tuple)) and len(e) == 3 for e in specs):
        items = [(e[0], e[1:]) for e in specs]
    else:
        items = []
    if not items:
        raise ValueError(f"inout_specs must be a non-empty dict name -> (input channel, classes), got {specs!r}")
    out = []
    for name, spec in items:
        if not isinstance(spec, (list, tuple)) or len(spec) != 2 or min(int(s) for s in spec) < 0 or int(spec[1]) < 1:
            raise ValueError(f"inout_specs[{name!r}] must be (input channel, number of classes), got {spec!r}")
        out.append([str(name), int(spec[0]), int(spec[1])])
    return out


@strict
class BvGivtViTVAEConfig(PreTrainedConfig):
    r"""Configuration of GIVT's ViT β-VAE (``big_vision.models.proj.givt.vit.Model``), the stage I of the UViM-style
    panoptic segmentation and depth models.

    Args:
        encoder_config: the encoder ViT (big_vision ``width``, ``enc_depth``, ``mlp_dim``, ``num_heads``,
            ``posemb``, ``input_size``, ``patch_size``, ``dropout``), a `BvViTConfig` (``pool_type="none"``;
            ``num_channels`` = the input channels after the one-hot encoding of ``inout_specs``).
        decoder_config: the decoder ViT (the same, with ``dec_depth``).
        codeword_dim: big_vision ``codeword_dim``: channels of a latent token.
        code_len: big_vision ``code_len``: latent tokens (a square number with ``bottleneck_resize``).
        bottleneck_resize: big_vision ``bottleneck_resize``: patch grid <-> ``sqrt(code_len)^2`` tokens by
            ``jax.image.resize(..., "linear")`` (antialiased when shrinking); else the learned
            ``bottleneck_downsample`` / ``bottleneck_upsample`` matrices.
        inout_specs: big_vision ``inout_specs`` (name -> ``(input channel, number of classes)``), stored as the
            ordered list ``[[name, input channel, classes], ...]``: each input channel of a label map is one-hot
            encoded, in this order, and the decoder returns logits per name (``None``: an RGB VAE whose decoder
            returns the image clipped to [-1, 1]).
        head_zeroinit: big_vision ``head_zeroinit`` (fresh ``decoder_head`` kernels at zero).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtViTVAEConfig
        >>> vit = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 16,
        ...        "patch_size": 4, "pool_type": "none"}
        >>> config = BvGivtViTVAEConfig(encoder_config={**vit, "num_channels": 8, "num_hidden_layers": 1},
        ...                             decoder_config={**vit, "num_hidden_layers": 2}, codeword_dim=4, code_len=4,
        ...                             bottleneck_resize=True, inout_specs={"semantics": (0, 5), "instances": (1, 3)})
        >>> config.code_grid, config.num_output_channels
        ((2, 2), 8)
    """

    model_type = "bv_givt_vit_vae"
    sub_configs_defaults = {"encoder_config": BvViTConfig, "decoder_config": BvViTConfig}

    encoder_config: dict | PreTrainedConfig | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    codeword_dim: int = 768
    code_len: int = 256
    bottleneck_resize: bool = False
    inout_specs: list | dict | None = None
    head_zeroinit: bool = True

    def __post_init__(self, **kwargs):
        self.inout_specs = _inout_specs(self.inout_specs)
        super().__post_init__(**kwargs)
        enc, dec = self.encoder_config, self.decoder_config
        for field in ("hidden_size", "image_size", "patch_size", "posemb"):
            if getattr(enc, field) != getattr(dec, field):
                raise ValueError(f"encoder and decoder {field} differ ({getattr(enc, field)} vs "
                                 f"{getattr(dec, field)}); big_vision's VAE shares one")
        if self.inout_specs is not None and enc.num_channels != self.num_output_channels:
            raise ValueError(f"encoder_config.num_channels must be the one-hot width {self.num_output_channels} "
                             f"of inout_specs, got {enc.num_channels}")
        if self.bottleneck_resize and round(self.code_len**0.5) ** 2 != self.code_len:
            raise ValueError(f"bottleneck_resize needs a square code_len, got {self.code_len}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder_config.grid_size

    @property
    def code_grid(self) -> tuple[int, int] | None:
        """``(l, l)`` with ``l = round(sqrt(code_len))`` under ``bottleneck_resize``, else None."""
        side = round(self.code_len**0.5)
        return (side, side) if self.bottleneck_resize else None

    @property
    def num_output_channels(self) -> int:
        """Channels of the decoder output: the classes of every ``inout_specs`` entry, or 3 (RGB)."""
        return sum(n for _, _, n in self.inout_specs) if self.inout_specs is not None else 3

    @property
    def latent_dim(self) -> int:
        return self.codeword_dim


BV_VIT_VAE_KWARGS = {**BV_VIT_VAE_TRUNK_KWARGS, "inout_specs": "inout_specs"}  # uvim/vit.py's + the outputs
BV_VIT_VAE_NO_EFFECT = ("scan", "remat_policy", "code_dropout")
_VIT_VAE_TOWER = ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_attention_heads", "posemb",
                  "dropout")


def bv_kwargs_to_vit_vae_config(kwargs: dict) -> dict:
    """big_vision ``proj.givt.vit.Model`` kwargs (``config.vae.model``) -> `BvGivtViTVAEConfig` fields: the tower
    kwargs go to ``encoder_config`` and ``decoder_config`` (big_vision builds both ``vit.Encoder`` s from them)."""
    defaults = {"image_size": (256, 256), "patch_size": (16, 16), "hidden_size": 768, "encoder_layers": 6,
                "decoder_layers": 6, "num_attention_heads": 12, "posemb": "learn", "dropout": 0.0}  # vit.Model
    flat = {**defaults, **translate_bv_kwargs(kwargs, BV_VIT_VAE_KWARGS, "proj.givt.vit", BV_VIT_VAE_NO_EFFECT,
                                              variant=None)}
    if flat.get("intermediate_size") is None:
        flat["intermediate_size"] = 4 * flat["hidden_size"]  # vit.MlpBlock: mlp_dim or 4 * width
    tower = {key: flat.pop(key) for key in _VIT_VAE_TOWER}
    tower["pool_type"] = "none"
    specs = _inout_specs(flat.get("inout_specs"))
    channels = sum(n for _, _, n in specs) if specs else 3
    encoder = {**tower, "num_hidden_layers": flat.pop("encoder_layers"), "num_channels": channels}
    decoder = {**tower, "num_hidden_layers": flat.pop("decoder_layers")}
    return {**flat, "encoder_config": encoder, "decoder_config": decoder}
