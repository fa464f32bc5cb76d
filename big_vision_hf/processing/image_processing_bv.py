"""big_vision's image preprocessing as a transformers (v5, PIL backend) image processor.

Reproduces these big_vision pp strings bit for bit (checked against TensorFlow outputs in
``tests/test_image_processing_bv.py``)::

    decode|resize(224)|value_range(-1, 1)
    decode|resize_small(256)|central_crop(224)|value_range(-1, 1)

The pp ops are also available as small pure functions on uint8 ``(H, W, C)`` numpy arrays, named after the
big_vision op they reproduce (``big_vision/pp/ops_image.py``, ``big_vision/pp/ops_general.py``):
:func:`decode`, :func:`resize`, :func:`resize_small`, :func:`central_crop`, :func:`value_range`.

The math is numpy float32 replaying TF's CPU kernels (``ResizeBilinear`` with half-pixel centres,
``ResizeArea``) in their order of operations, so the float32 results are bit-identical to TF and the uint8
truncation cannot flip. ``torch.nn.functional.interpolate(bilinear, align_corners=False)`` has the same taps
but a different float formula: it lands on the other side of an integer for roughly 1 in 40,000 values.

This file imports only numpy, PIL and transformers (torch tensors are accepted as inputs and returned with
``return_tensors="pt"``), so it can be copied flat into a Hub folder for ``trust_remote_code``.
"""

from __future__ import annotations

import ast
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    ChannelDimension,
    ImageType,
    PILImageResampling,
    SizeDict,
    get_image_type,
    infer_channel_dimension_format,
)
from transformers.processing_utils import ImagesKwargs

__all__ = [
    "BvBaseImageProcessor",
    "BvImageProcessor",
    "central_crop",
    "decode",
    "image_processor_for",
    "parse_pp",
    "resize",
    "resize_small",
    "value_range",
]

