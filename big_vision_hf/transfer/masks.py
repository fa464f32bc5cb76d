"""Masks as numpy arrays: from what records keep (:func:`load_mask`) and from COCO annotations (polygons, RLE).

Shared by the task builders (``refcoco_seg`` targets), the data loader (:func:`~big_vision_hf.transfer.data.
load_coco`) and the ``segmentation`` metric, so none of them imports another for it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["coco_annotation_mask", "coco_polygons_to_mask", "coco_rle_to_mask", "load_mask"]


def load_mask(value):
    """A mask as a numpy array, from an array / nested list, a PIL image, a file path or a ``datasets`` image
    dict (``{"bytes", "path"}``)."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value["path"]
    if isinstance(value, str):
        value = Image.open(value)
    if isinstance(value, Image.Image):
        value.load()
        return np.asarray(value)
    return np.asarray(value)


def coco_polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixels) -> ``bool [H, W]`` (union, PIL fill)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(float(poly[k]), float(poly[k + 1])) for k in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _rle_string_to_counts(s: str) -> list[int]:
    """pycocotools ``rleFrString`` (maskApi.c): LEB128-like, 5 bits per char offset by 48, deltas from index 3."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_rle_to_mask(rle: Mapping) -> np.ndarray:
    """COCO RLE (``{"size": [H, W], "counts": [...] or "compressed string"}``) -> ``bool [H, W]``. Both the
    uncompressed (``iscrowd`` list) and compressed (string / bytes) forms are decoded here, without pycocotools."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _rle_string_to_counts(counts)
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos:pos + c] = True
        pos += int(c)
        val = not val
    if pos != h * w:
        raise ValueError(f"RLE covers {pos} pixels, expected {h}*{w}={h * w}")
    return flat.reshape(w, h).T  # column-major (Fortran) order


def coco_annotation_mask(ann: Mapping, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` (polygons or RLE) -> ``bool [H, W]``."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return coco_polygons_to_mask(seg, height, width)
    if isinstance(seg, Mapping):
        return coco_rle_to_mask(seg)
    raise ValueError("annotation has no segmentation")
