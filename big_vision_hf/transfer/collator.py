"""Batches and loss of big_vision's PaliGemma trainer, for transformers' ``PaliGemmaForConditionalGeneration``.

big_vision (commit 0127fb6):

- batches: ``configs/proj/paligemma/transfers/common.py combine_and_keep_train(text_len)``:
  ``[bos] prefix`` | ``"\\n"`` (tokenized on its own) | ``suffix [eos]``, cut to ``text_len + 1`` tokens;
  ``mask_ar`` 0 on the prefix and separator, 1 on the suffix and the padding; ``mask_loss`` 1 on the suffix.
  :class:`PaliGemmaCollator` builds them with :class:`~big_vision_hf.processing.processing_paligemma.
  BvPaliGemmaProcessor` (the layout lives there, not here): ``token_type_ids`` = ``mask_ar`` (always returned,
  they make transformers' prefix-LM mask), ``labels`` = the ids where ``mask_loss`` is 1, ``-100`` elsewhere.
- loss: ``trainers/proj/paligemma/train.py loss_fn``::

      logp = log_softmax(logits)                       # logits of text[:, :-1]
      targets = one_hot(text[:, 1:], V)                 # the next token
      if label_smoothing: targets = where(targets == 1, 1 - ls, ls / (V - 1))
      token_pplx = sum(logp * targets, -1) * mask_loss[:, 1:]
      pplx = -sum(token_pplx, -1) / clip(sum(mask_loss[:, 1:], -1), 1)   # per example: mean over its tokens
      loss = mean(pplx)                                                   # then over the batch

  :func:`paligemma_loss` computes that from transformers' logits (one per input position, image tokens
  included) and labels. transformers' own loss averages over all supervised tokens of the batch (long answers
  weigh more) and its ``label_smoothing_factor`` compares unshifted logits and labels for PaliGemma; neither
  matches, so :class:`~big_vision_hf.transfer.training.PaliGemmaTrainer` overrides ``compute_loss`` with this.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["PaliGemmaCollator", "paligemma_loss"]


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
            (what :class:`PaliGemmaCollator` returns). Shifted here: ``logits[:, :-1]`` against ``labels[:, 1:]``.
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
    return _reduce(_token_logp(rows, targets[mask], label_smoothing, vocab_size), mask, reduction)


def _token_logp(rows: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
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


def _reduce(token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
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


class PaliGemmaCollator:
    """``datasets`` rows -> a training batch in big_vision's layout (``combine_and_keep_train``).

    Rows are dicts with ``image`` (PIL / array; or a list of images), ``prefix`` and ``suffix`` (a string; a list
    of strings -> the first, or one at random with ``random_suffix=True``, as big_vision's ``choice`` op does for
    VQA answers and COCO captions). The processor does the tokenisation and masks; this only batches.

    Args:
        processor: a ``BvPaliGemmaProcessor``.
        text_len: big_vision's ``text_len`` (default: the processor's).
        padding: ``"longest"`` (default) or ``"max_length"`` (every batch ``text_len + 1`` text tokens, the
            static shape of big_vision).
        random_suffix: pick a random ground truth when ``suffix`` is a list (seeded by ``seed``).
    """

    def __init__(self, processor, text_len: int | None = None, padding: str = "longest", image_key: str = "image",
                 prefix_key: str = "prefix", suffix_key: str = "suffix", random_suffix: bool = False,
                 seed: int = 0):
        self.processor = processor
        self.text_len = text_len
        self.padding = padding
        self.image_key, self.prefix_key, self.suffix_key = image_key, prefix_key, suffix_key
        self.random_suffix = random_suffix
        self._rng = torch.Generator().manual_seed(seed)

    def _suffix(self, value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
            if self.random_suffix:
                return value[int(torch.randint(len(value), (1,), generator=self._rng))]
            return value[0]
        raise ValueError(f"suffix must be a string or a list of strings, got {type(value).__name__}")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        missing = [k for k in (self.image_key, self.prefix_key, self.suffix_key) if k not in rows[0]]
        if missing:
            raise ValueError(f"rows need {missing} (got keys {sorted(rows[0])})")
        batch = self.processor(
            images=[r[self.image_key] for r in rows],
            text=[r[self.prefix_key] for r in rows],
            suffix=[self._suffix(r[self.suffix_key]) for r in rows],
            text_len=self.text_len,
            padding=self.padding,
            padding_side="right",
            return_tensors="pt",
        )
        return dict(batch)
