"""CapPa's input pipeline (``configs/proj/cappa/pretrain.py``) as a transformers processor, and LocCa's boxes as text.

big_vision's CapPa pp::

    images: decode|resize(224)|value_range(-1, 1)                          -> `BvImageProcessor`
    texts:  tokenize(max_len=64, model="c4_en", eos="sticky", inkey="text", outkey="labels")

``tokenize`` (``pp/ops_text.py``) lowercases (``lower=True``), encodes with the SentencePiece model, appends EOS,
keeps the first ``max_len - 1`` tokens and the EOS when too long ("sticky") and pads with ``pad_value="<pad>"`` (id 0
in c4_en) -- exactly `BvTextTokenizer` with ``pad_id`` the ``<pad>`` piece. The model reads ``shift_right(labels)``
(0 first), so 0 is also the start of generation.

`BvCapPaProcessor` follows PaliGemma's processor: ``text`` is a prompt (a prefix of the decoder's input; ``""`` for
CapPa's plain captioning), ``suffix`` the target. With a suffix it returns big_vision's ``labels`` (prompt + target +
EOS, sticky-truncated and padded to the text length) and ``label_masks`` (0 on the prompt: the loss only counts the
target, big_vision's trainer ``label_masks``); without, ``decoder_input_ids = [0] + prompt`` for ``generate``. With
an empty prompt the labels are big_vision's ``tokenize`` output exactly.

LocCa (https://arxiv.org/abs/2403.19596) trains this same encoder-decoder with task prompts and boxes written as
text; :func:`box_to_text` / :func:`text_to_boxes` write and read boxes as integer bins (see the README's LocCa
section). LocCa's code and checkpoints are not public; the prompt strings are the user's choice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_bv import BvImageProcessor
from .tokenization_bv_text import BvTextTokenizer

__all__ = ["BvCapPaProcessor", "box_to_text", "text_to_boxes", "cappa_tokenizer"]

CAPPA_TEXT_LENGTH = 64  # configs/proj/cappa/pretrain.py: max_text_tokens
_INT = re.compile(r"-?\d+")


def cappa_tokenizer(vocab_file: str, max_length: int = CAPPA_TEXT_LENGTH, **kwargs) -> BvTextTokenizer:
    """big_vision ``tokenize(max_len=L, model=vocab_file, eos="sticky")`` with its defaults ``lower=True``,
    ``pad_value="<pad>"`` (the ``<pad>`` piece's id; c4_en: 0)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(open(vocab_file, "rb").read())
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{vocab_file}: not a readable SentencePiece model ({str(e).splitlines()[0]})") from None
    return BvTextTokenizer(vocab_file, model_max_length=max_length, lower=True, pad_id=sp.PieceToId("<pad>"), **kwargs)


def box_to_text(box: Sequence[float], num_bins: int = 500) -> str:
    """A box ``(ymin, xmin, ymax, xmax)`` in [0, 1] -> ``"y0 x0 y1 x1"``: each coordinate as the integer
    ``round(v * (num_bins - 1))`` (``num_bins`` values, 0 and 1 included), written as text."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates (ymin, xmin, ymax, xmax), got {len(box)}")
    bins = np.clip(np.rint(np.asarray(box, np.float64) * (num_bins - 1)), 0, num_bins - 1).astype(int)
    return " ".join(str(b) for b in bins)


def text_to_boxes(text: str, num_bins: int = 500) -> list[tuple[float, float, float, float]]:
    """Every group of four integers in ``text`` -> a box ``(ymin, xmin, ymax, xmax)`` in [0, 1] (`box_to_text`'s
    inverse)."""
    values = [min(max(int(v), 0), num_bins - 1) / (num_bins - 1) for v in _INT.findall(text)]
    return [tuple(values[i : i + 4]) for i in range(0, len(values) - len(values) % 4, 4)]


class BvCapPaProcessor(ProcessorMixin):
    r"""CapPa's pp: images through `BvImageProcessor`, texts through `BvTextTokenizer` (see the module docstring).

    Args:
        image_processor: a `BvImageProcessor` (``decode|resize(S)|value_range(-1, 1)``).
        tokenizer: a `BvTextTokenizer` (`cappa_tokenizer`: c4_en, ``eos="sticky"``, pad 0, the text length).

    Example:
        >>> processor = BvCapPaProcessor(BvImageProcessor(), cappa_tokenizer("c4_en.model"))  # doctest: +SKIP
        >>> batch = processor(images=[img], suffix=["A cat on a sofa."], return_tensors="pt")  # doctest: +SKIP
        >>> loss = model(**batch).loss  # training: pixel_values, labels, label_masks  # doctest: +SKIP
        >>> ids = model.generate(**processor(images=[img], return_tensors="pt"))  # doctest: +SKIP
        >>> processor.batch_decode(ids, skip_special_tokens=True)  # doctest: +SKIP
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = BvImageProcessor()
        if tokenizer is None:
            raise ValueError("BvCapPaProcessor needs a BvTextTokenizer (cappa_tokenizer('c4_en.model'))")
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, subfolder="",
                                        **kwargs):
        # The folder's tokenizer is ours whichever way the processor was reached (package or remote code).
        return BvTextTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "decoder_input_ids", "labels", "label_masks"]

    @property
    def text_length(self) -> int:
        """big_vision's ``max_len``: the labels' length (the model's ``seq_len``)."""
        return self.tokenizer.model_max_length

    def _ids(self, text: str) -> list[int]:
        """big_vision's lowercase + SentencePiece ``EncodeAsIds``, no EOS (any length: truncation is `labels`')."""
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text)) if text else []

    def labels(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """``(labels, label_masks)`` of one example: ``prompt + target + [EOS]``, sticky-truncated and padded with
        0 to the text length (big_vision ``tokenize(eos="sticky")`` on the whole); masks 0 on the prompt."""
        length, eos, pad = self.text_length, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        prompt_ids = self._ids(prompt)
        ids = prompt_ids + self._ids(target) + [eos]
        if len(prompt_ids) >= length:
            raise ValueError(f"prompt {prompt!r} has {len(prompt_ids)} tokens: no room for a target in {length}")
        ids = ids[: length - 1] + ids[-1:] if len(ids) >= length else ids + [pad] * (length - len(ids))
        return ids, [0] * len(prompt_ids) + [1] * (length - len(prompt_ids))

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        suffix: str | Sequence[str] | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Builds a batch (see the module docstring).

        Args:
            images: an image or a list (PIL, arrays, tensors): ``pixel_values``.
            text: the prompt(s): ``""`` (CapPa captioning) or a task prompt (LocCa); one for all examples or one
                per example. Without ``suffix`` it gives ``decoder_input_ids = [0] + prompt`` (all prompts of a
                batch must have the same number of tokens: the decoder has no padding mask).
            suffix: the target(s), for training: gives ``labels`` and ``label_masks``.
            return_tensors: ``"pt"``, ``"np"`` or ``None``.
            kwargs: passed to the image processor.
        """
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=None, **kwargs))
            if not isinstance(data["pixel_values"], np.ndarray):
                data["pixel_values"] = np.stack(data["pixel_values"])
        if text is None and suffix is None:
            if images is None:
                raise ValueError("pass images, a prompt (text) and/or targets (suffix)")
            return BatchFeature(data=data, tensor_type=return_tensors)
        n = next((len(v) for v in (suffix, text, images) if isinstance(v, (list, tuple))), 1)
        prompts = _per_example(text if text is not None else "", n, "text")
        if suffix is not None:
            rows = [self.labels(p, t) for p, t in zip(prompts, _per_example(suffix, n, "suffix"))]
            data["labels"] = np.array([r[0] for r in rows], np.int64)
            data["label_masks"] = np.array([r[1] for r in rows], np.float32)
        else:
            start = [self.tokenizer.pad_token_id]  # shift_right's 0
            ids = [start + self._ids(p) for p in prompts]
            if len({len(i) for i in ids}) > 1:
                raise ValueError("prompts with different numbers of tokens cannot be batched (big_vision's decoder has "
                                 "no padding mask): generate them one at a time or in groups of equal length")
            if len(ids[0]) > self.text_length:
                raise ValueError(f"the prompt has {len(ids[0]) - 1} tokens: the decoder has {self.text_length} "
                                 "positions")
            data["decoder_input_ids"] = np.array(ids, np.int64)
        return BatchFeature(data=data, tensor_type=return_tensors)


def _per_example(values, n: int, what: str) -> list[str]:
    if isinstance(values, str):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"got {len(values)} {what} entries for {n} examples")
    return values
