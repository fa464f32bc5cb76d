"""PyTorch port of big_vision's CLIPPO (``big_vision/models/proj/clippo/one_tower.py``): CLIP with pixels only.

One big_vision ViT (`BvViTModel`, shared, with its ``head`` Dense as ``projection``) encodes both images and
text rendered into images with Unifont (``processing_bv_clippo.BvClippoProcessor``). Both embeddings are
normalised as big_vision does (``z / (||z|| + 1e-8)``) and compared with the softmax (CLIP) loss, scaled by the
temperature ``exp(t)``; there is no bias.

big_vision ``out`` dict -> outputs:
    ``out["img/*"]`` / ``out["txt/*"]`` -> ``vision_model_output`` / ``text_model_output`` (the ViT's outputs; see
        ``modeling_bv_vit``), whose ``pooler_output`` is ``img/pre_logits``;
    ``out["img/logits"]`` -> ``get_image_features(...).pooler_output`` (the head output, not normalised);
    ``zimg`` / ``ztxt`` (``out["img/normalized"]`` / ``out["txt/normalized"]``) -> ``image_embeds`` / ``text_embeds``;
    ``t/parameter`` -> ``logit_scale``;  ``t`` -> ``logit_scale.exp()``;
    ``zimg @ ztxt.T * t`` (big_vision's contrastive trainer) -> ``logits_per_image``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.siglip.modeling_siglip import SiglipOutput
from transformers.utils import can_return_tuple

from ..configuration.configuration_bv_clippo import BvClippoConfig

# big_vision one_tower `_compute_embedding` normalises as two_towers.py (`zemb / (norm + 1e-8)`), and trains with
# the same softmax loss (all processes' negatives under several processes).
from .modeling_bv_two_towers import contrastive_output, l2_normalize, softmax_loss
from .modeling_bv_vit import BvViTModel, BvViTModelOutput, BvViTPreTrainedModel, init_flax_dense_


@dataclass
class BvClippoOutput(SiglipOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, with `return_loss=True`):
        big_vision ``softmax_loss``: the mean of the image->text and text->image cross-entropies.
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        ``image_embeds @ text_embeds.T * exp(t)``.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`): the transpose.
    image_embeds / text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        big_vision ``zimg`` / ``ztxt``: normalised head outputs.
    vision_model_output / text_model_output (`BvViTModelOutput`): the ViT's outputs on the images / text images.
    """


class BvClippoModel(BvViTPreTrainedModel):
    r"""big_vision CLIPPO: one ViT (``img``) + its ``head`` for images and rendered text, and the temperature ``t``.

    Inputs: ``pixel_values`` (images) and ``text_pixel_values`` (texts rendered by `BvClippoProcessor`), both
    ``(batch, 3, H, W)`` in [-1, 1] at the ViT's resolution; either may be omitted.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_clippo import BvClippoConfig
        >>> from big_vision_hf.modeling.modeling_bv_clippo import BvClippoModel
        >>> config = BvClippoConfig(vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...     "intermediate_size": 64, "patch_size": 8, "image_size": 32, "pool_type": "map"}, projection_dim=16)
        >>> model = BvClippoModel(config).eval()
        >>> out = model(pixel_values=torch.zeros(2, 3, 32, 32), text_pixel_values=torch.ones(3, 3, 32, 32))
        >>> tuple(out.logits_per_image.shape)
        (2, 3)

    Parity: ``big_vision.models.proj.clippo.one_tower.Model`` at commit 0127fb6 (``image_model="vit"``, MAP pool,
    ``out_dim`` head): fp32 max abs error on ``zimg``, ``ztxt``, the head outputs and the logits below 1e-5
    (``tests/test_bv_clippo.py``).
    """

    config: BvClippoConfig
    config_class = BvClippoConfig
    base_model_prefix = "clippo"

    def __init__(self, config: BvClippoConfig):
        super().__init__(config)
        vision = config.vision_config
        self.vision_model = BvViTModel._from_config(vision)
        width = vision.representation_size or vision.hidden_size
        self.projection = nn.Linear(width, config.projection_dim) if config.projection_dim else None
        self.logit_scale = nn.Parameter(torch.full((1,), config.log_temperature_init))  # big_vision `t`
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BvClippoModel):
            init.constant_(module.logit_scale, module.config.log_temperature_init)
            if module.projection is not None:  # the vit `head`
                init_flax_dense_(module.projection, zero_kernel=module.config.vision_config.head_zeroinit)

    def _encode(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **kwargs
    ) -> tuple[BvViTModelOutput, torch.Tensor]:
        """The ViT's outputs and the head output (big_vision ``img/logits``; ``pre_logits`` without a head)."""
        outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        z = outputs.pooler_output
        return outputs, (self.projection(z) if self.projection is not None else z)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BvViTModelOutput:
        """The ViT's outputs on images, ``pooler_output`` = head output (big_vision ``img/logits``, not normalised)."""
        outputs, z = self._encode(pixel_values, interpolate_pos_encoding, **kwargs)
        outputs.pooler_output = z
        return outputs

    @can_return_tuple
    def get_text_features(
        self, text_pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BvViTModelOutput:
        """As `get_image_features`, on rendered text (big_vision ``txt/logits``): the same tower."""
        return self.get_image_features(text_pixel_values, interpolate_pos_encoding, **kwargs)

    def contrastive_loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """big_vision's softmax loss on normalised embeddings of matching pairs (see `softmax_loss`)."""
        return softmax_loss(image_embeds, text_embeds, self.logit_scale)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        text_pixel_values: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> BvClippoOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
            Images in [-1, 1] (big_vision ``decode|resize(224)|value_range(-1, 1)``).
        text_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
            Texts rendered as images in [-1, 1] (big_vision ``render_unifont(...)|value_range(-1, 1)``).
        return_loss (`bool`, *optional*): also return big_vision's softmax contrastive loss (needs both inputs,
            matched pairs on the diagonal).
        interpolate_pos_encoding (`bool`): resample the learned posemb to the input's grid (see `BvViTModel`).
        """
        if pixel_values is None and text_pixel_values is None:
            raise ValueError("pass pixel_values and/or text_pixel_values")
        image_out = text_out = image_embeds = text_embeds = None
        if pixel_values is not None:
            image_out, z = self._encode(pixel_values, interpolate_pos_encoding, **kwargs)
            image_embeds = l2_normalize(z)  # zimg
        if text_pixel_values is not None:
            text_out, z = self._encode(text_pixel_values, interpolate_pos_encoding, **kwargs)
            text_embeds = l2_normalize(z)  # ztxt
        return contrastive_output(  # no bias: big_vision's contrastive trainer
            image_embeds, text_embeds, self.logit_scale, loss_fn=self.contrastive_loss if return_loss else None,
            inputs="pixel_values and text_pixel_values", vision_model_output=image_out, text_model_output=text_out,
            output_class=BvClippoOutput,
        )
