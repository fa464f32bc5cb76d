"""big_vision two towers (``proj.image_text.two_towers`` with ``proj.image_text.text_transformer``) ->
transformers' ``SiglipModel`` where it represents the checkpoint exactly, else `BvSiglipModel` / `BvTwoTowerModel`.

``SiglipModel`` represents SigLIP (en, i18n) and fixed-resolution SigLIP 2: image tower with MAP pool, learned
posemb, no ``rep_size``, no image head (``out_dim[0] = None``), square image and patch; text tower pooling the
``last`` token; a bias ``b`` (sigmoid-trained); no dropout. A text tower without a head gets an identity
``text_model.head`` (``SiglipTextModel`` always applies one). Every other tower (gap/tok image pool, sincos
posemb, image head, text pool first/gap/max/map, softmax-trained, ...) goes to our classes
(``modeling_bv_two_towers``): ``bv_siglip`` when the checkpoint has ``b`` (sigmoid loss), ``bv_two_towers``
otherwise (big_vision: ``b`` exists iff ``bias_init`` is set, i.e. the sigmoid loss).

The tables compose as big_vision ``two_towers.load`` does: the ViT's rules under ``img/``, the text tower's under
``txt/``, ``t`` (the LOG temperature) -> ``logit_scale``, ``b`` -> ``logit_bias``. Layout passes: the ViT's
(``fix_old_checkpoints``, scan -> loop) on ``img/``; big_vision ``text_transformer.load`` (``convert_pre_linen``,
the double-added ``Encoder_0/pos_embedding`` of some old checkpoints merged into ``pos_embedding``) and scan ->
loop on ``txt/``. ``file.npz:img`` alone is a ViT: ``--model-name vit`` (detected).
"""

from __future__ import annotations

import logging

import numpy as np

from ..configuration.configuration_bv_two_towers import (
    TEXT_POOL_ALIASES,
    BvTwoTowerConfig,
    bv_text_kwargs_to_config,
)
from ..configuration.configuration_bv_vit import BvViTConfig
from ..modeling.modeling_bv_two_towers import BvSiglipModel, BvTwoTowerModel
from .api import PROCESSORS, register_family
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import (
    VIT_RULES,
    encoder_rules,
    fit_posemb,
    infer_vit_config,
    layer_norm,
    linear,
    map_head_rules,
    prefixed,
    prepare_vit_params,
    to_loop_layout,
)
from .mapping import Rule, Transform, conv, convert_pre_linen, map_params

logger = logging.getLogger(__name__)

FAMILY = "proj.image_text.two_towers"
TEXT_MODEL = "proj.image_text.text_transformer"
# big_vision two_towers.Model fields (config.model).
TWO_TOWER_KWARGS = ("image", "text", "image_model", "text_model", "out_dim", "temperature_init", "bias_init")

#: learned posemb ``[1, L, D]`` -> ``nn.Embedding.weight`` ``[L, D]`` (transformers' Siglip embeddings).
squeeze0 = Transform("squeeze0", lambda x: x[0], lambda s: tuple(s[1:]))

# big_vision text_transformer name -> BvTextTransformer name.
TEXT_RULES = [
    Rule("Embed_0/embedding", "embeddings.token_embedding.weight"),
    Rule("pos_embedding", "embeddings.position_embedding"),
    *encoder_rules("Encoder_0", "encoder"),
    *map_head_rules("MAPHead_0", "map_head"),
    *linear("head", "head"),
]

# big_vision two_towers name -> BvTwoTowerModel name.
BV_TWO_TOWER_RULES = [
    *prefixed(VIT_RULES, "img/", "vision_model."),
    *linear("img/head", "vision_head"),
    *prefixed(TEXT_RULES, "txt/", "text_model."),
    Rule("t", "logit_scale"),
    Rule("b", "logit_bias"),
]


def _siglip_encoder_rules(bv: str, hf: str, final_norm: str) -> list[Rule]:
    """`encoder_rules` with ``encoder_norm`` where Siglip keeps it (outside ``encoder``)."""
    blocks = [rule for rule in encoder_rules(bv, hf) if "/encoder_norm/" not in rule.bv]
    return blocks + layer_norm(f"{bv}/encoder_norm", final_norm)


