"""PyTorch port of big_vision's FlexiViT (``big_vision/models/proj/flexi/vit.py``): one model, any patch size.

The stored patch-embedding kernel (``config.patch_size``) and learned posemb (``config.posemb_size``) are resized
on every call to the requested patch size, as big_vision's ``Patchify`` and flexi ``_Model`` do; everything after
the embeddings (encoder, MAP head, pooling, head) is the ViT's (`BvViTModel.encode`), as big_vision flexi reuses
``vit.Encoder``/``vit.MAPHead``. Outputs are those of the ViT classes (see ``modeling_bv_vit``).

The patch size of a call: ``patch_size=`` if given; else ``(H, W) // seqhw`` of the input for ``seqhw=`` or
``config.seqhw`` (big_vision ``Patchify``); else the stored ``config.patch_size``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_flexivit import BvFlexiViTConfig
from .modeling_bv_vit import (
    BvImageClassifierOutput,
    BvViTEmbeddings,
    BvViTForImageClassification,
    BvViTModel,
    BvViTModelOutput,
    BvViTPreTrainedModel,
    resize_grid_antialiased,
)

# ---------------------------------------------------------------------------------------------------------
# Resizing (big_vision flexi resample_patchemb, and the posemb resize of flexi _Model)
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _pi_resize_matrix_f64(old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """``pinv(B^T)`` ``[new_h*new_w, old_h*old_w]`` in float64, ``B`` the bilinear resize matrix old -> new.

    big_vision builds ``B`` column by column with ``tf.image.resize(basis, new, "bilinear")`` (TF2: half-pixel
    centres, no antialias); ``F.interpolate(align_corners=False, antialias=False)`` is the same map.
    """
    n = old_hw[0] * old_hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *old_hw)
    resized = F.interpolate(basis, size=new_hw, mode="bilinear", align_corners=False, antialias=False)
    return torch.linalg.pinv(resized.reshape(n, -1))  # rows of `resized` are B^T: (n_old, n_new)


@functools.lru_cache(maxsize=64)
def pi_resize_matrix(
    old_hw: tuple[int, int], new_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """`_pi_resize_matrix_f64` cast to ``dtype`` on ``device``, cached per (old, new, device, dtype)."""
    return _pi_resize_matrix_f64(tuple(old_hw), tuple(new_hw)).to(device=device, dtype=dtype)


def resample_patchemb(kernel: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """PI-resizes a ``Conv2d`` kernel ``[out, in, h, w]`` to ``[out, in, *new_hw]`` (big_vision ``resample_patchemb``).

    With the new kernel, a patch bilinearly resized to ``new_hw`` embeds (nearly, exactly when upsampling) as the
    original patch did with the old one. Computed in float32 at least (big_vision: fp32 under jit), cast back.
    """
    old_hw = (kernel.shape[-2], kernel.shape[-1])
    new_hw = (int(new_hw[0]), int(new_hw[1]))
    if old_hw == new_hw:
        return kernel
    compute = torch.promote_types(kernel.dtype, torch.float32)
    mat = pi_resize_matrix(old_hw, new_hw, kernel.device, compute)  # (new_h*new_w, old_h*old_w)
    flat = kernel.to(compute).flatten(2) @ mat.T  # (out, in, new_h*new_w)
    return flat.reshape(*kernel.shape[:2], *new_hw).to(kernel.dtype)


def resize_posemb(posemb: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """``[1, h*w, D]`` posemb -> another grid, as big_vision flexi ``jax.image.resize(pe, ..., "linear")``.

    ``jax.image.resize`` antialiases when downsampling (a triangle kernel widened by the scale, half-pixel
    centres): :func:`resize_grid_antialiased`. Not the plain ViT's ``resample_posemb`` (scipy zoom, corners
    aligned).
    """
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    grid = posemb.reshape(old_grid[0], old_grid[1], posemb.shape[-1])
    return resize_grid_antialiased(grid, new_grid).reshape(1, new_grid[0] * new_grid[1], -1)


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


# ---------------------------------------------------------------------------------------------------------
# FlexiViT
# ---------------------------------------------------------------------------------------------------------


class BvFlexiViTEmbeddings(BvViTEmbeddings):
    """big_vision flexi ``Patchify`` + posemb: the ViT embeddings' parameters, resized to each call's patch size.

    ``patch_embedding`` holds the kernel at the stored ``config.patch_size`` and ``position_embedding`` the
    posemb at ``config.posemb_size`` (learned, or sincos2d computed there; both are resized, as big_vision flexi).
    """

    def patch_size_for(self, image_hw: tuple[int, int], patch_size=None, seqhw=None) -> tuple[int, int]:
        """The patch size of a call (see the module docstring); big_vision ``Patchify``: ``(h, w) // seqhw``."""
        if patch_size is not None and seqhw is not None:
            raise ValueError("pass patch_size or seqhw, not both")
        if patch_size is not None:
            patch = _pair(patch_size)
        elif seqhw is not None or self.config.seqhw is not None:
            sh, sw = _pair(seqhw if seqhw is not None else self.config.seqhw)
            patch = (image_hw[0] // sh, image_hw[1] // sw)
        else:
            patch = _pair(self.config.patch_size)
        if not (1 <= patch[0] <= image_hw[0] and 1 <= patch[1] <= image_hw[1]):
            raise ValueError(f"patch size {patch} does not fit a {image_hw[0]}x{image_hw[1]} input")
        return patch

    def resampled_kernel(self, patch_size: tuple[int, int]) -> torch.Tensor:
        """The kernel ``[D, C, ph, pw]`` used for ``patch_size`` (big_vision ``resample_patchemb``)."""
        return resample_patchemb(self.patch_embedding.weight, patch_size)

    def position_embedding_for(self, grid: tuple[int, int], interpolate: bool = True) -> torch.Tensor:
        # big_vision flexi resizes the stored posemb whatever its type (sincos2d is NOT recomputed per grid).
        return resize_posemb(self.position_embedding, self.grid_size, grid)

    def forward(self, pixel_values: torch.Tensor, patch_size=None, seqhw=None):
        patch = self.patch_size_for(tuple(pixel_values.shape[-2:]), patch_size, seqhw)
        kernel = self.resampled_kernel(patch)
        x = F.conv2d(pixel_values.to(kernel.dtype), kernel, self.patch_embedding.bias, stride=patch)  # out["stem"]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major tokens
        x = x + self.position_embedding_for(grid)  # out["with_posemb"]
        if self.cls_token is not None:  # [cls] is prepended after the posemb, as in the ViT
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.dropout(x), grid


class BvFlexiViTPreTrainedModel(BvViTPreTrainedModel):
    config: BvFlexiViTConfig
    config_class = BvFlexiViTConfig

    @torch.no_grad()
    def _init_weights(self, module):
        """The ViT's flax initialisers, except big_vision flexi ``Patchify``'s kernel: normal(1/sqrt(width))."""
        super()._init_weights(module)
        if isinstance(module, BvFlexiViTEmbeddings):
            init.normal_(module.patch_embedding.weight, std=1 / np.sqrt(module.config.hidden_size))


class BvFlexiViTModel(BvFlexiViTPreTrainedModel, BvViTModel):
    r"""big_vision FlexiViT without the classification head; one model for every patch size.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvFlexiViTConfig, BvFlexiViTModel
        >>> config = BvFlexiViTConfig.from_variant("mu", patch_size=12, posemb_size=4, image_size=48)
        >>> model = BvFlexiViTModel(config).eval()
        >>> [tuple(model(torch.zeros(1, 3, 48, 48), patch_size=p).last_hidden_state.shape) for p in (8, 12, 16)]
        [(1, 36, 32), (1, 16, 32), (1, 9, 32)]

    Parity: ``big_vision.models.proj.flexi.vit._Model`` at commit 0127fb6 (pool ``tok``, learned 4x4 posemb,
    stored patch 12, 48px, ``seqhw`` 4/6/3 = patch 12/8/16); fp32 max abs errors on ``logits``, ``logits_2d``,
    ``pre_logits``, ``encoded``, ``with_posemb`` and the resampled kernel are asserted (<= 1e-4) and reported by
    ``tests/test_bv_flexivit.py``.
    """

    embeddings_class = BvFlexiViTEmbeddings

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        patch_size: int | tuple[int, int] | None = None,
        seqhw: int | tuple[int, int] | None = None,
        output_2d: bool = False,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BvViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`): images in [-1, 1].
        patch_size (`int` or `(h, w)`, *optional*): the patch size of this call; the stored kernel is PI-resized.
        seqhw (`int` or `(h, w)`, *optional*): big_vision ``seqhw``: the patch grid; patch size ``(H, W) // seqhw``.
            Without either, ``config.seqhw``, else the stored ``config.patch_size``.
        output_2d (`bool`): also return ``pre_logits_2d`` (big_vision ``out["pre_logits_2d"]``).
        interpolate_pos_encoding: accepted for the ViT classes' API; FlexiViT always resizes its posemb.
        """
        embeddings, grid = self.embeddings(pixel_values, patch_size=patch_size, seqhw=seqhw)
        return self.encode(embeddings, grid, output_2d=output_2d, **kwargs)


class BvFlexiViTForImageClassification(BvFlexiViTPreTrainedModel, BvViTForImageClassification):
    r"""big_vision FlexiViT with its ``head`` Dense; ``patch_size``/``seqhw`` pick the patch size per call.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvFlexiViTConfig, BvFlexiViTForImageClassification
        >>> config = BvFlexiViTConfig.from_variant("mu", patch_size=12, posemb_size=4, image_size=48, num_labels=5)
        >>> model = BvFlexiViTForImageClassification(config).eval()
        >>> model(torch.zeros(2, 3, 48, 48), seqhw=6).logits.shape
        torch.Size([2, 5])

    Parity: as `BvFlexiViTModel`; ``logits``/``logits_2d`` match big_vision ``out["logits"]``/``out["logits_2d"]``.
    """

    base_model_class = BvFlexiViTModel

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        patch_size: int | tuple[int, int] | None = None,
        seqhw: int | tuple[int, int] | None = None,
        output_2d: bool = False,
        **kwargs,
    ) -> BvImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the loss.
        patch_size, seqhw, output_2d: see `BvFlexiViTModel.forward`.
        """
        return super().forward(pixel_values, labels, output_2d=output_2d, patch_size=patch_size, seqhw=seqhw, **kwargs)

