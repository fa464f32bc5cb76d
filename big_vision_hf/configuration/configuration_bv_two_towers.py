"""Configuration of big_vision's two-tower image-text models (``big_vision/models/proj/image_text/two_towers.py``
with ``text_transformer.py``): SigLIP-like (sigmoid loss) and LiT/CLIP-like (softmax loss) towers that
transformers' ``SiglipModel`` cannot represent.

Two config classes, because transformers' ``zero-shot-image-classification`` pipeline picks sigmoid scores (and
``max_length=64`` text padding) when ``"siglip"`` is in ``config.model_type`` and softmax otherwise
(``pipelines/zero_shot_image_classification.py``): `BvSiglipConfig` (``model_type="bv_siglip"``,
``loss="sigmoid"``) and `BvTwoTowerConfig` (``model_type="bv_two_towers"``, ``loss="softmax"``). The ``loss``
field decides which one a converter builds (:meth:`BvTwoTowerConfig.from_loss`).
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig

from .configuration_bv_naflex import BvNaFlexViTConfig
from .configuration_bv_vit import (
    BV_SIZE_KWARGS,
    BvFlaxBlockConfig,
    BvViTConfig,
    check_widths,
    same_names,
    translate_bv_kwargs,
)

TEXT_POOL_TYPES = ("last", "first", "gap", "max", "map")
# big_vision text_transformer accepts these spellings too (`pool_type in ("mean", "gap")`, `("max", "gmp")`).
TEXT_POOL_ALIASES = {"mean": "gap", "gmp": "max"}
LOSSES = ("sigmoid", "softmax")
# big_vision two_towers `image_model` -> the image tower's config class (SigLIP 2 NaFlex: naflex_vit).
IMAGE_MODELS = {"vit": BvViTConfig, "proj.image_text.naflex_vit": BvNaFlexViTConfig}


@strict
class BvTextConfig(BvFlaxBlockConfig):
    r"""Configuration of big_vision's text tower (``big_vision.models.proj.image_text.text_transformer._Model``).

    Token embedding + learned posemb + the ViT encoder (``vit.Encoder``: pre-LN blocks, NO causal mask, final
    ``encoder_norm``), then pooling and an optional ``head`` Dense.

    Args:
        vocab_size: big_vision ``vocab_size`` (32_000 c4_en, 250_000 mc4, 256_000 Gemma for SigLIP 2).
        hidden_size: big_vision ``width``.
        num_hidden_layers: big_vision ``depth``.
        intermediate_size: big_vision ``mlp_dim``.
        num_attention_heads: big_vision ``num_heads``.
        max_position_embeddings: the text length ``L`` (big_vision derives the ``pos_embedding`` length from the
            input at init: 64, or 16 for SigLIP So400m/14 224).
        pool_type: ``"last"`` (the sticky-EOS token), ``"first"``, ``"gap"`` (``"mean"``), ``"max"`` (``"gmp"``)
            or ``"map"`` (big_vision ``pool_type``).
        projection_size: big_vision ``num_classes`` (= two_towers ``out_dim[1]``): width of the ``head`` Dense;
            ``None``: no head.
        layer_norm_eps: flax ``nn.LayerNorm`` default, 1e-6.
        hidden_act: ``"gelu_pytorch_tanh"`` (flax ``nn.gelu`` is the tanh approximation).
        dropout: big_vision ``dropout`` (in the encoder blocks).
    """

    model_type = "bv_text"
    base_config_key = "text_config"

    vocab_size: int = 32_000  # big_vision text_transformer default
    hidden_size: int = 512
    num_hidden_layers: int = 12
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    max_position_embeddings: int = 64
    pool_type: str = "last"
    projection_size: int | None = None

    def __post_init__(self, **kwargs):
        self.pool_type = TEXT_POOL_ALIASES.get(self.pool_type, self.pool_type)
        if self.pool_type not in TEXT_POOL_TYPES:
            raise ValueError(f"Unknown text pool type: {self.pool_type!r}; expected one of {TEXT_POOL_TYPES}")
        check_widths(self.hidden_size, self.num_attention_heads)
        if self.projection_size == 0:
            self.projection_size = None
        super().__post_init__(**kwargs)

    @property
    def embed_dim(self) -> int:
        """Width of the text embedding ``ztxt``: the head's width, else the tower's."""
        return self.projection_size or self.hidden_size


# big_vision `text_transformer.Model` kwargs -> BvTextConfig fields.
BV_TEXT_KWARGS = {
    **BV_SIZE_KWARGS,
    **same_names("vocab_size", "pool_type", "dropout"),
    "num_classes": "projection_size",
}
BV_TEXT_NO_EFFECT = ("scan", "remat_policy")


def bv_text_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``text_transformer.Model`` kwargs (``config.model.text``) into `BvTextConfig` fields
    (a ``variant`` such as ``"B"`` is `decode_variant`'s; the text tower has no patches)."""
    return translate_bv_kwargs(kwargs, BV_TEXT_KWARGS, "text_transformer", BV_TEXT_NO_EFFECT)


