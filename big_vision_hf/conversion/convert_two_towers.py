"""big_vision two towers (``proj.image_text.two_towers`` with ``proj.image_text.text_transformer``) ->
transformers' ``SiglipModel`` where it represents the checkpoint exactly, else `BvSiglipModel` / `BvTwoTowerModel`.

``SiglipModel`` represents SigLIP (en, i18n) and fixed-resolution SigLIP 2: image tower with MAP pool, learned
posemb, no ``rep_size``, no image head (``out_dim[0] = None``), square image and patch; text tower pooling the
``last`` token; a bias ``b`` (sigmoid-trained); no dropout. A text tower without a head gets an identity
``text_model.head`` (``SiglipTextModel`` always applies one). Every other tower (gap/tok image pool, sincos
posemb, image head, text pool first/gap/max/map, softmax-trained, ...) goes to our classes
(``modeling_bv_two_towers``): ``bv_siglip`` when the checkpoint has ``b`` (sigmoid loss), ``bv_two_towers``
otherwise (big_vision: ``b`` exists iff ``bias_init`` is set, i.e. the sigmoid loss).

One builder serves every image tower through `IMAGE_TOWERS` (big_vision ``image_model``): ``"vit"`` and
``"proj.image_text.naflex_vit"`` (SigLIP 2 NaFlex: our exact `BvSiglipModel` with a `BvNaFlexViTModel` tower, or
with ``--target transformers`` transformers' ``Siglip2Model``, close but not exact, whose measured deviation goes
into the card). The tables compose as big_vision ``two_towers.load`` does: the image tower's rules under ``img/``,
the text tower's under
``txt/``, ``t`` (the LOG temperature) -> ``logit_scale``, ``b`` -> ``logit_bias``. LiT's text tower
(``text_model="proj.flaxformer.bert"``, detected from ``txt/BertEncoder_0/``) uses `BERT_RULES` instead, into
`BvBertTextTransformer` (never ``SiglipModel``). Layout passes: the ViT's
(``fix_old_checkpoints``, scan -> loop) on ``img/``; big_vision ``text_transformer.load`` (``convert_pre_linen``,
the double-added ``Encoder_0/pos_embedding`` of some old checkpoints merged into ``pos_embedding``) and scan ->
loop on ``txt/``. ``file.npz:img`` alone is a ViT: ``--model-name vit`` (detected).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..configuration.configuration_bv_naflex import BvNaFlexViTConfig
from ..configuration.configuration_bv_two_towers import (
    BERT_CONFIGS,
    TEXT_POOL_ALIASES,
    BvTwoTowerConfig,
    bv_bert_kwargs_to_config,
    bv_text_kwargs_to_config,
)
from ..configuration.configuration_bv_vit import BvViTConfig
from ..modeling.modeling_bv_two_towers import BvSiglipModel, BvTwoTowerModel
from ..processing.image_processing_bv import image_processor_for
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_naflex import (
    NAFLEX_RULES,
    SIGLIP_SIZES,
    flatten_posemb,
    infer_naflex_config,
    naflex_image_processor_for,
    prepare_naflex_params,
    same_fields,
    siglip2_unsupported,
    siglip2_vision_kwargs,
    synthetic_naflex_inputs,
)
from .convert_bv_vit import VIT_RULES, fit_posemb, infer_vit_config, prepare_vit_params, to_loop_layout
from .export import add_text_processor
from .family import Built, Family
from .mapping import (
    Rule,
    Transform,
    conv,
    convert_pre_linen,
    dense,
    encoder_rules,
    flat,
    heads_in,
    heads_out,
    layer_norm,
    linear,
    map_head_rules,
    map_params,
    prefixed,
)

logger = logging.getLogger(__name__)

NAME = "proj.image_text.two_towers"
TEXT_MODEL = "proj.image_text.text_transformer"
BERT_MODEL = "proj.flaxformer.bert"  # LiT's text tower (flaxformer BertEncoder)
NAFLEX_MODEL = "proj.image_text.naflex_vit"
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

# big_vision proj.flaxformer.bert name (flaxformer BertEncoder under `BertEncoder_0`) -> BvBertTextTransformer
# name (transformers' BERT modules). flaxformer stores q/k/v kernels [D, heads*head_dim] and the attention output
# kernel [heads*head_dim, D] (DenseGeneral `reshape_kernel=True`); heads_in/heads_out also take the [D, H, Dh] /
# [H, Dh, D] layout of `reshape_kernel=False`.
_BERT = "BertEncoder_0"
_BERT_LAYER = f"{_BERT}/encoder_block/layer_sequence/layers_(\\d+)"
BERT_RULES = [
    Rule(f"{_BERT}/embedder/embedders_token_ids/embedding", "embeddings.word_embeddings.weight"),
    Rule(f"{_BERT}/embedder/embedders_position_ids/embedding", "embeddings.position_embeddings.weight"),
    Rule(f"{_BERT}/embedder/embedders_segment_ids/embedding", "embeddings.token_type_embeddings.weight"),
    *layer_norm(f"{_BERT}/layer_norm", "embeddings.LayerNorm"),
    Rule(f"{_BERT_LAYER}/attention_block/attention_layer/(query|key|value)/kernel",
         "encoder.layer.{0}.attention.self.{1}.weight", heads_in),
    Rule(f"{_BERT_LAYER}/attention_block/attention_layer/(query|key|value)/bias",
         "encoder.layer.{0}.attention.self.{1}.bias", flat),
    Rule(f"{_BERT_LAYER}/attention_block/dense_layer/kernel", "encoder.layer.{0}.attention.output.dense.weight",
         heads_out),
    Rule(f"{_BERT_LAYER}/attention_block/dense_layer/bias", "encoder.layer.{0}.attention.output.dense.bias"),
    *layer_norm(f"{_BERT_LAYER}/attention_block/layer_norm", "encoder.layer.{0}.attention.output.LayerNorm"),
    *linear(f"{_BERT_LAYER}/mlp_block/mlp/dense_layer", "encoder.layer.{0}.intermediate.dense"),
    *linear(f"{_BERT_LAYER}/mlp_block/dense_layer", "encoder.layer.{0}.output.dense"),
    *layer_norm(f"{_BERT_LAYER}/mlp_block/layer_norm", "encoder.layer.{0}.output.LayerNorm"),
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
# The same with LiT's BERT text tower.
BV_LIT_RULES = [rule for rule in BV_TWO_TOWER_RULES if not rule.bv.startswith("txt/")]
BV_LIT_RULES += prefixed(BERT_RULES, "txt/", "text_model.")


# big_vision two_towers name -> transformers SiglipModel name. The MAP head's q/k/v land on `*.q_proj` etc. and
# are packed into nn.MultiheadAttention's `in_proj_*` by `pack_in_proj`; `img/pos_embedding` is squeezed after
# `fit_posemb`.
SIGLIP_RULES = [
    Rule("img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight", conv),
    Rule("img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
    Rule("img/pos_embedding", "vision_model.embeddings.position_embedding.weight"),
    *encoder_rules("img/Transformer", "vision_model.encoder", "vision_model.post_layernorm"),
    *map_head_rules("img/MAPHead_0", "vision_model.head"),
    Rule("txt/Embed_0/embedding", "text_model.embeddings.token_embedding.weight"),
    Rule("txt/pos_embedding", "text_model.embeddings.position_embedding.weight", squeeze0),
    *encoder_rules("txt/Encoder_0", "text_model.encoder", "text_model.final_layer_norm"),
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


def prepare_two_tower_params(params: dict[str, LazyArray], prepare_image=prepare_vit_params) -> dict[str, LazyArray]:
    """Both towers' layout passes; checks that both towers and ``t`` are there (one-line errors).

    ``prepare_image(params, "img/")``: the image tower's passes (the ViT's; NaFlex's keeps its 2-D posemb out)."""
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
    params = prepare_image(params, "img/")
    inside = {k[len("txt/"):]: v for k, v in params.items() if k.startswith("txt/")}
    outside = {k: v for k, v in params.items() if not k.startswith("txt/")}
    if not any(k.startswith(f"{_BERT}/") for k in inside):  # a BERT tower (LiT) has no such layouts
        inside = to_loop_layout(fix_old_text_checkpoints(inside), "Encoder_0")
    return {**outside, **{"txt/" + k: v for k, v in inside.items()}}


