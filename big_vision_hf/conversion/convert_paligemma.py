"""big_vision PaliGemma 1 and 2 (``proj.paligemma.paligemma``) -> transformers' ``PaliGemmaForConditionalGeneration``,
written to a folder tensor by tensor.

The checkpoint (``pt_224.npz``, ``pt_3b_224.bf16.npz``, a transfer, ...) holds two trees, as big_vision
``paligemma.load`` reads them (commit 0127fb6):

- ``img/...``: a scanned SigLIP ViT (``vit.Model(pool_type="none")``) whose ``img/head`` Dense is the projection
  to the LLM width -> ``model.vision_tower`` (transformers' ``SiglipVisionModel`` layout) and
  ``model.multi_modal_projector.linear``;
- ``llm/...``: Gemma (PaliGemma 1, ``gemma_2b``) or Gemma 2 (PaliGemma 2, ``gemma2_{2b,9b,27b}``) from
  ``models/ppp/gemma.py``, every ``llm/layers/...`` array stacked over the depth on axis 0 (``nn.scan``) ->
  ``model.language_model`` (``GemmaModel`` / ``Gemma2Model``), the LM head tied to the embedding.

What the conversion has to get right (each checked against the golden outputs of big_vision's own code):

- **Fused einsums.** ``q_einsum/w [N, D, H]``, ``kv_einsum/w [2, K, D, H]`` (0 = k, 1 = v) or, for MHA variants,
  ``qkv_einsum/w [3, N, D, H]``; ``attn_vec_einsum/w [N, H, D]``; ``gating_einsum [2, D, F]`` (0 = gate, 1 = up,
  ``gelu_tanh(x @ W[0]) * (x @ W[1])``); ``linear [F, D]``. The fused ones are split by a layout pass
  (:func:`split_fused_einsums`) that reads each layer once; every remaining transform is one named reshape.
- **RMSNorm.** big_vision computes ``x * rsqrt(mean(x^2) + 1e-6) * (1 + scale)``; transformers' Gemma/Gemma2
  RMSNorm stores the same ``weight`` and multiplies by ``(1 + weight)``, so scales are copied unchanged.
- **RoPE.** Both use the half-split layout: big_vision ``_apply_rope`` splits ``x1, x2 = split(x, 2)`` and
  returns ``[x1 cos - x2 sin, x2 cos + x1 sin]`` with frequencies ``10000**(-2i/H)``; transformers'
  ``rotate_half`` is ``cat(-x2, x1)`` with ``inv_freq = 1 / 10000**(arange(0, H, 2) / H)``. No q/k permutation
  (unlike Llama conversions from interleaved layouts). transformers' PaliGemma positions start at 1, big_vision's
  at 0: RoPE only sees differences, so the outputs agree.
- **Query scaling.** big_vision scales q by ``head_dim**-0.5`` (``query_pre_attn_norm="rsqrt_head_dim"``) or
  ``(width // num_heads)**-0.5`` (``"rsqrt_emb_per_head"``, Gemma 2 27B); Gemma 2 expresses it as
  ``query_pre_attn_scalar`` (``scaling = query_pre_attn_scalar**-0.5``), Gemma 1 always uses ``head_dim``.
- **GQA.** big_vision groups query heads as ``(K G)``: query head ``n`` reads kv head ``n // G``, as
  transformers' ``repeat_kv``.
- **Soft-caps.** Attention logits: ``tanh(l / cap) * cap`` before the mask in both. Final logits: PaliGemma's
  ``text_logits`` (what big_vision's trainer, evaluators and ``prefill_cache`` use) come from
  ``gemma_bv.compute_logits``, which does NOT apply ``final_logits_softcap`` (only ``llm/logits`` of the full
  Gemma path and ``extend_cache`` do). transformers applies ``final_logit_softcapping`` to every forward, so
  the converted config sets it to ``None`` and the model returns big_vision's ``text_logits``;
  ``apply_final_logits_softcap=True`` keeps the cap instead (big_vision's ``llm/logits``). Greedy decoding is the
  same either way (``tanh`` is monotonic); PaliGemma 2 transfers use ``final_logits_softcap=0.0`` anyway.
- **No sliding window.** transformers' Gemma 2 alternates 4096-token local layers; big_vision's Gemma 2 has none
  ("does *not* currently support the local sliding attention pattern", ``gemma.py``), which matters for
  PaliGemma 2 at 896px (4096 image tokens + text). The converted config has ``sliding_window=None`` and
  ``layer_types = ["full_attention"] * depth``.
- **Vocabulary.** PaliGemma's embedding has 257,152 rows (Gemma's 256,000 + 1024 ``<loc>`` + 128 ``<seg>``,
  ``configs/proj/paligemma/transfers/common.py``). transformers' PaliGemma puts image features at
  ``<image>`` tokens, id ``image_token_index``; the tokenizer adds ``<image>`` right after the SentencePiece
  vocabulary (257,152). By default the converted embedding keeps exactly the checkpoint's rows and
  ``<image>`` is out of it (``PaliGemmaModel`` maps out-of-vocabulary image ids to 0 before the lookup and then
  overwrites those positions with image features), so logits have big_vision's 257,152 entries and nothing is
  invented. The Hub's PaliGemma repos instead have ``vocab_size=257216``: the original transformers conversion
  script calls ``resize_token_embeddings(257152 + 2, pad_to_multiple_of=64)``, which adds the ``<image>`` row and
  63 padding rows sampled around the mean embedding. ``pad_vocab_to_multiple_of=64`` reproduces that layout,
  with every new row set to the mean embedding row (the centre of that distribution); logits for those ids
  mean nothing and big_vision never produces them.
- **Attention implementation.** The prefix-LM mask (``make_attn_mask``: image + prefix bidirectional, suffix
  causal) reaches the model only through ``token_type_ids`` (0 = prefix, 1 = suffix). Gemma 2 soft-caps
  attention logits, which ``sdpa`` cannot do: transformers falls back to ``eager`` when no implementation is
  asked for, and refuses an explicit ``sdpa``; use ``flex_attention`` (no ``[L, L]`` scores;
  ``modeling.paligemma_attention`` chooses it where it runs) or ``eager``. ``flash_attention_*``
  keep only the padding mask, so the suffix would be attended bidirectionally. ``sdpa`` is exact for
  PaliGemma 1 when ``token_type_ids`` are given, and silently bidirectional without them on unpadded batches.
  A folder cannot pin the choice (transformers does not serialise ``attn_implementation``); the model card
  says what to pass.

Conversion is streamed (:func:`write_streamed_safetensors`): names and shapes are checked against the model
built on the ``meta`` device, then every tensor is read, converted and appended to its safetensors shard. A
scan-stacked array is read layer by layer and a fused einsum part by part (each a contiguous byte range of the
npz member, ``LazyArray.take``), and big row-wise tensors (the embedding) in row chunks, so memory stays near one
layer's largest tensor (``gating_einsum`` gate or up: 2048 x 16384 for PaliGemma 3B, 4608 x 36864 for PaliGemma 2
28B) whatever the model size; bfloat16 is copied as bfloat16 bits when the output is bfloat16.
``big-vision-hf convert ckpt.npz OUT --model-name proj.paligemma.paligemma --model-config JSON`` takes
this path (the family record's ``write_folder``, :func:`write_paligemma_folder`).

Parity: big_vision ``proj.paligemma.paligemma.Model`` (``img``: scanned ViT, ``pool_type="none"``; ``llm``:
``gemma_bv``) on the golden fixtures ``paligemma`` (Gemma, MQA), ``paligemma2`` (Gemma 2, GQA, soft-caps,
post-norms) and ``paligemma2_qnorm`` (``rsqrt_emb_per_head``), float32: ``text_logits`` within 3e-6 (max abs),
see ``tests/test_paligemma_conversion.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import torch
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
)

from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import infer_vit_config, prepare_vit_params
from .export import write_streamed_safetensors
from .family import Built, Family
from .mapping import (
    Rule,
    Transform,
    conv,
    dense,
    encoder_blocks,
    heads_out,
    layer_norm,
    linear,
    map_params,
    prefixed,
    unstack_scan,
)
from .model_card import known_hub_id, render_model_card

NAME = "proj.paligemma.paligemma"

# ---------------------------------------------------------------------------------------------------------
# Gemma variants: big_vision models/ppp/gemma.py get_config (commit 0127fb6), transcribed.
# ---------------------------------------------------------------------------------------------------------

_GEMMA2 = dict(final_logits_softcap=30.0, attn_logits_softcap=50.0, post_norms=True)
GEMMA_VARIANTS = {
    # PaliGemma 1 (3B = SigLIP So400m/14 + gemma_2b).
    "gemma_2b": dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_7b": dict(width=3072, depth=28, mlp_dim=24_576, num_heads=16, num_kv_heads=16, head_dim=256),
    # PaliGemma 2 3B / 10B / 28B.
    "gemma2_2b": dict(width=2304, depth=26, mlp_dim=9_216, num_heads=8, num_kv_heads=4, head_dim=256, **_GEMMA2),
    "gemma2_9b": dict(width=3584, depth=42, mlp_dim=14_336, num_heads=16, num_kv_heads=8, head_dim=256, **_GEMMA2),
    "gemma2_27b": dict(width=4608, depth=46, mlp_dim=36_864, num_heads=32, num_kv_heads=16, head_dim=128,
                       query_pre_attn_norm="rsqrt_emb_per_head", **_GEMMA2),
}
# Defaults of gemma.Model fields that get_config leaves out.
_GEMMA_DEFAULTS = dict(vocab_size=256_000, query_pre_attn_norm="rsqrt_head_dim",
                       final_logits_softcap=0.0, attn_logits_softcap=0.0, post_norms=False)
# gemma_bv.Model / variant-config fields with no effect on the converted weights or on inference.
_GEMMA_NO_EFFECT = ("variant", "scan", "remat_policy", "dropout", "dropout_bdims", "cache_dtype", "embed_dtype",
                    "norm_eps")  # norm_eps: unused, RMSNorm hard-codes 1e-6
_GEMMA_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                 "query_pre_attn_norm", "final_logits_softcap", "attn_logits_softcap", "post_norms")
_GEMMA_RMS_EPS = 1e-6  # gemma.py RMSNorm: rsqrt(var + 1e-06)
_GEMMA_ROPE = {"rope_type": "default", "rope_theta": 10_000.0}  # gemma.py _apply_rope(max_wavelength=10_000)
_SIGLIP_LN_EPS = 1e-6  # flax nn.LayerNorm default

# ---------------------------------------------------------------------------------------------------------
# Transforms (each one reshape, flax layout -> torch layout)
# ---------------------------------------------------------------------------------------------------------

#: Gemma ``q|k|v_einsum`` ``[heads, D, head_dim]`` -> ``Linear.weight`` ``[heads*head_dim, D]``.
einsum_heads_in = Transform(
    "einsum_heads_in", lambda x: x.transpose(0, 2, 1).reshape(-1, x.shape[1]), lambda s: (s[0] * s[2], s[1]),
    layout_only=True,
)
#: ViT learned ``pos_embedding`` ``[1, N, D]`` -> ``nn.Embedding.weight`` ``[N, D]``.
posemb_rows = Transform("posemb_rows", lambda x: x.reshape(-1, x.shape[-1]), lambda s: (math.prod(s[:-1]), s[-1]),
                        layout_only=True)

# ---------------------------------------------------------------------------------------------------------
# Rule tables
# ---------------------------------------------------------------------------------------------------------

# big_vision vit.Model(pool_type="none") -> transformers SiglipVisionTransformer (PaliGemma's vision_tower).
SIGLIP_VISION_RULES = [
    Rule("embedding/kernel", "embeddings.patch_embedding.weight", conv),
    Rule("embedding/bias", "embeddings.patch_embedding.bias"),
    Rule("pos_embedding", "embeddings.position_embedding.weight", posemb_rows),
    *encoder_blocks("Transformer", "encoder"),
    *layer_norm("Transformer/encoder_norm", "post_layernorm"),
]

_L, _H = r"layers_(\d+)", "layers.{0}"
# big_vision ppp/gemma.py Model (loop layout, fused einsums split) -> transformers GemmaModel / Gemma2Model.
GEMMA_RULES = [
    Rule("embedder/input_embedding", "embed_tokens.weight"),
    Rule(f"{_L}/pre_attention_norm/scale", f"{_H}.input_layernorm.weight"),
    Rule(f"{_L}/attn/q_einsum/w", f"{_H}.self_attn.q_proj.weight", einsum_heads_in),
    Rule(f"{_L}/attn/k_einsum/w", f"{_H}.self_attn.k_proj.weight", einsum_heads_in),
    Rule(f"{_L}/attn/v_einsum/w", f"{_H}.self_attn.v_proj.weight", einsum_heads_in),
    Rule(f"{_L}/attn/attn_vec_einsum/w", f"{_H}.self_attn.o_proj.weight", heads_out),  # [N, H, D] -> [D, N*H]
    Rule(f"{_L}/mlp/gating_einsum/gate", f"{_H}.mlp.gate_proj.weight", dense),
    Rule(f"{_L}/mlp/gating_einsum/up", f"{_H}.mlp.up_proj.weight", dense),
    Rule(f"{_L}/mlp/linear", f"{_H}.mlp.down_proj.weight", dense),
    Rule("final_norm/scale", "norm.weight"),
]
# Gemma 1 calls the norm before the MLP `post_attention_layernorm`.
GEMMA_NORM_RULES = [Rule(f"{_L}/pre_ffw_norm/scale", f"{_H}.post_attention_layernorm.weight")]
# Gemma 2 adds norms on the attention and MLP outputs (applied before the residual add in both codebases).
GEMMA2_NORM_RULES = [
    Rule(f"{_L}/pre_ffw_norm/scale", f"{_H}.pre_feedforward_layernorm.weight"),
    Rule(f"{_L}/post_attention_norm/scale", f"{_H}.post_attention_layernorm.weight"),
    Rule(f"{_L}/post_ffw_norm/scale", f"{_H}.post_feedforward_layernorm.weight"),
]


def paligemma_rules(gemma2: bool) -> list[Rule]:
    """big_vision PaliGemma names (after the layout passes) -> ``PaliGemmaForConditionalGeneration`` names."""
    llm = GEMMA_RULES + (GEMMA2_NORM_RULES if gemma2 else GEMMA_NORM_RULES)
    return [
        *prefixed(SIGLIP_VISION_RULES, "img/", "model.vision_tower."),
        *linear("img/head", "model.multi_modal_projector.linear"),
        *prefixed(llm, "llm/", "model.language_model."),
    ]


# ---------------------------------------------------------------------------------------------------------
# Layout passes
# ---------------------------------------------------------------------------------------------------------

_FUSED = {
    # name under llm/layers_{i}/ -> the names of its parts along axis 0
    "attn/qkv_einsum/w": ("attn/q_einsum/w", "attn/k_einsum/w", "attn/v_einsum/w"),
    "attn/kv_einsum/w": ("attn/k_einsum/w", "attn/v_einsum/w"),
    "mlp/gating_einsum": ("mlp/gating_einsum/gate", "mlp/gating_einsum/up"),  # gemma.py FeedForward: 0 gate, 1 up
}


def maybe_transpose_gating_einsum(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """``gating_einsum`` stored ``[..., F, D]`` -> ``[..., D, F]``, as big_vision
    ``gemma._maybe_transpose_gating_einsum``
    (``transpose_gating_einsum`` checkpoints of gemma/modules.py; detected by shape: ``F > D``)."""
    for name in [k for k in params if k.endswith("mlp/gating_einsum")]:
        array = params[name]
        *lead, d1, d2 = array.shape
        if d1 > d2:
            params[name] = array.derive(lambda x: np.swapaxes(x, -1, -2), (*lead, d2, d1), "(transposed)",
                                        layout_only=True, row_wise=True)
    return params


def to_gemma_loop_layout(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """``llm/layers/...`` stacked on axis 0 (``nn.scan``) or ``llm/layers/{i}/...`` (``scan=False``) ->
    ``llm/layers_{i}/...``."""
    if any(k.startswith("llm/layers/") and re.match(r"\d+/", k[len("llm/layers/"):]) for k in params):
        return {re.sub(r"^llm/layers/(\d+)/", r"llm/layers_\1/", k): v for k, v in params.items()}
    return unstack_scan(params, "llm/layers/", "llm/layers_{}/", axis=0)


def split_fused_einsums(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """``kv_einsum`` -> k, v; ``qkv_einsum`` -> q, k, v; ``gating_einsum`` -> gate, up (per layer, along axis 0).

    The parts keep the array's place and source; each reads only its own bytes (the split is ``unstack_scan`` on
    one layer's array, and a part is a contiguous range of it).
    """
    out: dict[str, LazyArray] = {}
    for name, array in params.items():
        match = re.fullmatch(r"(llm/layers_\d+/)(.*)", name)
        parts = _FUSED.get(match.group(2)) if match else None
        if parts is None:
            out[name] = array
            continue
        if array.shape[0] != len(parts):
            raise CheckpointError(f"{name}: expected {len(parts)} fused parts on axis 0, found shape {array.shape}")
        split = unstack_scan({name: array}, name, name + "#{}", axis=0)
        for i, part in enumerate(parts):
            out[match.group(1) + part] = split[f"{name}#{i}"]
    return out


def prepare_paligemma_params(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """All layout passes: the ViT's (old layouts, scan -> loop) under ``img/``, then Gemma's under ``llm/``."""
    params = prepare_vit_params(params, "img/")
    params = maybe_transpose_gating_einsum(params)
    params = to_gemma_loop_layout(params)
    return split_fused_einsums(params)


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


def gemma_variant_config(llm_kwargs: dict) -> dict:
    """big_vision ``config.model.llm`` -> the full Gemma config, as ``gemma_bv._get_config`` builds it.

    ``llm.variant`` is a name of :data:`GEMMA_VARIANTS` or, for variants outside big_vision's table (tiny test
    variants), the variant's full config as a dict (what ``gemma.get_config(variant)`` returns).
    ``vocab_size``, ``final_logits_softcap`` and ``attn_logits_softcap`` given in ``llm`` override the variant's.
    """
    llm = dict(llm_kwargs)
    variant = llm.pop("variant", "gemma_2b")  # gemma_bv.Model default
    if isinstance(variant, dict):
        config = dict(variant)
    elif variant in GEMMA_VARIANTS:
        config = dict(GEMMA_VARIANTS[variant])
    else:
        raise CheckpointError(
            f"unknown Gemma variant {variant!r} (known: {', '.join(GEMMA_VARIANTS)}); for another variant pass its "
            "full config as llm.variant, e.g. {\"variant\": {\"width\": 64, \"depth\": 2, ...}}"
        )
    config = {**_GEMMA_DEFAULTS, **{k: v for k, v in config.items() if k not in _GEMMA_NO_EFFECT}}
    for key in ("vocab_size", "final_logits_softcap", "attn_logits_softcap"):  # gemma_bv._get_config overrides
        if llm.get(key) is not None:
            config[key] = llm.pop(key)
    unknown = sorted(set(llm) - set(_GEMMA_NO_EFFECT) - {"vocab_size", "final_logits_softcap", "attn_logits_softcap"})
    unknown += sorted(set(config) - set(_GEMMA_FIELDS))
    if unknown:
        raise CheckpointError(f"unknown big_vision Gemma option(s) {', '.join(unknown)}")
    return config


def infer_gemma_config(params: dict[str, LazyArray], llm_kwargs: dict) -> dict:
    """What the ``llm/`` arrays tell (raw big_vision names, before the layout passes), checked against the
    variant config; returns the full big_vision Gemma config.

    The vocabulary is checked only against an explicit ``llm.vocab_size``: PaliGemma configs always override the
    variant's 256,000 rows (257,152 with ``<loc>``/``<seg>``), so without it the arrays decide.
    """
    config = gemma_variant_config(llm_kwargs)
    if llm_kwargs.get("vocab_size") is None:
        config["vocab_size"] = None

    def shape(name):
        if "llm/" + name not in params:
            raise CheckpointError(f"not a big_vision PaliGemma checkpoint: no 'llm/{name}' array")
        return params["llm/" + name].shape

    scanned = "llm/layers/pre_attention_norm/scale" in params
    lead = 1 if scanned else 0  # the stacked depth axis
    first = "layers/" if scanned else "layers/0/"
    vocab, width = shape("embedder/input_embedding")
    if f"llm/{first}attn/qkv_einsum/w" in params:  # MHA variants (num_kv_heads == num_heads)
        _, heads, _, head_dim = shape(f"{first}attn/qkv_einsum/w")[lead:]
        kv_heads = heads
    else:
        heads, _, head_dim = shape(f"{first}attn/q_einsum/w")[lead:]
        kv_heads = shape(f"{first}attn/kv_einsum/w")[lead + 1]
    gating = shape(f"{first}mlp/gating_einsum")[lead + 1:]
    depth = (shape("layers/pre_attention_norm/scale")[0] if scanned
             else len({k.split("/")[2] for k in params if k.startswith("llm/layers/")}))
    inferred = dict(width=width, depth=depth, mlp_dim=max(gating), num_heads=heads, num_kv_heads=kv_heads,
                    head_dim=head_dim, vocab_size=vocab,
                    post_norms=f"llm/{first}post_attention_norm/scale" in params)
    for key, value in inferred.items():
        if config.get(key) is not None and config[key] != value:
            raise CheckpointError(f"Gemma variant config says {key}={config[key]!r} but the checkpoint arrays have "
                                  f"{value!r}; set llm.variant (and llm.vocab_size) in --model-config")
    return {**config, **inferred}


def gemma_text_config(gemma: dict, apply_final_logits_softcap: bool = False) -> dict:
    """A big_vision Gemma config -> transformers ``GemmaConfig`` (Gemma 1) / ``Gemma2Config`` kwargs."""
    common = dict(
        vocab_size=gemma["vocab_size"], hidden_size=gemma["width"], intermediate_size=gemma["mlp_dim"],
        num_hidden_layers=gemma["depth"], num_attention_heads=gemma["num_heads"],
        num_key_value_heads=gemma["num_kv_heads"], head_dim=gemma["head_dim"], rms_norm_eps=_GEMMA_RMS_EPS,
        rope_parameters=dict(_GEMMA_ROPE), pad_token_id=0, eos_token_id=1, bos_token_id=2,  # Gemma SentencePiece
    )
    norm = gemma["query_pre_attn_norm"]
    if norm == "rsqrt_head_dim":
        query_scalar = gemma["head_dim"]
    elif norm == "rsqrt_emb_per_head":
        query_scalar = gemma["width"] // gemma["num_heads"]
    else:
        raise CheckpointError(f"unknown query_pre_attn_norm {norm!r} (gemma.py knows rsqrt_head_dim, "
                              "rsqrt_emb_per_head)")
    attn_cap = gemma["attn_logits_softcap"] or None  # big_vision: 0.0 / None = off
    final_cap = (gemma["final_logits_softcap"] or None) if apply_final_logits_softcap else None
    if not gemma["post_norms"]:  # Gemma 1: no soft-caps, q scaled by head_dim**-0.5 in transformers
        caps = (("attn_logits_softcap", attn_cap), ("final_logits_softcap", final_cap))
        problems = [f"{k}={v}" for k, v in caps if v]
        if query_scalar != gemma["head_dim"]:
            problems.append(f"query_pre_attn_norm={norm!r}")
        if problems:
            raise CheckpointError(f"a Gemma 1 checkpoint (no post-norms) with {', '.join(problems)} cannot be "
                                  "expressed "
                                  "by transformers' GemmaConfig")
        return dict(model_type="gemma", hidden_act="gelu_pytorch_tanh", **common)
    return dict(
        model_type="gemma2", hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=query_scalar,
        attn_logit_softcapping=attn_cap, final_logit_softcapping=final_cap,
        sliding_window=None, layer_types=["full_attention"] * gemma["depth"],  # big_vision: no local attention
        **common,
    )


def siglip_vision_config(params: dict[str, LazyArray], img_kwargs: dict, image_size=None) -> dict:
    """``img/`` arrays (loop layout) + big_vision ``config.model.img`` -> ``SiglipVisionConfig`` kwargs."""
    img = dict(img_kwargs)
    pool = img.pop("pool_type", "none")
    if pool not in ("none", None):
        raise CheckpointError(f"PaliGemma reads every image token: img.pool_type must be 'none', got {pool!r}")
    vit, _ = infer_vit_config(params, img, image_size=image_size, prefix="img/")
    if vit.get("pool_type", "gap") in ("map", "tok"):
        raise CheckpointError(f"the img/ tower has a {vit['pool_type']!r} pooling head; PaliGemma's has none")
    if vit["posemb"] != "learn":
        raise CheckpointError("the img/ tower has no learned pos_embedding; SigLIP (PaliGemma's tower) needs one")
    (h, w), (ph, pw) = vit["image_size"], vit["patch_size"]
    grid = params["img/pos_embedding"].shape[1]
    if h != w or ph != pw or (h // ph) ** 2 != grid:
        raise CheckpointError(f"PaliGemma's SigLIP needs a square image and patch matching the posemb's {grid} "
                              f"positions, got image {h}x{w}, patch {ph}x{pw}")
    return dict(
        model_type="siglip_vision_model", hidden_size=vit["hidden_size"], intermediate_size=vit["intermediate_size"],
        num_hidden_layers=vit["num_hidden_layers"], num_attention_heads=vit["num_attention_heads"],
        num_channels=vit["num_channels"], image_size=h, patch_size=ph, layer_norm_eps=_SIGLIP_LN_EPS,
        hidden_act="gelu_pytorch_tanh", vision_use_head=False,  # flax nn.gelu (tanh); pool_type="none"
    )


def paligemma_config(
    params: dict[str, LazyArray],
    model_kwargs: dict | None = None,
    *,
    image_size=None,
    apply_final_logits_softcap: bool = False,
    pad_vocab_to_multiple_of: int | None = None,
) -> PaliGemmaConfig:
    """``PaliGemmaConfig`` from the arrays' shapes (raw names) and big_vision ``config.model``
    (``img_model``, ``img``, ``llm_model``, ``llm``)."""
    kwargs = dict(model_kwargs or {})
    img_model, llm_model = kwargs.pop("img_model", "vit"), kwargs.pop("llm_model", "proj.paligemma.gemma_bv")
    if img_model != "vit" or llm_model != "proj.paligemma.gemma_bv":
        raise CheckpointError(f"only img_model='vit' and llm_model='proj.paligemma.gemma_bv' are supported, got "
                              f"{img_model!r} and {llm_model!r}")
    img_kwargs, llm_kwargs = dict(kwargs.pop("img", None) or {}), dict(kwargs.pop("llm", None) or {})
    if kwargs:
        raise CheckpointError(f"unknown PaliGemma model option(s) {', '.join(sorted(kwargs))} (expected img_model, "
                              "img, "
                              "llm_model, llm)")
    gemma = infer_gemma_config(params, llm_kwargs)
    text = gemma_text_config(gemma, apply_final_logits_softcap)
    loop_params = prepare_vit_params({k: v for k, v in params.items() if k.startswith("img/")}, "img/")
    vision = siglip_vision_config(loop_params, img_kwargs, image_size)
    head = loop_params.get("img/head/kernel")
    if head is None or head.shape != (vision["hidden_size"], gemma["width"]):
        raise CheckpointError(f"img/head/kernel (the projection to the LLM) must be [{vision['hidden_size']}, "
                              f"{gemma['width']}], got {None if head is None else head.shape}")
    rows = gemma["vocab_size"]
    if pad_vocab_to_multiple_of:
        text["vocab_size"] = -(-(rows + 1) // pad_vocab_to_multiple_of) * pad_vocab_to_multiple_of  # + <image>
    return PaliGemmaConfig(
        vision_config=vision, text_config=text,
        image_token_index=rows,  # <image> follows the checkpoint's rows, as the tokenizer adds it
        vocab_size=text["vocab_size"], projection_dim=gemma["width"], hidden_size=gemma["width"],
        tie_word_embeddings=True,
    )


def _pad_rows(embedding: LazyArray, rows: int) -> LazyArray:
    """The embedding with rows up to ``rows`` equal to its mean row (see the module docstring, Vocabulary)."""

    def pad(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.broadcast_to(x.mean(axis=0, dtype=np.float64).astype(x.dtype),
                                                  (rows - x.shape[0], x.shape[1]))])

    return embedding.derive(pad, (rows, embedding.shape[1]), f"(padded to {rows} rows)")


def build_paligemma(
    params: dict[str, LazyArray],
    model_kwargs: dict | None = None,
    image_size=None,
    apply_final_logits_softcap: bool = False,
    pad_vocab_to_multiple_of: int | None = None,
) -> Built:
    """``PaliGemmaForConditionalGeneration`` (nothing read yet).

    ``lm_head.weight`` is mapped to the embedding too (it is tied): the strict checks and the in-memory path
    see every ``state_dict`` key; the streamed writer drops it, as ``save_pretrained`` does.
    """
    config = paligemma_config(params, model_kwargs, image_size=image_size,
                              apply_final_logits_softcap=apply_final_logits_softcap,
                              pad_vocab_to_multiple_of=pad_vocab_to_multiple_of)
    gemma2 = config.text_config.model_type == "gemma2"
    mapped = map_params(prepare_paligemma_params(params), paligemma_rules(gemma2))
    embed = "model.language_model.embed_tokens.weight"
    if config.text_config.vocab_size != mapped[embed].shape[0]:
        mapped[embed] = _pad_rows(mapped[embed], config.text_config.vocab_size)
    mapped["lm_head.weight"] = mapped[embed]
    return Built(PaliGemmaForConditionalGeneration, config, mapped)


def paligemma_param_shapes(
    llm_variant: str | dict = "gemma_2b", image_size: int = 224, img_variant: str = "So400m/14",
    vocab_size: int = 256_000 + 1024 + 128, llm_depth: int | None = None, img_depth: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """The big_vision parameter tree of a PaliGemma (``name: shape``, scanned ``img`` and ``llm``), as
    ``paligemma.Model(img=dict(variant=img_variant, pool_type="none", scan=True), llm=dict(variant=llm_variant,
    vocab_size=vocab_size))`` initialises it. Default: PaliGemma 3B at 224px (Gemma + 1024 ``<loc>`` + 128
    ``<seg>`` rows, ``configs/proj/paligemma/transfers/common.py``). ``llm_depth``/``img_depth`` override the
    towers' depths (benchmarks)."""
    from ..configuration.configuration_bv_vit import decode_variant

    vit = decode_variant(img_variant)
    w, depth, mlp, heads = vit["width"], img_depth or vit["depth"], vit["mlp_dim"], vit["num_heads"]
    patch = vit["patch_size"][0]
    g = gemma_variant_config({"variant": llm_variant})
    D, L, F = g["width"], llm_depth or g["depth"], g["mlp_dim"]
    N, K, H = g["num_heads"], g["num_kv_heads"], g["head_dim"]
    block = "img/Transformer/encoderblock/"
    shapes = {
        "img/embedding/kernel": (patch, patch, 3, w), "img/embedding/bias": (w,),
        "img/pos_embedding": (1, (image_size // patch) ** 2, w),
        **{f"{block}LayerNorm_{i}/{p}": (depth, w) for i in (0, 1) for p in ("scale", "bias")},
        **{f"{block}MultiHeadDotProductAttention_0/{p}/kernel": (depth, w, heads, w // heads)
           for p in ("query", "key", "value")},
        **{f"{block}MultiHeadDotProductAttention_0/{p}/bias": (depth, heads, w // heads)
           for p in ("query", "key", "value")},
        f"{block}MultiHeadDotProductAttention_0/out/kernel": (depth, heads, w // heads, w),
        f"{block}MultiHeadDotProductAttention_0/out/bias": (depth, w),
        f"{block}MlpBlock_0/Dense_0/kernel": (depth, w, mlp), f"{block}MlpBlock_0/Dense_0/bias": (depth, mlp),
        f"{block}MlpBlock_0/Dense_1/kernel": (depth, mlp, w), f"{block}MlpBlock_0/Dense_1/bias": (depth, w),
        "img/Transformer/encoder_norm/scale": (w,), "img/Transformer/encoder_norm/bias": (w,),
        "img/head/kernel": (w, D), "img/head/bias": (D,),
        "llm/embedder/input_embedding": (vocab_size, D), "llm/final_norm/scale": (D,),
        "llm/layers/pre_attention_norm/scale": (L, D), "llm/layers/pre_ffw_norm/scale": (L, D),
        "llm/layers/attn/attn_vec_einsum/w": (L, N, H, D),
        "llm/layers/mlp/gating_einsum": (L, 2, D, F), "llm/layers/mlp/linear": (L, F, D),
    }
    if K == N:
        shapes["llm/layers/attn/qkv_einsum/w"] = (L, 3, N, D, H)
    else:
        shapes.update({"llm/layers/attn/q_einsum/w": (L, N, D, H), "llm/layers/attn/kv_einsum/w": (L, 2, K, D, H)})
    if g["post_norms"]:
        shapes.update({"llm/layers/post_attention_norm/scale": (L, D), "llm/layers/post_ffw_norm/scale": (L, D)})
    return shapes


# ---------------------------------------------------------------------------------------------------------
# Folder
# ---------------------------------------------------------------------------------------------------------


def save_paligemma_processor(out_dir: str, config: PaliGemmaConfig, tokenizer_file: str,
                             remote_code: bool = True) -> None:
    """Processor hook: big_vision's PaliGemma input pipeline (``BvPaliGemmaProcessor``: Gemma SentencePiece +
    ``<loc>``/``<seg>``, ``decode|resize(res)|value_range(-1, 1)``) saved next to the weights.

    ``tokenizer_file`` is big_vision's ``paligemma_tokenizer.model`` or ``gemma_tokenizer.model``; the folder
    gets it (``tokenizer.model``) and its ``tokenizers`` twin (``tokenizer.json``, `BvPaliGemmaTokenizerFast`, the
    same ids), and loads with ``AutoProcessor`` / ``AutoTokenizer``; with ``remote_code`` also where
    ``big_vision_hf`` is not installed (``trust_remote_code=True``: flat code + ``auto_map``). The checkpoint does not
    contain the tokenizer, so without it no processor is written.
    """
    from ..processing.image_processing_bv import BvImageProcessor
    from ..processing.processing_paligemma import BvPaliGemmaProcessor
    from ..processing.tokenization_paligemma import BvPaliGemmaTokenizer
    from .export import add_processing_code, fast_twin

    size = config.vision_config.image_size
    image_processor = BvImageProcessor.from_pp(f"decode|resize({size})|value_range(-1, 1)")
    processor = BvPaliGemmaProcessor(image_processor, fast_twin(BvPaliGemmaTokenizer(tokenizer_file)),
                                     image_seq_length=config.text_config.num_image_tokens)
    processor.check_model(SimpleNamespace(config=config), training=False)  # it reads only the config
    processor.save_pretrained(out_dir)
    if remote_code:
        add_processing_code(out_dir, processor)


def add_paligemma_processor(folder: str, tokenizer_file: str, preset: str | None = None, remote_code: bool = True):
    """The family's ``--tokenizer`` hook: :func:`save_paligemma_processor` on a converted folder (``preset`` does not
    apply)."""
    from transformers import AutoConfig

    if preset is not None:
        raise CheckpointError("--text-preset applies to two-tower models, not to PaliGemma")
    save_paligemma_processor(folder, AutoConfig.from_pretrained(folder), tokenizer_file, remote_code)


def paligemma_card(config: PaliGemmaConfig, checkpoint: str, kwargs: dict, dtype: torch.dtype, n_params: int) -> str:
    """The card of a converted PaliGemma folder: how to load it, and what is exactly big_vision's."""
    gemma2 = config.text_config.model_type == "gemma2"
    attn = '"eager"' if gemma2 else '"eager" or "sdpa"'
    source = os.path.basename(checkpoint.split(":")[0])
    intro = (
        f"A [big_vision](https://github.com/google-research/big_vision) PaliGemma {'2' if gemma2 else '1'} checkpoint "
        "converted with\n`big_vision_hf` (`big-vision-hf convert`) into transformers' own "
        "`PaliGemmaForConditionalGeneration` (no remote\ncode). The conversion is strict: every array of the "
        "checkpoint was used and every parameter filled."
    )
    usage = f"""With the processor saved by `big-vision-hf convert ... --tokenizer paligemma_tokenizer.model`
(big_vision's PaliGemma input pipeline; `trust_remote_code=True` loads its code from this folder when
`big_vision_hf` is not installed):

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = "path/to/this/folder"  # or its Hub repo id
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation={attn.split(" or ")[0]})
inputs = processor(images=[Image.open("cat.jpg").convert("RGB")], text=["caption en"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=20, do_sample=False)  # token_type_ids: the prefix-LM mask
print(processor.post_process_generation(out, inputs["input_ids"])[0])
```

The processor always returns `token_type_ids` (0 = image + prompt, attended bidirectionally; 1 = answer, causal):
without them transformers builds no prefix-LM mask."""
    attention_note = (
        "Gemma 2 soft-caps attention logits: transformers refuses `sdpa`, and `flash_attention_*` drop the "
        "prefix-LM mask. `attn_implementation=\"flex_attention\"` takes the soft-cap as a `score_mod` and the "
        "prefix-LM + causal + padding mask as one block mask, without `eager`'s `[batch, heads, L, L]` scores "
        "(same logits and gradients within 1e-5 in float32; compiled by `torch.compile`: triton on GPU, a C++ "
        "compiler on CPU, where torch has no flex backward: `big_vision_hf` registers `\"bv_flex_attention\"` "
        "with one, and `choose_attention` picks). `\"eager\"` runs everywhere." if gemma2 else
        "`sdpa` and `eager` both keep the prefix-LM mask when `token_type_ids` are given; `flash_attention_*` drop it."
    )
    parity = [
        "`logits` are big_vision's `text_logits`: `final_logit_softcapping` is\n  "
        f"`{config.text_config.to_dict().get('final_logit_softcapping')}` (big_vision's PaliGemma\n  returns logits "
        "without the final soft-cap; transfers use `final_logits_softcap=0.0`).",
        "No sliding-window attention (big_vision's Gemma 2 has none).",
        attention_note,
        f"Vocabulary: {config.text_config.vocab_size:,} rows; `<image>` is id {config.image_token_index:,}.",
    ]
    provenance = [
        f"Source checkpoint: `{source}`",
        f"big_vision model: `{NAME}`, `config.model = {json.dumps(kwargs)}`",
        f"Parameters: {n_params:,}, written as {str(dtype).removeprefix('torch.')}",
    ]
    return render_model_card(
        f"{os.path.splitext(source)[0]} (PaliGemmaForConditionalGeneration)",
        [(None, intro), ("Usage", usage), ("Parity with big_vision", parity), ("Provenance", provenance)],
        pipeline_tag="image-text-to-text", license="gemma", base_model=known_hub_id(source),
        tags=["big_vision", "big_vision_hf", "paligemma", NAME.replace(".", "-")],
        metadata={"source_checkpoint": source},
    )


def write_paligemma_folder(
    built: Built,
    checkpoint: str,
    out_dir: str,
    model_kwargs: dict,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str = "5GB",
    progress: bool = False,
) -> str:
    """The family's folder writer: a ``PaliGemmaForConditionalGeneration`` folder, streamed.

    Writes the safetensors shards (+ index), ``config.json``, ``generation_config.json`` and a model card; the
    processor comes with ``--tokenizer`` (:func:`add_paligemma_processor`). Peak memory is about one layer's largest
    tensor, whatever the model size (``pad_vocab_to_multiple_of`` adds the embedding).
    """
    config = built.config
    with torch.device("meta"):  # not under no_init_weights: that would also skip tying lm_head to the embedding
        model = PaliGemmaForConditionalGeneration(config)
    write_streamed_safetensors(built.mapped, model, out_dir, dtype, max_shard_size, progress,
                               allow_nonfinite=built.allow_nonfinite)
    config.architectures = [PaliGemmaForConditionalGeneration.__name__]
    config.dtype = dtype
    config.bv_model_name = NAME
    config.bv_model_config = model_kwargs
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(paligemma_card(config, checkpoint, model_kwargs, dtype, model.num_parameters()))
    return out_dir


FAMILY = Family(
    name=NAME,
    build=build_paligemma,
    summary="PaliGemma 1 and 2 (proj/paligemma/paligemma.py), streamed; --tokenizer adds the processor",
    signatures=(("llm/embedder/input_embedding", "img/embedding/kernel"),),
    options=("image_size", "apply_final_logits_softcap", "pad_vocab_to_multiple_of"),
    text_side=add_paligemma_processor,
    write_folder=write_paligemma_folder,
    classes=("PaliGemmaForConditionalGeneration",),
)
