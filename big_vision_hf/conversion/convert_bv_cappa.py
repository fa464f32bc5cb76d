"""big_vision CapPa (``proj.cappa.cappa``) -> `BvCapPaForConditionalGeneration`.

The tree is a ViT under ``encoder/`` (``vit.Model`` without a head: the ViT table and layout passes under that
prefix, as ``cappa.load`` hands ``encoder`` to the ViT's loader), the decoder under ``decoder/`` and the decoder
posemb ``pos_embedding_decoder`` at the top. Layouts: loop (``decoder/EncDecBlock{i}``) and ``nn.scan``
(``decoder/EncDecBlock`` with the depth on axis **1**, ``param_scan_axis = 1`` in ``cappa.Decoder``; the encoder's
``Transformer/encoderblock`` stacks on axis 0), each side independently; the reader handles ``params/`` and bf16.

The image encoder alone converts into the ViT classes: ``big-vision-hf convert cappa.npz:encoder out --model-name vit``.

Everything the decoder's arrays tell is read from their shapes (width, depth, heads, MLP, vocabulary, mask token,
``decoder_bias``, posemb, text length); ``--model-config`` (big_vision ``config.model``) is checked against them.
The training-only ``masked_pred_prob``/``masking_ratio`` cannot be read from arrays: given, they are kept; not given,
a tree with the mask-token row gets ``configs/proj/cappa/pretrain.py``'s 0.75 / 1.0, one without it 0 / 0.
"""

from __future__ import annotations

import re

from ..configuration.configuration_bv_cappa import BvCapPaConfig, split_bv_cappa_kwargs
from ..configuration.configuration_bv_vit import BvViTConfig
from ..modeling.modeling_bv_cappa import BvCapPaForConditionalGeneration
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import VIT_RULES, fit_posemb, infer_vit_config, prepare_vit_params
from .family import Built, Family
from .mapping import Rule, attention, layer_norm, linear, map_params, prefixed, unstack_scan

DECODER_SCAN_AXIS = 1  # cappa.Decoder: param_scan_axis = 1 (the ViT encoder scans on axis 0)
PRETRAIN_MASKING = {"masked_pred_prob": 0.75, "masking_ratio": 1.0}  # configs/proj/cappa/pretrain.py

_BLOCK, _LAYER = r"decoder/EncDecBlock(\d+)", "model.decoder.layers.{0}"
# big_vision name -> BvCapPaForConditionalGeneration name.
CAPPA_RULES = [
    *prefixed(VIT_RULES, "encoder/", "model.encoder."),
    Rule("pos_embedding_decoder", "model.decoder.position_embedding"),
    Rule("decoder/EmbedTargets/embedding", "model.decoder.embed_tokens.weight"),
    *layer_norm(f"{_BLOCK}/LayerNorm1", f"{_LAYER}.layer_norm1"),
    *attention(f"{_BLOCK}/SelfAttn", f"{_LAYER}.self_attn"),
    *layer_norm(f"{_BLOCK}/LayerNorm2", f"{_LAYER}.layer_norm2"),
    *attention(f"{_BLOCK}/CrossAttn", f"{_LAYER}.encoder_attn"),
    *layer_norm(f"{_BLOCK}/LayerNorm3", f"{_LAYER}.layer_norm3"),
    *linear(f"{_BLOCK}/MLP/Dense_0", f"{_LAYER}.mlp.fc1"),
    *linear(f"{_BLOCK}/MLP/Dense_1", f"{_LAYER}.mlp.fc2"),
    *layer_norm("decoder/LayerNorm", "model.decoder.layer_norm"),
    *linear("decoder/LogitsDense", "lm_head"),
]

# Trees of other families that share CapPa's names, and what to convert them as instead.
_OTHER_FAMILIES = (
    ("EmbedPatches/kernel", "a UViM stage II (proj.uvim.vtt) checkpoint"),
    ("state/dictionary", "a UViM stage I VQ-VAE (proj.uvim.vit) checkpoint"),
    ("EmbedLabels/embedding", "a GIVT (proj.givt.givt) checkpoint"),
    ("img/embedding/kernel", "an image-text (two-tower / PaliGemma) checkpoint"),
    ("embedding/kernel", "a plain ViT checkpoint (--model-name vit)"),
)
_REQUIRED = ("encoder/embedding/kernel", "decoder/EmbedTargets/embedding", "decoder/LogitsDense/kernel",
             "decoder/LayerNorm/scale")


