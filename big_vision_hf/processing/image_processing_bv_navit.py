"""NaViT ("Patch n' Pack", https://arxiv.org/abs/2307.06304) inputs: big_vision's NaFlex preprocessing per image,
then several images packed into sequences of a fixed length.

Each image goes through the NaFlex pp of `BvNaFlexImageProcessor` (``decode|value_range(-1, 1)|
resize_to_sequence(P, budget)|patchify(P)``) at its own patch budget: ``max_num_patches`` (``resolution="max"``,
NaFlex's) or its native resolution capped there (``resolution="native"``, NaViT inference). Instead of padding every
image to ``max_num_patches``, the images are packed in order into rows of ``sequence_length`` tokens
(:func:`sequence_packing.next_fit`): the packed format of ``modeling_bv_vit`` ("Packed images": ``pixel_values
[S, L, P*P*3]``, ``segment_ids``, ``patch_coords``, ``spatial_shapes [N, 2]``), which every ViT-family model takes.

With ``resolution="max"`` each image's patches are exactly NaFlex's, so the packed forward equals the NaFlex one.
In transformers' ``zero-shot-image-classification`` pipeline (which preprocesses one image per call) pass it as
``image_processor=``: each image is one row; with ``batch_size=k`` the pipeline stacks ``k`` rows, and the model's
variable-length attention packs them into one sequence with no padding.
"""

from __future__ import annotations

import numpy as np

from .image_processing_bv_naflex import BvNaFlexImageProcessor, BvNaFlexImageProcessorKwargs
from .sequence_packing import native_patch_budget, next_fit, pack_sequences

__all__ = ["BvNaViTImageProcessor"]

RESOLUTIONS = ("max", "native")


class BvNaViTImageProcessorKwargs(BvNaFlexImageProcessorKwargs, total=False):
    r"""
    resolution (`str`, *optional*, defaults to `self.resolution`):
        Each image's patch budget: `"max"` (`max_num_patches`, NaFlex) or `"native"` (its native resolution,
        at most `max_num_patches`).
    sequence_length (`int`, *optional*, defaults to `self.sequence_length`):
        Tokens per packed sequence (default `max_num_patches`); at least `max_num_patches`.
    """

    resolution: str
    sequence_length: int | None


class BvNaViTImageProcessor(BvNaFlexImageProcessor):
    r"""big_vision's NaFlex pp per image, packed NaViT-style (see the module docstring).

    Output: ``pixel_values`` ``[S, L, P*P*3]``, ``segment_ids`` ``[S, L]``, ``patch_coords`` ``[S, L, 2]``,
    ``spatial_shapes`` ``[N, 2]``; images keep their input order (the outputs of the model are per image, in it).

    Example:
        >>> import numpy as np
        >>> from big_vision_hf.processing.image_processing_bv_navit import BvNaViTImageProcessor
        >>> processor = BvNaViTImageProcessor(patch_size=16, max_num_patches=64, resolution="native")
        >>> images = [np.zeros((48, 96, 3), np.uint8), np.zeros((200, 120, 3), np.uint8)]
        >>> out = processor(images, return_tensors="pt")
        >>> out["segment_ids"].shape, out["spatial_shapes"].tolist()
        (torch.Size([2, 64]), [[3, 6], [10, 6]])
    """

    valid_kwargs = BvNaViTImageProcessorKwargs
    model_input_names = ["pixel_values", "segment_ids", "patch_coords", "spatial_shapes"]

    resolution = "max"
    sequence_length = None

    def budget_for(self, image: np.ndarray, patch_size: int, max_num_patches: int, resolution: str = "max",
                   **kwargs) -> int:
        """The patch budget of a ``(C, H, W)`` image under ``resolution``."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution={resolution!r}; expected one of {RESOLUTIONS}")
        if resolution == "max":
            return max_num_patches
        return native_patch_budget(image.shape[1], image.shape[2], patch_size, max_num_patches)

    def batch_sequences(self, sequences: list[dict[str, np.ndarray]], max_num_patches: int,
                        sequence_length: int | None = None, **kwargs) -> dict:
        """NaViT's batch: the sequences packed, next fit in input order, into rows of ``sequence_length``."""
        length = sequence_length or max_num_patches
        if length < max_num_patches:
            raise ValueError(f"sequence_length={length} is shorter than max_num_patches={max_num_patches}")
        rows = next_fit([len(seq["patches"]) for seq in sequences], length)
        packed = pack_sequences(sequences, rows, length)
        packed.pop("image_order")  # next_fit keeps the input order
        return packed
