"""PaliGemma outputs: ``<loc>`` boxes and ``<seg>`` masks, decoded as big_vision does, and encoded back.

Sources (big_vision commit 0127fb6):

- boxes: ``evaluators/proj/paligemma/transfers/segmentation.py``: ``bbox = tokens / 1023``, order
  ``y_min, x_min, y_max, x_max`` normalised to the (unpadded) original image; pixels ``int(y * H)``, ...; a
  prediction is valid only with 4 ``<loc>`` in ``0..1023``, ``y2 > y1`` and ``x2 > x1``.
- masks: same file: the 16 ``<seg>`` codes go through the VQ-VAE decoder to a 64x64 map in about [-1, 1],
  ``PIL.Image.resize((x2 - x1, y2 - y1), BILINEAR)`` into the box, then ``> 0``; outside the box is background.
- encoding (training targets): ``pp/proj/paligemma/segmentation.py`` ``refcoco_mask2str``: crop the full-resolution
  mask to ``round(h * y1):round(h * y2), round(w * x1):round(w * x2)``, ``tf.image.resize(64x64, bilinear,
  antialias=True) / 255``, VQ-VAE encoder -> 16 codes; boxes ``clip(round(bbox * 1023), 0, 1023)``.
  Suffix: ``<loc>x4`` then ``<seg>x16``, no separator, no label.
- several objects: the pretraining/mix format ``<loc>x4[<seg>x16] label ; <loc>x4 label`` is parsed with the
  regex of the PaliGemma demo (Hugging Face Space ``big-vision/paligemma-hf``), applied repeatedly.

The demo and the HF blog divide by 1024 and round; big_vision divides by 1023 and truncates (``int``). We follow
big_vision; the difference is below 0.1% of the image size.

Malformed text never raises: anything that is not a complete ``<loc>x4`` group is skipped, a box with
``y2 <= y1`` or ``x2 <= x1`` (after conversion to pixels) is dropped, as the big_vision evaluator counts it
invalid, and an object without exactly 16 ``<seg>`` tokens gets ``mask=None``. So ``"garbage"`` -> ``[]``.

This module imports only numpy, PIL and torch (the VQ-VAE is passed in, duck-typed: ``.decode(codes)`` and
``.encode(masks)`` of :class:`~big_vision_hf.modeling.modeling_bv_vqvae.BvSegVQVAEModel`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .image_processing_bv import resize_bilinear_antialias

__all__ = [
    "NUM_LOC_TOKENS",
    "NUM_SEG_TOKENS",
    "PaliGemmaObject",
    "box_to_loc_tokens",
    "decode_detections",
    "decode_segmentation",
    "draw_objects",
    "mask_to_tokens",
    "objects_to_text",
    "parse_objects",
    "paste_mask",
]

NUM_LOC_TOKENS = 1024  # big_vision pp/tokenizer.py tokensets "loc": <loc0000> ... <loc1023>
NUM_SEG_TOKENS = 128  # tokensets "seg": <seg000> ... <seg127>
LOC_BINS = NUM_LOC_TOKENS - 1  # big_vision: round(bbox * 1023) / tokens / 1023

# The PaliGemma demo's parser (HF Space big-vision/paligemma-hf), one object per match.
_OBJECT_RE = re.compile(
    r"(.*?)" + r"<loc(\d{4})>" * 4 + r"\s*" + "(?:%s)?" % (r"<seg(\d{3})>" * 16) + r"\s*([^;<>]+)? ?(?:; )?",
    re.DOTALL,
)


@dataclass
class PaliGemmaObject:
    """One decoded object.

    Attributes:
        label: the text after the tokens (``"cat"``), ``""`` when there is none (RefCOCO outputs have none).
        box: ``(y1, x1, y2, x2)`` in pixels of the original image, floats: ``tokens / 1023 * (H, W, H, W)``.
        box_normalized: ``(y1, x1, y2, x2)`` in [0, 1] (``tokens / 1023``).
        loc_tokens: the four ``<loc>`` numbers.
        seg_tokens: the 16 ``<seg>`` numbers, or ``None``.
        mask: ``bool [H, W]`` (only from :func:`decode_segmentation` with ``seg_tokens``), else ``None``.
        image_size: ``(H, W)`` of the image the box refers to.
    """

    label: str
    box: tuple[float, float, float, float]
    box_normalized: tuple[float, float, float, float]
    loc_tokens: tuple[int, int, int, int]
    seg_tokens: tuple[int, ...] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    image_size: tuple[int, int] = (0, 0)

    @property
    def pixel_box(self) -> tuple[int, int, int, int]:
        """``(y1, x1, y2, x2)`` as the big_vision evaluator computes them: ``int(y * H)`` (truncation)."""
        return _pixel_box(self.box_normalized, self.image_size)

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` in pixels (the order drawing and COCO-style tools use)."""
        y1, x1, y2, x2 = self.box
        return x1, y1, x2, y2


