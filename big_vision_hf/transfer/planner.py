"""Will it fit? Per-GPU memory of a PaliGemma transfer step, by part, and the largest batch that fits.

:func:`plan` counts, for one training step of :func:`~big_vision_hf.transfer.training.train` (the transfer's
``PaliGemmaTrainer``), the bytes of every tensor that is alive at the step's high point:

- **weights**: every parameter (SigLIP, projector, Gemma with its tied embedding / ``lm_head``), in ``dtype``;
  LoRA factors (rank ``r`` on the ``llm`` preset: q/k/v/o/gate/up/down of every Gemma layer) in float32, as PEFT
  keeps them.
- **gradients**: one per trainable parameter, in its dtype (``zero_grad(set_to_none=True)``: they exist from the
  backward to the optimizer step).
- **optimizer**: ``BvAdam`` (``build_optimizer``: torch Adam + big_vision's decoupled decay) keeps ``exp_avg`` and
  ``exp_avg_sq`` per trainable parameter, in its dtype. Its step on CUDA is the ``foreach`` one, which allocates
  one more trainable-sized list (``sqrt(exp_avg_sq)``); on CPU the per-tensor loop (two of the largest tensor).
- **activations**: what autograd saves in the forward, per layer, counted from transformers 5's Gemma / Gemma 2 /
  SigLIP code: the layer input and every RMSNorm input (float32: the norm upcasts), the normed outputs feeding
  the projections, q and the ``repeat_kv``-expanded k and v (eager), the attention output, the MLP's gate, up,
  GELU and product (``[tokens, mlp_dim]`` each), PEFT's ``lora_A`` outputs (and, for a bfloat16 model, the
  float32 copy of each adapted module's input PEFT makes); full fine-tuning adds the norms' pre-scale product.
  The vision tower saves nothing when it is frozen (LoRA ``llm``, ``freeze_vit``) and does not run at all with
  the feature cache (``feature_cache=True``: projected image tokens read from the cache; its weights are still
  counted, the model holds them). The last Gemma layer
  computes queries, attention and MLP on the supervised rows only (``last_layer_on_rows``), and the logits are
  ``[supervised rows, vocab]`` float32 (``logits_to_keep``, then ``log_softmax`` saved for the backward).
- **attention scores**: ``eager`` keeps ``[B, heads, L, L]`` float32 softmax probabilities per layer (and, in
  bfloat16, their bfloat16 copy; Gemma 2 also its soft-cap ``tanh``); ``flex`` / ``sdpa`` keep none (only the
  ``[B, heads, L]`` log-sum-exp).
- **transient**: the largest short-lived tensors on top, at the step's worst moment: the attention scores being
  computed (eager: two ``[B, heads, L, L]`` at once), the MLP's backward, the loss's ``[rows, vocab]``
  temporaries, the optimizer step's, and under FSDP the gathered (unsharded) layers.

The step's phases are walked in order: the forward (each segment's saved tensors accumulate), the backward
(top layer first: a layer's saved tensors are freed as its gradients appear), the optimizer step; the plan's total
is the highest of them. The parts reported are those alive at that moment (so the gradients of a full
fine-tuning whose peak falls early in the backward are the few made so far). ``--gradient-checkpointing`` keeps
only each layer's input and recomputes one layer in the backward. FSDP (``gpus > 1``, full shard): weights,
gradients and optimizer state divided by ``gpus``; activations are per GPU at the per-GPU batch; the root module
(embedding, projector, patch embedding, final norms) stays gathered through the step and two decoder layers are
gathered at a time (prefetch).

``dtype``: ``"fp32"``, ``"bf16"`` (a bfloat16 model: weights, gradients, Adam state, activations) or ``"amp"``
(``transfer --precision bf16``: float32 weights, gradients and Adam state, bfloat16 autocast, which keeps a
bfloat16 copy of every projection's input and weight for the backward).

Checked (``tests/test_planner.py``, ``benchmarks/bench_planner.py``) against the peak of a real step measured by
:class:`~big_vision_hf.transfer.memtrack.PeakMemoryTracker` on small PaliGemma / PaliGemma 2 models on CPU:
LoRA and full, eager and sdpa, float32, bfloat16 and amp, with and without gradient checkpointing: within 9% of
the measured peak. Not checked (no GPU, one process): flex attention (counted as sdpa's memory-efficient kernel
is), the FSDP terms, the CUDA allocator. Not counted: the CUDA context and the caching allocator's rounding and
fragmentation (``headroom``, 10% by default, is set aside for them), activation offloading, QLoRA (4-bit
weights), DeepSpeed, padding beyond ``text_len``.

Example::

    arch = load_arch("pg2-10b-448")
    p = plan(arch, batch=32, text_len=64, lora_rank=8, dtype="bf16", gpus=8)
    p.total / 2**30, p.peak_phase           # GiB per GPU at the step's high point, and when it is
    print(format_plan([p], memory=parse_memory("80GB"), best=[max_batch(arch, parse_memory("80GB"), text_len=64,
                                                                         lora_rank=8, dtype="bf16", gpus=8)]))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

__all__ = [
    "NAMED_MODELS",
    "Arch",
    "MemoryPlan",
    "arch_from_config",
    "format_plan",
    "llm_layer_params",
    "llm_params",
    "load_arch",
    "lora_layer_params",
    "max_batch",
    "parse_memory",
    "plan",
    "plan_report",
    "vision_params",
]

GiB = 1024**3
# bytes per activation element; "amp": float32 weights under bfloat16 autocast (`transfer --precision bf16`)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "amp": 2}
ATTENTIONS = ("eager", "sdpa", "flex")


@dataclasses.dataclass(frozen=True)
class Arch:
    """A PaliGemma's sizes: SigLIP (``vision_*``, ``patch``, ``res``) and Gemma (``width`` ... ``vocab``);
    ``gemma2``: post-norms and attention soft-cap (PaliGemma 2)."""

    name: str
    vision_width: int
    vision_depth: int
    vision_mlp: int
    vision_heads: int
    patch: int
    res: int
    width: int
    depth: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gemma2: bool

    @property
    def image_tokens(self) -> int:
        return (self.res // self.patch) ** 2

    def to_config(self):
        """A transformers ``PaliGemmaConfig`` of these sizes (random-init models for calibration)."""
        from transformers import Gemma2Config, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

        vision = SiglipVisionConfig(hidden_size=self.vision_width, intermediate_size=self.vision_mlp,
                                    num_hidden_layers=self.vision_depth, num_attention_heads=self.vision_heads,
                                    image_size=self.res, patch_size=self.patch, vision_use_head=False,
                                    projection_dim=self.width)
        text_cls = Gemma2Config if self.gemma2 else GemmaConfig
        extra = dict(final_logit_softcapping=None, sliding_window=None, query_pre_attn_scalar=self.head_dim,
                     layer_types=["full_attention"] * self.depth) if self.gemma2 else {}
        text = text_cls(hidden_size=self.width, intermediate_size=self.mlp, num_hidden_layers=self.depth,
                        num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
                        vocab_size=self.vocab, max_position_embeddings=max(8192, self.image_tokens + 512), **extra)
        return PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_index=self.vocab, projection_dim=self.width, hidden_size=self.width,
                               vocab_size=self.vocab)


def _named(name, gemma, res):
    vision = dict(vision_width=1152, vision_depth=27, vision_mlp=4304, vision_heads=16, patch=14)  # So400m/14
    return Arch(name=name, res=res, vocab=257_152, **vision, **gemma)


# big_vision models/ppp/gemma.py get_config; vocab 257,152 = Gemma's 256,000 + 1024 <loc> + 128 <seg> (the converted
# folders' default; the Hub's 257,216 adds 64 rows)
_GEMMA = {
    "pg1-3b": dict(width=2048, depth=18, mlp=16_384, heads=8, kv_heads=1, head_dim=256, gemma2=False),
    "pg2-3b": dict(width=2304, depth=26, mlp=9_216, heads=8, kv_heads=4, head_dim=256, gemma2=True),
    "pg2-10b": dict(width=3584, depth=42, mlp=14_336, heads=16, kv_heads=8, head_dim=256, gemma2=True),
    "pg2-28b": dict(width=4608, depth=46, mlp=36_864, heads=32, kv_heads=16, head_dim=128, gemma2=True),
}
NAMED_MODELS = {f"{m}-{r}": _named(f"{m}-{r}", g, r) for m, g in _GEMMA.items() for r in (224, 448, 896)}


def arch_from_config(config, name: str = "model") -> Arch:
    """:class:`Arch` of a ``PaliGemmaConfig`` (or its ``config.json`` dict)."""
    if isinstance(config, dict):
        from transformers import PaliGemmaConfig

        config = PaliGemmaConfig(**config)
    v, t = config.vision_config, config.text_config
    if getattr(t, "model_type", "") not in ("gemma", "gemma2"):
        raise ValueError(f"{name}: not a PaliGemma with a Gemma / Gemma 2 language model "
                         f"(text model_type {getattr(t, 'model_type', None)!r})")
    return Arch(name=name, vision_width=v.hidden_size, vision_depth=v.num_hidden_layers,
                vision_mlp=v.intermediate_size, vision_heads=v.num_attention_heads, patch=v.patch_size,
                res=v.image_size, width=t.hidden_size, depth=t.num_hidden_layers, mlp=t.intermediate_size,
                heads=t.num_attention_heads, kv_heads=t.num_key_value_heads, head_dim=t.head_dim,
                vocab=t.vocab_size, gemma2=t.model_type == "gemma2")


def load_arch(model: str) -> Arch:
    """A named model (:data:`NAMED_MODELS`, e.g. ``"pg2-10b-448"``) or a converted PaliGemma folder."""
    if model in NAMED_MODELS:
        return NAMED_MODELS[model]
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"unknown model {model!r}: not a named model ({', '.join(NAMED_MODELS)}) nor a folder "
                         "with config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != "paligemma":
        raise ValueError(f"{model}: config.json is a {config.get('model_type')!r}, not a PaliGemma")
    return arch_from_config(config, name=os.path.basename(os.path.normpath(model)))


def parse_memory(text: str) -> int:
    """``"80GB"`` / ``"80GiB"`` / ``"24G"`` / ``"512MB"`` / ``"80"`` -> bytes. GB and GiB both mean 2^30 bytes, as
    GPU memory is quoted ("80GB" cards have 80 GiB); a bare number is GiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?|(b))?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad memory size {text!r}: expected e.g. 80GB, 24GiB or 512MB")
    unit = "b" if m.group(3) else (m.group(2) or "g").lower()
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(unit))


