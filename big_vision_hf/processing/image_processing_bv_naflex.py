"""big_vision's NaFlex preprocessing (``big_vision/pp/proj/image_text/ops_naflex.py``) as an image processor.

Reproduces the SigLIP 2 NaFlex pipeline (``configs/proj/image_text/SigLIP2_demo.ipynb``)::

    value_range(-1, 1)|resize_to_sequence(P, N)|patchify(P)|pad_to_shape(N)   (patches, ptype, yidx, xidx)

in numpy float32, checked against big_vision's TF ops in ``tests/test_bv_naflex.py``. The ops are pure functions
named after the big_vision op: :func:`resize_to_sequence` (with :func:`get_image_size_for_seq`, the exact
binary search, and :func:`resize_bilinear_antialias`, TF's ``ScaleAndTranslate`` triangle kernel),
:func:`patchify` and :func:`pad_to_sequence`; ``decode`` and ``value_range`` are the shared ones of
``image_processing_bv``.

Outputs use the names of transformers' ``Siglip2VisionModel``: ``pixel_values`` ``[B, N, P*P*3]``,
``pixel_attention_mask`` ``[B, N]`` (big_vision ``ptype``) and ``spatial_shapes`` ``[B, 2]`` (the patch grid;
big_vision's ``yidx``/``xidx`` are its row-major coordinates, :func:`patchify` returns them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ImagesKwargs

from .image_processing_bv import BvBaseImageProcessor, resize_bilinear_antialias, value_range as bv_value_range

__all__ = [
    "BvNaFlexImageProcessor",
    "get_image_size_for_seq",
    "pad_to_sequence",
    "patchify",
    "resize_bilinear_antialias",
    "resize_to_sequence",
]


# ==========================================================================================================
# The big_vision NaFlex pp ops, as pure functions on (H, W, C) numpy arrays.
# ==========================================================================================================


def get_image_size_for_seq(
    image_hw: Sequence[int], patch_size: int, max_sequence_len: int, divisible_by_patch: bool = True, eps: float = 1e-5
) -> tuple[float, tuple[int, int]]:
    """big_vision ``_get_image_size_for_seq``: the binary search for the largest AR-preserving size, in TF's float32.

    Returns ``(ratio, (target_h, target_w))``; the target has at most ``max_sequence_len`` patches, each side a
    multiple of ``patch_size`` (if ``divisible_by_patch``) and at least one patch.
    """
    f32 = np.float32
    hw = np.asarray(image_hw, np.int64).astype(f32)
    p = f32(patch_size)

    def prepare_target_hw(ratio: np.float32) -> np.ndarray:
        target = hw * ratio
        if divisible_by_patch:
            target = p * np.ceil(target / p)
        return np.maximum(target, p).astype(np.int32)  # tf.cast float -> int32 truncates

    def is_feasible(ratio: np.float32) -> bool:
        num_patches = prepare_target_hw(ratio).astype(np.float64) / patch_size  # int32 / int: TF truediv -> float64
        return bool(np.prod(num_patches) <= max_sequence_len)

    lb, rb = f32(eps / 10.0), f32(100.0)
    while (rb - lb) >= f32(eps):
        mid = (lb + rb) / f32(2)
        lb, rb = (mid, rb) if is_feasible(mid) else (lb, mid)
    if not eps < lb < 100.0:
        raise ValueError(f"resize_to_sequence: binary search failed for a {tuple(image_hw)} image (ratio {lb})")
    target = prepare_target_hw(lb)
    return float(lb), (int(target[0]), int(target[1]))


def resize_to_sequence(
    image: np.ndarray, patch_size: int, max_sequence_len: int, divisible_by_patch: bool = True, eps: float = 1e-5
) -> np.ndarray:
    """big_vision ``resize_to_sequence(patch_size, max_sequence_len)``: AR-preserving antialiased bilinear resize
    to the size of :func:`get_image_size_for_seq`; float32 out (as ``tf.image.resize``), not clipped."""
    _, target = get_image_size_for_seq(image.shape[:2], patch_size, max_sequence_len, divisible_by_patch, eps)
    return resize_bilinear_antialias(image, target)


def patchify(image: np.ndarray, patch_size: int | Sequence[int]) -> dict[str, np.ndarray]:
    """big_vision ``patchify(patch_size)``: ``tf.image.extract_patches`` (VALID) + patch coordinates.

    Returns ``patches [nh*nw, ph*pw*C]`` (row-major patches, each flattened row-major with channels last),
    ``yidx``/``xidx [nh*nw]`` and ``type [nh*nw]`` (all 1).
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, (int, np.integer)) else patch_size
    h, w, c = image.shape
    nh, nw = h // ph, w // pw
    patches = image[: nh * ph, : nw * pw].reshape(nh, ph, nw, pw, c).transpose(0, 2, 1, 3, 4).reshape(nh * nw, -1)
    gy, gx = np.meshgrid(np.arange(nh, dtype=np.int32), np.arange(nw, dtype=np.int32), indexing="ij")
    return {"patches": patches, "yidx": gy.reshape(-1), "xidx": gx.reshape(-1), "type": np.ones(nh * nw, np.int32)}