# ---------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------


def tower_shapes(params: dict[str, LazyArray], prefix: str, model: str):
    """``shape(name)`` of the arrays under ``prefix``, with a one-line error naming a missing one."""

    def shape(name: str) -> tuple[int, ...]:
        if prefix + name not in params:
            raise CheckpointError(f"not a big_vision {model} tower: no {prefix + name!r} array")
        return params[prefix + name].shape

    return shape


def infer_text_config(params: dict[str, LazyArray], text_kwargs: dict, prefix: str = "txt/") -> dict:
    """`BvTextConfig` kwargs from the arrays' shapes, checked against big_vision ``config.model.text``."""
    p = prefix
    given = bv_text_kwargs_to_config(text_kwargs)
    shape = tower_shapes(params, p, "text_transformer")

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


def infer_bert_config(params: dict[str, LazyArray], text_kwargs: dict, prefix: str = "txt/") -> dict:
    """`BvBertTextConfig` kwargs from the arrays' shapes, checked against big_vision ``config.model.text``
    (``config="base"|"large"``). flaxformer's q/k/v kernels are ``[D, D]``: the number of heads comes from the
    named config, or from the sizes when they are BERT-base's or BERT-large's."""
    p = prefix
    given = bv_bert_kwargs_to_config(text_kwargs)
    shape = tower_shapes(params, p, "proj.flaxformer.bert")

    vocab, width = shape(f"{_BERT}/embedder/embedders_token_ids/embedding")
    layers = f"{_BERT}/encoder_block/layer_sequence/layers_"
    depth = 1 + max(int(k[len(p + layers):].split("/")[0]) for k in params if k.startswith(p + layers))
    inferred = dict(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=depth,
        intermediate_size=shape(f"{layers}0/mlp_block/mlp/dense_layer/kernel")[-1],
        max_position_embeddings=shape(f"{_BERT}/embedder/embedders_position_ids/embedding")[0],
        type_vocab_size=shape(f"{_BERT}/embedder/embedders_segment_ids/embedding")[0],
        projection_size=shape("head/kernel")[1] if p + "head/kernel" in params else None,
    )
    named = f" (BERT {text_kwargs['config']})" if "config" in text_kwargs else ""
    for key, value in inferred.items():
        if key in given and given[key] != value:
            what = "text out_dim/num_classes" if key == "projection_size" else f"text {key}"
            raise CheckpointError(f"model config says {what}={given[key]!r}{named} but the checkpoint arrays have "
                                  f"{value!r}")
    if "num_attention_heads" not in given:
        sizes = (width, inferred["intermediate_size"], depth)
        names = [name for name, dims in BERT_CONFIGS.items() if dims[:3] == sizes]
        if not names:
            raise CheckpointError(
                f"cannot tell the BERT text tower's number of attention heads (width {width}, mlp "
                f"{sizes[1]}, depth {depth} is neither BERT-base nor BERT-large, and flaxformer stores q/k/v "
                "kernels as [D, D]): pass --model-config '{\"text\": {\"num_attention_heads\": N}}'"
            )
        given["num_attention_heads"] = BERT_CONFIGS[names[0]][3]
    return {**given, **inferred}


