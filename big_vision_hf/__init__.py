"""big_vision models as exact Hugging Face transformers models.

Importing this package registers every config, model and processor with the transformers Auto classes, so
converted folders load with ``AutoModel*.from_pretrained(folder)``.
"""

from .configuration.configuration_bv_bit import BvBiTConfig
from .configuration.configuration_bv_clippo import BvClippoConfig
from .configuration.configuration_bv_flexivit import BvFlexiViTConfig
from .configuration.configuration_bv_mixer import BvMixerConfig
from .configuration.configuration_bv_naflex import BvNaFlexViTConfig
from .configuration.configuration_bv_two_towers import BvBertTextConfig, BvSiglipConfig, BvTextConfig, BvTwoTowerConfig
from .configuration.configuration_bv_vit import BvViTConfig, decode_variant
from .configuration.configuration_bv_vqvae import BvSegVQVAEConfig
from .modeling.modeling_bv_bit import BvBiTForImageClassification, BvBiTModel
from .modeling.modeling_bv_clippo import BvClippoModel
from .modeling.modeling_bv_flexivit import BvFlexiViTForImageClassification, BvFlexiViTModel
from .modeling.modeling_bv_mixer import BvMixerForImageClassification, BvMixerModel
from .modeling.modeling_bv_naflex import BvNaFlexViTForImageClassification, BvNaFlexViTModel
from .modeling.modeling_bv_two_towers import BvBertTextTransformer, BvSiglipModel, BvTextTransformer, BvTwoTowerModel
from .modeling.modeling_bv_vit import BvViTForImageClassification, BvViTModel
from .modeling.modeling_bv_vqvae import BvSegVQVAEModel
from .processing.image_processing_bv import BvImageProcessor
from .processing.image_processing_bv_naflex import BvNaFlexImageProcessor
from .processing.processing_bv_clippo import BvClippoProcessor
from .processing.processing_paligemma import BvPaliGemmaProcessor
from .processing.tokenization_bv_bert import BvBertTokenizer
from .processing.tokenization_bv_text import BvTextTokenizer
from .processing.tokenization_paligemma import BvPaliGemmaTokenizer
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "BvBertTextConfig", "BvBertTextTransformer", "BvBertTokenizer",
    "BvBiTConfig", "BvBiTModel", "BvBiTForImageClassification",
    "BvClippoConfig", "BvClippoModel", "BvClippoProcessor",
    "BvFlexiViTConfig", "BvFlexiViTModel", "BvFlexiViTForImageClassification",
    "BvImageProcessor",
    "BvMixerConfig", "BvMixerModel", "BvMixerForImageClassification",
    "BvNaFlexViTConfig", "BvNaFlexViTModel", "BvNaFlexViTForImageClassification", "BvNaFlexImageProcessor",
    "BvPaliGemmaProcessor", "BvPaliGemmaTokenizer",
    "BvSegVQVAEConfig", "BvSegVQVAEModel",
    "BvSiglipConfig", "BvSiglipModel", "BvTextConfig", "BvTextTransformer", "BvTextTokenizer",
    "BvTwoTowerConfig", "BvTwoTowerModel",
    "BvViTConfig", "BvViTModel", "BvViTForImageClassification", "decode_variant",
]