def pad_to_sequence(patchified: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """big_vision ``pad_to_shape`` on every key of :func:`patchify`: zeros after the patches (``type`` 0 = pad)."""
    n = len(patchified["type"])
    if n > length:
        raise ValueError(f"{n} patches do not fit a sequence of {length}")
    return {k: np.pad(v, [(0, length - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in patchified.items()}


# ==========================================================================================================
# The image processor
# ==========================================================================================================


class BvNaFlexImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to `self.patch_size`):
        Patch size of `resize_to_sequence` and `patchify`.
    max_num_patches (`int`, *optional*, defaults to `self.max_num_patches`):
        Sequence length: the image is resized to at most this many patches, then padded to exactly this many.
    value_range (`list[float]`, *optional*, defaults to `self.value_range`):
        `(vmin, vmax)` of big_vision `value_range`, applied to the uint8 image before resizing.
    """

    patch_size: int
    max_num_patches: int
    value_range: list[float] | tuple[float, float]


class BvNaFlexImageProcessor(BvBaseImageProcessor):
    r"""Image processor reproducing big_vision's NaFlex input pipeline (numpy float32, no TF).

    ``decode|value_range(-1, 1)|resize_to_sequence(P, N)|patchify(P)|pad_to_shape(N)``; :meth:`pp_string` gives
    the string for the processor's settings. Differences from transformers' ``Siglip2ImageProcessor``: the resize
    is big_vision's (TF antialiased bilinear on the float image, after ``value_range``) instead of PIL's on uint8,
    and ``decode`` is big_vision's (alpha dropped, see ``image_processing_bv.decode``). The target size is
    big_vision's float32 binary search. ``do_rescale``/``do_normalize``/``image_mean``/``image_std`` only
    describe ``value_range(-1, 1)`` in transformers' terms; they are not applied.
    """

    valid_kwargs = BvNaFlexImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]

    # `resample` (bilinear) is descriptive: the resize is resize_bilinear_antialias.
    patch_size = 16  # SigLIP 2 NaFlex B/16, So400m/16
    max_num_patches = 256  # the sequence length of the SigLIP 2 README results
    value_range = [-1.0, 1.0]

    def pp_string(self) -> str:
        """The big_vision pp string this processor reproduces."""
        p, n = self.patch_size, self.max_num_patches
        vmin, vmax = self.value_range
        return f"decode|value_range({vmin:g}, {vmax:g})|resize_to_sequence({p}, {n})|patchify({p})|pad_to_shape({n})"

    def _validate_preprocess_kwargs(self, **kwargs):
        kwargs.pop("do_resize", None)  # the size is computed per image
        return super()._validate_preprocess_kwargs(**kwargs)

    def image_sequence(
        self,
        image: np.ndarray,
        budget: int,
        patch_size: int | None = None,
        value_range: Sequence[float] | None = None,
        do_resize: bool = True,
    ) -> dict[str, np.ndarray]:
        """One uint8 ``(C, H, W)`` image (`process_image`'s output) -> ``value_range|resize_to_sequence(P, budget)|
        patchify(P)``: :func:`patchify`'s dict (float32 ``patches``), plus ``shape``, the patch grid ``(h, w)``."""
        patch_size = patch_size or self.patch_size
        vmin, vmax = value_range or self.value_range
        x = bv_value_range(np.moveaxis(image, 0, -1), vmin, vmax)  # big_vision works on (H, W, C)
        if do_resize:
            x = resize_to_sequence(x, patch_size, budget)
        elif x.shape[0] % patch_size or x.shape[1] % patch_size:
            raise ValueError(f"do_resize=False needs sides divisible by {patch_size}, got {x.shape[:2]}")
        seq = patchify(x, patch_size)
        seq["shape"] = (int(seq["yidx"].max()) + 1, int(seq["xidx"].max()) + 1)
        return seq

    def budget_for(self, image: np.ndarray, patch_size: int, max_num_patches: int, **kwargs) -> int:
        """The patch budget of a ``(C, H, W)`` image: NaFlex resizes every image to fill ``max_num_patches``."""
        return max_num_patches

    def batch_sequences(self, sequences: list[dict[str, np.ndarray]], max_num_patches: int, **kwargs) -> dict:
        """NaFlex's batch: each sequence padded to ``max_num_patches`` (``pad_to_shape``) and stacked, with the
        patch grids as ``spatial_shapes``."""
        pixel_values, masks, shapes = [], [], []
        for seq in sequences:
            shapes.append(seq.pop("shape"))
            seq = pad_to_sequence(seq, max_num_patches)
            pixel_values.append(seq["patches"])
            masks.append(seq["type"])
        return {
            "pixel_values": np.stack(pixel_values),
            "pixel_attention_mask": np.stack(masks),
            "spatial_shapes": np.asarray(shapes, np.int64).reshape(-1, 2),
        }

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        patch_size: int,
        max_num_patches: int,
        value_range: Sequence[float],
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        # kwargs carries the subclass's own options (NaViT's resolution, sequence_length) to its two hooks
        sequences = []
        for image in images:
            budget = self.budget_for(image, patch_size, max_num_patches, **kwargs)
            seq = self.image_sequence(image, budget, patch_size, value_range, do_resize)
            seq["patches"] = seq["patches"].astype(np.float32)
            sequences.append(seq)
        return BatchFeature(data=self.batch_sequences(sequences, max_num_patches, **kwargs), tensor_type=return_tensors)