def out_dims(model_kwargs: dict) -> tuple | None:
    if "out_dim" not in model_kwargs:
        return None  # the arrays tell (big_vision's default 128 would be checked against them otherwise)
    out_dim = model_kwargs["out_dim"]
    return (out_dim, out_dim) if isinstance(out_dim, int) or out_dim is None else tuple(out_dim)


def add_identity_text_head(mapped: dict[str, LazyArray], width: int) -> None:
    """No ``txt/head``: ``Siglip(2)TextModel``'s head (always applied) becomes the identity."""
    if "text_model.head.weight" in mapped:
        return
    mapped["text_model.head.weight"] = LazyArray.constant(np.eye(width, dtype=np.float32), "<identity>")
    mapped["text_model.head.bias"] = LazyArray.constant(np.zeros(width, np.float32), "<identity>")
    for name in ("text_model.head.weight", "text_model.head.bias"):
        mapped[name].name = "(identity: no txt/head)"


def siglip_misfits(vision: BvViTConfig, text: dict, image_head: int | None, has_bias: bool) -> list[str]:
    """Why transformers' ``SiglipModel`` cannot hold this checkpoint exactly (empty: it can)."""
    reasons = []
    if vision.pool_type != "map":
        reasons.append(f"image pool_type {vision.pool_type!r} (SiglipVisionModel pools with MAP)")
    if vision.posemb != "learn":
        reasons.append(f"image posemb {vision.posemb!r} (SiglipVisionModel learns its posemb)")
    if vision.representation_size:
        reasons.append("image rep_size (pre_logits layer)")
    if len(set(vision.image_size)) != 1 or len(set(vision.patch_size)) != 1:
        reasons.append(f"non-square image {vision.image_size} or patch {vision.patch_size}")
    if vision.dropout or text.get("dropout"):
        reasons.append("dropout (SiglipModel has none in the residual branches)")
    return reasons + text_head_misfits(image_head, text, has_bias, "SiglipTextModel")


