"""A data collator that packs images NaViT-style ("Patch n' Pack", https://arxiv.org/abs/2307.06304) for
``Trainer``, ``datasets`` and plain ``DataLoader`` s, also under ``accelerate`` with several processes.

For each batch of examples (dicts with an image, and a label or a text): every image gets a patch budget (its
native resolution, NaFlex's ``max_num_patches``, or NaViT's resolution sampling), goes through big_vision's NaFlex
pp at that budget (`BvNaViTImageProcessor.image_sequence`: ``value_range|resize_to_sequence|patchify``), optionally
drops tokens (`TokenDropping`), and the batch is packed first-fit-decreasing into rows of ``sequence_length``
tokens (`sequence_packing`). Labels and texts follow the packed image order.

Each process (and each ``DataLoader`` worker) collates its own examples, so the packed tensors never need
splitting; its random numbers come from ``seed``, the process rank and the worker id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .image_processing_bv_navit import BvNaViTImageProcessor
from .sequence_packing import (
    ResolutionSampler,
    TokenDropping,
    first_fit_decreasing,
    native_patch_budget,
    pack_sequences,
)

__all__ = ["BvNaViTCollator"]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


class BvNaViTCollator:
    r"""Packs a batch of examples into NaViT sequences (see the module docstring).

    Args:
        image_processor: the `BvNaViTImageProcessor` (or ``BvNaFlexImageProcessor`` settings: patch size,
            ``max_num_patches``, value range) whose pp each image goes through. Default: patch 16, 256 patches.
        sequence_length: tokens per packed row (at least ``max_num_patches``; default ``2 * max_num_patches``).
            Longer rows fit images better but leave more of the last row empty: the padding share falls with more
            images per batch (64 web-like images at 256 patches in rows of 512: about 3.5 %).
        resolution: ``"native"`` (native resolution, at most ``max_num_patches``; NaViT), ``"max"`` (NaFlex: every
            image at ``max_num_patches``) or a `ResolutionSampler` (NaViT's resolution sampling, for training).
        token_dropping: a `TokenDropping` (fixed or resolution-dependent rate), or a float (fixed rate).
        image_column / label_column / text_column: the example keys (``None``: not used). A label gives
            ``labels`` (classification); a text (``text_column="text"``, contrastive training of a two-tower model)
            gives ``input_ids`` (tokenised with ``tokenizer``; a list of ids is used as is) and ``return_loss=True``.
        tokenizer: for the texts (e.g. the folder's `BvTextTokenizer`); its call pads as big_vision does.
        seed: of the random numbers (resolution sampling, token dropping), mixed with the rank and worker id.

    The batch: ``pixel_values [S, L, P*P*3]``, ``segment_ids``, ``patch_coords``, ``spatial_shapes [N, 2]``, then
    ``labels [N]`` or ``input_ids [N, T]`` + ``return_loss``. ``last_padding_fraction`` and the running totals
    ``tokens``/``padding`` tell how many packed tokens were padding.

    Example:
        >>> import numpy as np
        >>> from big_vision_hf.processing.image_processing_bv_navit import BvNaViTImageProcessor
        >>> from big_vision_hf.processing.navit_collator import BvNaViTCollator
        >>> processor = BvNaViTImageProcessor(patch_size=16, max_num_patches=64)
        >>> collate = BvNaViTCollator(processor, sequence_length=64, resolution="native", token_dropping=0.5)
        >>> batch = collate([{"image": np.zeros((32 * k, 48, 3), np.uint8), "label": k} for k in (1, 2, 3)])
        >>> batch["segment_ids"].shape[1], batch["labels"].tolist()
        (64, [3, 2, 1])
    """

    def __init__(
        self,
        image_processor: BvNaViTImageProcessor | None = None,
        sequence_length: int | None = None,
        resolution: str | ResolutionSampler = "native",
        token_dropping: TokenDropping | float | None = None,
        image_column: str = "image",
        label_column: str | None = "label",
        text_column: str | None = None,
        tokenizer=None,
        seed: int = 0,
    ):
        if image_processor is None:
            image_processor = BvNaViTImageProcessor()
        elif not isinstance(image_processor, BvNaViTImageProcessor):  # e.g. a folder's BvNaFlexImageProcessor
            image_processor = BvNaViTImageProcessor(**image_processor.to_dict())
        self.image_processor = image_processor
        self.patch_size = int(image_processor.patch_size)
        self.max_num_patches = int(image_processor.max_num_patches)
        self.sequence_length = sequence_length or 2 * self.max_num_patches
        if self.sequence_length < self.max_num_patches:
            raise ValueError(f"sequence_length={self.sequence_length} < max_num_patches={self.max_num_patches}")
        if not isinstance(resolution, ResolutionSampler) and resolution not in ("native", "max"):
            raise ValueError(f"resolution must be 'native', 'max' or a ResolutionSampler, got {resolution!r}")
        self.resolution = resolution
        if isinstance(token_dropping, (int, float)):
            token_dropping = TokenDropping.fixed(float(token_dropping))
        self.token_dropping = token_dropping
        self.image_column, self.label_column, self.text_column = image_column, label_column, text_column
        self.tokenizer = tokenizer
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self.tokens = self.padding = 0
        self.last_padding_fraction = 0.0

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, _rank(), info.id if info is not None else 0])
        return self._rng

    def budget(self, image: np.ndarray) -> int:
        """The patch budget of a uint8 ``(C, H, W)`` image."""
        if isinstance(self.resolution, ResolutionSampler):
            return self.resolution.budget(self.rng, self.patch_size, self.max_num_patches)
        if self.resolution == "max":
            return self.max_num_patches
        return native_patch_budget(image.shape[1], image.shape[2], self.patch_size, self.max_num_patches)

    def sequence(self, image) -> dict[str, np.ndarray]:
        """One raw image (PIL, array, bytes) -> its patch sequence (resized, patchified, tokens dropped)."""
        chw = self.image_processor.process_image(image, do_convert_rgb=True)
        seq = self.image_processor.image_sequence(chw, self.budget(chw))
        if self.token_dropping is not None:
            keep = self.token_dropping.keep(len(seq["patches"]), self.patch_size, self.rng)
            seq = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in seq.items()}
        return seq

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        sequences = [self.sequence(ex[self.image_column]) for ex in examples]
        rows = first_fit_decreasing([len(s["patches"]) for s in sequences], self.sequence_length)
        packed = pack_sequences(sequences, rows, self.sequence_length)
        order = packed.pop("image_order").tolist()
        self.last_padding_fraction = float((packed["segment_ids"] == 0).mean())
        self.tokens += packed["segment_ids"].size
        self.padding += int((packed["segment_ids"] == 0).sum())
        batch = {k: torch.from_numpy(v) for k, v in packed.items()}
        first = examples[0]
        if self.label_column is not None and self.label_column in first:
            batch["labels"] = torch.as_tensor([examples[i][self.label_column] for i in order])
        if self.text_column is not None and self.text_column in first:
            texts = [examples[i][self.text_column] for i in order]
            if isinstance(texts[0], str):
                if self.tokenizer is None:
                    raise ValueError(f"the {self.text_column!r} column holds strings: pass a tokenizer")
                batch["input_ids"] = self.tokenizer(texts, return_tensors="pt")["input_ids"]
            else:
                batch["input_ids"] = torch.as_tensor(np.asarray(texts, np.int64))
            batch["return_loss"] = True
        return batch