# ---- parameters ------------------------------------------------------------------------------------------------


def vision_params(a: Arch) -> int:
    """SigLIP tower (no pooling head) + projector."""
    w, i = a.vision_width, a.vision_mlp
    layer = 4 * (w * w + w) + (w * i + i) + (i * w + w) + 4 * w
    return 3 * a.patch**2 * w + w + a.image_tokens * w + a.vision_depth * layer + 2 * w + (w * a.width + a.width)


def llm_layer_params(a: Arch) -> int:
    d, q, kv = a.width, a.heads * a.head_dim, a.kv_heads * a.head_dim
    return d * (2 * q + 2 * kv) + 3 * d * a.mlp + (4 if a.gemma2 else 2) * d


def llm_params(a: Arch) -> int:
    """Gemma, the embedding once (``lm_head`` is tied to it)."""
    return a.vocab * a.width + a.depth * llm_layer_params(a) + a.width


def lora_layer_params(a: Arch, rank: int) -> int:
    """LoRA ``A`` (``in x r``) + ``B`` (``r x out``) of q, k, v, o, gate, up, down in one Gemma layer."""
    d, q, kv, i = a.width, a.heads * a.head_dim, a.kv_heads * a.head_dim, a.mlp
    return rank * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + i) + (i + d))


# ---- the plan --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes of one training step, by part (see the module docstring); ``total`` = the step's peak."""

    arch: Arch
    gpus: int
    batch: int  # per GPU
    seq_len: int
    rows: int  # supervised tokens per example
    lora_rank: int | None
    dtype: str
    attention: str
    gradient_checkpointing: bool
    feature_cache: bool
    freeze_vit: bool
    weights: int
    gradients: int
    optimizer: int
    activations: int  # saved for the backward at the step's peak, attention scores not included
    attention_scores: int  # saved eager [B, H, L, L] (0 for flex / sdpa)
    transient: int
    total: int
    trainable: int
    params: int
    peak_phase: str
    saved: int  # everything saved for the backward when the loss is computed (all segments)

    def parts(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "attention scores": self.attention_scores,
                "transient": self.transient}