def siglip2_misfits(vision: BvNaFlexViTConfig, text: dict, image_head: int | None, has_bias: bool) -> list[str]:
    """Why transformers' ``Siglip2Model`` cannot hold this NaFlex two-tower checkpoint at all (empty: it can, up to
    the deviations listed in ``convert_bv_naflex.export_to_siglip2``)."""
    reasons = siglip2_unsupported(vision)
    if vision.pool_type != "map":
        reasons = [r for r in reasons if not r.startswith("pool_type")] + [
            f"image pool_type {vision.pool_type!r} (Siglip2Model pools with MAP)"]
    if text.get("dropout"):
        reasons.append("text dropout")
    return reasons + text_head_misfits(image_head, text, has_bias, "Siglip2TextModel")


def text_head_misfits(image_head: int | None, text: dict, has_bias: bool, text_class: str) -> list[str]:
    """What neither ``SiglipModel`` nor ``Siglip2Model`` has: an image head, a text tower pooling another token
    than the last, no bias (softmax-trained)."""
    reasons = []
    if image_head:
        reasons.append("an image head (img/head, out_dim[0])")
    if text["pool_type"] != "last":
        reasons.append(f"text pool_type {text['pool_type']!r} ({text_class} pools the last token)")
    if not has_bias:
        reasons.append("no bias 'b': softmax-trained (SiglipModel adds logit_bias; pipelines score it with sigmoid)")
    return reasons


def siglip_text_config(text: dict) -> dict:
    """``SiglipTextConfig`` / ``Siglip2TextConfig`` kwargs of a big_vision text tower (`infer_text_config`)."""
    return dict(
        **same_fields(text, ("vocab_size", *SIGLIP_SIZES, "max_position_embeddings")),
        projection_size=text["projection_size"] or text["hidden_size"],
        bos_token_id=None,  # token ids belong to the tokenizer (BvTextTokenizer), not to the checkpoint
        eos_token_id=None,
        layer_norm_eps=1e-6,  # flax LayerNorm eps
        hidden_act="gelu_pytorch_tanh",  # flax nn.gelu (tanh)
    )


def to_siglip(params: dict[str, LazyArray], vision: BvViTConfig, text: dict) -> Built:
    """transformers' ``SiglipModel`` (exact where `siglip_misfits` is empty)."""
    from transformers import SiglipConfig, SiglipModel

    mapped = map_params(params, SIGLIP_RULES)
    key = "vision_model.embeddings.position_embedding.weight"
    fit_posemb(mapped, key, vision)
    mapped[key] = mapped[key].derive(squeeze0.array, squeeze0.shape(mapped[key].shape))
    pack_in_proj(mapped, "vision_model.head.attention")
    add_identity_text_head(mapped, text["hidden_size"])
    vision_config = dict(
        **same_fields(vision, (*SIGLIP_SIZES, "num_channels")),
        image_size=vision.image_size[0],
        patch_size=vision.patch_size[0],
        vision_use_head=True,
        layer_norm_eps=1e-6,  # flax LayerNorm eps
        hidden_act="gelu_pytorch_tanh",  # flax nn.gelu (tanh)
    )
    return Built(SiglipModel, SiglipConfig(text_config=siglip_text_config(text), vision_config=vision_config), mapped)