def _image_hw(image_size) -> tuple[int, int]:
    """``(H, W)`` from ``(H, W)``, a PIL image (``.size`` is ``(W, H)``) or an array ``[H, W, ...]``."""
    if isinstance(image_size, Image.Image):
        return image_size.height, image_size.width
    if hasattr(image_size, "shape"):
        return int(image_size.shape[0]), int(image_size.shape[1])
    h, w = image_size
    return int(h), int(w)


def _pixel_box(box_normalized, image_hw) -> tuple[int, int, int, int]:
    h, w = image_hw
    y1, x1, y2, x2 = box_normalized
    return tuple(int(v) for v in (y1 * h, x1 * w, y2 * h, x2 * w))  # big_vision: map(int, (y1 * h, ...))


def parse_objects(text: str) -> list[dict]:
    """Splits generated text into objects: ``[{"label", "loc", "seg"}, ...]`` (numbers, ``seg`` may be ``None``).

    Text between objects that is not part of one is dropped. Never raises; no complete ``<loc>x4`` -> ``[]``.
    """
    if not isinstance(text, str):
        return []
    objects = []
    while text:
        m = _OBJECT_RE.match(text)
        if not m or not m.group(0):
            break
        groups = m.groups()
        locs = tuple(int(g) for g in groups[1:5])
        segs = groups[5:21]
        seg = None if segs[0] is None else tuple(int(g) for g in segs)
        objects.append({"label": (groups[21] or "").strip(), "loc": locs, "seg": seg})
        text = text[m.end():]
    return objects


def _valid_seg(seg) -> bool:
    return seg is not None and len(seg) == 16 and all(0 <= s < NUM_SEG_TOKENS for s in seg)


def decode_detections(text: str, image_size) -> list[PaliGemmaObject]:
    """``"<loc..>x4 cat ; <loc..>x4 dog"`` -> objects with boxes in the original image's pixels.

    Args:
        text: generated text (decoded keeping ``<loc>``/``<seg>`` tokens, e.g. ``skip_special_tokens=True``).
        image_size: the ORIGINAL image (PIL image, array ``[H, W, ...]``) or its ``(H, W)``: PaliGemma boxes are
            relative to the image before the square resize.

    Returns:
        The valid objects in order (``[]`` for malformed text); each box is ``tokens / 1023 * (H, W, H, W)``.
        Boxes whose truncated pixel box is empty (``y2 <= y1`` or ``x2 <= x1``) are dropped.
    """
    try:
        hw = _image_hw(image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), a PIL image or an array, got {image_size!r}") from None
    out = []
    for obj in parse_objects(text):
        locs = obj["loc"]
        if not all(0 <= t < NUM_LOC_TOKENS for t in locs) or locs[2] <= locs[0] or locs[3] <= locs[1]:
            continue
        norm = tuple(t / LOC_BINS for t in locs)  # big_vision: tokens[:, :4] / 1023
        y1, x1, y2, x2 = _pixel_box(norm, hw)
        if y2 <= y1 or x2 <= x1:  # "Can still happen after int()" (big_vision evaluator)
            continue
        box = (norm[0] * hw[0], norm[1] * hw[1], norm[2] * hw[0], norm[3] * hw[1])
        seg = obj["seg"] if _valid_seg(obj["seg"]) else None
        out.append(PaliGemmaObject(obj["label"], box, norm, locs, seg, None, hw))
    return out