@dataclasses.dataclass
class _Segment:
    """One piece of the forward: bytes it saves for the backward (``saved``; ``scores`` of them the attention
    probabilities), gradients it creates, and its largest transient in the forward and in the backward."""

    name: str
    saved: int = 0
    scores: int = 0
    grads: int = 0
    fwd: int = 0
    bwd: int = 0


def _llm_layer(a: Arch, b: int, seq: int, rows: int, *, e: int, lora: int | None, attention: str,
               full_rows: bool = True, amp: bool = False) -> _Segment:
    """A Gemma / Gemma 2 decoder layer at batch ``b``, ``seq`` tokens; queries on ``rows`` per example when
    ``full_rows`` is False (``last_layer_on_rows``: keys and values on every token). ``amp``: float32 weights
    under bfloat16 autocast (``e`` = 2)."""
    d, q, kv, i = a.width, a.heads * a.head_dim, a.kv_heads * a.head_dim, a.mlp
    t, tq = b * seq, b * (seq if full_rows else rows)  # tokens for keys/values, for queries and the MLP
    eager = attention == "eager"
    norms = 4 if a.gemma2 else 2
    # norm inputs (float32: RMSNorm upcasts) -- the first on every token, the others on the query rows
    saved = 4 * (t + (norms - 1) * tq) * d
    # The projections' inputs: saved by the trained weight (full) or lora_A; in a bfloat16 model PEFT casts each
    # adapted module's input to its float32 adapter (one copy per module) and the frozen bfloat16 input is not kept.
    cast = lora is not None and e != 4 and not amp
    if amp:  # autocast casts every projection's input to bfloat16 per call (q, k, v, gate, up, o, down) and
        # keeps a bfloat16 copy of each weight for the backward (trained: its cache; frozen: input gradient)
        saved += 2 * (tq * d + 2 * t * d + 2 * tq * d + tq * q + tq * i) + 2 * (llm_layer_params(a) - norms * d)
    elif not cast:
        saved += e * ((t + tq) * d + tq * q + tq * i)  # normed (q/k/v, all tokens), normed (gate/up), o, down
    if not full_rows:
        saved += e * tq * d  # the gathered query rows of the normed input
    kv_kept = q if eager else kv  # eager expands k and v to every head (repeat_kv); flex / sdpa take GQA as is
    saved += e * (tq * q + 2 * t * kv_kept)  # q, k, v
    if not eager:
        saved += e * tq * q + 4 * tq * a.heads  # the kernel's own output (before the transpose) and log-sum-exp
    saved += e * tq * 3 * i  # gate, up, gelu(gate)
    if lora is None:
        saved += 4 * norms * tq * d  # full: each norm's x * rsqrt (the weight's gradient needs it)
    else:
        saved += (2 if amp else 4) * 7 * tq * lora  # lora_A outputs (PEFT keeps adapters in float32)
        if cast:
            saved += 4 * (2 * t * d + tq * d + tq * q + 2 * tq * d + tq * i)
    probs = b * a.heads * (seq if full_rows else rows) * seq
    scores = 0
    if eager:
        scores = probs * (4 + (e if e != 4 else 0) + (e if a.gemma2 else 0))  # fp32 softmax (+ copy) (+ tanh)
    mask = b * seq * (seq if full_rows else rows) * (e if eager else 1)  # the 4D mask, alive in the forward
    fwd = mask + (2 * probs * 4 if eager else 2 * tq * q * e)
    # The backward runs the MLP first (gradients of gate/up/product at once), then the attention, by which time
    # the MLP's saved tensors (gate, up, GELU, their inputs) are freed.
    mlp_work = 3 * tq * i * (4 if cast else e)
    mlp_saved = e * tq * 3 * i + (4 * tq * (2 * d + i) if cast else e * tq * ((2 if amp else 1) * d + i))
    attn_work = 2 * probs * 4 if eager else 2 * t * q * e
    return _Segment("llm layer", saved + scores, scores, fwd=fwd, bwd=max(mlp_work, attn_work - mlp_saved))