# flaxformer `configs.BertBaseConfig` / `BertLargeConfig` (what big_vision bert.py's `config="base"|"large"` builds):
# (hidden_size, intermediate_dim, num_hidden_layers, num_attention_heads); both: vocab 30522, 512 positions,
# 2 segments, LayerNorm eps 1e-12, dropout 0.1.
BERT_CONFIGS = {"base": (768, 3072, 12, 12), "large": (1024, 4096, 24, 16)}
# big_vision bert.Model kwargs (config.model.text) besides `config`; flaxformer BertConfig fields may override the
# named config (big_vision's own code cannot; for towers built from a modified flaxformer config).
BV_BERT_FIELDS = {
    "num_classes": "projection_size",
    "head_zeroinit": "head_zeroinit",
    "hidden_size": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "vocab_size": "vocab_size",
    "max_length": "max_position_embeddings",
    "num_segments": "type_vocab_size",
}


@strict
class BvBertTextConfig(BertConfig):
    r"""Configuration of big_vision's BERT text tower (``big_vision.models.proj.flaxformer.bert.Model``, LiT): a
    flaxformer ``BertEncoder`` (post-LN BERT: token + position + segment embeddings, LayerNorm, post-LN layers),
    the ``[CLS]`` position (no BERT pooler), then an optional ``head`` Dense.

    A transformers `BertConfig` (the tower reuses transformers' BERT modules) with flaxformer's settings and
    big_vision's head. flaxformer -> fields: ``hidden_size``, ``intermediate_dim`` -> ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``vocab_size``, ``max_length`` -> ``max_position_embeddings``,
    ``num_segments`` -> ``type_vocab_size``, ``layer_norm_epsilon`` -> ``layer_norm_eps`` (1e-12),
    ``dropout_rate`` -> ``hidden_dropout_prob`` and ``attention_probs_dropout_prob`` (0.1).

    Args:
        hidden_act: ``"gelu_pytorch_tanh"``: flaxformer's BERT MLP uses flax ``nn.gelu`` (tanh approximation),
            not the exact GELU of Google's original BERT.
        projection_size: big_vision ``num_classes`` (= two_towers ``out_dim[1]``): width of the ``head`` Dense;
            ``None``: no head.
        head_zeroinit: big_vision ``head_zeroinit`` (zero-initialised head kernel; for training from scratch).
    """

    model_type = "bv_bert_text"
    base_config_key = "text_config"

    hidden_act: str = "gelu_pytorch_tanh"  # flaxformer bert.make_mlp_block: `activation=nn.gelu` (approximate)
    projection_size: int | None = None
    head_zeroinit: bool = True  # big_vision bert.Model default

    def __post_init__(self, **kwargs):
        if self.projection_size == 0:
            self.projection_size = None
        check_widths(self.hidden_size, self.num_attention_heads)
        super().__post_init__(**kwargs)

    @property
    def embed_dim(self) -> int:
        """Width of the text embedding ``ztxt``: the head's width, else the tower's."""
        return self.projection_size or self.hidden_size


