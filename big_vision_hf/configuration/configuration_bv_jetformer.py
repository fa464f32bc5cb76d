"""Configuration of big_vision's JetFormer (``big_vision/models/proj/jetformer/``, arXiv:2411.19722).

JetFormer is a decoder-only Gemma-style transformer over text tokens and soft image tokens, trained end to end with a
normalizing flow: images are cut into patches (``patch_pca.py``, usually without PCA), mapped by a Jet flow (the
"adaptor", `BvJetConfig`), the last ``latent_noise_dim`` channels of each token are factored out (modelled as
standard normal noise) and the rest is modelled autoregressively by a Gaussian mixture head. One config holds what
big_vision spreads over ``config.model`` (the transformer), ``config.patch_pca.model``, ``config.adaptor.model`` and
a few trainer fields (``latent_noise_dim``, the noise curriculum, the loss weights, the sampling defaults of
``config.sample_images``), see ``configs/proj/jetformer/jetformer_{imagenet2012,image_text}.py``.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_bv_jet import BvJetConfig
from .configuration_bv_vit import BV_SIZE_KWARGS, pair, same_names, translate_bv_kwargs

HEAD_DTYPES = ("float32", "bfloat16")


@strict
class BvJetFormerConfig(PreTrainedConfig):
    r"""Configuration of a big_vision JetFormer (``big_vision.models.proj.jetformer.jetformer.Model`` with its
    ``patch_pca.Model`` and Jet adaptor).

    Transformer (big_vision ``config.model``; Gemma v1 blocks: RMSNorm, RoPE, multi-query/grouped attention, GeGLU):

    Args:
        hidden_size: ``width``.
        num_hidden_layers: ``depth``.
        intermediate_size: ``mlp_dim``.
        num_attention_heads: ``num_heads``.
        num_key_value_heads: ``num_kv_heads`` (1 in the released configs: multi-query attention).
        head_dim: ``head_dim``.
        vocab_size: ``vocab_size``: text vocabulary including the special ids below (ImageNet: 1000 labels + 3).
        bos_token_id: ``bos_id``, the token that starts the text part.
        boi_token_id: ``boi_id``, the token that starts the image part; ``None``: no such token (the image follows
            the text directly).
        nolabel_token_id: ``nolabel_id``, what replaces a dropped prefix (classifier-free guidance).
        num_vocab_repeats: ``num_vocab_repeats``: the text is embedded this many times with shifted vocabularies
            and concatenated (class-conditional configs: 16, a 16-token label prefix).
        causal_mask_on_prefix: ``causal_mask_on_prefix``; ``False``: the prefix (text or image) is attended
            bidirectionally.
        untie_output_vocab: ``untie_output_vocab``: a separate ``LogitsText`` Dense instead of the embedding.
        per_modality_final_norm: ``per_modality_final_norm``: separate RMSNorms before the text and image heads
            (the final norm is then not applied to the logits).
        num_mixtures: ``num_mixtures`` of the Gaussian-mixture image head.
        multivariate: ``multivariate``: one full-covariance Gaussian (``MultivariateNormalTri``) instead.
        out_dim: ``out_dim``: channels of an image token as the transformer sees it.
        scale_tol: ``scale_tol``: lower bound of the mixture scales.
        head_dtype: ``head_dtype``: ``"bfloat16"`` runs the image head (``LogitsImage``) in bfloat16 as big_vision does
            (the released configs); ``"float32"``.
        dropout: ``dropout`` on the attention and MLP outputs of every block (training only).
        drop_labels_probability: ``drop_labels_probability``: during training, the text prefix of a text-first
            example is replaced by ``nolabel`` with this probability (classifier-free guidance).
        rms_norm_eps: big_vision ``RMSNorm`` hard-codes 1e-6 (``norm_eps`` is unused there).
        hidden_act: ``"gelu_pytorch_tanh"`` (flax ``nn.gelu``'s tanh approximation, in the gated MLP).
        rope_parameters: RoPE with ``max_wavelength`` 10000, half-split layout (``gemma._apply_rope``).
        max_position_embeddings: only sizes transformers' RoPE cache; positions are not limited.

    Patches (big_vision ``config.patch_pca.model``, ``patch_pca.Model``):

    Args:
        image_size: ``input_size`` ``[H, W]``.
        patch_size: ``patch_size`` ``[p, q]``: each token is a ``p x q x 3`` patch (``"b (h p) (w q) c -> b (h w)
            (p q c)"``).
        skip_pca: ``skip_pca``: tokens are the raw patches (the released configs); else a PCA (``pca_components``
            rows, loaded as buffers from the checkpoint's ``pca_init_file``).
        pca_components: number of PCA components (rows of ``components_``) when ``skip_pca`` is off.
        whiten: ``whiten``: divide the PCA features by ``sqrt(explained_variance_)``.
        depth_to_seq: ``depth_to_seq``: each PCA token is split into this many tokens (``"b s (f d) -> b (f s) d"``).
        noise_std: ``noise_std``: std of the Gaussian noise added to PCA tokens (``reparametrize``).
        add_dequant_noise: ``add_dequant_noise``: ``U[0, 1/127.5)`` dequantisation noise on the pixels.

    Flow and trainer (big_vision ``config.adaptor.model`` and ``train.py`` fields):

    Args:
        jet_config: the Jet adaptor (`BvJetConfig`, big_vision ``config.adaptor.model``); ``None``: no adaptor
            (``use_adaptor=False``). It sees the patch tokens as a ``sqrt(L) x sqrt(L)`` image with one channel per
            token dimension.
        latent_noise_dim: ``latent_noise_dim``: trailing channels of each flow token modelled as ``N(0, 1)`` noise
            instead of by the transformer (``token dim = out_dim + latent_noise_dim``).
        input_noise_std: ``input_noise_std``: during training, Gaussian noise of a std drawn from
            ``U[0, input_noise_std]`` per example is added to the image tokens of text-first examples.
        noise_scale: ``noise_scale``: start of the RGB noise curriculum (std in pixel levels, cosine-decayed to
            ``noise_min`` over training; `noise_scale_at`). 0: off.
        noise_min: ``noise_min``: end of the RGB noise curriculum.
        rgb_noise_on_image_prefix: ``rgb_noise_on_image_prefix``: also add the RGB noise to image-first examples.
        text_prefix_prob: ``text_prefix_prob``: probability that a training example is text-first (text -> image).
        loss_on_prefix: ``loss_on_prefix``: the loss also counts the prefix modality (not dropped).
        text_loss_weight: ``text_loss_weight``.
        stop_grad_nvp_prefix: ``stop_grad_nvp_prefix``: no gradient to the flow through image prefixes.
        cfg_inference_weight: ``config.sample_images.cfg_inference_weight``: default CFG weight for sampling.
        temperature: ``config.sample_images.temperature``: default scale temperature for sampling.
        temperature_probs: ``config.sample_images.temperature_probs``: default multiplier of the mixture logits.

    Example:
        >>> from big_vision_hf import BvJetConfig, BvJetFormerConfig
        >>> jet = BvJetConfig(num_couplings=2, patch_size=1, image_size=4, num_channels=48, hidden_size=32,
        ...                   num_attention_heads=2, kinds=["channels"])
        >>> config = BvJetFormerConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        ...     num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=13, bos_token_id=10,
        ...     boi_token_id=11, nolabel_token_id=12, out_dim=12, num_mixtures=3, image_size=16, patch_size=4,
        ...     jet_config=jet, latent_noise_dim=36)
        >>> config.num_image_tokens, config.token_dim, config.num_logits
        (16, 48, 75)
    """

    model_type = "bv_jetformer"
    sub_configs_defaults = {"jet_config": SubConfigSpec(BvJetConfig, optional=True)}

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_key_value_heads: int = 1
    head_dim: int = 64
    vocab_size: int = 1003
    bos_token_id: int | None = 1000
    boi_token_id: int | None = 1001
    nolabel_token_id: int | None = 1002
    num_vocab_repeats: int = 1
    causal_mask_on_prefix: bool = True
    untie_output_vocab: bool = False
    per_modality_final_norm: bool = False
    num_mixtures: int = 4
    multivariate: bool = False
    out_dim: int = 32
    scale_tol: float = 1e-6
    head_dtype: str = "float32"
    dropout: float = 0.0
    drop_labels_probability: float = 0.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    rope_parameters: dict | None = None
    max_position_embeddings: int = 8192
    attention_bias: bool = False
    attention_dropout: float = 0.0
    # patch_pca.Model
    image_size: list[int] | tuple[int, ...] | int = (256, 256)
    patch_size: list[int] | tuple[int, ...] | int = (16, 16)
    skip_pca: bool = True
    pca_components: int | None = None
    whiten: bool = True
    depth_to_seq: int = 1
    noise_std: float = 0.0
    add_dequant_noise: bool = True
    # adaptor and trainer
    jet_config: dict | PreTrainedConfig | None = None
    latent_noise_dim: int = 0
    input_noise_std: float = 0.0
    noise_scale: float = 0.0
    noise_min: float = 0.0
    rgb_noise_on_image_prefix: bool = True
    text_prefix_prob: float = 0.5
    loss_on_prefix: bool = True
    text_loss_weight: float = 1.0
    stop_grad_nvp_prefix: bool = False
    cfg_inference_weight: float = 0.0
    temperature: float = 1.0
    temperature_probs: float = 1.0

    def __post_init__(self, **kwargs):
        self.image_size = pair(self.image_size)
        self.patch_size = pair(self.patch_size)
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10_000.0}  # gemma._apply_rope
        if self.head_dtype not in HEAD_DTYPES:
            raise ValueError(f"Unknown head_dtype {self.head_dtype!r}; expected one of {HEAD_DTYPES}")
        if self.multivariate and self.num_mixtures != 1:
            raise ValueError("Cannot do multivariate GMM! (multivariate needs num_mixtures=1, as big_vision)")
        if self.num_mixtures < 1:
            raise ValueError(f"num_mixtures must be positive, got {self.num_mixtures}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        for name in ("bos_token_id", "nolabel_token_id"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} is required (big_vision looks it up in every forward pass)")
        (h, w), (p, q) = self.image_size, self.patch_size
        if h % p or w % q:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not self.skip_pca and not self.pca_components:
            raise ValueError("a PCA patch embedding (skip_pca=False) needs pca_components (rows of components_)")
        if self.skip_pca and self.depth_to_seq != 1:
            raise ValueError("depth_to_seq needs the PCA (patch_pca: `assert not skip_pca or depth_to_seq == 1`)")
        if self.patch_features % self.depth_to_seq:
            raise ValueError(f"{self.patch_features} patch features do not split into depth_to_seq={self.depth_to_seq}")
        if self.out_dim + self.latent_noise_dim != self.token_dim:
            raise ValueError(f"out_dim ({self.out_dim}) + latent_noise_dim ({self.latent_noise_dim}) must equal the "
                             f"image token size ({self.token_dim})")
        super().__post_init__(**kwargs)
        if self.jet_config is not None:
            side = math.isqrt(self.num_image_tokens)
            jet = self.jet_config
            if side * side != self.num_image_tokens or (jet.image_size, jet.num_channels) != (side, self.token_dim):
                raise ValueError(f"the Jet adaptor sees the {self.num_image_tokens} tokens of {self.token_dim} "
                                 f"channels as a {side}x{side}x{self.token_dim} image: jet_config needs "
                                 f"image_size={side} and num_channels={self.token_dim}, got {jet.image_size} and "
                                 f"{jet.num_channels}")

    @property
    def patch_features(self) -> int:
        """Features of one patch after ``patch_pca.encode`` before ``depth_to_seq``: ``p*q*3`` or the PCA's."""
        return self.patch_size[0] * self.patch_size[1] * 3 if self.skip_pca else self.pca_components

    @property
    def token_dim(self) -> int:
        """Channels of an image token out of the patch stage and the flow (``out_dim + latent_noise_dim``)."""
        return self.patch_features // self.depth_to_seq

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image: ``(H/p) * (W/q) * depth_to_seq``."""
        (h, w), (p, q) = self.image_size, self.patch_size
        return (h // p) * (w // q) * self.depth_to_seq

    @property
    def num_logits(self) -> int:
        """Image head outputs (big_vision ``Model.num_logits``): ``d^2 + d`` (multivariate), else
        ``M + 2 M d``."""
        if self.multivariate:
            return self.out_dim**2 + self.out_dim
        return self.num_mixtures + 2 * self.num_mixtures * self.out_dim

    def noise_scale_at(self, progress: float) -> float:
        """The RGB noise std (pixel levels) at training ``progress`` in ``[0, 1]`` (big_vision ``update_fn``):
        ``(noise_scale - noise_min) * (1 + cos(pi * progress)) / 2 + noise_min``; 0 when the curriculum is off."""
        if self.noise_scale <= 0:
            return 0.0
        return (self.noise_scale - self.noise_min) * (1 + math.cos(math.pi * progress)) * 0.5 + self.noise_min


# big_vision `jetformer.Model` kwargs (config.model) -> BvJetFormerConfig fields.
BV_JETFORMER_KWARGS = {
    **BV_SIZE_KWARGS,
    "num_kv_heads": "num_key_value_heads",
    "bos_id": "bos_token_id",
    "boi_id": "boi_token_id",
    "nolabel_id": "nolabel_token_id",
    **same_names("head_dim", "vocab_size", "num_vocab_repeats", "causal_mask_on_prefix", "untie_output_vocab",
                 "per_modality_final_norm", "num_mixtures", "multivariate", "out_dim", "scale_tol", "head_dtype",
                 "dropout", "drop_labels_probability"),
}
# Fields with no effect on a PyTorch model (layout, remat, dtypes of activations and cache, unused norm_eps).
BV_JETFORMER_NO_EFFECT = ("scan", "remat_policy", "cache_dtype", "embed_dtype", "norm_eps", "dropout_bdims")
# big_vision `patch_pca.Model` kwargs (config.patch_pca.model) -> fields; `pca_init_file` is read by the converter.
BV_PATCH_PCA_KWARGS = {
    "input_size": "image_size",
    **same_names("patch_size", "skip_pca", "whiten", "depth_to_seq", "noise_std", "add_dequant_noise"),
}
BV_PATCH_PCA_NO_EFFECT = ("pca_init_file", "code_len", "codeword_dim", "code_dropout")
# big_vision trainer config fields the model reads.
BV_JETFORMER_TRAINER_KWARGS = same_names(
    "latent_noise_dim", "input_noise_std", "noise_scale", "noise_min", "rgb_noise_on_image_prefix", "text_prefix_prob",
    "loss_on_prefix", "text_loss_weight", "stop_grad_nvp_prefix",
)
BV_SAMPLE_IMAGES_KWARGS = same_names("cfg_inference_weight", "temperature", "temperature_probs")


def bv_jetformer_kwargs_to_config(kwargs: dict) -> dict:
    """big_vision JetFormer kwargs -> `BvJetFormerConfig` fields (the adaptor excepted).

    ``kwargs`` is ``config.model`` with, as extra keys, ``patch_pca`` (``config.patch_pca.model``), ``sample_images``
    (``config.sample_images``) and the trainer fields of `BV_JETFORMER_TRAINER_KWARGS`; ``adaptor`` and
    ``use_adaptor`` are the caller's (the converter builds the `BvJetConfig`).
    """
    kwargs = dict(kwargs)
    patch = translate_bv_kwargs(kwargs.pop("patch_pca", None) or {}, BV_PATCH_PCA_KWARGS, "proj.jetformer.patch_pca",
                                BV_PATCH_PCA_NO_EFFECT, variant=None)
    sample = translate_bv_kwargs(kwargs.pop("sample_images", None) or {}, BV_SAMPLE_IMAGES_KWARGS,
                                 "config.sample_images", variant=None)
    trainer = {BV_JETFORMER_TRAINER_KWARGS[k]: kwargs.pop(k) for k in list(kwargs) if k in BV_JETFORMER_TRAINER_KWARGS}
    model = translate_bv_kwargs(kwargs, BV_JETFORMER_KWARGS, "proj.jetformer.jetformer", BV_JETFORMER_NO_EFFECT,
                                variant=None)
    return {**model, **patch, **trainer, **sample}