def _vision_layer(a: Arch, b: int, *, e: int, attention: str, amp: bool = False) -> _Segment:
    """A trained SigLIP encoder layer (LayerNorm, attention, fc1/GELU/fc2) on ``b`` images."""
    w, i, n = a.vision_width, a.vision_mlp, a.image_tokens
    t = b * n
    probs = b * a.vision_heads * n * n
    eager = attention == "eager"
    saved = e * t * (8 * w + 2 * i)  # x, normed, q, k, v, attention output, h1, normed2; fc1 output, GELU output
    if amp:  # the residual stream and LayerNorm outputs stay float32; q/k/v/fc1 inputs cast per call; weight copies
        saved += t * w * (2 * 4 + 2 * 2) + 2 * (4 * w * w + 2 * w * i)
    scores = probs * (4 + (e if e != 4 else 0)) if eager else 0
    if not eager:
        saved += e * t * w + 4 * b * a.vision_heads * n
    return _Segment("vision layer", saved + scores, scores, fwd=2 * probs * 4 if eager else 2 * t * w * e,
                    bwd=2 * probs * 4 if eager else 2 * t * w * e)


def _vision_frozen_peak(a: Arch, b: int, *, e: int, attention: str) -> int:
    """The largest tensors alive while a frozen tower runs (nothing saved): one layer's worth."""
    t, probs = b * a.image_tokens, b * a.vision_heads * a.image_tokens**2
    work = 3 * probs * 4 if attention == "eager" else 0
    return work + e * t * (4 * a.vision_width + 2 * a.vision_mlp)


