"""PaliGemma 2 on ``flex_attention``: Gemma 2's attention-logit soft-cap without the ``[B, heads, L, L]`` scores.

Gemma 2 (PaliGemma 2) soft-caps its attention logits (``cap * tanh(s / cap)``), which ``sdpa`` cannot do, so
transformers runs it on ``eager``: every layer then keeps float ``[B, heads, L, L]`` scores and probabilities for the
backward pass, 1,024 image tokens at 448 px and 4,096 at 896 px. transformers' ``flex_attention`` already does the
rest exactly, and is reused as it is:

- the soft-cap is a ``score_mod`` (``transformers.integrations.flex_attention.flex_attention_forward``);
- prefix-LM + causal + padding (and Gemma 2's sliding window) are ONE ``BlockMask``: ``PaliGemmaModel`` passes
  ``block_sequence_ids = where(token_type_ids == 0, 0, -1)`` to ``create_causal_mask``, which ORs the blockwise
  (bidirectional prefix) overlay into the causal mask and ANDs the padding mask in (``masking_utils``); cached
  decoding steps get the causal mask at the cache's offset, as with ``eager``.

What this module adds:

- :func:`choose_attention`: the implementation for a PaliGemma config on a device, and why; ``"auto"`` picks flex
  for PaliGemma 2 where it runs and falls back to ``eager`` (PaliGemma 1 keeps ``sdpa``, exact and fused), printing
  the reason of a fallback once.
- :data:`CPU_FLEX`, ``"bv_flex_attention"``: torch (2.13) has no flex-attention *backward* on CPU ("FlexAttention
  does not support backward on CPU"). This registered implementation is transformers' ``flex_attention`` (same
  mask, same ``score_mod``, same compiled forward through inductor's C++ template, which does not build the
  ``[L, L]`` scores) with a backward that recomputes the attention in blocks of query rows from the block mask's
  own ``mask_mod``: ``[B, heads, rows, L]`` at a time, never ``[L, L]``. Decoding steps (a few query rows) and
  any compile failure (said once) take that blockwise computation in the forward too. Off CPU it is transformers'
  ``flex_attention_forward`` unchanged.
- :func:`load_kwargs` / :func:`set_attention`: the vision tower keeps ``sdpa`` (no soft-cap, no mask), the
  language model gets the chosen implementation.

Example:
    >>> from transformers import PaliGemmaConfig
    >>> from big_vision_hf.modeling.paligemma_attention import choose_attention
    >>> config = PaliGemmaConfig(text_config={"model_type": "gemma2"})
    >>> choose_attention(config, "cpu", "eager")
    ('eager', 'asked for')
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import types

import torch
from transformers.integrations.flex_attention import flex_attention_forward as hf_flex_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flex_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = [
    "ATTENTION_CHOICES",
    "CPU_FLEX",
    "FLEX",
    "attention_of",
    "check_attention",
    "choose_attention",
    "flex_attention_forward",
    "flex_unavailable_reason",
    "load_kwargs",
    "set_attention",
]

FLEX = "flex_attention"
CPU_FLEX = "bv_flex_attention"  # contains "flex_attention": transformers then runs its flex dispatch checks
ATTENTION_CHOICES = ("auto", "eager", "sdpa", FLEX)
# bytes of one float [B, heads, rows, L] block in the CPU backward (about eight are alive at a time): small
# enough that a layer's backward stays far below eager's [B, heads, L, L] scores kept for every layer; at least
# BLOCK_MIN_ROWS rows, so that long sequences do not pay the per-block overhead hundreds of times
BACKWARD_BLOCK_BYTES = 2 * 2**20
BLOCK_MIN_ROWS = 64
# on CPU, queries of at most this many rows (decoding steps) skip the compiled kernel (see _flex_cpu)
DECODE_ROWS = 16
_COMPILE_FAILED = False
_INFERENCE = types.SimpleNamespace(training=False)  # what transformers' flex_attention_forward reads of the module


# ---------------------------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------------------------


def attention_of(config) -> str | None:
    """The language model's attention implementation (PaliGemma's own config only holds its sub-configs')."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)


@functools.lru_cache(maxsize=None)
def flex_unavailable_reason(device_type: str) -> str | None:
    """Why flex attention cannot run on ``device_type`` here, or ``None`` when it can: a torch with
    ``flex_attention``, and the compiler its kernels need (inductor's C++ template on CPU: a C++ compiler;
    triton on CUDA). The first real call compiles (seconds on CPU); that is not tried here.

    Example:
        >>> flex_unavailable_reason("mps")
        'flex attention is not compiled for mps here'
    """
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no flex_attention (torch >= 2.5 has)"
    if device_type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = os.environ.get("CXX") or inductor_config.cpp.cxx[1] or "g++"
        if not any(shutil.which(c) for c in (cxx, "g++", "gcc", "clang++")):
            return f"no C++ compiler ({cxx}) for inductor's CPU flex-attention kernel"
        return None
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (flex attention compiles to triton kernels on CUDA)"
        return None
    return f"flex attention is not compiled for {device_type} here"


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


