"""The loss of big_vision's PaliGemma trainer, for transformers' ``PaliGemmaForConditionalGeneration``.

big_vision (commit 0127fb6), ``trainers/proj/paligemma/train.py loss_fn``::

    logp = log_softmax(logits)                       # logits of text[:, :-1]
    targets = one_hot(text[:, 1:], V)                 # the next token
    if label_smoothing: targets = where(targets == 1, 1 - ls, ls / (V - 1))
    token_pplx = sum(logp * targets, -1) * mask_loss[:, 1:]
    pplx = -sum(token_pplx, -1) / clip(sum(mask_loss[:, 1:], -1), 1)   # per example: mean over its tokens
    loss = mean(pplx)                                                   # then over the batch

:func:`paligemma_loss` computes that from transformers' logits (one per input position, image tokens included) and
the labels of :class:`~big_vision_hf.transfer.collator.PaliGemmaCollator`. transformers' own loss averages over all
supervised tokens of the batch (long answers weigh more) and its ``label_smoothing_factor`` compares unshifted
logits and labels for PaliGemma; neither matches, so :class:`~big_vision_hf.transfer.training.PaliGemmaTrainer`
overrides ``compute_loss`` with this (through :func:`token_logp` and :func:`reduce_token_logp` where it computes
logits on the supervised rows only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["paligemma_loss", "reduce_token_logp", "token_logp"]


def paligemma_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    vocab_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """big_vision's PaliGemma training loss (see the module docstring).

    Args:
        logits: ``[B, T, V]``, position ``t`` predicting token ``t + 1`` (transformers' output).
        labels: ``[B, T]`` token ids on the supervised positions (the suffix and ``<eos>``), ``-100`` elsewhere
            (what :class:`~big_vision_hf.transfer.collator.PaliGemmaCollator` returns). Shifted here:
            ``logits[:, :-1]`` against ``labels[:, 1:]``.
        label_smoothing: big_vision's ``config.label_smoothing``: the target gets ``1 - ls``, every other token
            ``ls / (V - 1)``.
        vocab_size: only the first ``vocab_size`` logits enter the softmax (e.g. drop transformers' ``<image>``
            and padding rows, 257,152 for PaliGemma, to get big_vision's ``V`` exactly); default all of them.
        reduction: ``"mean"`` (big_vision: per-example mean over its supervised tokens, then mean over the
            batch), ``"none"`` (the per-example values, ``[B]``) or ``"sum"`` (their sum).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not line up")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = labels[:, 1:]
    mask = targets != -100
    # Only the supervised positions enter the softmax (a PaliGemma sequence is mostly image tokens): the same
    # per-token values as the dense computation, without a [B, T, V] float copy / log-softmax / gradient of it.
    rows = logits[:, :-1][mask]
    return reduce_token_logp(token_logp(rows, targets[mask], label_smoothing, vocab_size), mask, reduction)


def token_logp(rows: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
               vocab_size: int | None = None) -> torch.Tensor:
    """``sum_v log_softmax(row)_v * target_v`` per row (``[N, V]`` logits, ``[N]`` target ids): big_vision's
    token value, label smoothing as in :func:`paligemma_loss`. Computed in float32."""
    if vocab_size is not None:
        rows = rows[..., :vocab_size]
    logp = F.log_softmax(rows.float(), dim=-1)
    target_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        off = label_smoothing / (rows.shape[-1] - 1)
        # sum_v logp_v * target_v with target = off everywhere but (1 - ls) at the label:
        return off * (logp.sum(-1) - target_logp) + (1.0 - label_smoothing) * target_logp
    return target_logp


def reduce_token_logp(token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-example mean of the token values (``token``: ``[N]``, the ``True`` positions of the ``[B, T]``
    ``mask`` in row-major order; no token -> 0), then ``reduction`` over the batch. Deterministic (no atomics)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    sums = token.new_zeros(mask.shape).masked_scatter(mask, token).sum(-1)
    per_example = -sums / mask.sum(-1).clamp(min=1).to(sums.dtype)
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    return per_example.mean()
