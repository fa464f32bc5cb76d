"""Registration of our configs, models and processors with the transformers Auto classes.

One table: per config, the model classes for each Auto class, the image processor, and (where text goes in)
the tokenizer / processor. A new family is one line here. ``import big_vision_hf`` registers the table and
exports every class in it (:func:`exported_classes`).
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)


def _table():
    from .configuration.configuration_bv_bit import BvBiTConfig
    from .configuration.configuration_bv_cappa import BvCapPaConfig
    from .configuration.configuration_bv_clippo import BvClippoConfig
    from .configuration.configuration_bv_flexivit import BvFlexiViTConfig
    from .configuration.configuration_bv_givt import BvGivtCNNVAEConfig, BvGivtConfig, BvGivtViTVAEConfig
    from .configuration.configuration_bv_jet import BvJetConfig
    from .configuration.configuration_bv_jetformer import BvJetFormerConfig
    from .configuration.configuration_bv_mixer import BvMixerConfig
    from .configuration.configuration_bv_naflex import BvNaFlexViTConfig
    from .configuration.configuration_bv_two_towers import (
        BvBertTextConfig,
        BvSiglipConfig,
        BvTextConfig,
        BvTwoTowerConfig,
    )
    from .configuration.configuration_bv_uvim import BvUViMVQVAEConfig, BvUViMVTTConfig
    from .configuration.configuration_bv_vit import BvViTConfig
    from .configuration.configuration_bv_vqvae import BvSegVQVAEConfig
    from .modeling import (
        modeling_bv_bit as bit,
        modeling_bv_cappa as cappa,
        modeling_bv_clippo as clippo,
        modeling_bv_flexivit as flexi,
        modeling_bv_givt as givt,
        modeling_bv_givt_vae as givt_vae,
        modeling_bv_jet as jet,
        modeling_bv_jetformer as jetformer,
        modeling_bv_mixer as mixer,
        modeling_bv_naflex as naflex,
        modeling_bv_two_towers as towers,
        modeling_bv_uvim as uvim,
        modeling_bv_vit as vit,
        modeling_bv_vqvae as vqvae,
    )
    from .processing.image_processing_bv import BvImageProcessor
    from .processing.image_processing_bv_naflex import BvNaFlexImageProcessor
    from .processing.processing_bv_cappa import BvCapPaProcessor
    from .processing.processing_bv_clippo import BvClippoProcessor
    from .processing.tokenization_bv_bert import BvBertTokenizer
    from .processing.tokenization_bv_text import BvTextTokenizer

    classify = AutoModelForImageClassification
    zero_shot = AutoModelForZeroShotImageClassification
    # config: ({Auto class: model class}, image processor, tokenizer, processor)
    return {
        BvViTConfig: ({AutoModel: vit.BvViTModel, classify: vit.BvViTForImageClassification},
                      BvImageProcessor, None, None),
        BvFlexiViTConfig: ({AutoModel: flexi.BvFlexiViTModel, classify: flexi.BvFlexiViTForImageClassification},
                           BvImageProcessor, None, None),
        BvMixerConfig: ({AutoModel: mixer.BvMixerModel, classify: mixer.BvMixerForImageClassification},
                        BvImageProcessor, None, None),
        BvBiTConfig: ({AutoModel: bit.BvBiTModel, classify: bit.BvBiTForImageClassification},
                      BvImageProcessor, None, None),
        BvNaFlexViTConfig: ({AutoModel: naflex.BvNaFlexViTModel, classify: naflex.BvNaFlexViTForImageClassification},
                            BvNaFlexImageProcessor, None, None),
        BvTextConfig: ({AutoModel: towers.BvTextTransformer}, None, None, None),
        BvBertTextConfig: ({AutoModel: towers.BvBertTextTransformer}, None, BvBertTokenizer, None),
        BvTwoTowerConfig: ({AutoModel: towers.BvTwoTowerModel, zero_shot: towers.BvTwoTowerModel},
                           BvImageProcessor, BvTextTokenizer, None),
        BvSiglipConfig: ({AutoModel: towers.BvSiglipModel, zero_shot: towers.BvSiglipModel},
                         BvImageProcessor, BvTextTokenizer, None),
        BvClippoConfig: ({AutoModel: clippo.BvClippoModel}, BvImageProcessor, None, BvClippoProcessor),
        BvSegVQVAEConfig: ({AutoModel: vqvae.BvSegVQVAEModel}, None, None, None),
        BvJetConfig: ({AutoModel: jet.BvJetModel}, BvImageProcessor, None, None),
        BvJetFormerConfig: ({AutoModel: jetformer.BvJetFormerModel}, BvImageProcessor, None, None),
        BvUViMVQVAEConfig: ({AutoModel: uvim.BvUViMVQVAEModel}, BvImageProcessor, None, None),
        BvUViMVTTConfig: ({AutoModel: uvim.BvUViMVTTModel,
                           AutoModelForImageTextToText: uvim.BvUViMVTTForConditionalGeneration},
                          BvImageProcessor, None, None),
        BvCapPaConfig: ({AutoModel: cappa.BvCapPaModel,
                         AutoModelForImageTextToText: cappa.BvCapPaForConditionalGeneration},
                        BvImageProcessor, BvTextTokenizer, BvCapPaProcessor),
        BvGivtConfig: ({AutoModel: givt.BvGivtModel}, BvImageProcessor, None, None),
        BvGivtCNNVAEConfig: ({AutoModel: givt_vae.BvGivtCNNVAEModel}, BvImageProcessor, None, None),
        BvGivtViTVAEConfig: ({AutoModel: givt_vae.BvGivtViTVAEModel}, None, None, None),
    }


def exported_classes() -> dict[str, type]:
    """``{name: class}`` of every config, model, image processor, tokenizer and processor of the table (and
    PaliGemma's processor and tokenizer): what ``big_vision_hf`` exports."""
    from .processing.processing_paligemma import BvPaliGemmaProcessor
    from .processing.tokenization_fast import FAST_TWINS
    from .processing.tokenization_paligemma import BvPaliGemmaTokenizer

    classes = [BvPaliGemmaProcessor, BvPaliGemmaTokenizer, *FAST_TWINS.values()]
    for config_cls, (models, image_processor, tokenizer, processor) in _table().items():
        classes += [config_cls, *models.values(), image_processor, tokenizer, processor]
    return {cls.__name__: cls for cls in classes if cls is not None}


def register_auto_classes() -> None:
    for config_cls, (models, image_processor, tokenizer, processor) in _table().items():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto_cls, model_cls in models.items():
            auto_cls.register(config_cls, model_cls, exist_ok=True)
        if image_processor is not None:
            AutoImageProcessor.register(config_cls, image_processor_classes={"pil": image_processor}, exist_ok=True)
        if tokenizer is not None:
            _register_tokenizer(config_cls, tokenizer)
        if processor is not None:
            AutoProcessor.register(config_cls, processor, exist_ok=True)
    _register_paligemma_processor()


def _register_tokenizer(config_cls, tokenizer) -> None:
    """``AutoTokenizer`` gives the fast twin of our SentencePiece tokenizers (`tokenization_fast`, the same ids), and
    a folder naming the slow class resolves to it by name (no remote-code prompt while the package is imported)."""
    from .processing.tokenization_fast import FAST_TWINS

    fast = FAST_TWINS.get(tokenizer)
    if fast is None:
        AutoTokenizer.register(config_cls, tokenizer_class=tokenizer, exist_ok=True)
    else:
        AutoTokenizer.register(config_cls, slow_tokenizer_class=tokenizer, fast_tokenizer_class=fast, exist_ok=True)


def _register_paligemma_processor() -> None:
    """``AutoProcessor`` for our PaliGemma folders (transformers' own ``PaliGemmaConfig``).

    Their ``processor_config.json`` names ``BvPaliGemmaProcessor``, which ``AutoProcessor`` resolves by name among
    the registered processors, so it has to be registered under some config. Under ``PaliGemmaConfig`` it only
    changes the fallback for folders that name no processor class: folders naming transformers'
    ``PaliGemmaProcessor`` (every Hub PaliGemma) still get that one.
    """
    from transformers import PaliGemmaConfig

    from .processing.processing_paligemma import BvPaliGemmaProcessor
    from .processing.tokenization_paligemma import BvPaliGemmaTokenizer

    AutoProcessor.register(PaliGemmaConfig, BvPaliGemmaProcessor, exist_ok=True)
    _register_tokenizer(PaliGemmaConfig, BvPaliGemmaTokenizer)  # the same fallback rule for AutoTokenizer
