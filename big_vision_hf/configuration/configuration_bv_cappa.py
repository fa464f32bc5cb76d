"""Configuration of big_vision's CapPa (``big_vision/models/proj/cappa/cappa.py``): a ViT encoder and a transformer
decoder that captions, trained autoregressively and with parallel (masked) prediction.

big_vision's ``cappa.Model`` takes one flat kwargs dict (``config.model``); here it is split into the ViT encoder
(`BvViTConfig`, ``vision_config``) and the decoder fields of `BvCapPaConfig`. ``0`` for a ``decoder_*`` size means
"the encoder's", as in big_vision (``decoder_emb_dim or emb_dim``); the config resolves it.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import BvViTConfig, bv_kwargs_to_config, check_widths, same_names, translate_bv_kwargs


@strict
class BvCapPaConfig(PreTrainedConfig):
    r"""Configuration of a big_vision CapPa model (``big_vision.models.proj.cappa.cappa.Model``).

    The encoder is big_vision's ViT (``vit.Model`` without a head, ``pool_type="gap"``): `vision_config`. The
    decoder fields below follow transformers' names; each names the big_vision field it holds. Token ids follow the
    c4_en SentencePiece model of the CapPa configs: 0 is ``<pad>`` (also the decoder's start token: big_vision's
    ``shift_right`` prepends 0), 1 is ``</s>``.

    Args:
        vision_config: the ViT encoder (`BvViTConfig`): big_vision ``emb_dim`` (width), ``num_layers`` (depth),
            ``mlp_dim``, ``num_heads``, ``patches``, ``posemb_type``, ``enc_dropout_rate``.
        vocab_size: big_vision ``vocab_size`` (32_000 for c4_en): the rows of ``LogitsDense``.
        max_position_embeddings: big_vision ``seq_len``: the text length (64 in ``configs/proj/cappa/pretrain.py``),
            the rows of the decoder posemb; a caption has at most this many tokens.
        hidden_size: big_vision ``decoder_emb_dim`` (``None``/0: the encoder's width).
        num_hidden_layers: big_vision ``decoder_num_layers`` (``None``/0: the encoder's depth).
        num_attention_heads: big_vision ``decoder_num_heads`` (``None``/0: the encoder's).
        intermediate_size: big_vision ``decoder_mlp_dim`` (``None``/0: the encoder's ``mlp_dim``).
        decoder_bias: big_vision ``decoder_bias``: biases of the blocks' LayerNorms and MLP Dense layers (attention
            never has biases; the final LayerNorm and ``LogitsDense`` always do).
        posemb: big_vision ``posemb_type`` for the decoder: ``"learn"`` (parameter ``pos_embedding_decoder``) or
            ``"sincos2d"`` (``posemb_sincos_2d(1, seq_len, width)``, not a parameter).
        masked_pred_prob: big_vision ``masked_pred_prob``: in training, the probability that an example is a
            parallel-prediction example (all/most inputs replaced by the mask token, no causal mask). Above 0 the
            token embedding has one more row, the mask token ``vocab_size``.
        masking_ratio: big_vision ``masking_ratio``: the fraction of positions masked in such an example.
        dropout: big_vision ``dec_dropout_rate`` (attention weights, attention outputs, MLP).
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"`` (flax ``nn.gelu`` is the tanh approximation).

    Example:
        >>> from big_vision_hf import BvCapPaConfig
        >>> config = BvCapPaConfig.from_bv_kwargs(dict(num_heads=4, num_layers=2, mlp_dim=96, emb_dim=48,
        ...     vocab_size=128, seq_len=10, patches=(8, 8), decoder_num_layers=3, masked_pred_prob=0.75,
        ...     masking_ratio=1.0, decoder_bias=False), image_size=32)
        >>> config.hidden_size, config.num_hidden_layers, config.mask_token_id, config.vision_config.image_size
        (48, 3, 128, [32, 32])
    """

    model_type = "bv_cappa"
    sub_configs_defaults = {"vision_config": BvViTConfig}

    vision_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 32_000
    max_position_embeddings: int = 256  # big_vision cappa.Model `seq_len` default
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    decoder_bias: bool = True
    posemb: str = "learn"
    masked_pred_prob: float = 0.0
    masking_ratio: float = 0.0
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int | None = 0  # big_vision shift_right pads with 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # builds vision_config first: the decoder defaults to its sizes
        vision = self.vision_config
        self.hidden_size = self.hidden_size or vision.hidden_size
        self.num_hidden_layers = self.num_hidden_layers or vision.num_hidden_layers
        self.num_attention_heads = self.num_attention_heads or vision.num_attention_heads
        self.intermediate_size = self.intermediate_size or vision.intermediate_size
        check_widths(self.hidden_size, self.num_attention_heads, self.posemb, what="decoder ")
        if not 0.0 <= self.masked_pred_prob <= 1.0 or not 0.0 <= self.masking_ratio <= 1.0:
            raise ValueError(f"masked_pred_prob ({self.masked_pred_prob}) and masking_ratio ({self.masking_ratio}) "
                             "must be in [0, 1]")

    @property
    def mask_token_id(self) -> int | None:
        """The parallel-prediction mask token (big_vision: ``output_vocab_size``, an extra embedding row), or
        ``None`` when the model has none (``masked_pred_prob == 0``: the "Cap" baseline)."""
        return self.vocab_size if self.masked_pred_prob > 0 else None

    @property
    def num_embeddings(self) -> int:
        """Rows of the token embedding: ``vocab_size`` (+1 for the mask token), as big_vision ``EmbedTargets``."""
        return self.vocab_size + (1 if self.masked_pred_prob > 0 else 0)

    @classmethod
    def from_bv_kwargs(cls, kwargs: dict, image_size=None, **overrides) -> BvCapPaConfig:
        """A config from big_vision ``cappa.Model`` kwargs (``config.model``); ``image_size`` is the encoder's
        input resolution (big_vision takes it from the input)."""
        vit_kwargs, decoder = split_bv_cappa_kwargs(kwargs)
        vision = bv_kwargs_to_config(vit_kwargs)
        if image_size is not None:
            vision["image_size"] = image_size
        return cls(vision_config=BvViTConfig(**vision), **{**decoder, **overrides})


# big_vision `cappa.Model` kwargs of the encoder -> big_vision `vit.Model` kwargs (cappa.Model.setup).
BV_CAPPA_ENCODER_KWARGS = {
    "emb_dim": "width",
    "num_layers": "depth",
    **same_names("mlp_dim", "num_heads"),
    "patches": "patch_size",
    "posemb_type": "posemb",
    "enc_dropout_rate": "dropout",
}
# big_vision `cappa.Model` kwargs of the decoder -> BvCapPaConfig fields.
BV_CAPPA_KWARGS = {
    "decoder_emb_dim": "hidden_size",
    "decoder_num_layers": "num_hidden_layers",
    "decoder_num_heads": "num_attention_heads",
    "decoder_mlp_dim": "intermediate_size",
    "seq_len": "max_position_embeddings",
    "posemb_type": "posemb",
    "dec_dropout_rate": "dropout",
    **same_names("vocab_size", "decoder_bias", "masked_pred_prob", "masking_ratio"),
}
# Kwargs that change nothing in PyTorch: layout and remat, and fields cappa.Model declares but never uses.
BV_CAPPA_NO_EFFECT = ("scan", "remat_policy", "input_seq_len", "patch_dropout")


def split_bv_cappa_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """big_vision ``cappa.Model`` kwargs -> (the encoder's big_vision ``vit.Model`` kwargs, `BvCapPaConfig` decoder
    fields).

    ``posemb_type`` goes to both (big_vision uses it for the encoder's and the decoder's posemb); ``0`` decoder
    sizes stay ``0`` (the config resolves them to the encoder's). An unknown kwarg is a ``ValueError`` naming it.
    """
    kwargs = dict(kwargs or {})
    encoder = {BV_CAPPA_ENCODER_KWARGS[k]: kwargs[k] for k in BV_CAPPA_ENCODER_KWARGS if k in kwargs}
    decoder_keys = {k: v for k, v in kwargs.items() if k not in BV_CAPPA_ENCODER_KWARGS or k in BV_CAPPA_KWARGS}
    return encoder, translate_bv_kwargs(decoder_keys, BV_CAPPA_KWARGS, "CapPa", BV_CAPPA_NO_EFFECT, variant=None)