# big_vision two_towers name -> transformers SiglipModel name. The MAP head's q/k/v land on `*.q_proj` etc. and
# are packed into nn.MultiheadAttention's `in_proj_*` by `pack_in_proj`; `img/pos_embedding` is squeezed after
# `fit_posemb`.
SIGLIP_RULES = [
    Rule("img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight", conv),
    Rule("img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
    Rule("img/pos_embedding", "vision_model.embeddings.position_embedding.weight"),
    *_siglip_encoder_rules("img/Transformer", "vision_model.encoder", "vision_model.post_layernorm"),
    *map_head_rules("img/MAPHead_0", "vision_model.head"),
    Rule("txt/Embed_0/embedding", "text_model.embeddings.token_embedding.weight"),
    Rule("txt/pos_embedding", "text_model.embeddings.position_embedding.weight", squeeze0),
    *_siglip_encoder_rules("txt/Encoder_0", "text_model.encoder", "text_model.final_layer_norm"),
    *linear("txt/head", "text_model.head"),
    Rule("t", "logit_scale"),
    Rule("b", "logit_bias"),
]


def pack_in_proj(mapped: dict[str, LazyArray], attention: str) -> None:
    """``{attention}.{q,k,v}_proj.{weight,bias}`` -> ``nn.MultiheadAttention``'s ``in_proj_{weight,bias}`` (rows
    q, k, v), lazily."""
    for kind in ("weight", "bias"):
        parts = [mapped.pop(f"{attention}.{p}_proj.{kind}") for p in "qkv"]
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        packed = LazyArray(
            shape, parts[0].dtype, lambda parts=parts: np.concatenate([p.load() for p in parts]), parts[0].source
        )
        packed.name = "+".join(p.name for p in parts)
        mapped[f"{attention}.in_proj_{kind}"] = packed


# ---------------------------------------------------------------------------------------------------------
# Layout passes
# ---------------------------------------------------------------------------------------------------------


def fix_old_text_checkpoints(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """big_vision ``text_transformer.load``: ``convert_pre_linen``, and the posemb some old checkpoints added twice
    (``Encoder_0/pos_embedding``) merged into ``pos_embedding``."""
    params = convert_pre_linen(params)
    extra = params.pop("Encoder_0/pos_embedding", None)
    if extra is not None and "pos_embedding" in params:
        pe = params["pos_embedding"]
        params["pos_embedding"] = LazyArray(
            pe.shape, pe.dtype, lambda: pe.load() + extra.load(), pe.source + "+Encoder_0/pos_embedding", pe.name
        )
    elif extra is not None:
        params["pos_embedding"] = extra
    return params


def prepare_two_tower_params(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """Both towers' layout passes; checks that both towers and ``t`` are there (one-line errors)."""
    tops = sorted({k.split("/")[0] for k in params})
    for tower, what in (("img", "image"), ("txt", "text")):
        if tower not in tops:
            hint = " (convert `file.npz:img` with --model-name vit for the image tower alone)" if tower == "txt" else ""
            raise CheckpointError(
                f"not a complete two-tower checkpoint: no {what} tower '{tower}/' (top-level names: "
                f"{', '.join(tops)}){hint}"
            )
    if "t" not in params:
        raise CheckpointError(f"two-tower checkpoint has no temperature 't' (top-level names: {', '.join(tops)})")
    params = prepare_vit_params(params, "img/")
    inside = {k[len("txt/"):]: v for k, v in params.items() if k.startswith("txt/")}
    outside = {k: v for k, v in params.items() if not k.startswith("txt/")}
    inside = to_loop_layout(fix_old_text_checkpoints(inside), "Encoder_0")
    return {**outside, **{"txt/" + k: v for k, v in inside.items()}}


# ---------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------


def infer_text_config(params: dict[str, LazyArray], text_kwargs: dict, prefix: str = "txt/") -> dict:
    """`BvTextConfig` kwargs from the arrays' shapes, checked against big_vision ``config.model.text``."""
    p = prefix
    try:
        given = bv_text_kwargs_to_config(text_kwargs)
    except ValueError as e:
        raise CheckpointError(str(e)) from None

    def shape(name):
        if p + name not in params:
            raise CheckpointError(f"not a big_vision text_transformer tower: no {p + name!r} array")
        return params[p + name].shape

    vocab, width = shape("Embed_0/embedding")
    block = "Encoder_0/encoderblock_0"
    inferred = dict(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=1 + max(
            int(k[len(p):].split("/")[1].split("_")[1]) for k in params if k.startswith(p + "Encoder_0/encoderblock_")
        ),
        intermediate_size=shape(f"{block}/MlpBlock_0/Dense_0/kernel")[1],
        num_attention_heads=shape(f"{block}/MultiHeadDotProductAttention_0/query/kernel")[1],
        max_position_embeddings=shape("pos_embedding")[1],
        projection_size=shape("head/kernel")[1] if p + "head/kernel" in params else None,
    )
    for key, value in inferred.items():
        if key in given and given[key] != value:
            what = "text out_dim/num_classes" if key == "projection_size" else f"text {key}"
            raise CheckpointError(f"model config says {what}={given[key]!r} but the checkpoint arrays have {value!r}")
    pool = TEXT_POOL_ALIASES.get(given.get("pool_type", "last"), given.get("pool_type", "last"))
    has_map = p + "MAPHead_0/probe" in params
    if has_map and pool != "map":
        raise CheckpointError(f"the text tower has a MAP head ({p}MAPHead_0) but the model config says "
                              f"pool_type={pool!r}")
    if pool == "map" and not has_map:
        raise CheckpointError(f"text pool_type='map' needs {p}MAPHead_0 arrays the checkpoint does not have")
    return {**given, **inferred, "pool_type": pool}


def _out_dims(model_kwargs: dict) -> tuple | None:
    if "out_dim" not in model_kwargs:
        return None  # the arrays tell (big_vision's default 128 would be checked against them otherwise)
    out_dim = model_kwargs["out_dim"]
    return (out_dim, out_dim) if isinstance(out_dim, int) or out_dim is None else tuple(out_dim)


def siglip_misfits(vision: dict, text: dict, image_head: int | None, has_bias: bool) -> list[str]:
    """Why transformers' ``SiglipModel`` cannot hold this checkpoint exactly (empty: it can)."""
    reasons = []
    if vision["pool_type"] != "map":
        reasons.append(f"image pool_type {vision['pool_type']!r} (SiglipVisionModel pools with MAP)")
    if vision["posemb"] != "learn":
        reasons.append(f"image posemb {vision['posemb']!r} (SiglipVisionModel learns its posemb)")
    if vision.get("representation_size"):
        reasons.append("image rep_size (pre_logits layer)")
    if image_head:
        reasons.append("an image head (img/head, out_dim[0])")
    if len(set(vision["image_size"])) != 1 or len(set(vision["patch_size"])) != 1:
        reasons.append(f"non-square image {vision['image_size']} or patch {vision['patch_size']}")
    if vision.get("dropout") or text.get("dropout"):
        reasons.append("dropout (SiglipModel has none in the residual branches)")
    if text["pool_type"] != "last":
        reasons.append(f"text pool_type {text['pool_type']!r} (SiglipTextModel pools the last token)")
    if not has_bias:
        reasons.append("no bias 'b': softmax-trained (SiglipModel adds logit_bias; pipelines score it with sigmoid)")
    return reasons


def _siglip_config(vision: dict, text: dict):
    from transformers import SiglipConfig

    common = dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")  # flax LayerNorm eps, tanh GELU
    return SiglipConfig(
        text_config=dict(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            max_position_embeddings=text["max_position_embeddings"],
            projection_size=text["projection_size"] or text["hidden_size"],
            bos_token_id=None,  # token ids belong to the tokenizer (BvTextTokenizer), not to the checkpoint
            eos_token_id=None,
            **common,
        ),
        vision_config=dict(
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_hidden_layers"],
            num_attention_heads=vision["num_attention_heads"],
            num_channels=vision.get("num_channels", 3),
            image_size=vision["image_size"][0],
            patch_size=vision["patch_size"][0],
            vision_use_head=True,
            **common,
        ),
    )


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


@register_family(FAMILY)
def build_two_towers(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None, target: str = "auto", **_
):
    """Returns ``(model class, config, {hf_name: LazyArray})`` for a two-tower checkpoint (not read yet).

    ``target``: ``"auto"`` (``SiglipModel`` where exact, else ours), ``"transformers"`` (``SiglipModel`` or a
    one-line error saying why not) or ``"bv"`` (always `BvSiglipModel` / `BvTwoTowerModel`). ``image_size``
    resamples a learned image posemb as big_vision ``vit.load`` does.
    """
    if target not in ("auto", "transformers", "bv"):
        raise CheckpointError(f"unknown target {target!r}; expected 'auto', 'transformers' or 'bv'")
    kwargs = dict(model_kwargs or {})
    unknown = sorted(set(kwargs) - set(TWO_TOWER_KWARGS))
    if unknown:
        known = ", ".join(TWO_TOWER_KWARGS)
        raise CheckpointError(f"unknown big_vision two_towers option(s) {unknown}; known: {known}")
    if kwargs.get("image_model", "vit") != "vit":
        raise CheckpointError(f"image_model={kwargs['image_model']!r} is not supported here (only 'vit')")
    if kwargs.get("text_model", TEXT_MODEL) != TEXT_MODEL:
        raise CheckpointError(f"text_model={kwargs['text_model']!r} is not supported here (only {TEXT_MODEL!r})")

    params = prepare_two_tower_params(params)
    out_dims = _out_dims(kwargs)
    # two_towers.Model: `{"num_classes": out_dims[i], **(self.image|text or {})}`.
    image_kwargs = {**({"num_classes": out_dims[0]} if out_dims else {}), **dict(kwargs.get("image") or {})}
    text_kwargs = {**({"num_classes": out_dims[1]} if out_dims else {}), **dict(kwargs.get("text") or {})}
    try:
        vision, image_head = infer_vit_config(params, image_kwargs, image_size, prefix="img/")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if "num_classes" in image_kwargs and not image_kwargs["num_classes"] and image_head:
        raise CheckpointError(f"model config says out_dim[0]=None (no image head) but the checkpoint has img/head "
                              f"({image_head} outputs)")
    text = infer_text_config(params, text_kwargs)
    has_bias = "b" in params
    if kwargs.get("bias_init") is not None and not has_bias:
        raise CheckpointError("model config sets bias_init but the checkpoint has no bias 'b'")

    try:
        vit_config = BvViTConfig(**vision)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    misfits = siglip_misfits(vision, text, image_head, has_bias)
    if target == "transformers" and misfits:
        raise CheckpointError("transformers' SiglipModel cannot represent this checkpoint: " + "; ".join(misfits))

    if target != "bv" and not misfits:
        from transformers import SiglipModel

        mapped = map_params(params, SIGLIP_RULES)
        key = "vision_model.embeddings.position_embedding.weight"
        fit_posemb(mapped, key, vit_config)
        mapped[key] = mapped[key].derive(squeeze0.array, squeeze0.shape(mapped[key].shape))
        pack_in_proj(mapped, "vision_model.head.attention")
        if "text_model.head.weight" not in mapped:  # no txt/head: SiglipTextModel's head becomes the identity
            width = text["hidden_size"]
            mapped["text_model.head.weight"] = LazyArray.constant(np.eye(width, dtype=np.float32), "<identity>")
            mapped["text_model.head.bias"] = LazyArray.constant(np.zeros(width, np.float32), "<identity>")
            for name in ("text_model.head.weight", "text_model.head.bias"):
                mapped[name].name = "(identity: no txt/head)"
        return SiglipModel, _siglip_config(vision, text), mapped

    if misfits:
        logger.info("two towers -> our classes; SiglipModel cannot represent: %s", "; ".join(misfits))
    loss = "sigmoid" if has_bias else "softmax"
    options = {"temperature_init": kwargs["temperature_init"]} if "temperature_init" in kwargs else {}
    if has_bias:
        options["bias_init"] = kwargs.get("bias_init", -10.0 if loss == "sigmoid" else 0.0)
    try:
        config = BvTwoTowerConfig.from_loss(
            loss, vision_config=vit_config, text_config=text, vision_projection_size=image_head, **options
        )
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    cls = BvSiglipModel if loss == "sigmoid" else BvTwoTowerModel
    mapped = map_params(params, BV_TWO_TOWER_RULES)
    fit_posemb(mapped, "vision_model.embeddings.position_embedding", vit_config)
    return cls, config, mapped


def two_tower_image_processor_for(config, preprocessing: str = "resize"):
    """The image tower's `BvImageProcessor` (``SiglipConfig`` keeps the resolution in ``vision_config``)."""
    from ..processing.image_processing_bv import image_processor_for

    return image_processor_for(config.vision_config, preprocessing)


PROCESSORS[FAMILY] = two_tower_image_processor_for
