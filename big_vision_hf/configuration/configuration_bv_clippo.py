"""Configuration of big_vision's CLIPPO (``big_vision/models/proj/clippo/one_tower.py``): one ViT, images and text."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_bv_vit import BvViTConfig


@strict
class BvClippoConfig(PreTrainedConfig):
    r"""Configuration of a big_vision CLIPPO model (``big_vision.models.proj.clippo.one_tower.Model``).

    One ViT (big_vision ``image``, ``image_model="vit"``) encodes images and text rendered as images (Unifont, see
    ``processing_bv_clippo``); its ``head`` Dense (big_vision ``num_classes=out_dim``) is the shared projection.
    Trained with the softmax (CLIP) contrastive loss; there is no bias, only the temperature.

    Args:
        vision_config: the ViT (`BvViTConfig`), big_vision ``config.model.image`` (``pool_type="map"``,
            ``head_zeroinit=False`` in ``configs/proj/clippo/train_clippo.py``).
        projection_dim: big_vision ``out_dim`` (768): width of the ``head`` Dense on the ViT's ``pre_logits``;
            ``None``: no head (the embeddings are the ``pre_logits``).
        temperature_init: big_vision ``temperature_init`` (10.0): fresh models start at ``t = log(10)``; the
            parameter ``logit_scale`` holds ``t``, the LOG temperature (big_vision ``t``).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_clippo import BvClippoConfig
        >>> config = BvClippoConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        ...                                        "intermediate_size": 128, "pool_type": "map"}, projection_dim=32)
        >>> config.vision_config.pool_type, config.projection_dim
        ('map', 32)
    """

    model_type = "bv_clippo"
    sub_configs_defaults = {"vision_config": BvViTConfig}

    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int | None = 768  # big_vision one_tower `out_dim` default
    temperature_init: float = 10.0  # big_vision one_tower `temperature_init` default

    def __post_init__(self, **kwargs):
        if self.projection_dim == 0:
            self.projection_dim = None
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init must be positive, got {self.temperature_init}")
        super().__post_init__(**kwargs)

    @property
    def image_size(self) -> list[int]:
        """The ViT's input resolution (images and rendered text alike)."""
        return self.vision_config.image_size

    @property
    def log_temperature_init(self) -> float:
        return math.log(self.temperature_init)
