"""NaViT's data side (https://arxiv.org/abs/2307.06304, "Patch n' Pack"), as pure numpy functions.

- Per-image patch budgets: the native resolution (:func:`native_patch_budget`, NaViT inference) or NaViT's
  aspect-ratio preserving resolution sampling (`ResolutionSampler`, training). The image is then resized to the
  budget with big_vision's ``resize_to_sequence`` (``image_processing_bv_naflex``).
- Token dropping (`TokenDropping`): a fixed rate, or NaViT's resolution-dependent rate.
- Packing: :func:`first_fit_decreasing` (few wasted tokens; permutes the images) or :func:`next_fit` (keeps
  their order) assign images to rows of a fixed length; :func:`pack_sequences` lays them out in the packed
  format the models take (see ``modeling_bv_vit``, "Packed images"): ``pixel_values [S, L, P]``,
  ``segment_ids [S, L]`` (``1, 2, ...`` per row, 0 = padding), ``patch_coords [S, L, 2]``,
  ``spatial_shapes [N, 2]``.

The paper gives these procedures in words, without code; the exact formulas here are ours and each says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ResolutionSampler",
    "TokenDropping",
    "first_fit_decreasing",
    "native_patch_budget",
    "next_fit",
    "pack_sequences",
    "padding_fraction",
]


def native_patch_budget(height: int, width: int, patch_size: int, max_patches: int) -> int:
    """The patches of an image at its native resolution, at most ``max_patches`` (NaViT at native resolution):
    ``clip(round(H * W / P^2), 1, max_patches)``; ``resize_to_sequence`` then keeps the aspect ratio."""
    return int(min(max(round(height * width / patch_size**2), 1), max_patches))


@dataclass
class ResolutionSampler:
    """NaViT's resolution sampling (sec. 2.4): each training image gets a random side ``s`` (pixels) and is resized,
    aspect ratio kept, to about ``s * s`` pixels: a budget of ``max(1, floor((s / P)^2))`` patches, capped at
    ``max_patches``.

    ``distribution``: ``"uniform"`` (``s ~ U(min_side, max_side)``, default) or ``"truncated_normal"`` (mean
    ``min_side``, std ``(max_side - min_side) / 2``, truncated to ``[min_side, max_side]``: biased towards low
    resolutions, cheaper per image; our parameterisation).
    """

    min_side: int = 64
    max_side: int = 256
    distribution: str = "uniform"

    def __post_init__(self):
        if not 0 < self.min_side <= self.max_side:
            raise ValueError(f"need 0 < min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.distribution not in ("uniform", "truncated_normal"):
            raise ValueError(f"distribution must be 'uniform' or 'truncated_normal', got {self.distribution!r}")

    def side(self, rng: np.random.Generator) -> float:
        if self.distribution == "uniform":
            return float(rng.uniform(self.min_side, self.max_side))
        std = max((self.max_side - self.min_side) / 2, 1e-6)
        while True:  # rejection: accepts with probability >= 0.48
            s = rng.normal(self.min_side, std)
            if self.min_side <= s <= self.max_side:
                return float(s)

    def budget(self, rng: np.random.Generator, patch_size: int, max_patches: int) -> int:
        s = self.side(rng)
        return int(min(max(math.floor((s / patch_size) ** 2), 1), max_patches))


@dataclass
class TokenDropping:
    """NaViT's token dropping (sec. 2.4, "continuous token dropping"): each image keeps a random subset of its
    patches, ``max(1, round(n * (1 - rate)))`` of ``n``, in their original order, with their coordinates (the
    posemb still uses the full grid, ``spatial_shapes``).

    ``rate``: a fixed rate. ``min_rate``/``max_rate`` with ``min_side``/``max_side`` (pixels): NaViT's
    resolution-dependent rate, higher for higher resolutions: linear in the image's side ``sqrt(n) * P`` from
    ``min_rate`` at ``min_side`` to ``max_rate`` at ``max_side`` (clipped); NaViT states the idea without a formula,
    the linear form is ours. Use :meth:`fixed` or :meth:`resolution_dependent`.
    """

    rate: float = 0.0
    min_rate: float | None = None
    max_rate: float | None = None
    min_side: float = 64.0
    max_side: float = 256.0

    @classmethod
    def fixed(cls, rate: float) -> TokenDropping:
        return cls(rate=rate)

    @classmethod
    def resolution_dependent(cls, min_rate: float, max_rate: float, min_side: float = 64.0,
                             max_side: float = 256.0) -> TokenDropping:
        return cls(min_rate=min_rate, max_rate=max_rate, min_side=min_side, max_side=max_side)

    def __post_init__(self):
        for r in (self.rate, self.min_rate, self.max_rate):
            if r is not None and not 0.0 <= r < 1.0:
                raise ValueError(f"token drop rates must be in [0, 1), got {r}")
        if (self.min_rate is None) != (self.max_rate is None):
            raise ValueError("give both min_rate and max_rate (resolution-dependent dropping), or neither")

    def rate_for(self, num_patches: int, patch_size: int) -> float:
        if self.min_rate is None:
            return self.rate
        side = math.sqrt(num_patches) * patch_size
        t = (side - self.min_side) / max(self.max_side - self.min_side, 1e-6)
        return self.min_rate + (self.max_rate - self.min_rate) * min(max(t, 0.0), 1.0)

    def keep(self, num_patches: int, patch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted indices of the patches kept."""
        rate = self.rate_for(num_patches, patch_size)
        if rate == 0.0:
            return np.arange(num_patches)
        k = max(1, int(round(num_patches * (1.0 - rate))))
        return np.sort(rng.choice(num_patches, size=k, replace=False))


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most ``capacity`` tokens: the longest image first into the first row with room (NaViT packs
    greedily). Returns each row's image indices. Every length must fit one row."""
    if any(n > capacity or n < 1 for n in lengths):
        raise ValueError(f"every image needs 1..{capacity} tokens (the sequence length); got {max(lengths)}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows filled in input order (a new row when the next image does not fit): keeps the images' order."""
    if any(n > capacity or n < 1 for n in lengths):
        raise ValueError(f"every image needs 1..{capacity} tokens (the sequence length); got {max(lengths)}")
    rows: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if used + n > capacity:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def pack_sequences(sequences: Sequence[dict[str, np.ndarray]], rows: Sequence[Sequence[int]],
                   length: int) -> dict[str, np.ndarray]:
    """Lays out per-image sequences in packed rows of ``length`` tokens.

    ``sequences[i]``: ``patches [n_i, P]``, ``yidx``/``xidx [n_i]`` and ``shape`` ``(h, w)`` (the full grid);
    ``rows``: each row's image indices (e.g. from :func:`first_fit_decreasing`). Returns ``pixel_values``,
    ``segment_ids``, ``patch_coords``, ``spatial_shapes`` (packed image order) and ``image_order`` (``[N]``: the
    index in ``sequences`` of each packed image).
    """
    dim = sequences[0]["patches"].shape[-1]
    pixel_values = np.zeros((len(rows), length, dim), np.float32)
    segment_ids = np.zeros((len(rows), length), np.int64)
    coords = np.zeros((len(rows), length, 2), np.int64)
    order = []
    for r, row in enumerate(rows):
        pos = 0
        for k, i in enumerate(row):
            seq = sequences[i]
            n = len(seq["patches"])
            if pos + n > length:
                raise ValueError(f"row {r} holds {pos + n} tokens, more than the sequence length {length}")
            pixel_values[r, pos:pos + n] = seq["patches"]
            segment_ids[r, pos:pos + n] = k + 1
            coords[r, pos:pos + n, 0] = seq["yidx"]
            coords[r, pos:pos + n, 1] = seq["xidx"]
            pos += n
            order.append(i)
    shapes = np.asarray([sequences[i]["shape"] for i in order], np.int64).reshape(-1, 2)
    return {"pixel_values": pixel_values, "segment_ids": segment_ids, "patch_coords": coords,
            "spatial_shapes": shapes, "image_order": np.asarray(order, np.int64)}


def padding_fraction(segment_ids: np.ndarray) -> float:
    """The share of packed tokens that are padding."""
    return float((np.asarray(segment_ids) == 0).mean())
