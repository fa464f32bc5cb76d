"""Batches of big_vision's PaliGemma trainer, for transformers' ``PaliGemmaForConditionalGeneration``.

big_vision (commit 0127fb6), ``configs/proj/paligemma/transfers/common.py combine_and_keep_train(text_len)``:
``[bos] prefix`` | ``"\\n"`` (tokenized on its own) | ``suffix [eos]``, cut to ``text_len + 1`` tokens; ``mask_ar`` 0
on the prefix and separator, 1 on the suffix and the padding; ``mask_loss`` 1 on the suffix.
:class:`PaliGemmaCollator` builds them with :class:`~big_vision_hf.processing.processing_paligemma.
BvPaliGemmaProcessor` (the layout lives there, not here): ``token_type_ids`` = ``mask_ar`` (always returned, they
make transformers' prefix-LM mask), ``labels`` = the ids where ``mask_loss`` is 1, ``-100`` elsewhere. The loss on
those labels is :func:`~big_vision_hf.transfer.loss.paligemma_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PaliGemmaCollator"]


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
