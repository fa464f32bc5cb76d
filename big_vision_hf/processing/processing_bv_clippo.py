"""CLIPPO's text rendering (big_vision ``pp/proj/clippo/pp_ops.py``, op ``render_unifont``) and its processor.

CLIPPO reads text as pixels: ``render_unifont`` draws the text with the GNU Unifont bitmap font (16x16 cells,
from its ``.hex`` files) onto a square gray image, which then goes through the same ViT as the images. The font
is NOT shipped: pass the path of a Unifont ``.hex`` file. big_vision uses ``unifont-9.0.06.hex`` and
``unifont_upper-9.0.06.hex`` (``big_vision/pp/proj/clippo/download_unifont.sh``); Debian's ``unifont`` package
installs ``/usr/share/unifont/unifont.hex`` (version 15, plane 0 only). Renders are big_vision's exactly for the
same font files; glyphs that changed between Unifont versions render differently.

The CLIPPO pipeline (``configs/proj/clippo/train_clippo.py``)::

    images: decode|resize(224)|value_range(-1, 1)
    texts:  render_unifont(image_size=224, font_size=16, lower=True, text_brightness=0,
            background_brightness=127)|value_range(-1, 1)

:func:`render_unifont` is the pure function (text -> uint8 ``(S, S, 3)``); `BvClippoProcessor` runs both.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import numpy as np
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_bv import value_range as bv_value_range

__all__ = ["BvClippoProcessor", "UnifontGlyphs", "load_unifont", "render_unifont"]

# big_vision `colpattern`: a 64-hex-digit line is a 16x16 glyph (2 bytes per row); a 32-digit one is 8x16 and
# fills the left byte of each row (bytes 0, 2, 4, ...).
_COLPATTERN = {64: np.arange(32), 32: np.array(sorted(tuple(range(0, 32, 4)) + tuple(range(2, 32, 4))))}


class UnifontGlyphs:
    """big_vision's ``bit_embedding`` table (32 bytes per code point), kept sparse; missing code points are blank."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [str(p) for p in paths]
        self.table: dict[int, np.ndarray] = {}
        for path in self.paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Unifont font file not found: {path} (CLIPPO renders text with GNU Unifont .hex files: install "
                    "Debian's `unifont` package for /usr/share/unifont/unifont.hex, or get unifont-9.0.06.hex as "
                    "big_vision/pp/proj/clippo/download_unifont.sh does)"
                )
            with open(path, encoding="ascii") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    code, _, hexbits = line.partition(":")
                    if len(hexbits) not in _COLPATTERN:
                        raise ValueError(f"{path}: not a Unifont .hex line: {line[:40]!r}")
                    row = self.table.setdefault(int(code, 16), np.zeros(32, np.uint8))
                    row[_COLPATTERN[len(hexbits)]] = np.frombuffer(bytes.fromhex(hexbits), np.uint8)

    def bitmaps(self, codepoints: Sequence[int]) -> np.ndarray:
        """``[n, 16, 16]`` uint8 in {0, 1}: each glyph's 32 bytes, most significant bit first (big_vision's
        bit-twiddling in ``render``)."""
        blank = np.zeros(32, np.uint8)
        rows = [self.table.get(int(c), blank) for c in codepoints]
        rows = np.stack(rows) if rows else np.zeros((0, 32), np.uint8)
        return np.unpackbits(rows, axis=1).reshape(-1, 16, 16)


def load_unifont(unifont_path: str, unifont_upper_path: str | None = None) -> UnifontGlyphs:
    """Reads the Unifont ``.hex`` file(s): the plane-0 file and optionally the upper-planes one (later wins)."""
    return UnifontGlyphs([unifont_path] + ([unifont_upper_path] if unifont_upper_path else []))


