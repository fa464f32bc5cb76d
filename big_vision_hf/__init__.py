"""big_vision models as exact Hugging Face transformers models.

Importing this package registers every config, model and image processor with the transformers Auto
classes, so converted folders load with ``AutoModel*.from_pretrained(folder)``.
"""

from .configuration.configuration_bv_flexivit import BvFlexiViTConfig
from .configuration.configuration_bv_mixer import BvMixerConfig
from .configuration.configuration_bv_vit import BvViTConfig, decode_variant
from .modeling.modeling_bv_flexivit import BvFlexiViTForImageClassification, BvFlexiViTModel
from .modeling.modeling_bv_mixer import BvMixerForImageClassification, BvMixerModel
from .modeling.modeling_bv_vit import BvViTForImageClassification, BvViTModel
from .processing.image_processing_bv import BvImageProcessor
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "BvImageProcessor",
    "BvViTConfig", "BvViTModel", "BvViTForImageClassification", "decode_variant",
    "BvMixerConfig", "BvMixerModel", "BvMixerForImageClassification",
    "BvFlexiViTConfig", "BvFlexiViTModel", "BvFlexiViTForImageClassification",
]