def paste_mask(mask64: np.ndarray, box_normalized: Sequence[float], image_size) -> np.ndarray:
    """big_vision evaluator: a decoded 64x64 map -> ``bool [H, W]``: PIL bilinear resize into the box, ``> 0``.

    Returns an all-False mask when the truncated pixel box is empty.
    """
    h, w = _image_hw(image_size)
    y1, x1, y2, x2 = _pixel_box(box_normalized, (h, w))
    full = np.zeros((h, w), dtype=bool)
    if y2 <= y1 or x2 <= x1:
        return full
    m64 = np.asarray(mask64, dtype=np.float32)
    resized = np.asarray(Image.fromarray(m64).resize([x2 - x1, y2 - y1], resample=Image.BILINEAR))
    full[y1:y2, x1:x2] = resized > 0.0  # "Mask decoder output in [-1.0 ... 1.0]"
    return full


def decode_segmentation(text: str, image_size, vqvae) -> list[PaliGemmaObject]:
    """Like :func:`decode_detections`, and every object with 16 ``<seg>`` tokens gets a ``bool [H, W]`` mask.

    Args:
        vqvae: a ``BvSegVQVAEModel`` (``AutoModel.from_pretrained`` of the converted ``vae-oid.npz``).

    Objects without (exactly 16 valid) ``<seg>`` tokens keep ``mask=None``. Never raises on malformed text.
    """
    import torch

    objects = decode_detections(text, image_size)
    with_seg = [o for o in objects if o.seg_tokens is not None]
    if with_seg:
        codes = torch.tensor([o.seg_tokens for o in with_seg], dtype=torch.long)
        with torch.no_grad():
            masks64 = vqvae.decode(codes).float().cpu().numpy()
        for obj, m64 in zip(with_seg, masks64):
            obj.mask = paste_mask(m64, obj.box_normalized, obj.image_size)
    return objects


# ---------------------------------------------------------------------------------------------------------
# Encoding: boxes and masks -> tokens (training targets)
# ---------------------------------------------------------------------------------------------------------


def box_to_loc_tokens(box_normalized: Sequence[float]) -> str:
    """``(y1, x1, y2, x2)`` in [0, 1] -> ``"<locY1><locX1><locY2><locX2>"``: ``clip(round(bbox * 1023), 0, 1023)``
    in float32 with round-half-to-even, as big_vision's ``tf.round``."""
    bbox = np.asarray(box_normalized, dtype=np.float32)
    if bbox.shape != (4,):
        raise ValueError(f"a box is (y1, x1, y2, x2), got shape {bbox.shape}")
    binned = np.clip(np.round(bbox * np.float32(LOC_BINS)), 0, LOC_BINS).astype(np.int64)
    return "".join(f"<loc{int(t):04d}>" for t in binned)


def objects_to_text(boxes: Sequence[Sequence[float]], labels: Sequence[str], image_size=None) -> str:
    """Detection target ``"<loc>x4 label ; <loc>x4 label"`` (the PaliGemma ``detect a ; b`` format).

    ``boxes`` are ``(y1, x1, y2, x2)``: normalised to [0, 1], or in pixels when ``image_size`` is given.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    parts = []
    for box, label in zip(boxes, labels):
        box = np.asarray(box, dtype=np.float64)
        if image_size is not None:
            h, w = _image_hw(image_size)
            box = box / np.array([h, w, h, w], dtype=np.float64)
        parts.append(f"{box_to_loc_tokens(box)} {label}")
    return " ; ".join(parts)


def _as_mask_uint8(mask: np.ndarray) -> np.ndarray:
    """A full-resolution mask -> uint8 ``[H, W]`` in 0..255 (big_vision RefCOCO masks are uint8, object = 255).

    bool and {0, 1} integer masks become 0/255; float masks in [0, 1] are scaled by 255.
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]  # big_vision: mask[..., :1]
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W] (or [H, W, C]), got shape {m.shape}")
    if m.dtype == np.bool_:
        return m.astype(np.uint8) * 255
    if np.issubdtype(m.dtype, np.integer):
        if m.size and (m.min() < 0 or m.max() > 255):
            raise ValueError(f"integer masks must lie in [0, 255], got [{m.min()}, {m.max()}]")
        return (m * 255).astype(np.uint8) if m.size and m.max() <= 1 else m.astype(np.uint8)
    if m.size and (m.min() < 0 or m.max() > 1):
        raise ValueError(f"float masks must lie in [0, 1], got [{m.min()}, {m.max()}]")
    return m.astype(np.float32) * np.float32(255.0)