# big_vision two_towers name -> transformers Siglip2Model name (the text tower, t and b as in SiglipModel:
# Siglip2TextModel is SiglipTextModel).
SIGLIP2_RULES = [
    Rule("img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight", dense),
    Rule("img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
    Rule("img/pos_embedding", "vision_model.embeddings.position_embedding.weight", flatten_posemb),
    *encoder_rules("img/Transformer", "vision_model.encoder", "vision_model.post_layernorm"),
    *map_head_rules("img/MAPHead_0", "vision_model.head"),
    *[rule for rule in SIGLIP_RULES if not rule.bv.startswith("img/")],
]


def to_siglip2(params: dict[str, LazyArray], vision: BvNaFlexViTConfig, text: dict) -> Built:
    """transformers' ``Siglip2Model`` (close, not exact: its deviation goes into the card, `siglip2_parity_note`)."""
    from transformers import Siglip2Config, Siglip2Model

    mapped = map_params(params, SIGLIP2_RULES)
    pack_in_proj(mapped, "vision_model.head.attention")
    add_identity_text_head(mapped, text["hidden_size"])
    config = Siglip2Config(text_config=siglip_text_config(text), vision_config=siglip2_vision_kwargs(vision))
    return Built(Siglip2Model, config, mapped)


@dataclass(frozen=True)
class ImageTower:
    """How the two-tower builder handles one big_vision ``image_model`` (as ``TEXT_TOWERS`` in modeling does for
    the text side).

    ``infer(params, kwargs, image_size, prefix) -> (config kwargs, head width)``; ``posemb``: our name of a learned
    posemb that `fit_posemb` resamples to ``image_size`` (``None``: resized at run time); ``transformers_class``,
    ``misfits`` and ``to_transformers``: the transformers class it can land in; ``exact_in_transformers``: whether that
    class is exact (then ``--target auto`` picks it where ``misfits`` is empty); ``processor(config, preprocessing)``.
    """

    prepare: Callable
    infer: Callable
    config_class: type
    rules: list[Rule]
    posemb: str | None
    transformers_class: str
    misfits: Callable[..., list[str]]
    to_transformers: Callable[..., Built]
    exact_in_transformers: bool
    processor: Callable


IMAGE_TOWERS = {
    "vit": ImageTower(prepare_vit_params, infer_vit_config, BvViTConfig, VIT_RULES, "embeddings.position_embedding",
                      "SiglipModel", siglip_misfits, to_siglip, True, image_processor_for),
    NAFLEX_MODEL: ImageTower(prepare_naflex_params, infer_naflex_config, BvNaFlexViTConfig, NAFLEX_RULES, None,
                             "Siglip2Model", siglip2_misfits, to_siglip2, False, naflex_image_processor_for),
}


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def text_model_of(params: dict[str, LazyArray], kwargs: dict) -> str:
    """big_vision ``text_model``: as given, else from the arrays (``txt/BertEncoder_0/``: LiT's BERT); checked."""
    is_bert = any(k.startswith(f"txt/{_BERT}/") for k in params)
    text_model = kwargs.get("text_model", BERT_MODEL if is_bert else TEXT_MODEL)
    if text_model not in (TEXT_MODEL, BERT_MODEL):
        raise CheckpointError(f"text_model={text_model!r} is not supported here (only {TEXT_MODEL!r}, {BERT_MODEL!r})")
    if is_bert and text_model != BERT_MODEL:
        raise CheckpointError(f"the checkpoint's text tower is a flaxformer BERT (txt/{_BERT}/...) but the model "
                              f"config says text_model={text_model!r}; use {BERT_MODEL!r}")
    if text_model == BERT_MODEL and not is_bert and any(k.startswith("txt/") for k in params):
        raise CheckpointError(f"text_model={BERT_MODEL!r} but the checkpoint's text tower has no txt/{_BERT}/ arrays "
                              f"(a big_vision text_transformer? use {TEXT_MODEL!r})")
    return text_model


def build_two_towers(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None, target: str = "auto"
) -> Built:
    """A two-tower checkpoint (nothing read yet), its image tower as ``image_model`` says (`IMAGE_TOWERS`).

    ``target``: ``"auto"`` (transformers' class where it is exact: ``SiglipModel`` for a ViT image tower; else
    ours), ``"transformers"`` (``SiglipModel`` / ``Siglip2Model``, or a one-line error saying why not; a not-exact
    class carries the exact build as ``Built.exact`` for the card's deviation) or ``"bv"`` (always `BvSiglipModel`
    / `BvTwoTowerModel`). ``image_size`` resamples a learned ViT posemb as big_vision ``vit.load`` does.
    """
    if target not in ("auto", "transformers", "bv"):
        raise CheckpointError(f"unknown target {target!r}; expected 'auto', 'transformers' or 'bv'")
    kwargs = dict(model_kwargs or {})
    unknown = sorted(set(kwargs) - set(TWO_TOWER_KWARGS))
    if unknown:
        known = ", ".join(TWO_TOWER_KWARGS)
        raise CheckpointError(f"unknown big_vision two_towers option(s) {unknown}; known: {known}")
    text_model = text_model_of(params, kwargs)
    image_model = kwargs.get("image_model", "vit")
    if image_model not in IMAGE_TOWERS:
        raise CheckpointError(f"image_model={image_model!r} is not supported here (only {', '.join(IMAGE_TOWERS)})")
    tower = IMAGE_TOWERS[image_model]

    params = prepare_two_tower_params(params, tower.prepare)
    dims = out_dims(kwargs)
    # two_towers.Model: `{"num_classes": out_dims[i], **(self.image|text or {})}`.
    image_kwargs = {**({"num_classes": dims[0]} if dims else {}), **dict(kwargs.get("image") or {})}
    text_kwargs = {**({"num_classes": dims[1]} if dims else {}), **dict(kwargs.get("text") or {})}
    vision_kwargs, image_head = tower.infer(params, image_kwargs, image_size, prefix="img/")
    if "num_classes" in image_kwargs and not image_kwargs["num_classes"] and image_head:
        raise CheckpointError(f"model config says out_dim[0]=None (no image head) but the checkpoint has img/head "
                              f"({image_head} outputs)")
    has_bias = "b" in params
    if kwargs.get("bias_init") is not None and not has_bias:
        raise CheckpointError("model config sets bias_init but the checkpoint has no bias 'b'")
    vision = tower.config_class(**vision_kwargs)
    if text_model == BERT_MODEL:
        text = infer_bert_config(params, text_kwargs)
        misfits = [f"text_model {BERT_MODEL!r} (a post-LN BERT; SiglipTextModel is big_vision's text_transformer)"]
    else:
        text = infer_text_config(params, text_kwargs)
        misfits = tower.misfits(vision, text, image_head, has_bias)
    if target == "transformers" and misfits:
        raise CheckpointError(f"transformers' {tower.transformers_class} cannot represent this checkpoint: "
                              + "; ".join(misfits))
    if misfits:
        logger.info("two towers -> our classes; transformers' class cannot represent: %s", "; ".join(misfits))

    loss = "sigmoid" if has_bias else "softmax"
    options = {"temperature_init": kwargs["temperature_init"]} if "temperature_init" in kwargs else {}
    if has_bias:
        options["bias_init"] = kwargs.get("bias_init", -10.0)
    config = BvTwoTowerConfig.from_loss(loss, vision_config=vision, text_config=text, vision_projection_size=image_head,
                                        image_model=image_model, text_model=text_model, **options)
    text_rules = BERT_RULES if text_model == BERT_MODEL else TEXT_RULES
    rules = [*prefixed(tower.rules, "img/", "vision_model."), *linear("img/head", "vision_head"),
             *prefixed(text_rules, "txt/", "text_model."), Rule("t", "logit_scale"), Rule("b", "logit_bias")]
    ours = Built(BvSiglipModel if loss == "sigmoid" else BvTwoTowerModel, config, map_params(params, rules))
    if tower.posemb:
        fit_posemb(ours.mapped, "vision_model." + tower.posemb, vision)
    if target == "transformers" or (target == "auto" and not misfits and tower.exact_in_transformers):
        theirs = tower.to_transformers(params, vision, text)
        theirs.exact = None if tower.exact_in_transformers else ours
        return theirs
    return ours


def two_tower_image_processor_for(config, preprocessing: str = "resize"):
    """The image tower's processor (`IMAGE_TOWERS`; ``SiglipConfig`` keeps the resolution in ``vision_config``).
    A ``Siglip2Model`` folder gets transformers' ``Siglip2ImageProcessorPil`` (so that it needs no code of ours; it
    resizes with PIL on uint8, not big_vision's float antialiased resize)."""
    if config.model_type == "siglip2":
        from transformers import Siglip2ImageProcessorPil

        return Siglip2ImageProcessorPil(patch_size=config.vision_config.patch_size, max_num_patches=256), ""
    return IMAGE_TOWERS[getattr(config, "image_model", "vit")].processor(config.vision_config, preprocessing)


# ---------------------------------------------------------------------------------------------------------
# The measured deviation of a SigLIP 2 NaFlex two-tower converted into Siglip2Model
# ---------------------------------------------------------------------------------------------------------


def synthetic_two_tower_inputs(config, num_tokens: int = 64, num_texts: int = 3, seed: int = 0) -> dict:
    """``synthetic_naflex_inputs`` images plus random sticky-EOS token ids (EOS = 1 at the end)."""
    text = config.text_config
    rng = np.random.default_rng([seed, 1])
    ids = rng.integers(2, text.vocab_size, (num_texts, text.max_position_embeddings))
    for i in range(num_texts):
        ids[i, text.max_position_embeddings - 1 - i :] = 1  # sticky EOS padding of different lengths
    return {**synthetic_naflex_inputs(config.vision_config, num_tokens, seed), "input_ids": torch.from_numpy(ids)}


@torch.no_grad()
def siglip2_model_deviation(exact, siglip2_model, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences ``Siglip2Model`` vs our exact `BvSiglipModel`: embeddings, image tower pooled
    features (``img/pre_logits``) and ``logits_per_image``."""
    ours, theirs = exact(**inputs), siglip2_model(**inputs)
    names = ("image_embeds", "text_embeds", "logits_per_image")
    out = {name: float((getattr(ours, name) - getattr(theirs, name)).abs().max()) for name in names}
    out["img/pre_logits"] = float(
        (ours.vision_model_output.pooler_output - theirs.vision_model_output.pooler_output).abs().max())
    return out


def siglip2_parity_note(model, built: Built, max_num_patches: int = 256) -> str:
    """The card's note of a NaFlex two-tower converted into ``Siglip2Model``: its deviation from the exact class
    (``built.exact``, the same arrays), measured (fp32) on synthetic images (a wide, a square, a tall and a 1x1
    patch grid) and texts. ``""`` for an exact conversion."""
    if built.exact is None:
        return ""
    exact = built.exact.instantiate()
    inputs = synthetic_two_tower_inputs(exact.config, min(max_num_patches, 4 * exact.config.vision_config.nposemb**2))
    dtype = model.dtype
    deviation = siglip2_model_deviation(exact, model.float().eval(), inputs)
    model.to(dtype)  # measured in fp32; bf16 -> fp32 -> bf16 is lossless
    figures = ", ".join(f"{k} {v:.1e}" for k, v in deviation.items())
    return (
        f"converted into transformers `Siglip2Model` (not exact); max abs difference from the exact big_vision_hf "
        f"`BvSiglipModel` (fp32, 4 synthetic images and 3 texts): {figures}. Differences: posemb resize "
        "(no L-canvas cap; before transformers 5.25 F.interpolate, wrong on 1-wide grids), pad queries unmasked, "
        "no 1e-8 in the embedding normalisation, and the image processor (PIL uint8 bilinear, not big_vision's "
        "float antialiased resize_to_sequence). Convert without --target transformers for the exact class."
    )


FAMILY = Family(
    name=NAME,
    build=build_two_towers,
    summary="two towers (proj/image_text/two_towers.py): SigLIP, SigLIP 2 (also NaFlex), LiT; --tokenizer adds text",
    signatures=(("img/embedding/kernel", "txt/Embed_0/embedding"),  # SigLIP-like (ViT or NaFlex image tower)
                ("img/embedding/kernel", "txt/BertEncoder_0/embedder/embedders_token_ids/embedding")),  # LiT
    options=("image_size", "target"),
    processor=two_tower_image_processor_for,
    text_side=add_text_processor,
    parity_note=siglip2_parity_note,
    classes=("SiglipModel", "Siglip2Model", "BvSiglipModel", "BvTwoTowerModel"),
)