# ==========================================================================================================
# The big_vision pp ops, as pure functions on uint8 (H, W, C) numpy arrays.
# ==========================================================================================================


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """big_vision ``utils.maybe_repeat(size, 2)``."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _check_hwc(image: np.ndarray, op: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"big_vision `{op}` expects an (H, W, C) image, got shape {image.shape}")
    return image


def decode(image: Image.Image | np.ndarray | bytes, channels: int = 3) -> np.ndarray:
    """big_vision ``decode(channels=3)``: ``tf.io.decode_image(data, channels=3)`` -> uint8 ``(H, W, 3)``.

    Accepts encoded bytes, a PIL image or an already decoded ``(H, W[, C])`` array. Like TF (and unlike
    transformers' ``convert_to_rgb``, which composites onto white) alpha is **dropped**, grayscale is
    repeated to 3 channels, palette images are expanded, and 16-bit images keep their high byte (TF decodes
    16-bit PNGs to uint8 with libpng's ``strip_16``).

    Deviation: JPEGs decoded by PIL (libjpeg's ``ISLOW`` DCT) equal big_vision's ``decode(precise=True)``
    (``INTEGER_ACCURATE``); big_vision's default ``decode`` uses TF's default DCT, which can differ by a few
    uint8 levels on JPEG inputs. EXIF orientation is ignored, as in TF.
    """
    if channels != 3:
        raise NotImplementedError("only decode(channels=3) is implemented")
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, Image.Image):
        mode = image.mode
        if mode == "RGB":
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I;16") or mode == "I":
            hi = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
            return np.repeat(hi[..., None], 3, axis=-1)
        # RGBA/LA/PA drop alpha, L/1 repeat gray, P expands the palette (its transparency is dropped).
        return np.array(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = _check_hwc(arr, "decode")
    c = arr.shape[-1]
    if c in (1, 2):  # L, LA
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    elif c == 4:  # RGBA
        arr = arr[..., :3]
    elif c != 3:
        raise ValueError(f"cannot decode an image with {c} channels to RGB")
    return _as_uint8(arr)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"integer image values must lie in [0, 255], got [{image.min()}, {image.max()}]")
        return image.astype(np.uint8)
    raise ValueError(
        f"big_vision preprocessing works on uint8 images (what `decode` produces); got dtype {image.dtype}. "
        "Pass PIL images or uint8 arrays."
    )


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation taps of TF's ``ResizeBilinear(half_pixel_centers=True)`` kernel, in its float32 math."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lerp = (src - floor).astype(np.float32)
    return lower, upper, lerp


def _resize_bilinear_f32(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``tf.image.resize(image, (out_h, out_w), "bilinear", antialias=False)``: float32 (H, W, C)."""
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (out_h, out_w):  # TF's kernel short-circuits no-op resizes to a cast.
        return image.astype(np.float32)
    y0, y1, ly = _bilinear_taps(in_h, out_h)
    x0, x1, lx = _bilinear_taps(in_w, out_w)
    lx = lx[None, :, None]
    ly = ly[:, None, None]

    def tap(ys, xs):  # gather first, then convert (exact for uint8 -> float32)
        return image[ys[:, None], xs[None, :]].astype(np.float32)

    top_left, top_right = tap(y0, x0), tap(y0, x1)
    bottom_left, bottom_right = tap(y1, x0), tap(y1, x1)
    # Same evaluation order as TF's compute_lerp (float32 throughout, no fused multiply-add).
    top = top_left + (top_right - top_left) * lx
    bottom = bottom_left + (bottom_right - bottom_left) * lx
    return top + (bottom - top) * ly


def _area_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Source indices and weights of TF's ``ResizeArea`` kernel along one axis, in its float32 math.

    Returns ``(index[out, K], weight[out, K], scale)``; unused taps have weight 0 (adding ``0 * x`` keeps
    the float32 sums bit-identical to TF's loop).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    rows_idx, rows_w = [], []
    for o in range(out_size):
        lo = np.float32(o) * scale
        hi = np.float32(o + 1) * scale
        idx, w = [], []
        for i in range(int(np.floor(lo)), int(np.ceil(hi))):
            fi, fi1 = np.float32(i), np.float32(i + 1)
            if fi < lo:
                weight = scale if fi1 > hi else fi1 - lo
            else:
                weight = hi - fi if fi1 > hi else np.float32(1.0)
            idx.append(min(max(i, 0), in_size - 1))
            w.append(np.float32(weight))
        rows_idx.append(idx)
        rows_w.append(w)
    k = max(len(r) for r in rows_idx)
    index = np.zeros((out_size, k), np.int64)
    weight = np.zeros((out_size, k), np.float32)
    for o, (idx, w) in enumerate(zip(rows_idx, rows_w)):
        index[o, : len(idx)] = idx
        weight[o, : len(w)] = w
    return index, weight, scale


def _resize_area_f32(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``tf.image.resize(image, (out_h, out_w), "area")``: float32 (H, W, C), TF ``ResizeArea`` kernel."""
    yi, yw, hs = _area_taps(image.shape[0], out_h)
    xi, xw, ws = _area_taps(image.shape[1], out_w)
    # TF: for each source row i, sum_y = sum_k x[i, xi_k] * xw_k (in tap order); out = (sum_j sum_y_j * yw_j)
    # * scale, with scale = float(1.0 / double(hs * ws)).
    rows = image[:, xi[:, 0]].astype(np.float32) * xw[None, :, 0, None]
    for k in range(1, xi.shape[1]):
        rows = rows + image[:, xi[:, k]].astype(np.float32) * xw[None, :, k, None]
    out = rows[yi[:, 0]] * yw[:, 0, None, None]
    for k in range(1, yi.shape[1]):
        out = out + rows[yi[:, k]] * yw[:, k, None, None]
    scale = np.float32(1.0 / float(np.float32(hs * ws)))
    return out * scale


def _triangle_spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TF ``ComputeSpansCore`` (``kernels/image/scale_and_translate_op.cc``) for the triangle kernel, antialiased,
    scale ``out/in``, translation 0, in its float32 math. Returns ``(starts[out], weights[out, span])``."""
    f32 = np.float32
    scale = f32(out_size) / f32(in_size)  # tf.image.resize: cast(new) / cast(old) in float32
    inv_scale = f32(1.0 / float(scale))  # `const float inv_scale = 1.0 / scale;` (double division)
    inv_translate = -inv_scale * f32(0.0)
    kernel_scale = max(inv_scale, f32(1.0))
    radius = f32(1.0)
    span_size = min(2 * math.ceil(radius * kernel_scale) + 1, in_size)
    one_over_kernel_scale = f32(1.0) / kernel_scale
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span_size), np.float32)
    for x in range(out_size):
        sample_f = (f32(x) + f32(0.5)) * inv_scale + inv_translate
        if sample_f < 0 or sample_f > in_size:
            continue
        start = int(np.ceil(sample_f - radius * kernel_scale - f32(0.5)))
        end = int(np.floor(sample_f + radius * kernel_scale - f32(0.5)))
        start = min(max(start, 0), in_size - 1)
        end = min(max(end, 0), in_size - 1) + 1
        total, taps = f32(0.0), []
        for source in range(start, end):
            pos = abs((f32(source) + f32(0.5) - sample_f) * one_over_kernel_scale)
            weight = f32(1.0) - pos if pos < f32(1.0) else f32(0.0)
            total = f32(total + weight)
            taps.append(weight)
        if abs(total) >= f32(1000.0) * np.finfo(np.float32).tiny:
            inv_total = f32(1.0) / total
            weights[x, : len(taps)] = [f32(w * inv_total) for w in taps]
        starts[x] = start
    return starts, weights


def _gather_axis(image: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """TF ``GatherRows``/``GatherColumns``: ``out = 0; out += w_k * in[start + k]`` in float32, tap by tap."""
    size = image.shape[axis]
    out = None
    for k in range(weights.shape[1]):
        idx = np.minimum(starts + k, size - 1)  # taps past the edge have weight 0 (TF stops before them)
        w = weights[:, k].reshape([-1 if a == axis else 1 for a in range(image.ndim)])
        term = w * np.take(image, idx, axis=axis)
        out = term if out is None else out + term
    return out.astype(np.float32, copy=False)


def resize_bilinear_antialias(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``tf.image.resize(image, size, "bilinear", antialias=True)``: float32 ``(H, W, C)``.

    TF's ``ScaleAndTranslate`` with the triangle kernel widened by the scale when downsampling (half-pixel
    centres), rows first then columns, accumulated in float32 as TF's CPU kernel does. No clipping or casting.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"resize expects an (H, W, C) image, got shape {image.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    x = image.astype(np.float32)
    rows = _gather_axis(x, *_triangle_spans(x.shape[0], out_h), axis=0)
    return _gather_axis(rows, *_triangle_spans(x.shape[1], out_w), axis=1)


def _resize_f32(image: np.ndarray, size: tuple[int, int], method: str, antialias: bool) -> np.ndarray:
    if method == "bilinear":
        if antialias:
            return resize_bilinear_antialias(image, size)
        return _resize_bilinear_f32(image, *size)
    if method == "area":  # TF2 ignores `antialias` for area.
        return _resize_area_f32(image, *size)
    raise NotImplementedError(f"resize method {method!r} is not ported (have 'bilinear', 'area')")


def _clip_cast_uint8(image: np.ndarray) -> np.ndarray:
    """``tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)``: the cast truncates toward zero."""
    return np.clip(image, 0, 255).astype(np.uint8)


def resize(
    image: np.ndarray, size: int | Sequence[int], method: str = "bilinear", antialias: bool = False
) -> np.ndarray:
    """big_vision ``resize(size)``: TF2 ``tf.image.resize`` (half-pixel centres) then clip + cast to uint8.

    ``method`` is ``"bilinear"`` (default, without antialiasing; ``antialias=True`` is TF's
    ``ScaleAndTranslate`` triangle kernel, as PaliGemma's training configs use) or ``"area"``. Other TF methods
    raise ``NotImplementedError``.
    """
    image = _as_uint8(_check_hwc(image, "resize"))
    return _clip_cast_uint8(_resize_f32(image, _pair(size), method, antialias))


def _resize_small_size(h: int, w: int, smaller_size: int) -> tuple[int, int]:
    """big_vision ``_resize_factor``'s new size: ``round(h * S / min(h, w))`` in float32, half to even."""
    factor = np.float32(smaller_size) / np.float32(min(h, w))
    return int(np.round(np.float32(h) * factor)), int(np.round(np.float32(w) * factor))


def resize_small(image: np.ndarray, smaller_size: int, method: str = "area", antialias: bool = False) -> np.ndarray:
    """big_vision ``resize_small(S)``: resize so the smaller side is ``S``, keeping the aspect ratio.

    Default ``method="area"`` as in big_vision (TF ``ResizeArea``). Output: clipped, truncated uint8.
    """
    image = _as_uint8(_check_hwc(image, "resize_small"))
    new_size = _resize_small_size(image.shape[0], image.shape[1], int(smaller_size))
    return _clip_cast_uint8(_resize_f32(image, new_size, method, antialias))


def central_crop(image: np.ndarray, crop_size: int | Sequence[int] | None = None) -> np.ndarray:
    """big_vision ``central_crop(crop_size)``: offsets ``(h - ch) // 2``, ``(w - cw) // 2``.

    Without ``crop_size`` the largest central square is taken.
    """
    image = _check_hwc(image, "central_crop")
    h, w = image.shape[:2]
    ch, cw = _pair(crop_size) if crop_size else (min(h, w), min(h, w))
    if ch > h or cw > w:
        raise ValueError(f"central_crop({ch}, {cw}) is larger than the image ({h}, {w})")
    dy, dx = (h - ch) // 2, (w - cw) // 2
    return image[dy : dy + ch, dx : dx + cw]


def value_range(
    image: np.ndarray,
    vmin: float = -1,
    vmax: float = 1,
    in_min: float | Sequence[float] = 0,
    in_max: float | Sequence[float] = 255.0,
    clip_values: bool = False,
) -> np.ndarray:
    """big_vision ``value_range(vmin, vmax)``: ``vmin + (x - in_min) / (in_max - in_min) * (vmax - vmin)``.

    float32, in big_vision's order of operations (so ``value_range(-1, 1)`` is bit-identical to TF, which
    ``x / 127.5 - 1`` or transformers' rescale + normalize are not always).
    """
    x = np.asarray(image).astype(np.float32)
    in_min_t = np.asarray(in_min, np.float32)
    in_max_t = np.asarray(in_max, np.float32)
    x = (x - in_min_t) / (in_max_t - in_min_t)
    x = np.float32(vmin) + x * np.float32(vmax - vmin)
    if clip_values:
        x = np.clip(x, np.float32(vmin), np.float32(vmax))
    return x.astype(np.float32, copy=False)


# ==========================================================================================================
# pp strings
# ==========================================================================================================

# Ops that do not touch the image; `parse_pp` skips them.
_NON_IMAGE_OPS = {"keep", "drop", "onehot", "copy", "strfmt", "setdefault", "choice", "tok", "lower"}


def parse_pp(pp: str) -> list[tuple[str, tuple, dict]]:
    """Splits a big_vision pp string into ``[(op, args, kwargs), ...]`` (literal arguments only)."""
    ops = []
    for part in pp.split("|"):
        part = part.strip()
        if not part:
            continue
        node = ast.parse(part if "(" in part else part + "()", mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError(f"cannot parse pp op {part!r}")
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        ops.append((node.func.id, args, kwargs))
    return ops


def _pp_to_kwargs(pp: str) -> dict[str, Any]:
    """Maps an image pp string onto :class:`BvImageProcessor` arguments."""
    kw: dict[str, Any] = {"do_resize": False, "do_center_crop": False, "value_range": None}
    for name, args, kwargs in parse_pp(pp):
        key = kwargs.pop("key", kwargs.pop("inkey", "image"))
        kwargs.pop("outkey", None), kwargs.pop("key_result", None)
        if key != "image" or name in _NON_IMAGE_OPS:
            continue
        if name == "decode":  # `precise=True` is what PIL's JPEG decoder gives anyway
            if (args[0] if args else kwargs.get("channels", 3)) != 3:
                raise ValueError(f"only decode(channels=3) is supported, got {name}{args}{kwargs}")
        elif name in ("resize", "resize_small"):
            if kw["do_resize"]:
                raise ValueError(f"more than one resize op in {pp!r}")
            positional = ("size",) if name == "resize" else ("smaller_size",)
            size, method, antialias = _op_args(name, args, kwargs, positional, {"method": None, "antialias": False})
            if size is None:
                raise ValueError(f"{name} needs a size")
            kw.update(do_resize=True, resize_mode=name, resize_method=method, resize_antialias=bool(antialias))
            kw["size"] = {"height": _pair(size)[0], "width": _pair(size)[1]} if name == "resize" else {
                "shortest_edge": int(size)
            }
        elif name == "central_crop":
            size = args[0] if args else kwargs.get("crop_size")
            if not size:
                raise NotImplementedError("central_crop() without a size is not supported by the processor")
            ch, cw = _pair(size)
            kw.update(do_center_crop=True, crop_size={"height": ch, "width": cw})
        elif name == "value_range":
            vmin, vmax, in_min, in_max, clip = _op_args(
                name, args, kwargs, (), {"vmin": -1, "vmax": 1, "in_min": 0, "in_max": 255.0, "clip_values": False}
            )
            if (in_min, in_max, clip) != (0, 255.0, False):
                raise NotImplementedError("value_range with in_min/in_max/clip_values is not supported")
            kw["value_range"] = (float(vmin), float(vmax))
        else:
            raise NotImplementedError(f"big_vision pp op {name!r} is not supported by BvImageProcessor")
    if kw["value_range"] is None:  # no value_range: big_vision feeds the uint8 values as they are
        kw.update(do_rescale=False, do_normalize=False)
    return kw


def _op_args(name: str, args: tuple, kwargs: dict, positional: tuple, defaults: dict) -> list:
    names = list(positional) + list(defaults)
    if len(args) > len(names):
        raise ValueError(f"too many arguments to {name}: {args}")
    values = dict(defaults)
    values.update(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise ValueError(f"unknown argument {k!r} to {name}")
        values[k] = v
    return [values.get(n) for n in names]


# ==========================================================================================================
# The image processor
# ==========================================================================================================


class BvImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    resize_mode (`str`, *optional*, defaults to `self.resize_mode`):
        `"resize"` (big_vision `resize(size)`, uses `size["height"]`/`size["width"]`) or `"resize_small"`
        (big_vision `resize_small(S)`, uses `size["shortest_edge"]`).
    resize_method (`str`, *optional*, defaults to `self.resize_method`):
        TF resize method (`"bilinear"` or `"area"`); `None` means the big_vision default of the op
        (`bilinear` for `resize`, `area` for `resize_small`).
    resize_antialias (`bool`, *optional*, defaults to `self.resize_antialias`):
        big_vision's `antialias` argument of `resize`/`resize_small` (TF ignores it for `area`).
    value_range (`list[float]`, *optional*, defaults to `self.value_range`):
        `(vmin, vmax)` of big_vision `value_range`; `None` falls back to transformers' rescale/normalize.
    """

    resize_mode: str | None
    resize_method: str | None
    resize_antialias: bool
    value_range: list[float] | tuple[float, float] | None


class BvBaseImageProcessor(PilBackend):
    """What big_vision's image processors share (`BvImageProcessor`, ``BvNaFlexImageProcessor``): big_vision
    ``decode`` of any input (:meth:`process_image`), and ``value_range(-1, 1)`` described in transformers' terms
    (``1/255`` rescale, mean = std = 0.5) so the saved config reads naturally; each subclass applies big_vision's
    own ops in ``_preprocess`` (``resample`` is only descriptive)."""

    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_convert_rgb = True

    def process_image(
        self,
        image,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Raw input -> uint8 ``(C, H, W)``: big_vision ``decode`` (alpha dropped, gray repeated)."""
        image_type = get_image_type(image)
        if image_type == ImageType.PIL:
            arr = decode(image) if do_convert_rgb else np.asarray(image)
            if arr.ndim == 2:
                arr = arr[..., None]
        elif image_type in (ImageType.TORCH, ImageType.NUMPY):
            arr = image.detach().cpu().numpy() if image_type == ImageType.TORCH else np.asarray(image)
            if arr.ndim == 2:
                arr = arr[..., None]
            else:
                fmt = input_data_format or infer_channel_dimension_format(arr, num_channels=(1, 2, 3, 4))
                if ChannelDimension(fmt) == ChannelDimension.FIRST:
                    arr = np.moveaxis(arr, 0, -1)
            if do_convert_rgb:
                arr = decode(arr)
        else:
            raise ValueError(f"Unsupported input image type {image_type}")
        return np.moveaxis(_as_uint8(arr), -1, 0)


class BvImageProcessor(BvBaseImageProcessor):
    r"""Image processor reproducing big_vision's input pipeline exactly (numpy float32, no TF).

    Default: ``decode|resize(224)|value_range(-1, 1)``. With ``resize_mode="resize_small"``,
    ``size={"shortest_edge": 256}`` and ``crop_size=224``:
    ``decode|resize_small(256)|central_crop(224)|value_range(-1, 1)``. :meth:`from_pp` builds one from such a
    string. Output: ``pixel_values`` float32 ``(N, 3, H, W)``.

    What each step does (and how it differs from transformers' stock processors):

    - ``decode``: alpha is dropped (not composited onto white), gray repeated to RGB, see :func:`decode`.
    - ``resize``: TF2 bilinear, half-pixel centres, **no antialiasing** even when downscaling, float32,
      then clipped and **truncated** back to uint8 (the ``resample`` field is only descriptive).
    - ``resize_small``: TF ``area`` resize to ``round(h*S/min(h,w)) x round(w*S/min(h,w))``, truncated to
      uint8; ``central_crop`` uses offsets ``(h - c) // 2``.
    - ``value_range(vmin, vmax)``: big_vision's float32 formula. ``do_rescale``/``rescale_factor``/
      ``do_normalize``/``image_mean``/``image_std`` are kept equal to its transformers equivalent
      (``1/255`` and mean = std = 0.5 for ``(-1, 1)``) so the saved config reads naturally, but while
      ``value_range`` is set they are not applied; set ``value_range=None`` to use them instead.

    Deviations from big_vision: JPEG decoding is PIL's (equals big_vision ``decode(precise=True)``; the
    default TF decoder can differ by a few levels), and images loaded by transformers from paths/URLs get
    their EXIF orientation applied (``load_image``), which TF does not do. Inputs must be uint8 (or PIL).
    """

    valid_kwargs = BvImageProcessorKwargs
    model_input_names = ["pixel_values"]

    size = {"height": 224, "width": 224}
    default_to_square = True
    crop_size = None
    do_center_crop = False
    resize_mode = "resize"
    resize_method = None
    resize_antialias = False
    # big_vision's `value_range(-1, 1)` is the default; the class attribute is None only so that an explicit
    # `value_range=None` survives `_set_attributes` (which replaces None with the class default).
    value_range = None

    def __init__(self, **kwargs):
        mode = kwargs.get("resize_mode") or type(self).resize_mode
        if mode not in ("resize", "resize_small"):
            raise ValueError(f"resize_mode must be 'resize' or 'resize_small', got {mode!r}")
        if mode == "resize_small":
            size = kwargs.get("size")
            if size is None:
                raise ValueError("resize_mode='resize_small' needs size=S or size={'shortest_edge': S}")
            if isinstance(size, (int, np.integer)):
                kwargs["size"] = {"shortest_edge": int(size)}
            if kwargs.get("crop_size") is not None and kwargs.get("do_center_crop") is None:
                kwargs["do_center_crop"] = True
        elif kwargs.get("crop_size") is not None and kwargs.get("do_center_crop") is None:
            kwargs["do_center_crop"] = True
        vr = kwargs.get("value_range", (-1.0, 1.0))
        if vr is not None:
            vmin, vmax = (float(v) for v in vr)
            kwargs["value_range"] = [vmin, vmax]
            # The transformers description of the same map: (x/255 - mean) / std.
            kwargs.update(
                do_rescale=True,
                rescale_factor=1 / 255,
                do_normalize=True,
                image_mean=[-vmin / (vmax - vmin)] * 3,
                image_std=[1 / (vmax - vmin)] * 3,
            )
        super().__init__(**kwargs)
        self._check_size(self.resize_mode, self.size)

    @classmethod
    def from_pp(cls, pp: str, **kwargs) -> BvImageProcessor:
        """Builds the processor for an image pp string such as ``"decode|resize(224)|value_range(-1, 1)"``.

        Supports ``decode``, ``resize``, ``resize_small``, ``central_crop`` and ``value_range``; ops on
        other keys (labels, text) and ``keep``/``onehot``/... are skipped; anything else raises.
        """
        return cls(**{**_pp_to_kwargs(pp), **kwargs})

    @staticmethod
    def _check_size(mode: str, size: SizeDict | None) -> None:
        if size is None:
            return
        if mode == "resize" and not (size.height and size.width):
            raise ValueError(f"resize_mode='resize' needs size={{'height', 'width'}}, got {dict(size)}")
        if mode == "resize_small" and not size.shortest_edge:
            raise ValueError(f"resize_mode='resize_small' needs size={{'shortest_edge'}}, got {dict(size)}")

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool | None = None,
        pad_size: SizeDict | None = None,
        return_tensors=None,
        resize_mode: str | None = None,
        resize_method: str | None = None,
        resize_antialias: bool = False,
        **kwargs,
    ) -> BatchFeature:
        vrange = kwargs.get("value_range")
        resize_mode = resize_mode or "resize"
        processed = []
        for image in images:
            x = np.moveaxis(image, 0, -1)  # big_vision works on (H, W, C)
            if do_resize:
                self._check_size(resize_mode, size)
                if resize_mode == "resize":
                    x = resize(
                        x, (size.height, size.width), method=resize_method or "bilinear", antialias=resize_antialias
                    )
                elif resize_mode == "resize_small":
                    x = resize_small(x, size.shortest_edge, method=resize_method or "area", antialias=resize_antialias)
                else:
                    raise ValueError(f"resize_mode must be 'resize' or 'resize_small', got {resize_mode!r}")
            if do_center_crop:
                x = central_crop(x, (crop_size.height, crop_size.width))
            if vrange is not None:
                x = value_range(x, vrange[0], vrange[1])
            else:
                x = x.astype(np.float32)
                if do_rescale:
                    x = x * np.float32(rescale_factor)
                if do_normalize:
                    x = (x - np.asarray(image_mean, np.float32)) / np.asarray(image_std, np.float32)
            processed.append(np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32))
        if do_pad:
            processed = self.pad(processed, pad_size=pad_size)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # Always written (also when None), since a missing key means the default (-1, 1).
        out["value_range"] = None if self.value_range is None else list(self.value_range)
        return out


def image_processor_for(config, preprocessing: str = "resize") -> tuple[BvImageProcessor, str]:
    """The processor for a model config and big_vision evaluation preprocessing; returns it and its pp string.

    ``preprocessing``, with ``S = config.image_size``:

    - ``"resize"``: ``decode|resize(S)|value_range(-1, 1)``;
    - ``"resize_small"``: ``decode|resize_small(S // 7 * 8)|central_crop(S)|value_range(-1, 1)`` (the
      256/224 ratio of big_vision's ImageNet eval configs, written as in ``configs/proj/flexivit``);
    - any other string is taken as a big_vision pp string (see :meth:`BvImageProcessor.from_pp`).
    """
    h, w = _pair(getattr(config, "image_size", 224))
    size = str(h) if h == w else f"({h}, {w})"
    if preprocessing == "resize":
        pp = f"decode|resize({size})|value_range(-1, 1)"
    elif preprocessing == "resize_small":
        pp = f"decode|resize_small({min(h, w) // 7 * 8})|central_crop({size})|value_range(-1, 1)"
    else:
        pp = preprocessing
    return BvImageProcessor.from_pp(pp), pp
