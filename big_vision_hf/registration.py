"""Registration of our configs, models and processors with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification


def register_auto_classes() -> None:
    from .configuration.configuration_bv_vit import BvViTConfig
    from .modeling.modeling_bv_vit import BvViTForImageClassification, BvViTModel

    AutoConfig.register(BvViTConfig.model_type, BvViTConfig, exist_ok=True)
    AutoModel.register(BvViTConfig, BvViTModel, exist_ok=True)
    AutoModelForImageClassification.register(BvViTConfig, BvViTForImageClassification, exist_ok=True)

    from transformers import AutoImageProcessor

    from .processing.image_processing_bv import BvImageProcessor

    AutoImageProcessor.register(BvViTConfig, image_processor_classes={"pil": BvImageProcessor}, exist_ok=True)

    from .configuration.configuration_bv_flexivit import BvFlexiViTConfig
    from .modeling.modeling_bv_flexivit import BvFlexiViTForImageClassification, BvFlexiViTModel

    AutoConfig.register(BvFlexiViTConfig.model_type, BvFlexiViTConfig, exist_ok=True)
    AutoModel.register(BvFlexiViTConfig, BvFlexiViTModel, exist_ok=True)
    AutoModelForImageClassification.register(BvFlexiViTConfig, BvFlexiViTForImageClassification, exist_ok=True)
    AutoImageProcessor.register(BvFlexiViTConfig, image_processor_classes={"pil": BvImageProcessor}, exist_ok=True)

    from .configuration.configuration_bv_mixer import BvMixerConfig
    from .modeling.modeling_bv_mixer import BvMixerForImageClassification, BvMixerModel

    AutoConfig.register(BvMixerConfig.model_type, BvMixerConfig, exist_ok=True)
    AutoModel.register(BvMixerConfig, BvMixerModel, exist_ok=True)
    AutoModelForImageClassification.register(BvMixerConfig, BvMixerForImageClassification, exist_ok=True)

    from .configuration.configuration_bv_vqvae import BvSegVQVAEConfig
    from .modeling.modeling_bv_vqvae import BvSegVQVAEModel

    AutoConfig.register(BvSegVQVAEConfig.model_type, BvSegVQVAEConfig, exist_ok=True)
    AutoModel.register(BvSegVQVAEConfig, BvSegVQVAEModel, exist_ok=True)