def _trim_letter(letter: np.ndarray, spacing: int, min_width: int) -> np.ndarray:
    """big_vision ``trim_letter``: keep columns ``[first - spacing, max(last + spacing, first' + min_width))``;
    returns the kept columns ``[cols, 16]``. A blank letter keeps ``min_width`` columns."""
    cols = np.nonzero(letter.max(axis=0))[0]
    first, last = (int(cols[0]), int(cols[-1])) if len(cols) else (0, 0)
    first = max(first - spacing, 0)
    last = max(last + spacing, first + min_width)
    return letter[:, first:last].T


def _to_image(letters: list[np.ndarray], width: int, height: int | None = None) -> np.ndarray:
    """big_vision ``to_image``: wraps the letters (``[cols, 16]`` each) into lines of at most ``width`` columns."""
    height = height or width
    widths = np.array([len(c) for c in letters], np.int64)
    max_letter_width = int(widths.max())
    if max_letter_width >= width:
        raise ValueError(f"render_unifont: image_size {width} is too small for {max_letter_width}-pixel letters")
    cumsum = np.cumsum(widths).astype(np.float32)
    row_idx = np.floor(cumsum / np.float32(width - max_letter_width)).astype(np.int64)
    lines = [np.concatenate([letters[i] for i in np.nonzero(row_idx == r)[0]] or [np.zeros((0, 16), np.uint8)])
             for r in range(int(row_idx.max()) + 1)]
    max_cols = max(len(line) for line in lines)
    rows = np.zeros((len(lines), max_cols, 16), np.uint8)  # RaggedTensor.to_tensor(default_value=0)
    for r, line in enumerate(lines):
        rows[r, : len(line)] = line
    trimmed = rows.transpose(0, 2, 1).reshape(-1, max_cols)[:height]
    out = np.zeros((height, width), np.uint8)
    out[: trimmed.shape[0], : trimmed.shape[1]] = trimmed
    return out


def render_unifont(
    text: str | bytes,
    glyphs: UnifontGlyphs,
    image_size: int = 224,
    font_size: int = 16,
    max_chars: int | None = 768,
    background_brightness: int = 127,
    text_brightness: int = 0,
    lower: bool = True,
    monospace: bool = False,
    spacing: int = 1,
    min_width: int = 4,
) -> np.ndarray:
    """big_vision ``render_unifont(image_size, ...)`` on one text: uint8 ``(image_size, image_size, 3)``.

    Steps, as big_vision: ASCII-only lowercasing (``tf.strings.lower``), UTF-8 decode (invalid bytes -> U+FFFD),
    the first ``max_chars`` characters, 16x16 glyph bitmaps, each trimmed to its ink plus ``spacing`` on the left
    (at least ``min_width`` columns) unless ``monospace``, wrapped into lines of ``image_size`` columns (a letter
    goes to line ``floor(cumulative width / (image_size - widest letter))``), cut at ``image_size`` rows. Ink
    pixels get ``text_brightness``, the rest ``background_brightness`` (mod 256, big_vision's uint8 arithmetic).
    An empty text gives a blank image (big_vision's TF code fails on it).
    """
    if font_size != 16:
        raise NotImplementedError("render_unifont: only font_size=16 (big_vision's default, no resize) is ported")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if lower:  # tf.strings.lower(encoding=""): ASCII only
        text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    codepoints = [ord(c) for c in text]
    if max_chars:
        codepoints = codepoints[:max_chars]
    ink = np.zeros((image_size, image_size), np.uint8)
    if codepoints:
        letters = glyphs.bitmaps(codepoints)
        if monospace:
            columns = [letter.T for letter in letters]
        else:
            columns = [_trim_letter(letter, spacing, min_width) for letter in letters]
        ink = _to_image(columns, image_size)
    img = (ink.astype(np.int64) * (text_brightness - background_brightness) + background_brightness) % 256
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=-1)  # tf.image.grayscale_to_rgb


# The drawing arguments of `render_unifont` that `BvClippoProcessor(render_kwargs=...)` takes (all but the text, the
# font and the image size, which the processor gives).
RENDER_OPTIONS = tuple(
    name for name in inspect.signature(render_unifont).parameters if name not in ("text", "glyphs", "image_size")
)