def check_cappa_tree(params: dict[str, LazyArray]) -> None:
    """One-line errors for trees that are not CapPa's (naming the family they look like)."""
    missing = [name for name in _REQUIRED if name not in params]
    if not missing and not any(k.startswith("decoder/EncDecBlock") for k in params):
        missing = ["decoder/EncDecBlock..."]
    if missing:
        hint = next((what for name, what in _OTHER_FAMILIES if name in params), None)
        raise CheckpointError(f"not a big_vision CapPa (proj.cappa.cappa) checkpoint: no {missing[0]!r}"
                              + (f"; it looks like {hint}" if hint else ""))


def unstack_decoder(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """``decoder/EncDecBlock/...`` (``nn.scan``, depth on axis 1) -> ``decoder/EncDecBlock{i}/...``, after checking
    that every stacked array has the same depth on axis 1 and that the LayerNorm scales are ``[width, depth]``; a
    tree stacked on another axis is refused in one line."""
    stacked = {k: a for k, a in params.items() if k.startswith("decoder/EncDecBlock/")}
    if not stacked:
        return params
    if any(re.match(r"decoder/EncDecBlock\d+/", k) for k in params):
        raise CheckpointError("the decoder has both scan (decoder/EncDecBlock/...) and loop (decoder/EncDecBlock{i}/) "
                              "arrays")
    width = params["decoder/EmbedTargets/embedding"].shape[1]
    axis = DECODER_SCAN_AXIS
    scale = "decoder/EncDecBlock/LayerNorm1/scale"
    if scale not in stacked or len(stacked[scale].shape) != 2 or stacked[scale].shape[1 - axis] != width:
        shape = tuple(stacked[scale].shape) if scale in stacked else None
        raise CheckpointError(
            f"{scale} has shape {shape}: a scanned CapPa decoder stacks its {width}-wide layers on axis {axis} "
            f"([{width}, depth], big_vision cappa.Decoder param_scan_axis=1); this tree has the depth elsewhere")
    depth = stacked[scale].shape[axis]
    for name, array in sorted(stacked.items()):
        if len(array.shape) <= axis or array.shape[axis] != depth:
            raise CheckpointError(f"{name} has shape {tuple(array.shape)}: every scanned decoder array must have the "
                                  f"depth {depth} on axis {axis} (big_vision cappa.Decoder param_scan_axis=1)")
    return unstack_scan(params, "decoder/EncDecBlock/", "decoder/EncDecBlock{}/", axis=axis)


def infer_decoder_config(params: dict[str, LazyArray], given: dict, vision: dict) -> dict:
    """`BvCapPaConfig` decoder fields from the arrays' shapes, checked against the translated kwargs ``given``
    (``0``/absent sizes mean the encoder's, as big_vision's ``decoder_* or ...``)."""
    rows, width = params["decoder/EmbedTargets/embedding"].shape
    vocab = params["decoder/LogitsDense/kernel"].shape[1]
    if rows not in (vocab, vocab + 1):
        raise CheckpointError(f"decoder/EmbedTargets/embedding has {rows} rows for a {vocab}-token LogitsDense "
                              f"(expected {vocab}, or {vocab + 1} with the parallel-prediction mask token)")
    depth = 1 + max(int(m.group(1)) for k in params if (m := re.match(r"decoder/EncDecBlock(\d+)/", k)))
    posemb = params.get("pos_embedding_decoder")
    inferred = dict(
        hidden_size=width, num_hidden_layers=depth, vocab_size=vocab,
        num_attention_heads=params["decoder/EncDecBlock0/SelfAttn/query/kernel"].shape[1],
        intermediate_size=params["decoder/EncDecBlock0/MLP/Dense_0/kernel"].shape[1],
        decoder_bias="decoder/EncDecBlock0/LayerNorm1/bias" in params,
        posemb="learn" if posemb is not None else "sincos2d",
    )
    if posemb is not None:
        inferred["max_position_embeddings"] = posemb.shape[1]
    encoder_sizes = {"hidden_size": vision["hidden_size"], "num_hidden_layers": vision["num_hidden_layers"],
                     "num_attention_heads": vision["num_attention_heads"],
                     "intermediate_size": vision["intermediate_size"]}
    for key, value in inferred.items():
        said = given.get(key)
        if key in encoder_sizes and not said and key in given:
            said = encoder_sizes[key]  # big_vision: decoder_* = 0 means the encoder's
        if said is not None and said != value:
            raise CheckpointError(f"model config says {key}={said!r} but the checkpoint arrays have {value!r}")
    has_mask = rows == vocab + 1
    masking = {k: given[k] for k in PRETRAIN_MASKING if k in given}
    if "masked_pred_prob" in masking and (masking["masked_pred_prob"] > 0) != has_mask:
        raise CheckpointError(
            f"model config says masked_pred_prob={masking['masked_pred_prob']} but decoder/EmbedTargets/embedding has "
            f"{rows} rows for {vocab} tokens ({'with' if has_mask else 'without'} the mask token)")
    if "masked_pred_prob" not in masking:
        masking = {**(PRETRAIN_MASKING if has_mask else {"masked_pred_prob": 0.0, "masking_ratio": 0.0}), **masking}
    return {**given, **inferred, **masking}


def build_cappa(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvCapPaForConditionalGeneration` for a CapPa checkpoint (loop or scan; nothing read yet)."""
    check_cappa_tree(params)
    vit_kwargs, decoder_kwargs = split_bv_cappa_kwargs(model_kwargs or {})
    params = prepare_vit_params(params, prefix="encoder/")
    params = unstack_decoder(params)
    vision, _ = infer_vit_config(params, vit_kwargs, image_size, prefix="encoder/")
    config = BvCapPaConfig(vision_config=BvViTConfig(**vision),
                           **infer_decoder_config(params, decoder_kwargs, vision))
    mapped = map_params(params, CAPPA_RULES)
    fit_posemb(mapped, "model.encoder.embeddings.position_embedding", config.vision_config)
    return Built(BvCapPaForConditionalGeneration, config, mapped)


def cappa_image_processor_for(config: BvCapPaConfig, preprocessing: str = "resize"):
    """The folder's image processor: the CapPa configs' ``decode|resize(S)|value_range(-1, 1)`` at the encoder's
    resolution; the text side comes with ``--tokenizer`` (`add_cappa_processor`)."""
    from ..processing.image_processing_bv import image_processor_for

    return image_processor_for(config.vision_config, preprocessing)


def add_cappa_processor(folder: str, tokenizer_file: str, preset: str | None = None, remote_code: bool = True):
    """The family's ``--tokenizer`` hook: big_vision's CapPa text pp (`cappa_tokenizer`: the SentencePiece file,
    c4_en for the CapPa configs, ``eos="sticky"``, pad ``<pad>``, the model's ``seq_len``) with the folder's image
    processor, as a `BvCapPaProcessor`; with ``remote_code`` its code and ``auto_map`` too."""
    import os

    from transformers import AutoConfig

    from ..processing.image_processing_bv import BvImageProcessor
    from ..processing.processing_bv_cappa import BvCapPaProcessor, cappa_tokenizer
    from .export import add_auto_map, remote_code_files, write_code

    if preset is not None:
        raise CheckpointError("--text-preset applies to two-tower models, not to CapPa (its text pp is fixed)")
    config = AutoConfig.from_pretrained(folder)
    try:
        tokenizer = cappa_tokenizer(tokenizer_file, max_length=config.max_position_embeddings)
    except ValueError as e:
        raise CheckpointError(f"--tokenizer {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"--tokenizer {tokenizer_file} has {tokenizer.vocab_size} pieces but the model's "
                              f"vocabulary has {config.vocab_size}")
    processor = BvCapPaProcessor(BvImageProcessor.from_pretrained(folder), tokenizer)
    processor.save_pretrained(folder)
    if remote_code:
        modules = [BvCapPaProcessor.__module__, type(tokenizer).__module__]
        write_code(folder, remote_code_files(*modules))
        stem = BvCapPaProcessor.__module__.rsplit(".", 1)[-1]
        add_auto_map(os.path.join(folder, "processor_config.json"), {"AutoProcessor": f"{stem}.BvCapPaProcessor"})
        tok_stem = type(tokenizer).__module__.rsplit(".", 1)[-1]
        add_auto_map(os.path.join(folder, "tokenizer_config.json"),
                     {"AutoTokenizer": [f"{tok_stem}.{type(tokenizer).__name__}", None]})
    return processor


FAMILY = Family(
    name="proj.cappa.cappa",
    build=build_cappa,
    summary="CapPa captioner (proj/cappa/cappa.py): ViT encoder + decoder; --tokenizer adds the processor",
    signatures=(("encoder/embedding/kernel", "decoder/EmbedTargets/embedding"),),
    processor=cappa_image_processor_for,
    text_side=add_cappa_processor,
    classes=("BvCapPaForConditionalGeneration", "BvCapPaModel"),
)