def bert_config_sizes(name: str | None) -> dict:
    """big_vision bert.py ``config="base"|"large"`` -> flaxformer's sizes (as flaxformer ``BertConfig`` fields)."""
    if name is None:
        return {}
    if name not in BERT_CONFIGS:
        raise ValueError(f"unknown BERT config {name!r}; big_vision bert.py knows {', '.join(BERT_CONFIGS)}")
    hidden, mlp, depth, heads = BERT_CONFIGS[name]
    return dict(hidden_size=hidden, intermediate_dim=mlp, num_hidden_layers=depth, num_attention_heads=heads,
                vocab_size=30522, max_length=512, num_segments=2)


def bv_bert_kwargs_to_config(kwargs: dict) -> dict:
    """Translates big_vision ``bert.Model`` kwargs (``config.model.text``) into `BvBertTextConfig` fields.

    ``config`` (``"base"``/``"large"``) gives flaxformer's sizes; flaxformer ``BertConfig`` field names
    (``num_attention_heads``, ``hidden_size``, ...) override them.
    """
    return translate_bv_kwargs(kwargs, BV_BERT_FIELDS, "proj.flaxformer.bert", variant=bert_config_sizes,
                               variant_key="config")


# big_vision two_towers `text_model` -> the text tower's config class.
TEXT_MODELS = {"proj.image_text.text_transformer": BvTextConfig, "proj.flaxformer.bert": BvBertTextConfig}


def resolve_tower(field: str, config, model_field: str, model_name: str, table: dict, default: str):
    """A tower's big_vision model name <-> its config's class: ``(model name, config)``.

    A config object decides by its class; a dict (or ``None``) by its ``model_type``, else by ``model_name``, and is
    built here for any tower but ``default`` (``sub_configs_defaults`` builds that one).
    """
    if isinstance(config, PreTrainedConfig):
        names = [name for name, cls in table.items() if type(config) is cls]
        if not names:
            classes = [c.__name__ for c in table.values()]
            raise ValueError(f"{field} must be one of {classes}, got {type(config).__name__}")
        return names[0], config
    by_type = {cls.model_type: name for name, cls in table.items()}
    if isinstance(config, dict) and config.get("model_type") in by_type:
        model_name = by_type[config["model_type"]]
    if model_name not in table:
        raise ValueError(f"Unknown {model_field} {model_name!r}; expected one of {list(table)}")
    if model_name != default:
        config = table[model_name](**{k: v for k, v in (config or {}).items() if k != "model_type"})
    return model_name, config


