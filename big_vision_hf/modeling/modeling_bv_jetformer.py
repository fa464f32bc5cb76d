"""PyTorch port of big_vision's JetFormer (``big_vision/models/proj/jetformer/{jetformer,patch_pca}.py``, the Jet
adaptor ``models/proj/jet/jet.py``, and the loss and samplers of ``trainers/proj/jetformer/{train,predict_fns}.py``;
arXiv:2411.19722).

Why our own ``PreTrainedModel``: no transformers class models soft image tokens with a Gaussian mixture next to text
tokens. The blocks are transformers' own Gemma layers (``GemmaDecoderLayer``, ``GemmaRMSNorm``,
``GemmaRotaryEmbedding``), which compute exactly big_vision's Gemma v1 block as JetFormer configures it
(``query_pre_attn_norm="rsqrt_head_dim"``, no soft-caps, no post-norms; RMSNorm ``x * rsqrt(mean(x^2) + 1e-6) * (1 +
scale)``; half-split RoPE with wavelength 10000; query head ``n`` reads kv head ``n // G``; gated GELU-tanh MLP), with
big_vision's dropout on the two residual branches added (`BvJetFormerDecoderLayer`).

The pipeline (each step checked against fixtures made by big_vision's own code, ``tests/fixtures/jetformer/``):

- **Patches** (`BvPatchPCA`, ``patch_pca.Model``): ``"b (h p) (w q) c -> b (h w) (p q c)"``; with ``skip_pca`` (the
  released configs) that is the token; else sklearn's PCA transform (``x @ C.T - mean @ C.T``, divided by
  ``sqrt(explained_variance_)`` floored at float32 eps when whitening) and ``"b s (f d) -> b (f s) d"`` for
  ``depth_to_seq``. ``decode`` inverts it and clips to ``[-1, 1]``.
- **Flow** (``train.py adaptor_apply``): the ``L`` tokens are a ``sqrt(L) x sqrt(L)`` image with one channel per token
  dimension through the Jet (`BvJetModel.transform`); its log-determinant enters the image loss. The last
  ``latent_noise_dim`` channels are factored out and scored as ``N(0, 1)``; the first ``out_dim`` are the
  transformer's image tokens.
- **Sequence** (``Model.embed_image_and_text``): text-first ``[bos, text x num_vocab_repeats, (boi), image]`` or
  image-first ``[(boi | bos), image, bos, text]`` (with ``boi``: ``[boi, image, bos, text]``), shifted right by one;
  the text is embedded once per vocabulary repeat with ids offset by ``k * vocab_size``. A dropped prefix (CFG) is
  replaced by ``nolabel`` embeddings with a full mask. The mask is causal (the prefix bidirectional with
  ``causal_mask_on_prefix=False``) and never attends to masked text; positions are ``cumsum(input_mask) - 1``.
- **Heads** (``split_image_and_text_prelogits``, ``text_logits``, ``img_logits``, ``get_pdf``): text logits are
  ``x @ EmbedText.T`` over the whole repeated vocabulary (or ``LogitsText``); image logits ``[M | (M, 2, d)]`` give a
  mixture of diagonal Gaussians with ``scale = max((x + sqrt(x^2 + 4)) / 2, scale_tol)`` (or, ``multivariate``, one
  Gaussian with lower-triangular scale ``max(square_plus(S), eye * scale_tol)``); sampling temperatures multiply the
  mixture logits (``temperature_probs``) and the scales (``temperature``). This is GIVT's head with
  ``per_channel_mixtures=False, fix_square_plus=True``: the distribution and CFG classes are GIVT's
  (``modeling_bv_givt.BvGaussianMixture``, ``BvCFGDensity``).
- **Loss** (``train.py loss_fn``): image bits per sub-pixel ``(sum(nll_tokens) + nll_noise) / (D ln 2) - (logdet / D -
  ln 127.5) / ln 2`` with ``D = H W 3``, text nats per token (mean over ``text_loss``), combined as the trainer does
  (``loss_on_prefix``, ``text_loss_weight``). In training mode the trainer's randomness is applied: the text-first
  order (``text_prefix_prob``), the RGB noise curriculum (``noise_scale`` argument, see
  `BvJetFormerConfig.noise_scale_at`), dequantisation noise, Gaussian input noise on the image tokens, label drop
  for CFG, and the stop-gradient to the flow through image prefixes.
- **Sampling** (``predict_fns.sample_image_latents`` / ``sample_text``): prefill with the prompt, then one token at a
  time through a KV cache (transformers' ``DynamicCache``). big_vision right-aligns variable-length prompts
  (``right_align``); here masked prompt positions stay in the cache and are never attended, the positions are the
  same and the last *valid* position gives the first prediction, which is equal. CFG (``parallel_decode.CFGDensity``,
  GIVT's `BvCFGDensity`): one mixture component drawn from the conditional mixture for both densities, then rejection
  sampling of ``p_c^(1+w) / p_u^w`` per channel against ``N(loc_c, 2 max(scale_c, scale_u))`` (1000 proposals,
  falling back to the conditional Gaussian); conditional and unconditional rows alternate and both get the sample.

Deviations: with ``head_dtype="bfloat16"`` the image head's matmul runs in bfloat16 like big_vision's, but its logits
are turned back to float32 before the mixture (big_vision keeps them bfloat16 through ``get_pdf``); sampling draws
from torch's RNG (the same distributions, not jax's numbers).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, PreTrainedModel, initialization as init
from transformers.models.gemma.modeling_gemma import (
    GemmaAttention,
    GemmaDecoderLayer,
    GemmaRMSNorm,
    GemmaRotaryEmbedding,
)
from transformers.utils import ModelOutput
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_jetformer import BvJetFormerConfig
from .loading import BvStrictLoadingMixin
from .modeling_bv_givt import LOG_2PI, BvCFGDensity, BvGaussianMixture
from .modeling_bv_jet import DEQUANTIZATION_SCALE, BvJetModel, dequantize_pixels, init_flax_dense_

# transformers renamed the attention's cache argument (past_key_values -> cache) during v5.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(GemmaAttention.forward).parameters else "past_key_values"

# ---------------------------------------------------------------------------------------------------------
# Patches (big_vision patch_pca.Model)
# ---------------------------------------------------------------------------------------------------------


class BvPatchPCA(nn.Module):
    """big_vision ``patch_pca.Model``: images <-> patch tokens, optionally through a (whitened) PCA.

    The PCA (sklearn's ``components_``, ``explained_variance_``, ``mean_``, read by big_vision from
    ``pca_init_file``) is held in buffers when ``skip_pca`` is off.
    """

    def __init__(self, config: BvJetFormerConfig):
        super().__init__()
        self.image_size, self.patch_size = tuple(config.image_size), tuple(config.patch_size)
        self.skip_pca, self.whiten = config.skip_pca, config.whiten
        self.depth_to_seq, self.noise_std = config.depth_to_seq, config.noise_std
        if not self.skip_pca:
            features = self.patch_size[0] * self.patch_size[1] * 3
            self.register_buffer("components", torch.zeros(config.pca_components, features))
            self.register_buffer("explained_variance", torch.ones(config.pca_components))
            self.register_buffer("mean", torch.zeros(features))

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, (H/p)(W/q), p*q*C]`` (``"b (h p) (w q) c -> b (h w) (p q c)"``)."""
        b, h, w, c = images.shape
        p, q = self.patch_size
        x = images.reshape(b, h // p, p, w // q, q, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // q), p * q * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify` at ``image_size``, returned channels first ``[B, 3, H, W]``."""
        (h, w), (p, q) = self.image_size, self.patch_size
        x = tokens.reshape(tokens.shape[0], h // p, w // q, p, q, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(tokens.shape[0], h, w, 3).permute(0, 3, 1, 2)

    def encode(
        self, pixel_values: torch.Tensor, dequantize: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> ``(mu, logvar)`` tokens ``[B, L, d]`` (``patch_pca.Model.encode``);
        ``dequantize`` adds ``U[0, 1/127.5)`` to the pixels first (``add_dequant_noise``)."""
        if dequantize:
            pixel_values = dequantize_pixels(pixel_values, generator)
        x = self.patchify(pixel_values.permute(0, 2, 3, 1))
        if self.skip_pca:
            return x, torch.zeros_like(x)
        # sklearn PCA.transform, as patch_pca mimics it.
        emb = x @ self.components.T - self.mean[None] @ self.components.T
        if self.whiten:
            scale = self.explained_variance.sqrt()
            eps = torch.finfo(scale.dtype).eps
            emb = emb / torch.where(scale < eps, eps, scale)
        if self.depth_to_seq > 1:  # "b s (f d) -> b (f s) d"
            b, s, fd = emb.shape
            f = self.depth_to_seq
            emb = emb.reshape(b, s, f, fd // f).transpose(1, 2).reshape(b, f * s, fd // f)
        logvar = torch.zeros_like(emb) if self.noise_std <= 0 else torch.full_like(emb, 2 * math.log(self.noise_std))
        return emb, logvar

    def reparametrize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``mu + exp(logvar / 2) * N(0, 1)``; ``mu`` when ``noise_std <= 0`` (``patch_pca.Model.reparametrize``)."""
        if self.noise_std <= 0:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, L, d]`` -> images ``[B, 3, H, W]`` clipped to ``[-1, 1]`` (``patch_pca.Model.decode``)."""
        x = tokens
        if not self.skip_pca:
            if self.depth_to_seq > 1:  # "b (f s) d -> b s (f d)"
                b, fs, d = x.shape
                f = self.depth_to_seq
                x = x.reshape(b, f, fs // f, d).transpose(1, 2).reshape(b, fs // f, f * d)
            components = self.components
            if self.whiten:
                components = self.explained_variance.sqrt()[:, None] * components
            x = x @ components + self.mean
        return self.unpatchify(x).clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------------------


class BvJetFormerDecoderLayer(GemmaDecoderLayer):
    """transformers' Gemma block plus big_vision ``gemma.Block``'s dropout on the attention and MLP outputs."""

    def __init__(self, config: BvJetFormerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        residual = hidden_states
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                 position_embeddings=position_embeddings, is_causal=False, **{_CACHE_KWARG: cache},
                                 **kwargs)
        hidden_states = residual + self.dropout(attn)
        residual = hidden_states
        return residual + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


@dataclass
class BvJetFormerOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, with `pixel_values`): big_vision's training loss (``train.py loss_fn``).
    text_logits (`torch.FloatTensor` of shape `(batch_size, text_len, vocab_size * num_vocab_repeats)`):
        big_vision ``text_logits`` (position ``t`` predicts text token ``t``).
    image_logits (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, num_logits)`):
        big_vision ``image_logits``, the raw mixture head output (see `image_distribution`).
    image_nll (`torch.FloatTensor` of shape `(batch_size, num_image_tokens)`): ``-pdf.log_prob(image_latents)`` (nats).
    text_nll (`torch.FloatTensor` of shape `(batch_size, text_len)`): ``-log softmax(text_logits)[text]`` (nats).
    nll_text (`torch.FloatTensor` of shape `(batch_size,)`): the trainer's ``nll_txt``: ``text_nll`` averaged over
        ``text_loss_mask``.
    nll_image (`torch.FloatTensor` of shape `(batch_size,)`, with `pixel_values`): the trainer's ``nll_image``: bits
        per sub-pixel of the image (transformer, factored-out noise and flow log-determinant).
    logdet (`torch.FloatTensor` of shape `(batch_size,)`, with `pixel_values`): the trainer's ``logdet``: the flow's
        log-determinant in bits per sub-pixel, with the ``[-1, 1] -> [0, 255]`` change of scale.
    image_latents (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, out_dim)`): the image tokens the
        transformer modelled.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, seq_len, hidden_size)`): big_vision decoder
        ``out["pre_logits"]`` (after the final RMSNorm).
    hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`): the input of every block and the
        output of the last (big_vision ``out["blockNN_rep"]`` = ``hidden_states[NN + 1]``).
    """

    loss: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    image_logits: torch.FloatTensor | None = None
    image_nll: torch.FloatTensor | None = None
    text_nll: torch.FloatTensor | None = None
    nll_text: torch.FloatTensor | None = None
    nll_image: torch.FloatTensor | None = None
    logdet: torch.FloatTensor | None = None
    image_latents: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BvJetFormerSampleOutput(ModelOutput):
    r"""
    sequences (`torch.Tensor`): sampled image latents ``[B, L, out_dim]`` (big_vision ``out_tokens``) or text ids
        ``[B, T]``.
    log_probs (`torch.FloatTensor` of shape `(batch_size, length)`): log-probability of each sample under the
        (tempered, guided) distribution it was drawn from (big_vision ``out_logp``).
    prelogits (`torch.FloatTensor` of shape `(batch_size, length, hidden_size)`): the heads' input at each step
        (big_vision ``out_prelogits``).
    """

    sequences: torch.Tensor | None = None
    log_probs: torch.FloatTensor | None = None
    prelogits: torch.FloatTensor | None = None


@dataclass
class BvJetFormerCache:
    """The KV cache of one decoding run: transformers' ``DynamicCache``, which cache positions are attended (the valid
    prompt tokens and every generated token) and each example's next RoPE position."""

    cache: DynamicCache
    key_mask: torch.Tensor
    positions: torch.Tensor


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool ``[B, Q, K]`` -> additive ``[B, 1, Q, K]``: 0 or ``finfo.min`` (big_vision masks with -2.38e38)."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


class BvJetFormerPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    config: BvJetFormerConfig
    config_class = BvJetFormerConfig
    base_model_prefix = "jetformer"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # the loss is the trainer's per-example mean, not a sum over `num_items_in_batch`
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BvJetFormerDecoderLayer", "BvJetCoupling"]
    _supports_sdpa = True
    _supports_flash_attn = False  # arbitrary (prefix / padding) masks
    _supports_flex_attn = False
    _can_record_outputs = {"hidden_states": BvJetFormerDecoderLayer}

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # Run `_init_weights` on every module (transformers skips parameter-less ones for custom code); it only uses
        # the guarded `transformers.initialization` functions, which leave loaded tensors alone.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's initialisers (``jetformer.py``, ``gemma.py``); loaded tensors are left alone."""
        super()._init_weights(module)
        if isinstance(module, BvJetFormerModel):
            init.normal_(module.embed_tokens.weight, std=1.0)  # EmbedText: normal(stddev=1)
            init_flax_dense_(module.embed_image)  # EmbedImage: nn.Dense default
            init_flax_dense_(module.image_head, zero_kernel=True)  # LogitsImage: kernel_init=zeros
            if module.lm_head is not None:  # LogitsText: normal(stddev=1) kernel
                init.normal_(module.lm_head.weight, std=1.0)
                init.zeros_(module.lm_head.bias)
        elif isinstance(module, BvJetFormerDecoderLayer):  # gemma.py trunc_norm_init: fan-in truncated normal
            for proj in (*[getattr(module.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
                         module.mlp.gate_proj, module.mlp.up_proj, module.mlp.down_proj):
                init.lecun_normal_(proj.weight)
        elif isinstance(module, GemmaRMSNorm):  # (1 + scale), scale zero-initialised
            init.zeros_(module.weight)
        elif isinstance(module, GemmaRotaryEmbedding):
            inv_freq, _ = module.compute_default_rope_parameters(module.config)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)


class BvJetFormerModel(BvJetFormerPreTrainedModel):
    r"""big_vision's JetFormer: text and images in one autoregressive transformer, images through a Jet flow.

    ``model(input_ids, pixel_values=...)`` runs big_vision's training forward (patches, flow, transformer, mixture
    head) and returns the logits, per-token negative log-likelihoods and the trainer's loss (in training mode with
    its noise, label drop and ordering randomness); ``image_latents=`` skips the patch and flow stages.
    :meth:`generate_images` samples images for class labels or captions (CFG, temperatures, a seed);
    :meth:`generate_text` continues text after an image; both are built on :meth:`prefill` and :meth:`extend`.

    Parity: big_vision ``proj.jetformer.jetformer.Model`` with ``patch_pca.Model`` and ``proj.jet.jet.Model``, on the
    fixtures ``tests/fixtures/jetformer/{imagenet,image_text,pca_multivariate}`` (random parameters; class-
    conditional with BOI and vocabulary repeats; image-text with padding, both orders, bidirectional prefix,
    per-modality norms and untied text head; PCA with depth_to_seq and the multivariate head), float32: logits,
    negative log-likelihoods, losses, decoded images and the KV-cached sampling prelogits within 1e-4 (see
    ``tests/test_bv_jetformer.py``).

    Example:
        >>> import torch
        >>> from big_vision_hf import BvJetConfig, BvJetFormerConfig, BvJetFormerModel
        >>> jet = BvJetConfig(num_couplings=2, patch_size=1, image_size=4, num_channels=48, hidden_size=32,
        ...                   num_attention_heads=2, kinds=["channels"])
        >>> config = BvJetFormerConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        ...     num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=13, bos_token_id=10,
        ...     boi_token_id=11, nolabel_token_id=12, out_dim=12, num_mixtures=3, image_size=16, patch_size=4,
        ...     jet_config=jet, latent_noise_dim=36, num_vocab_repeats=2)
        >>> model = BvJetFormerModel(config).eval()
        >>> labels = torch.tensor([[3], [7]])
        >>> out = model(labels, pixel_values=torch.rand(2, 3, 16, 16) * 2 - 1)
        >>> out.image_logits.shape, out.nll_image.shape, out.loss.shape
        (torch.Size([2, 16, 75]), torch.Size([2]), torch.Size([]))
        >>> images = model.generate_images(labels, cfg_weight=2.0, generator=torch.Generator().manual_seed(0))
        >>> images.shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, config: BvJetFormerConfig):
        super().__init__(config)
        width = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size * config.num_vocab_repeats, width)
        self.embed_image = nn.Linear(config.out_dim, width)
        self.layers = nn.ModuleList(BvJetFormerDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(width, eps=config.rms_norm_eps)
        self.rotary_emb = GemmaRotaryEmbedding(config)
        self.lm_head = nn.Linear(width, config.vocab_size) if config.untie_output_vocab else None
        self.text_norm = GemmaRMSNorm(width, eps=config.rms_norm_eps) if config.per_modality_final_norm else None
        self.image_norm = GemmaRMSNorm(width, eps=config.rms_norm_eps) if config.per_modality_final_norm else None
        self.image_head = nn.Linear(width, config.num_logits)
        self.patch_pca = BvPatchPCA(config)
        self.jet = BvJetModel(config.jet_config) if config.jet_config is not None else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    # ---- images <-> latents ------------------------------------------------------------------------------------

    def encode_images(
        self, pixel_values: torch.Tensor, dequantize: bool = False, reparametrize: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` -> (flow tokens ``[B, L, out_dim + latent_noise_dim]``, flow
        log-determinant ``[B]``) (``train.py``: ``patch_pca_encode`` then ``adaptor_apply``)."""
        h, w = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, h, w):
            raise ValueError(f"pixel_values must be [batch, 3, {h}, {w}], got {list(pixel_values.shape)}")
        mu, logvar = self.patch_pca.encode(pixel_values, dequantize=dequantize, generator=generator)
        tokens = self.patch_pca.reparametrize(mu, logvar, generator) if reparametrize else mu
        if self.jet is None:
            return tokens, torch.zeros(tokens.shape[0], dtype=torch.float32, device=tokens.device)
        side = math.isqrt(tokens.shape[1])
        grid, logdet = self.jet.transform(tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1]))
        return grid.reshape(tokens.shape), logdet

    def decode_latents(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents -> images ``[B, 3, H, W]`` in ``[-1, 1]`` (``predict_fns.decode_images``). ``[B, L, out_dim]``
        latents (what the transformer samples) get ``N(0, 1)`` noise for the ``latent_noise_dim`` factored-out
        channels first, as big_vision's ``sample_images_fn``; full ``[B, L, out_dim + latent_noise_dim]`` latents are
        used as given."""
        noise_dim = self.config.latent_noise_dim
        if noise_dim and latents.shape[-1] == self.config.out_dim:
            noise = torch.randn((*latents.shape[:-1], noise_dim), generator=generator, device=latents.device,
                                dtype=latents.dtype)
            latents = torch.cat([latents, noise], dim=-1)
        if latents.shape[-1] != self.config.token_dim:
            raise ValueError(f"latents must have {self.config.out_dim} or {self.config.token_dim} channels, got "
                             f"{latents.shape[-1]}")
        if self.jet is not None:
            side = math.isqrt(latents.shape[1])
            grid, _ = self.jet.transform(latents.reshape(latents.shape[0], side, side, latents.shape[-1]), inverse=True)
            latents = grid.reshape(latents.shape)
        return self.patch_pca.decode(latents)

    # ---- sequence, transformer, heads --------------------------------------------------------------------------

    def embed_inputs(
        self, input_ids: torch.Tensor, image_latents: torch.Tensor, text_first_mask: torch.Tensor,
        text_attention_mask: torch.Tensor | None = None, drop_prefix: torch.Tensor | None = None, shift: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """big_vision ``Model.embed_image_and_text``: ``(embeddings [B, S, W], attention mask [B, S, S] bool,
        input mask [B, S] bool)``. ``image_latents`` may have zero tokens (a prompt to sample an image after)."""
        cfg = self.config
        batch, text_len = input_ids.shape
        device = input_ids.device
        if text_attention_mask is None:
            text_attention_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=device)
        text_attention_mask = text_attention_mask.bool()
        txt_prefix, img_prefix = text_first_mask, ~text_first_mask
        repeats = cfg.num_vocab_repeats
        if repeats > 1:
            offsets = (torch.arange(repeats, device=device) * cfg.vocab_size).repeat_interleave(text_len)
            nolabel = self.embed_tokens(torch.full_like(input_ids, cfg.nolabel_token_id).repeat(1, repeats) + offsets)
            input_ids = input_ids.repeat(1, repeats) + offsets
            text_attention_mask = text_attention_mask.repeat(1, repeats)
        else:
            nolabel = self.embed_tokens.weight[cfg.nolabel_token_id][None, None]
        x_txt = self.embed_tokens(input_ids)
        x_img = self.embed_image(image_latents.to(self.embed_image.weight.dtype))
        x_txt_m = text_attention_mask
        x_img_m = torch.ones(x_img.shape[:-1], dtype=torch.bool, device=device)
        if drop_prefix is not None:
            drop_txt, drop_img = txt_prefix & drop_prefix, img_prefix & drop_prefix
            x_txt = torch.where(drop_txt[:, None, None], nolabel.to(x_txt.dtype), x_txt)
            x_txt_m = torch.where(drop_txt[:, None], True, x_txt_m)  # always the full prefix when dropping it
            x_img = torch.where(drop_img[:, None, None], nolabel[:, :1].to(x_img.dtype), x_img)

        def special(token_id):
            return self.embed_tokens.weight[token_id].to(x_txt.dtype).expand(batch, 1, -1)

        one = torch.ones(batch, 1, dtype=torch.bool, device=device)
        bos = special(cfg.bos_token_id)
        if cfg.boi_token_id is not None:  # [bos, text, boi, image], [boi, image, bos, text]
            boi = special(cfg.boi_token_id)
            x_txt_img, m_txt_img = torch.cat([bos, x_txt, boi, x_img], 1), torch.cat([one, x_txt_m, one, x_img_m], 1)
            x_img_txt, m_img_txt = torch.cat([boi, x_img, bos, x_txt], 1), torch.cat([one, x_img_m, one, x_txt_m], 1)
        else:  # [bos, text, image], [bos, image, text]
            x_txt_img, m_txt_img = torch.cat([bos, x_txt, x_img], 1), torch.cat([one, x_txt_m, x_img_m], 1)
            x_img_txt, m_img_txt = torch.cat([bos, x_img, x_txt], 1), torch.cat([one, x_img_m, x_txt_m], 1)
        if shift:
            x_txt_img, x_img_txt, m_txt_img, m_img_txt = (a[:, :-1] for a in (x_txt_img, x_img_txt, m_txt_img,
                                                                              m_img_txt))
        x = torch.where(txt_prefix[:, None, None], x_txt_img, x_img_txt)
        input_mask = torch.where(txt_prefix[:, None], m_txt_img, m_img_txt)
        seq = x.shape[1]
        attn = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()[None].expand(batch, -1, -1)
        if not cfg.causal_mask_on_prefix:  # the prefix (and its leading special token) is attended bidirectionally
            prefix_len = torch.where(txt_prefix, x_txt.shape[1] + 1, x_img.shape[1] + 1)
            prefix = torch.arange(seq, device=device)[None] < prefix_len[:, None]
            attn = attn | prefix[:, None, :]
        return x, attn & input_mask[:, None, :], input_mask

    def run_layers(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """The Gemma blocks on ``[B, S, W]`` with a bool mask ``[B, S, K]`` (``K`` = cached + new keys); returns
        big_vision's ``out["encoded"]`` (before the final norm)."""
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids)
        mask = _additive(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, cache=cache)
        return hidden

    def head_input(self, encoded: torch.Tensor) -> torch.Tensor:
        """What the heads read: ``final_norm(encoded)``, or ``encoded`` with ``per_modality_final_norm``."""
        return encoded if self.config.per_modality_final_norm else self.norm(encoded)

    def text_logits(self, prelogits: torch.Tensor) -> torch.Tensor:
        """big_vision ``Model.text_logits``: ``TextNorm``, then ``LogitsText`` or ``x @ EmbedText.T``."""
        if self.text_norm is not None:
            prelogits = self.text_norm(prelogits)
        if self.lm_head is not None:
            return self.lm_head(prelogits)
        return F.linear(prelogits, self.embed_tokens.weight)

    def image_logits(self, prelogits: torch.Tensor) -> torch.Tensor:
        """big_vision ``Model.img_logits``: ``ImageNorm``, then ``LogitsImage`` (in ``head_dtype``), float32 out."""
        if self.image_norm is not None:
            prelogits = self.image_norm(prelogits)
        if self.config.head_dtype == "bfloat16":
            w, b = self.image_head.weight.bfloat16(), self.image_head.bias.bfloat16()
            return F.linear(prelogits.bfloat16(), w, b).float()
        return self.image_head(prelogits).float()

    def image_distribution(
        self, logits: torch.Tensor, temperature: float | None = None, temperature_probs: float | None = None
    ) -> BvGaussianMixture:
        """big_vision ``Model.get_pdf``: the image head's distribution over one token, per position (GIVT's
        `BvGaussianMixture`: the same head as GIVT's ``per_channel_mixtures=False, fix_square_plus=True``, or one
        full-covariance Gaussian with ``multivariate``).

        ``temperature`` multiplies the scales, ``temperature_probs`` the mixture logits (so values above 1 sharpen).
        """
        cfg = self.config
        return BvGaussianMixture.from_logits(
            logits, num_mixtures=cfg.num_mixtures, out_dim=cfg.out_dim, per_channel_mixtures=False,
            multivariate=cfg.multivariate, fix_square_plus=True, scale_tol=cfg.scale_tol,
            temperature_scales=temperature, temperature_probs=temperature_probs)

    def split_prelogits(self, prelogits, text_first_mask, text_len: int, image_len: int):
        """big_vision ``split_image_and_text_prelogits``: ``(text [B, T, W], image [B, L, W])``."""
        offset = self.config.num_vocab_repeats * text_len + (self.config.boi_token_id is not None)
        a_txt, a_img = prelogits[:, :text_len], prelogits[:, offset:]
        gap = image_len + (self.config.boi_token_id is not None)
        b_img, b_txt = prelogits[:, :image_len], prelogits[:, gap: gap + text_len]
        first = text_first_mask[:, None, None]
        return torch.where(first, a_txt, b_txt), torch.where(first, a_img, b_img)

    # ---- training forward ----------------------------------------------------------------------------------------

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        text_first_mask: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        text_loss_mask: torch.Tensor | None = None,
        drop_prefix: torch.Tensor | None = None,
        noise_scale: float | None = None,
        dequantize: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> BvJetFormerOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_len)`):
            Text ids, or class labels ``[B, 1]`` for class-conditional models (big_vision ``text``).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images in ``[-1, 1]``; they go through the patches and the flow, and the loss is computed.
        image_latents (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, out_dim)`):
            The transformer's image tokens directly, instead of ``pixel_values`` (no loss).
        text_first_mask (`torch.BoolTensor` of shape `(batch_size,)`):
            ``True``: text then image (generation order), ``False``: image then text. Default: ``True`` in eval
            mode, drawn with ``text_prefix_prob`` in training mode (as big_vision's trainer).
        text_attention_mask (`torch.BoolTensor` of shape `(batch_size, text_len)`):
            big_vision ``text_mask`` / ``text_input_mask``: which text tokens are attended (default all).
        text_loss_mask (`torch.BoolTensor` of shape `(batch_size, text_len)`):
            big_vision ``text_loss``: which text tokens count in ``nll_text`` (default all).
        drop_prefix (`torch.BoolTensor` of shape `(batch_size,)`):
            Replace the (text) prefix by ``nolabel`` (CFG's unconditional branch); only acts on text-first examples.
            Default: drawn with ``drop_labels_probability`` in training mode, none in eval mode.
        noise_scale (`float`):
            The RGB noise curriculum's std in pixel levels for this step (training mode;
            ``config.noise_scale_at(step / total_steps)``).
        dequantize (`bool`):
            Add ``U[0, 1/127.5)`` to the pixels (default: in training mode when ``config.add_dequant_noise``;
            big_vision's evaluators add it too, pass ``True`` for their numbers). The PCA tokens' Gaussian noise
            (``noise_std``, PCA models only) is added in training mode only (big_vision: always).
        generator (`torch.Generator`):
            Source of all the training randomness above.
        """
        cfg = self.config
        if (pixel_values is None) == (image_latents is None):
            raise ValueError("pass exactly one of pixel_values and image_latents")
        batch, device = input_ids.shape[0], input_ids.device
        training = self.training

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=device)

        if text_first_mask is None:
            text_first_mask = (rand(batch) < cfg.text_prefix_prob if training
                               else torch.ones(batch, dtype=torch.bool, device=device))
        text_first_mask = text_first_mask.bool()
        logdet = noise_nll = None
        if pixel_values is not None:
            if training and noise_scale:
                pixel_values = self._rgb_noise(pixel_values, noise_scale, text_first_mask, generator)
            dequantize = training and cfg.add_dequant_noise if dequantize is None else dequantize
            tokens, logdet = self.encode_images(pixel_values, dequantize, reparametrize=training, generator=generator)
            image_latents, noise = tokens.split([cfg.out_dim, cfg.latent_noise_dim], dim=-1)
            noise_nll = (0.5 * noise.float().square() + 0.5 * LOG_2PI).sum(dim=(1, 2))
        elif image_latents.shape[-1] != cfg.out_dim:
            raise ValueError(f"image_latents must have out_dim={cfg.out_dim} channels, got {image_latents.shape[-1]}")
        if training and cfg.input_noise_std > 0:  # only on images that are generated (text first)
            std = rand(batch, 1, 1) * cfg.input_noise_std * text_first_mask[:, None, None]
            noise = torch.randn(image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype)
            image_latents = image_latents + std * noise
        if drop_prefix is None and training and cfg.drop_labels_probability > 0:
            drop_prefix = rand(batch) <= cfg.drop_labels_probability
        if drop_prefix is not None:
            drop_prefix = drop_prefix.bool() & text_first_mask
        if training and cfg.stop_grad_nvp_prefix:
            image_latents = torch.where(text_first_mask[:, None, None], image_latents, image_latents.detach())

        x, attn, input_mask = self.embed_inputs(input_ids, image_latents, text_first_mask, text_attention_mask,
                                                drop_prefix)
        encoded = self.run_layers(x, attn, input_mask.long().cumsum(-1) - 1)
        last_hidden_state = self.norm(encoded)
        head_input = encoded if cfg.per_modality_final_norm else last_hidden_state  # see `head_input`
        text_pre, image_pre = self.split_prelogits(head_input, text_first_mask, input_ids.shape[1],
                                                   image_latents.shape[1])
        text_logits, image_logits = self.text_logits(text_pre), self.image_logits(image_pre)
        image_nll = -self.image_distribution(image_logits).log_prob(image_latents.float())
        text_nll = -F.log_softmax(text_logits.float(), dim=-1).gather(-1, input_ids[..., None].long())[..., 0]
        if text_loss_mask is None:
            text_loss_mask = torch.ones_like(text_nll, dtype=torch.bool)
        nll_text = _masked_mean(text_nll, text_loss_mask.bool(), dim=1)
        out = BvJetFormerOutput(text_logits=text_logits, image_logits=image_logits, image_nll=image_nll,
                                text_nll=text_nll, nll_text=nll_text, image_latents=image_latents,
                                last_hidden_state=last_hidden_state)
        if pixel_values is not None:
            dims = math.prod(pixel_values.shape[1:])
            nll_tokens = (image_nll.sum(1) + noise_nll) / dims / math.log(2)
            out.logdet = (logdet / dims - math.log(DEQUANTIZATION_SCALE)) / math.log(2)
            out.nll_image = nll_tokens - out.logdet
            out.loss = self._loss(nll_text, out.nll_image, text_first_mask, drop_prefix)
        return out

    def _loss(self, nll_text, nll_image, text_first, drop_prefix):
        """``train.py loss_fn``'s combination of the text and image terms."""
        cfg = self.config
        drop = torch.zeros_like(text_first) if drop_prefix is None else drop_prefix
        if cfg.loss_on_prefix:
            valid_txt = (text_first & ~drop) | ~text_first
            valid_img = (~text_first & ~drop) | text_first
            return (_masked_mean(nll_text, valid_txt) * cfg.text_loss_weight + _masked_mean(nll_image, valid_img))
        return torch.where(~text_first, nll_text * cfg.text_loss_weight, nll_image).mean()

    def _rgb_noise(self, pixel_values, noise_scale, text_first, generator):
        """The noise curriculum (``train.py loss_fn``): ``round(round(x * 127.5 + 127.5) + s * N(0, 1)) / 127.5 - 1``,
        ``s = 0`` for image-first examples unless ``rgb_noise_on_image_prefix``."""
        scale = torch.full((pixel_values.shape[0],), float(noise_scale), device=pixel_values.device)
        if not self.config.rgb_noise_on_image_prefix:
            scale = torch.where(text_first, scale, 0.0)
        pixels = torch.round((pixel_values + 1) * 127.5)
        noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        return torch.round(pixels + scale[:, None, None, None].to(pixels.dtype) * noise) / 127.5 - 1

    # ---- decoding ------------------------------------------------------------------------------------------------

    def prefill(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, input_mask: torch.Tensor
    ) -> tuple[torch.Tensor, BvJetFormerCache]:
        """Runs a prompt (from :meth:`embed_inputs` with ``shift=False``) into a fresh KV cache (big_vision
        ``Model.prefill_cache``); returns the heads' input at each example's last valid position ``[B, 1, W]``."""
        cache = DynamicCache()
        encoded = self.run_layers(inputs_embeds, attention_mask, input_mask.long().cumsum(-1) - 1, cache)
        last = input_mask.shape[1] - 1 - input_mask.flip(-1).long().argmax(-1)
        prelogits = self.head_input(encoded).gather(1, last[:, None, None].expand(-1, 1, encoded.shape[-1]))
        return prelogits, BvJetFormerCache(cache, input_mask.bool(), input_mask.long().sum(-1))

    def extend(self, inputs_embeds: torch.Tensor, state: BvJetFormerCache) -> torch.Tensor:
        """Feeds one embedded token ``[B, 1, W]`` (big_vision ``Model.extend_cache``); returns the heads' input
        ``[B, 1, W]``. It attends to every valid cached position and itself."""
        ones = torch.ones(state.key_mask.shape[0], 1, dtype=torch.bool, device=state.key_mask.device)
        state.key_mask = torch.cat([state.key_mask, ones], dim=1)
        encoded = self.run_layers(inputs_embeds, state.key_mask[:, None, :], state.positions[:, None], state.cache)
        state.positions = state.positions + 1
        return self.head_input(encoded)

    def sample_image_token(
        self, prelogits: torch.Tensor, temperature: float | None = None, temperature_probs: float | None = None,
        cfg_weight: float | None = None, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step (``predict_fns.sample_image_latents._sample_prelogits``): ``(tokens [B, 1, d],
        log_probs [B, 1])``. With ``cfg_weight``, rows alternate conditional / unconditional (``[x, x_uncond, y,
        ...]``) and both rows of a pair get the guided sample."""
        logits = self.image_logits(prelogits)
        if not cfg_weight:
            pdf = self.image_distribution(logits, temperature, temperature_probs)
            samples = pdf.sample(generator=generator)
            return samples, pdf.log_prob(samples)
        cond = self.image_distribution(logits[0::2], temperature, temperature_probs)
        uncond = self.image_distribution(logits[1::2], temperature, temperature_probs)
        guided = BvCFGDensity(cond, uncond, cfg_weight, generator)
        samples = guided.sample(generator=generator)
        log_probs = guided.log_prob(samples).sum(-1)
        return samples.repeat_interleave(2, dim=0), log_probs.repeat_interleave(2, dim=0)

    @torch.no_grad()
    def generate_image_latents(
        self,
        input_ids: torch.Tensor,
        text_attention_mask: torch.Tensor | None = None,
        num_tokens: int | None = None,
        temperature: float | None = None,
        temperature_probs: float | None = None,
        cfg_weight: float | None = None,
        generator: torch.Generator | None = None,
    ) -> BvJetFormerSampleOutput:
        """Samples image latents after a text prompt or class labels (big_vision ``predict_fns.sample_image_latents``).

        Args:
            input_ids: ``[B, T]`` text ids or ``[B, 1]`` class labels.
            text_attention_mask: ``[B, T]``, which prompt tokens are real (default all).
            num_tokens: image tokens to sample (default ``config.num_image_tokens``).
            temperature, temperature_probs, cfg_weight: default to the config's (big_vision
                ``config.sample_images``); ``cfg_weight`` 0 or ``None`` turns guidance off.
            generator: the seed.

        Returns:
            `BvJetFormerSampleOutput` with ``sequences`` ``[B, L, out_dim]``.
        """
        cfg = self.config
        temperature = cfg.temperature if temperature is None else temperature
        temperature_probs = cfg.temperature_probs if temperature_probs is None else temperature_probs
        cfg_weight = cfg.cfg_inference_weight if cfg_weight is None else cfg_weight
        num_tokens = num_tokens or cfg.num_image_tokens
        batch, device = input_ids.shape[0], input_ids.device
        mask = text_attention_mask if text_attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        drop = None
        if cfg_weight:  # [x, x_uncond, y, y_uncond, ...]
            input_ids, mask = input_ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
            drop = torch.tensor([False, True], device=device).repeat(batch)
        rows = input_ids.shape[0]
        empty = torch.zeros(rows, 0, cfg.out_dim, device=device, dtype=self.embed_image.weight.dtype)
        x, attn, input_mask = self.embed_inputs(input_ids, empty, torch.ones(rows, dtype=torch.bool, device=device),
                                                mask, drop, shift=False)
        prelogits, state = self.prefill(x, attn, input_mask)
        tokens, log_probs, pre = [], [], []
        for step in range(num_tokens):
            if step:
                prelogits = self.extend(self.embed_image(tokens[-1].to(self.embed_image.weight.dtype)), state)
            token, logp = self.sample_image_token(prelogits, temperature, temperature_probs, cfg_weight, generator)
            tokens.append(token)
            log_probs.append(logp)
            pre.append(prelogits)
        keep = slice(0, None, 2) if cfg_weight else slice(None)
        return BvJetFormerSampleOutput(sequences=torch.cat(tokens, 1)[keep], log_probs=torch.cat(log_probs, 1)[keep],
                                       prelogits=torch.cat(pre, 1)[keep])

    @torch.no_grad()
    def generate_images(self, input_ids: torch.Tensor, generator: torch.Generator | None = None,
                        **kwargs) -> torch.Tensor:
        """Class labels / captions -> images ``[B, 3, H, W]`` in ``[-1, 1]``: :meth:`generate_image_latents`
        (``kwargs``: its options) then :meth:`decode_latents` (big_vision ``sample_images_fn``)."""
        latents = self.generate_image_latents(input_ids, generator=generator, **kwargs).sequences
        return self.decode_latents(latents, generator)

    @torch.no_grad()
    def generate_text(
        self,
        pixel_values: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> BvJetFormerSampleOutput:
        """Samples text after an image (big_vision ``predict_fns.sample_text``): image-first prompt ``[(boi | bos),
        image, bos, prompt]`` with the masked prompt tokens skipped; ``logits / temperature`` are sampled, the
        returned ``log_probs`` are under the untempered distribution. Returns ``sequences`` ``[B, max_new_tokens]``.
        """
        if image_latents is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values or image_latents")
            image_latents = self.encode_images(pixel_values)[0][..., : self.config.out_dim]
        batch, device = image_latents.shape[0], image_latents.device
        if input_ids is None:
            input_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        x, attn, input_mask = self.embed_inputs(input_ids, image_latents,
                                                torch.zeros(batch, dtype=torch.bool, device=device),
                                                text_attention_mask, None, shift=False)
        prelogits, state = self.prefill(x, attn, input_mask)
        tokens, log_probs, pre = [], [], []
        for step in range(max_new_tokens):
            if step:
                prelogits = self.extend(self.embed_tokens(tokens[-1]), state)
            logits = self.text_logits(prelogits).float()
            probs = F.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(batch, 1)
            tokens.append(token)
            log_probs.append(F.log_softmax(logits, dim=-1).gather(-1, token[..., None])[..., 0])
            pre.append(prelogits)
        return BvJetFormerSampleOutput(sequences=torch.cat(tokens, 1), log_probs=torch.cat(log_probs, 1),
                                       prelogits=torch.cat(pre, 1))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """``jnp.mean(x, where=mask)`` (NaN where nothing is selected, as there)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)