def _segments(a: Arch, b: int, seq: int, rows: int, *, e: int, lora: int | None, attention: str,
              vision_attention: str, vision_trained: bool, feature_cache: bool, checkpointing: bool,
              frames: int = 1, amp: bool = False) -> tuple[list[_Segment], int]:
    """The forward's segments in order (gradients filled in by :func:`plan`) and the frozen tower's peak."""
    segs = []
    stream = 4 if amp else e  # the residual stream's bytes (float32 under autocast): what checkpointing keeps
    n = a.image_tokens * frames
    images = b * frames
    pixels = 0 if feature_cache else images * 3 * a.res**2 * e
    segs.append(_Segment("inputs", saved=pixels))
    # alive through the forward only: the projected image tokens (the cache's output, or the projector's), the
    # tower's output, and the language model's input [B, L, D] before layer 0 takes it over
    forward_only = b * n * (a.width + (0 if feature_cache else a.vision_width)) * e
    frozen_peak = 0
    if vision_trained and not feature_cache:
        layer = _vision_layer(a, images, e=e, attention=vision_attention, amp=amp)
        if checkpointing:  # transformers checkpoints the SigLIP layers too
            layer = _Segment(layer.name, saved=stream * images * a.image_tokens * a.vision_width, fwd=layer.fwd,
                             bwd=layer.bwd + layer.saved)
        for _ in range(a.vision_depth):
            segs.append(dataclasses.replace(layer, grads=0))
        segs.append(_Segment("projector", saved=2 * e * b * n * a.vision_width))
    elif not feature_cache:
        frozen_peak = _vision_frozen_peak(a, images, e=e, attention=vision_attention)
    segs.append(_Segment("embed", fwd=forward_only + b * seq * a.width * e))
    body = _llm_layer(a, b, seq, rows, e=e, lora=lora, attention=attention, amp=amp)
    body.fwd += forward_only
    last = _llm_layer(a, b, seq, rows, e=e, lora=lora, attention=attention, full_rows=False, amp=amp)
    last.fwd += forward_only
    if checkpointing:  # only each layer's input is kept; the backward recomputes one layer at a time
        keep = b * seq * a.width * stream
        recompute = body.saved
        body = dataclasses.replace(body, saved=keep, scores=0, bwd=body.bwd + recompute)
        last = dataclasses.replace(last, saved=keep, scores=0, bwd=last.bwd + last.saved)
    segs += [dataclasses.replace(body) for _ in range(a.depth - 1)] + [last]
    # head: final norm on the rows, lm_head -> [N, V] logits, float32 log_softmax saved; logits + logp alive
    nrows = b * rows
    head = nrows * a.vocab * 4
    loss = _Segment("loss", saved=head + nrows * a.width * (4 + e), fwd=2 * head, bwd=2 * head)
    if amp:  # lm_head's bfloat16 weight copy is kept for the backward; bfloat16 logits, then their float32 copy
        loss = _Segment("loss", saved=loss.saved + 2 * a.vocab * a.width, fwd=head + head // 2, bwd=2 * head)
    segs.append(loss)
    return segs, frozen_peak


def plan(arch: Arch, *, batch: int, text_len: int = 64, rows: int | None = None, lora_rank: int | None = 8,
         dtype: str = "fp32", attention: str = "eager", vision_attention: str = "sdpa",
         gradient_checkpointing: bool = False,
         feature_cache: bool = False, freeze_vit: bool = False, gpus: int = 1, foreach: bool = True,
         frames: int = 1) -> MemoryPlan:
    """Per-GPU memory of one training step (module docstring).

    Args:
        arch: the model's sizes (:func:`load_arch`).
        batch: examples per GPU per step (the global batch / ``gpus`` / accumulation steps).
        text_len: the recipe's ``text_len``; a sequence is ``image_tokens + text_len + 1`` tokens (padded
            batches are as long as their longest example: this is the worst case).
        rows: supervised tokens per example (the suffix and ``<eos>``); default ``text_len`` (all of them).
        lora_rank: LoRA rank on the ``llm`` preset; ``None``: full fine-tuning.
        dtype: ``"fp32"`` or ``"bf16"``: the weights' (and so the gradients', the optimizer's and the
            activations') dtype; ``"amp"``: float32 weights, gradients and optimizer state under bfloat16
            autocast (``train(precision="bf16")``).
        attention: the language model's, ``"eager"``, ``"sdpa"`` or ``"flex"`` (the last two keep no ``[L, L]``
            scores); vision_attention: the SigLIP tower's (``transfer`` keeps it on ``"sdpa"``).
        gradient_checkpointing: keep each layer's input only, recompute in the backward.
        feature_cache: the frozen tower's projected image tokens come from the cache (no SigLIP forward).
        freeze_vit: big_vision's ``freeze_vit`` for full fine-tuning (LoRA ``llm`` freezes the tower anyway).
        gpus: FSDP full shard over this many GPUs (1: no sharding).
        foreach: the optimizer's multi-tensor step (CUDA's default); ``False``: the per-tensor loop (CPU).
        frames: images per example (video tasks: ``num_frames``, each ``image_tokens`` tokens).
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if attention not in ATTENTIONS or vision_attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r} / {vision_attention!r}")
    if batch < 1 or gpus < 1 or text_len < 1:
        raise ValueError(f"batch, gpus and text_len must be positive, got {batch}, {gpus}, {text_len}")
    a, e = arch, DTYPE_BYTES[dtype]
    wb = 2 if dtype == "bf16" else 4  # weights (amp: float32 master weights)
    rows = text_len if rows is None else min(rows, text_len)
    seq = frames * a.image_tokens + text_len + 1
    lora = lora_rank
    vision_trained = lora is None and not freeze_vit
    if feature_cache and vision_trained:
        raise ValueError("the feature cache needs a frozen image tower (LoRA, or freeze_vit)")

    # static: weights, gradients, optimizer state (sharded over gpus)
    n_vision, n_llm = vision_params(a), llm_params(a)
    n_lora = a.depth * lora_layer_params(a, lora) if lora else 0
    params = n_vision + n_llm + n_lora
    if lora:
        trainable_bytes, trainable = 4 * n_lora, n_lora
    else:
        trainable = n_llm + (n_vision if vision_trained else 0)
        trainable_bytes = wb * trainable
    weights = (wb * (n_vision + n_llm) + 4 * n_lora) / gpus
    gradients = trainable_bytes / gpus
    optimizer = 2 * trainable_bytes / gpus
    if foreach:
        step_work = trainable_bytes / gpus
    else:
        largest = 4 * max(a.width, a.head_dim * a.heads, a.mlp) * lora if lora else wb * a.vocab * a.width
        step_work = 2 * largest

    segs, frozen_peak = _segments(a, batch, seq, rows, e=e, lora=lora, attention=attention,
                                  vision_attention=vision_attention,
                                  vision_trained=vision_trained, feature_cache=feature_cache,
                                  checkpointing=gradient_checkpointing, frames=frames, amp=dtype == "amp")
    # gradients appear in the backward: the tied embedding's with lm_head's (first), the rest layer by layer
    if lora:
        per_layer = 4 * lora_layer_params(a, lora)
        head_grad = 0
    else:
        per_layer = wb * llm_layer_params(a)
        head_grad = wb * a.vocab * a.width
    vision_layer_grad = 0
    if vision_trained:
        w, i = a.vision_width, a.vision_mlp
        vision_layer_grad = wb * (4 * (w * w + w) + 2 * w * i + i + w + 4 * w)
    for s in segs:
        s.grads = {"llm layer": per_layer, "vision layer": vision_layer_grad}.get(s.name, 0)
    segs[-1].grads = head_grad
    # the loss's backward: grad(logp) and grad(logits) [rows, V] next to the saved logp; then lm_head's weight
    # gradient (the embedding's, full fine-tuning) next to grad(logits) alone: whichever is larger
    segs[-1].bwd = max(0, segs[-1].bwd - head_grad)
    rest = gradients * gpus - sum(s.grads for s in segs)  # projector, patch embedding, norms: at the end
    segs[0].grads += max(0, rest)
    segs = [dataclasses.replace(s, grads=s.grads / gpus) for s in segs]

    fsdp = 0
    if gpus > 1:  # the root (embedding, projector, patch embedding) gathered, two decoder layers in flight
        root = wb * (a.vocab * a.width + a.vision_width * (a.width + 3 * a.patch**2 + a.image_tokens))
        fsdp = root * (1 - 1 / gpus) + 2 * wb * llm_layer_params(a)

    static = weights + optimizer
    moment = _peak_moment(segs, frozen_peak, gradients, step_work)
    return MemoryPlan(
        arch=a, gpus=gpus, batch=batch, seq_len=seq, rows=rows, lora_rank=lora, dtype=dtype, attention=attention,
        gradient_checkpointing=gradient_checkpointing, feature_cache=feature_cache, freeze_vit=freeze_vit,
        weights=int(weights), gradients=int(moment.grads), optimizer=int(optimizer),
        activations=int(moment.saved - moment.scores), attention_scores=int(moment.scores),
        transient=int(moment.transient + fsdp), total=int(static + moment.total + fsdp), trainable=trainable,
        params=params, peak_phase=moment.phase, saved=int(sum(s.saved for s in segs)))


@dataclasses.dataclass(frozen=True)
class _Moment:
    """What is alive (besides weights and optimizer state) at one moment of the step."""

    phase: str
    saved: int = 0
    scores: int = 0
    grads: int = 0
    transient: int = 0

    @property
    def total(self) -> int:
        return self.saved + self.grads + self.transient


def _peak_moment(segs: list[_Segment], frozen_tower: int, gradients: float, step_work: float) -> _Moment:
    """The step's high point: the frozen tower's forward, each segment's forward (what earlier segments saved +
    its transient), each segment's backward (top first: what is still saved + the gradients made so far + its
    transient), or the optimizer step (all gradients + its work)."""
    moments = [_Moment("vision fwd", transient=frozen_tower), _Moment("optimizer", grads=gradients,
                                                                     transient=step_work)]
    saved = scores = 0
    for s in segs:
        moments.append(_Moment(f"fwd {s.name}", saved, scores, 0, s.fwd))
        saved, scores = saved + s.saved, scores + s.scores
    grads = 0
    for s in reversed(segs):
        grads += s.grads
        moments.append(_Moment(f"bwd {s.name}", saved, scores, grads, s.bwd))
        saved, scores = saved - s.saved, scores - s.scores
    return max(moments, key=lambda m: m.total)


def max_batch(arch: Arch, memory: int, *, headroom: float = 0.1, limit: int = 65_536, **kwargs) -> int:
    """The largest per-GPU batch whose :func:`plan` total fits ``memory * (1 - headroom)`` bytes (0: none)."""
    budget = memory * (1 - headroom)
    if plan(arch, batch=1, **kwargs).total > budget:
        return 0
    lo, hi = 1, 2
    while hi <= limit and plan(arch, batch=hi, **kwargs).total <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if plan(arch, batch=mid, **kwargs).total <= budget else (lo, mid)
    return lo




def format_plan(plans: list[MemoryPlan], memory: int | None = None, headroom: float = 0.1,
                best: list[int] | None = None, global_batch: int | None = None) -> str:
    """A table: one column per plan (e.g. 1 GPU and FSDP on N), one row per part, GiB; then the largest
    per-GPU batch that fits ``memory`` (``best``, from :func:`max_batch`) and the accumulation it implies."""
    p0 = plans[0]
    a = p0.arch
    how = f"LoRA r={p0.lora_rank} (llm)" if p0.lora_rank else "full fine-tuning" + (" (ViT frozen)" if p0.freeze_vit
                                                                                  else "")
    lines = [f"{a.name}: {a.res} px ({a.image_tokens} image tokens), Gemma{' 2' if a.gemma2 else ''} "
             f"{a.depth}x{a.width}, {p0.params / 1e9:.2f}B parameters; {how}, {p0.trainable / 1e6:,.1f}M trained",
             f"{p0.dtype}, {p0.attention} attention, sequence {p0.seq_len} tokens ({p0.rows} supervised)"
             + (", gradient checkpointing" if p0.gradient_checkpointing else "")
             + (", frozen-tower feature cache" if p0.feature_cache else ""), ""]
    heads = ["1 GPU" if p.gpus == 1 else f"FSDP x{p.gpus}" for p in plans]
    unit, scale = ("GiB", GiB) if max(p.total for p in plans) >= GiB else ("MiB", 2**20)  # tiny models: MiB
    lines.append(f"{unit + ' per GPU':22s}" + "".join(f"{h:>14s}" for h in heads))
    lines.append(f"{'batch per GPU':22s}" + "".join(f"{p.batch:>14d}" for p in plans))
    for part in p0.parts():
        lines.append(f"{part:22s}" + "".join(f"{p.parts()[part] / scale:>14.2f}" for p in plans))
    lines.append(f"{'total (peak)':22s}" + "".join(f"{p.total / scale:>14.2f}" for p in plans))
    lines.append(f"{'  at':22s}" + "".join(f"{p.peak_phase:>14s}" for p in plans))
    if memory is not None:
        budget = memory * (1 - headroom)
        lines.append(f"{'fits ' + f'{memory / GiB:g} GiB':22s}"
                     + "".join(f"{'yes' if p.total <= budget else 'NO':>14s}" for p in plans))
    if best is not None:
        lines.append(f"{'largest batch / GPU':22s}" + "".join(f"{b:>14d}" for b in best))
        if global_batch:
            acc = [("-" if b == 0 else str(math.ceil(global_batch / (b * p.gpus)))) for b, p in zip(best, plans)]
            lines.append(f"{'accumulation steps':22s}" + "".join(f"{x:>14s}" for x in acc))
    other = "flex" if p0.attention == "eager" else "eager"
    lines.append("")
    lines.append(f"({unit} = 2^{30 if unit == 'GiB' else 20} bytes; the parts alive at the peak's moment; "
                 f"{headroom:.0%} of each GPU set aside")
    lines.append(f" for the CUDA context and allocator; compare --attention {other})")
    return "\n".join(lines)


def plan_report(model: str, *, gpus: int = 1, memory: str | int = "80GB", task: str = "docvqa",
                batch: int | None = None, text_len: int | None = None, seq_len: int | None = None,
                rows: int | None = None, headroom: float = 0.1, **options) -> str:
    """What ``big-vision-hf plan`` prints: :func:`format_plan` for 1 GPU and FSDP on ``gpus`` at ``task``'s
    recipe (its global batch, ``text_len``, ``freeze_vit`` and frames at the model's resolution; ``batch``,
    ``text_len`` or ``seq_len`` -- image tokens + text tokens -- override it). ``options``: :func:`plan`'s
    (``lora_rank``, ``dtype``, ``attention``, ``gradient_checkpointing``, ``feature_cache``, ``freeze_vit``).

    >>> print(plan_report("pg2-10b-448", gpus=8, memory="80GB", lora_rank=8, dtype="bf16"))  # doctest: +SKIP
    """
    from .tasks import get_task

    arch = load_arch(model)
    budget = parse_memory(memory) if isinstance(memory, str) else int(memory)
    if gpus < 1:
        raise ValueError(f"--gpus must be positive, got {gpus}")
    if not 0 <= headroom < 1:
        raise ValueError(f"--headroom must be in [0, 1), got {headroom}")
    # the transfer's own choice on a GPU (modeling.paligemma_attention.choose_attention): flex for the soft-capped
    # Gemma 2 (eager where flex does not run), sdpa for Gemma; the SigLIP tower on sdpa
    if options.get("attention") is None:
        options["attention"] = "flex" if arch.gemma2 else "sdpa"
    known = get_task(task).resolutions  # raises on an unknown task
    res = arch.res if arch.res in known else min(known, key=lambda r: abs(r - arch.res))
    t = get_task(task, res)
    recipe = t.recipe(res, batch_size=batch)
    frames = t.num_frames
    text_len = text_len or recipe.text_len
    if seq_len is not None:
        text_len = seq_len - frames * arch.image_tokens - 1
        if text_len < 1:
            raise ValueError(f"--seq-len {seq_len} leaves no text after {frames * arch.image_tokens} image tokens")
    options.setdefault("freeze_vit", recipe.freeze_vit and options.get("lora_rank") is None)
    common = dict(text_len=text_len, rows=rows, frames=frames, **options)
    setups = [(1, recipe.batch_size)] + ([(gpus, math.ceil(recipe.batch_size / gpus))] if gpus > 1 else [])
    plans = [plan(arch, batch=b, gpus=g, **common) for g, b in setups]
    best = [max_batch(arch, budget, headroom=headroom, gpus=g, **common) for g, _ in setups]
    head = (f"task {t.name} (recipe at {res} px: global batch {recipe.batch_size}, text_len {text_len}"
            f"{f', {frames} frames' if frames > 1 else ''})")
    return head + "\n" + format_plan(plans, budget, headroom, best, recipe.batch_size)