class BvClippoProcessor(ProcessorMixin):
    r"""CLIPPO's processor: images through the folder's image processor, texts rendered with Unifont.

    ``processor(images=..., text=...)`` returns ``pixel_values`` and ``text_pixel_values`` (both ``(N, 3, S, S)``
    in [-1, 1]) for `BvClippoModel`. ``S`` (``text_image_size``) defaults to the image processor's size.

    Args:
        image_processor: the folder's `BvImageProcessor` (``decode|resize(S)|value_range(-1, 1)``).
        unifont_path: a Unifont ``.hex`` file (plane 0); required to render text, which fails with a one-line
            ``FileNotFoundError`` naming the file if it is missing.
        unifont_upper_path: optional upper-planes ``.hex`` (big_vision loads ``unifont_upper-9.0.06.hex`` too).
        text_image_size: big_vision ``render_unifont``'s ``image_size`` (default: the image processor's size).
        render_kwargs: the other arguments of big_vision ``render_unifont`` (:func:`render_unifont`: ``font_size``,
            ``max_chars``, ``background_brightness``, ``text_brightness``, ``lower``, ``monospace``, ``spacing``,
            ``min_width``); its defaults are CLIPPO's (``lower=True``, ``text_brightness=0``,
            ``background_brightness=127``).

    Example:
        >>> from big_vision_hf import BvImageProcessor  # doctest: +SKIP
        >>> font = "/usr/share/unifont/unifont.hex"
        >>> processor = BvClippoProcessor(BvImageProcessor(size=224), unifont_path=font)  # doctest: +SKIP
        >>> batch = processor(images=[image], text=["a photo of a cat"], return_tensors="pt")  # doctest: +SKIP
    """

    def __init__(
        self,
        image_processor=None,
        unifont_path: str | None = None,
        unifont_upper_path: str | None = None,
        text_image_size: int | None = None,
        render_kwargs: dict | None = None,
    ):
        super().__init__(image_processor)
        self.unifont_path = unifont_path
        self.unifont_upper_path = unifont_upper_path
        self.text_image_size = text_image_size
        self.render_kwargs = dict(render_kwargs or {})
        unknown = sorted(set(self.render_kwargs) - set(RENDER_OPTIONS))
        if unknown:
            raise ValueError(f"unknown render_unifont arguments {unknown}; known: {', '.join(RENDER_OPTIONS)}")
        self._glyphs: UnifontGlyphs | None = None

    @property
    def glyphs(self) -> UnifontGlyphs:
        if self._glyphs is None:
            if not self.unifont_path:
                raise FileNotFoundError(
                    "no Unifont font file given: pass unifont_path=<unifont .hex file> (e.g. Debian's "
                    "/usr/share/unifont/unifont.hex) to BvClippoProcessor"
                )
            self._glyphs = load_unifont(self.unifont_path, self.unifont_upper_path)
        return self._glyphs

    def _size(self) -> int:
        if self.text_image_size:
            return int(self.text_image_size)
        size = getattr(self.image_processor, "size", None)
        height = getattr(size, "height", None) or (size.get("height") if isinstance(size, dict) else None)
        return int(height or 224)

    def render(self, text: str) -> np.ndarray:
        """One text -> uint8 ``(S, S, 3)`` (big_vision ``render_unifont`` with this processor's settings)."""
        return render_unifont(text, self.glyphs, image_size=self._size(), **self.render_kwargs)

    def __call__(self, images=None, text: str | list[str] | None = None, return_tensors=None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("pass images and/or text")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=None, **kwargs))
        if text is not None:
            texts = [text] if isinstance(text, (str, bytes)) else list(text)
            rendered = [bv_value_range(self.render(t), -1, 1) for t in texts]  # value_range(-1, 1)
            data["text_pixel_values"] = np.stack([np.moveaxis(r, -1, 0) for r in rendered])
        if "pixel_values" in data and not isinstance(data["pixel_values"], np.ndarray):
            data["pixel_values"] = np.stack(data["pixel_values"])
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "text_pixel_values"]