def mask_crop_64(mask: np.ndarray, box_normalized: Sequence[float]) -> np.ndarray:
    """big_vision ``refcoco_mask2str``'s encoder input: crop at ``round(h * y1)`` ..., resize to 64x64 (bilinear,
    antialias), ``/ 255`` -> float32 ``[64, 64]`` in [0, 1]."""
    m = _as_mask_uint8(mask)
    h, w = (np.float32(s) for s in m.shape)
    bbox = np.asarray(box_normalized, dtype=np.float32)
    y1, x1, y2, x2 = (int(np.round(v)) for v in (h * bbox[0], w * bbox[1], h * bbox[2], w * bbox[3]))
    crop = m[max(y1, 0):y2, max(x1, 0):x2]
    if crop.size == 0:
        raise ValueError(f"box {tuple(float(v) for v in bbox)} is empty on a {m.shape[0]}x{m.shape[1]} mask")
    return resize_bilinear_antialias(np.asarray(crop, np.float32)[..., None], (64, 64))[..., 0] / np.float32(255.0)


def mask_to_tokens(mask: np.ndarray, vqvae, box_normalized: Sequence[float] | None = None) -> str:
    """A full-resolution mask -> ``"<loc>x4<seg>x16"``, the RefCOCO training suffix (big_vision
    ``refcoco_mask2str``).

    Args:
        mask: ``[H, W]`` (or ``[H, W, C]``, first channel used) in the original image's resolution: uint8 0..255 as
            big_vision's RefCOCO masks, or bool / {0, 1} / float [0, 1].
        vqvae: a ``BvSegVQVAEModel`` WITH the encoder (convert the full ``vae-oid.npz``).
        box_normalized: ``(y1, x1, y2, x2)`` in [0, 1] (big_vision uses the dataset's ``objects/bbox``). When
            omitted, the tight box of the mask's non-zero pixels is used (``ymax + 1``: a convenience, not a
            big_vision op).
    """
    import torch

    m = np.asarray(mask)
    if box_normalized is None:
        plane = m[..., 0] if m.ndim == 3 else m
        ys, xs = np.nonzero(plane)
        if ys.size == 0:
            raise ValueError("the mask is empty: pass box_normalized, or a mask with object pixels")
        hh, ww = plane.shape
        box_normalized = (ys.min() / hh, xs.min() / ww, (ys.max() + 1) / hh, (xs.max() + 1) / ww)
    crop = mask_crop_64(m, box_normalized)
    with torch.no_grad():
        codes = vqvae.encode(torch.from_numpy(crop)[None])[0].tolist()
    return box_to_loc_tokens(box_normalized) + "".join(f"<seg{int(c):03d}>" for c in codes)


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------

_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def draw_objects(image, objects: Sequence[PaliGemmaObject], mask_alpha: float = 0.45, width: int = 2) -> Image.Image:
    """Draws boxes (with labels) and masks of decoded objects on a copy of ``image`` (PIL or uint8 array)."""
    base = image.copy() if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    base = base.convert("RGB")
    overlay = np.asarray(base, dtype=np.float32).copy()
    for i, obj in enumerate(objects):
        if obj.mask is not None and obj.mask.shape == overlay.shape[:2]:
            color = np.asarray(_COLORS[i % len(_COLORS)], np.float32)
            overlay[obj.mask] = (1 - mask_alpha) * overlay[obj.mask] + mask_alpha * color
    out = Image.fromarray(np.clip(overlay, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for i, obj in enumerate(objects):
        color = _COLORS[i % len(_COLORS)]
        x1, y1, x2, y2 = obj.xyxy
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        if obj.label:
            tx, ty = x1 + width, max(y1 - 12, 0)
            draw.rectangle([tx - 1, ty, tx + 6 * len(obj.label) + 1, ty + 11], fill=color)
            draw.text((tx, ty), obj.label, fill=(255, 255, 255))
    return out