@strict
class BvTwoTowerConfig(PreTrainedConfig):
    r"""Configuration of a big_vision two-tower model (``big_vision.models.proj.image_text.two_towers.Model``)
    trained with the softmax (CLIP / LiT) contrastive loss. Sigmoid-trained (SigLIP) ones use `BvSiglipConfig`.

    Args:
        vision_config: the image tower, big_vision ``config.model.image``: `BvViTConfig` (``image_model="vit"``) or
            `BvNaFlexViTConfig` (``image_model="proj.image_text.naflex_vit"``, SigLIP 2 NaFlex).
        text_config: the text tower, big_vision ``config.model.text``: `BvTextConfig` (``text_model=
            "proj.image_text.text_transformer"``) or `BvBertTextConfig` (``text_model="proj.flaxformer.bert"``, LiT).
        vision_projection_size: big_vision ``out_dim[0]``: width of the image tower's ``head`` Dense (``img/head``);
            ``None``: no head (the image embedding is the ViT's ``pre_logits``).
        temperature_init: big_vision ``temperature_init``; the parameter ``logit_scale`` holds big_vision ``t``,
            the LOG temperature (``logits = zimg @ ztxt.T * exp(t) (+ b)``).
        bias_init: big_vision ``bias_init``; ``None``: no ``b`` (``logit_bias``) parameter.
        loss: ``"softmax"`` here, ``"sigmoid"`` in `BvSiglipConfig`: the training loss ``return_loss=True`` gives.
        gather_negatives: with several processes (``torch.distributed``), the loss uses every process's embeddings
            as negatives, as big_vision's trainers do across devices (see ``modeling_bv_two_towers``).
        lock_image_tower: locked-image tuning (LiT, https://arxiv.org/abs/2111.07991): the image tower (and its
            head) gets no gradients, as big_vision's ``schedule=[("img/.*", None), ...]`` (``configs/proj/
            image_text/lit_coco.py``).
        image_model: big_vision ``image_model``: ``"vit"`` or ``"proj.image_text.naflex_vit"``; picks the class of a
            ``vision_config`` given as a dict (a config object decides by its own class).
        text_model: big_vision ``text_model``: ``"proj.image_text.text_transformer"`` or ``"proj.flaxformer.bert"``
            (LiT's BERT); picks the class of a ``text_config`` given as a dict, as ``image_model`` does.
    """

    model_type = "bv_two_towers"
    sub_configs_defaults = {"vision_config": BvViTConfig, "text_config": BvTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_projection_size: int | None = None
    temperature_init: float = 1.0  # big_vision two_towers default
    bias_init: float | None = None
    loss: str = "softmax"
    gather_negatives: bool = True
    lock_image_tower: bool = False
    image_model: str = "vit"
    text_model: str = "proj.image_text.text_transformer"

    def __post_init__(self, **kwargs):
        self._resolve_image_model()
        self._resolve_text_model()
        if self.vision_projection_size == 0:
            self.vision_projection_size = None
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; expected one of {LOSSES}")
        siglip_type = "siglip" in self.model_type
        if (self.loss == "sigmoid") != siglip_type:
            right = "BvSiglipConfig" if self.loss == "sigmoid" else "BvTwoTowerConfig"
            raise ValueError(
                f"loss={self.loss!r} needs {right} (pipelines read 'siglip' in model_type as sigmoid scores); "
                f"use BvTwoTowerConfig.from_loss({self.loss!r}, ...)"
            )
        if self.loss == "sigmoid" and self.bias_init is None:
            raise ValueError("the sigmoid loss needs a bias (big_vision bias_init): got bias_init=None")
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init must be positive, got {self.temperature_init}")
        super().__post_init__(**kwargs)

    def _resolve_image_model(self) -> None:
        """``image_model`` <-> the class of ``vision_config`` (``sub_configs_defaults`` only knows `BvViTConfig`)."""
        self.image_model, self.vision_config = resolve_tower(
            "vision_config", self.vision_config, "image_model", self.image_model, IMAGE_MODELS, "vit")

    def _resolve_text_model(self) -> None:
        """``text_model`` <-> the class of ``text_config`` (``sub_configs_defaults`` only knows `BvTextConfig`)."""
        self.text_model, self.text_config = resolve_tower(
            "text_config", self.text_config, "text_model", self.text_model, TEXT_MODELS,
            "proj.image_text.text_transformer")

    @classmethod
    def from_loss(cls, loss: str, **kwargs) -> BvTwoTowerConfig:
        """`BvSiglipConfig` for ``loss="sigmoid"``, `BvTwoTowerConfig` for ``"softmax"``."""
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; expected one of {LOSSES}")
        return (BvSiglipConfig if loss == "sigmoid" else BvTwoTowerConfig)(loss=loss, **kwargs)

    @property
    def embed_dim_image(self) -> int:
        """Width of the image embedding ``zimg``: the head's, else the ViT's ``pre_logits``."""
        v = self.vision_config
        return self.vision_projection_size or v.representation_size or v.hidden_size

    @property
    def image_size(self) -> list[int] | None:
        """The image tower's input resolution (what `image_processor_for` reads); ``None`` for NaFlex (any size)."""
        return getattr(self.vision_config, "image_size", None)

    @property
    def logit_scale_init(self) -> float:
        return math.log(self.temperature_init)


@strict
class BvSiglipConfig(BvTwoTowerConfig):
    r"""`BvTwoTowerConfig` of a SigLIP-trained (sigmoid loss) two-tower model: ``model_type="bv_siglip"``.

    Defaults follow SigLIP (https://arxiv.org/abs/2303.15343, big_vision ``configs/proj/image_text/siglip_*``):
    ``temperature_init=10`` and ``bias_init=-10``.
    """

    model_type = "bv_siglip"

    temperature_init: float = 10.0
    bias_init: float | None = -10.0
    loss: str = "sigmoid"