def choose_attention(config, device: str | torch.device | None = None, requested: str = "auto") -> tuple[str, str]:
    """``(attn_implementation for the language model, reason)`` for a PaliGemma ``config`` on ``device``.

    ``"auto"``: PaliGemma 2 (Gemma 2 soft-caps attention logits) gets flex attention where it runs --
    :data:`FLEX` on CUDA, :data:`CPU_FLEX` on CPU (torch has no CPU flex backward) -- else ``eager``, the reason
    printed once to stderr; PaliGemma 1 keeps ``sdpa`` (exact with ``token_type_ids``, fused). An explicit
    ``requested`` is returned as asked (``"flex_attention"`` on CPU as :data:`CPU_FLEX`, so that training works),
    except ``sdpa`` for a soft-capped model, refused as transformers refuses it.

    Example:
        >>> from transformers import PaliGemmaConfig
        >>> choose_attention(PaliGemmaConfig(), "cpu")
        ('sdpa', 'PaliGemma 1: sdpa keeps the prefix-LM mask and is fused')
    """
    if requested not in ATTENTION_CHOICES + (CPU_FLEX,):
        raise ValueError(f"attention {requested!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text, "attn_logit_softcapping", None)
    device_type = torch.device(device if device is not None else
                               ("cuda" if torch.cuda.is_available() else "cpu")).type
    flex = CPU_FLEX if device_type == "cpu" else FLEX
    if requested == "sdpa" and softcap is not None:
        raise ValueError("attention 'sdpa': Gemma 2 (PaliGemma 2) soft-caps attention logits, which sdpa cannot; "
                         "use auto, flex_attention or eager")
    if requested in (FLEX, CPU_FLEX):
        return flex, "asked for"
    if requested != "auto":
        return requested, "asked for"
    if softcap is None:
        return "sdpa", "PaliGemma 1: sdpa keeps the prefix-LM mask and is fused"
    reason = flex_unavailable_reason(device_type)
    if reason is not None:
        _say_once(f"PaliGemma 2 attention: eager, not flex_attention ({reason}); it keeps [B, heads, L, L] scores")
        return "eager", reason
    return flex, f"PaliGemma 2: soft-cap as score_mod, prefix-LM block mask ({device_type})"


def load_kwargs(config, device=None, requested: str = "auto") -> dict:
    """``from_pretrained`` keyword arguments for :func:`choose_attention`'s choice: the language model gets it,
    the SigLIP tower keeps ``sdpa`` (no soft-cap, no mask; torch's CPU flex has no backward for it either).

    Example:
        >>> from transformers import PaliGemmaConfig
        >>> load_kwargs(PaliGemmaConfig(text_config={"model_type": "gemma2"}), "cpu", "eager")
        {'attn_implementation': {'text_config': 'eager', 'vision_config': 'sdpa'}}
    """
    impl, _ = choose_attention(config, device, requested)
    return {"attn_implementation": {"text_config": impl, "vision_config": "sdpa"}}


def check_attention(config, training: bool = True, device=None) -> None:
    """The attention traps of a PaliGemma ``config`` (``BvPaliGemmaProcessor.check_model`` runs them): a one-line
    ``ValueError`` for

    - ``sdpa`` on a soft-capped model (PaliGemma 2): transformers refuses it (no soft-cap in sdpa);
    - ``flash_attention_*`` in training: only the padding mask is kept, the suffix would be attended both ways;
    - ``flex_attention`` in training on CPU: torch has no flex backward there (:data:`CPU_FLEX` has one).
      ``device`` is where the model is now; a model loaded on the CPU of a machine with CUDA is moved there by the
      ``Trainer`` (that is where :func:`choose_attention` put :data:`FLEX`), so only a CUDA-less machine is refused.

    Example:
        >>> from transformers import PaliGemmaConfig
        >>> config = PaliGemmaConfig(text_config={"model_type": "gemma2"})
        >>> config.text_config._attn_implementation = CPU_FLEX
        >>> check_attention(config, training=True, device="cpu")
    """
    impl = attention_of(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None) is not None and impl == "sdpa":
        raise ValueError(
            "PaliGemma 2 (Gemma 2 softcaps attention logits) cannot run with attn_implementation='sdpa' in "
            f"transformers; load it with {FLEX!r} (on CPU {CPU_FLEX!r}: choose_attention) or 'eager'"
        )
    if training and impl is not None and impl.startswith("flash_attention"):
        raise ValueError(
            f"attn_implementation={impl!r} ignores the prefix-LM mask (token_type_ids): training would attend "
            f"bidirectionally over the answer; use 'eager', 'sdpa' (PaliGemma 1) or {FLEX!r}"
        )
    on_cpu = device is not None and torch.device(device).type == "cpu" and not torch.cuda.is_available()
    if training and impl == FLEX and on_cpu:
        raise ValueError(f"attn_implementation={FLEX!r} cannot train on CPU (torch has no flex-attention backward "
                         f"there); use {CPU_FLEX!r}, the same attention with a CPU backward (choose_attention)")


def set_attention(model, device=None, requested: str = "auto") -> str:
    """Switches a loaded PaliGemma to :func:`choose_attention`'s choice (vision tower: ``sdpa``); returns it."""
    kwargs = load_kwargs(model.config, device if device is not None else model.device, requested)
    model.set_attn_implementation(kwargs["attn_implementation"])
    return kwargs["attn_implementation"]["text_config"]


# ---------------------------------------------------------------------------------------------------------
# Flex attention with a CPU backward
# ---------------------------------------------------------------------------------------------------------


def _attention_rows(query, key, value, mask, scale: float, softcap: float | None) -> torch.Tensor:
    """Exact attention of the query rows ``query`` ``[B, H, R, D]`` over ``key``/``value`` ``[B, KV, L, D]``,
    with ``mask`` ``[B|1, H|1, R, L]`` (bool, ``None`` = all). As ``eager``: float32 softmax; a row with no key
    gives 0, as flex attention does (a finite fill keeps its gradient 0 rather than NaN)."""
    batch, heads, rows, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    # query head h reads kv head h // groups: the groups' rows stacked per kv head, no copy of key / value
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * rows, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).view(batch, heads, rows, length) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if mask is not None:
        probs = probs * mask
    out = torch.matmul(probs.view(batch, kv_heads, -1, length), value)
    return out.view(batch, heads, rows, dim)


def _mask_rows(block_mask, start: int, stop: int, kv_length: int, device) -> torch.Tensor | None:
    """Rows ``start:stop`` of ``block_mask``'s dense mask, ``[B, H|1, rows, L]``, from its ``mask_mod`` (the one
    the forward used). transformers' mask functions index tensors with their arguments, so they are called once
    on broadcasting index grids (milliseconds); another ``mask_mod`` goes through torch's ``create_mask`` (vmap)."""
    if block_mask is None:
        return None
    batch, heads = block_mask.shape[0], block_mask.shape[1]
    shape = (batch, heads, stop - start, kv_length)
    grid = [torch.arange(a, b, device=device).view([-1 if i == d else 1 for i in range(4)])
            for d, (a, b) in enumerate([(0, batch), (0, heads), (start, stop), (0, kv_length)])]
    try:
        return torch.as_tensor(block_mask.mask_mod(*grid), dtype=torch.bool, device=device).expand(shape)
    except (RuntimeError, IndexError, TypeError):  # a mask_mod written for scalars only
        from torch.nn.attention.flex_attention import create_mask

        def rows(b, h, q, kv):
            return block_mask.mask_mod(b, h, q + start, kv)

        return create_mask(rows, batch, heads, stop - start, kv_length, device)


def _block_rows(query, key) -> int:
    """Query rows per block: one float ``[B, heads, rows, L]`` block within :data:`BACKWARD_BLOCK_BYTES` (at least
    :data:`BLOCK_MIN_ROWS` rows)."""
    batch, heads, length, _ = query.shape
    return min(length, max(BLOCK_MIN_ROWS, BACKWARD_BLOCK_BYTES // (batch * heads * key.shape[2] * 4)))


def _attention_by_rows(query, key, value, block_mask, scale: float, softcap: float | None) -> torch.Tensor:
    """The attention ``[B, L, H, D]`` computed by blocks of query rows (no gradient; ``[B, H, rows, L]`` at a
    time), with ``block_mask``'s own ``mask_mod``: flex attention's result without its kernel."""
    out = torch.empty_like(query)
    rows = _block_rows(query, key)
    for start in range(0, query.shape[2], rows):
        stop = min(query.shape[2], start + rows)
        mask = _mask_rows(block_mask, start, stop, key.shape[2], query.device)
        out[:, :, start:stop] = _attention_rows(query[:, :, start:stop], key, value, mask, scale, softcap)
    return out.transpose(1, 2).contiguous()


def _flex_cpu(module, query, key, value, block_mask, scaling, softcap) -> torch.Tensor:
    """Forward on CPU, no gradient: transformers' compiled flex attention for prefill / training shapes; decoding
    steps (a few query rows: ``[B, H, rows, L]`` is small, and each new cache length would otherwise recompile --
    torch 2.13's inductor also fails to compile the dynamic-shape CPU kernel some of them get) and any compile
    failure (said once, then for the rest of the process) take :func:`_attention_by_rows`."""
    global _COMPILE_FAILED
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.shape[2] <= DECODE_ROWS or _COMPILE_FAILED:
        return _attention_by_rows(query, key, value, block_mask, scale, softcap)
    from torch._dynamo.exc import BackendCompilerFailed

    try:  # compiled for inference whatever module.training says: its backward is ours, and a train/eval toggle
        # would otherwise recompile (transformers re-wraps torch.compile when the flag changes)
        return hf_flex_attention_forward(_INFERENCE, query, key, value, block_mask, scaling=scaling,
                                         softcap=softcap)[0]
    except BackendCompilerFailed as e:  # inductor's CppCompileError and the like: the math, not a crash
        _COMPILE_FAILED = True
        _say_once(f"flex attention: inductor could not compile the CPU kernel ({str(e).splitlines()[0][:200]}); "
                  "computing the same attention by blocks of query rows from now on")
        return _attention_by_rows(query, key, value, block_mask, scale, softcap)


class _FlexCpuBackward(torch.autograd.Function):
    """Forward: :func:`_flex_cpu` (no ``[L, L]``). Backward: the attention recomputed for blocks of query rows and
    differentiated there; only ``query``, ``key``, ``value`` are kept for it."""

    @staticmethod
    def forward(ctx, query, key, value, module, block_mask, scaling, softcap):
        out = _flex_cpu(module, query.detach(), key.detach(), value.detach(), block_mask, scaling, softcap)
        ctx.save_for_backward(query, key, value)
        ctx.block_mask, ctx.scaling, ctx.softcap = block_mask, scaling, softcap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors
        length, kv_length = query.shape[2], key.shape[2]
        scale = ctx.scaling if ctx.scaling is not None else query.shape[-1] ** -0.5
        rows = _block_rows(query, key)
        grad_out = grad_out.transpose(1, 2)  # [B, L, H, D] -> [B, H, L, D]
        grad_q, grad_k, grad_v = torch.empty_like(query), torch.zeros_like(key), torch.zeros_like(value)
        with torch.enable_grad():
            k, v = key.detach().requires_grad_(), value.detach().requires_grad_()
            for start in range(0, length, rows):
                stop = min(length, start + rows)
                q = query[:, :, start:stop].detach().requires_grad_()
                mask = _mask_rows(ctx.block_mask, start, stop, kv_length, query.device)
                out = _attention_rows(q, k, v, mask, scale, ctx.softcap)
                dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out[:, :, start:stop])
                grad_q[:, :, start:stop] = dq
                grad_k += dk
                grad_v += dv
        return grad_q, grad_k, grad_v, None, None, None, None


def flex_attention_forward(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    """:data:`CPU_FLEX`: transformers' ``flex_attention_forward`` off CPU; on CPU the same attention with a
    backward (see the module doc).

    ``attention_mask`` is the ``BlockMask`` of ``create_causal_mask`` (or ``None``); returns ``(out [B, L, H, D],
    None)`` like transformers' attention functions.
    """
    if query.device.type != "cpu":
        return hf_flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap,
                                         **kwargs)
    if kwargs.get("dropout", 0.0) > 0:
        raise ValueError("flex attention has no attention-probability dropout; set attention_dropout to 0")
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise ValueError(f"{CPU_FLEX}: attention sinks and position biases are not supported on CPU")
    if attention_mask is not None and not hasattr(attention_mask, "mask_mod"):
        raise ValueError(f"{CPU_FLEX} expects a BlockMask (create_causal_mask for {CPU_FLEX}), got a dense mask")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _FlexCpuBackward.apply(query, key, value, module, attention_mask, scaling, softcap), None
    return _flex_cpu(module, query, key, value, attention_mask, scaling, softcap), None


# the name works in `from_pretrained(attn_implementation=...)` once this module is imported; the mask is flex's
ALL_ATTENTION_FUNCTIONS.register(CPU_FLEX, flex_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_FLEX, flex_attention_mask)
