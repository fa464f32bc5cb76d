"""PyTorch port of big_vision's UViM (``big_vision/models/proj/uvim/``, https://arxiv.org/abs/2205.10337).

Our own ``PreTrainedModel`` s: transformers has no VQ-VAE over label maps, and its encoder-decoder classes
(``VisionEncoderDecoderModel`` + a text decoder) have no decoder with bias-free attention, biased LayerNorm/MLP and a
``1 x seq_len`` sincos posemb, so none represents these models exactly.

- `BvUViMVQVAEModel`: stage I, ``uvim/vit.py Model``. ``encode`` (label-map inputs + context image -> codes),
  ``decode`` (codes -> per-patch logits of each target) and ``forward`` (both, on the quantised bottleneck, as
  big_vision ``__call__``). Reproduces, from ``uvim/vit.py``: the ``DenseGeneral`` target embeddings summed with the
  context image's patch embedding (``with_encoder_ctx``/``with_decoder_ctx``); the ``bottleneck_resize`` path
  (``jax.image.resize(..., "linear")``: half-pixel centres, triangle kernel widened when shrinking, i.e.
  antialiased; `resize_tokens`) or the learned ``bottleneck_downsample``/``upsample`` matrices;
  ``jax.nn.standardize(x, axis=-1)`` (epsilon 1e-5, variance ``E[x^2] - E[x]^2``, its ``"fast"`` algorithm);
  ``get_codewords`` (``dictionary / counts`` with rows L2-normalised) and ``quantize`` (squared distance written as
  ``|x|^2 - 2 x.e + |e|^2``, ``argmin``, straight-through ``x + stop_gradient(e[idx] - x)``). The dictionary and
  counts are the checkpoint's ``state/`` collection, held as buffers (they are updated by EMA during stage I
  training, never by gradients).
- `BvUViMVTTForConditionalGeneration`: stage II, ``uvim/vtt.py Model``: a ViT image encoder (`BvViTModel`,
  ``pool_type="none"``) and the code decoder (``vtt.Decoder``: ``EmbedTargets``, ``AddPositionEmbs``,
  ``EncoderDecoderBlock`` s with bias-free ``SelfAttn``/``CrossAttn`` and biased LayerNorms / ``vit.MlpBlock``, final
  ``LayerNorm``, ``LogitsDense``). The teacher-forced forward shifts the labels right with 0 (``vtt.shift_right``)
  under a causal mask (``nn.make_causal_mask``); `generate` decodes with a KV cache like ``uvim/decode.py``
  (start token 0, one token per step, ``seq_len`` steps, no EOS: ``train.py`` passes ``eos_token=-1``). Greedy is
  big_vision's ``temperature=1e-7``; ``do_sample=True`` with ``temperature`` / ``top_k`` is its
  ``_temperature_sampling`` (same distribution; the random numbers are torch's, not jax's).

The tasks' pre- and post-processing (label maps <-> the VQ-VAE's one-hot patch inputs, panoptic / depth /
colour outputs) and the two-stage pipelines are in ``processing/uvim_tasks.py``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutput, ModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput

from ..configuration.configuration_bv_uvim import BvUViMVQVAEConfig, BvUViMVTTConfig
from .decoder import (
    BvDecoderLayer,
    BvEncoderDecoderMixin,
    BvTokenDecoder,
    encoder_hidden_states_of,
    init_decoder_module_,
)
from .modeling_bv_vit import (
    BvViTEncoder,
    BvViTModel,
    BvViTPreTrainedModel,
    antialiased_resize_weights,
    init_flax_dense_,
    posemb_sincos_2d,
)

# ---------------------------------------------------------------------------------------------------------
# Stage I: the VQ-VAE (big_vision uvim/vit.py)
# ---------------------------------------------------------------------------------------------------------


class _EncoderConfigView:
    """The model's config seen by one of its two `BvViTEncoder` s, with that encoder's depth.

    big_vision builds ``vit.Encoder(depth=enc_depth)`` and ``vit.Encoder(depth=dec_depth)`` from one config; every
    other attribute (``_attn_implementation`` included) is read live from the model's config.
    """

    def __init__(self, config: BvUViMVQVAEConfig, num_hidden_layers: int):
        self._config = config
        self.num_hidden_layers = num_hidden_layers

    def __getattr__(self, name: str):
        return getattr(self._config, name)


def resize_tokens(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``[B, h*w, C]`` row-major tokens -> ``[B, H*W, C]``, as big_vision ``uvim/vit.py`` ``bottleneck_resize``:
    ``jax.image.resize(x, (B, H, W, C), method="linear")`` (antialiased when shrinking; see
    ``antialiased_resize_weights``). Computed in float32 at least."""
    b, _, c = tokens.shape
    compute = torch.promote_types(tokens.dtype, torch.float32)
    w_y = antialiased_resize_weights(grid[0], size[0], tokens.device).to(compute)
    w_x = antialiased_resize_weights(grid[1], size[1], tokens.device).to(compute)
    x = tokens.to(compute).reshape(b, grid[0], grid[1], c)
    return torch.einsum("hy,byxc,wx->bhwc", w_y, x, w_x).reshape(b, size[0] * size[1], c).to(tokens.dtype)


def standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``jax.nn.standardize(x, axis=-1)`` (default ``algorithm="fast"``): variance as ``E[x^2] - E[x]^2``."""
    mean = x.mean(dim=-1, keepdim=True)
    variance = (x * x).mean(dim=-1, keepdim=True) - mean * mean
    return (x - mean) * torch.rsqrt(variance + eps)


@dataclass
class BvUViMVQVAEEncoderOutput(ModelOutput):
    r"""
    code (`torch.LongTensor` of shape `(batch_size, code_len)`):
        big_vision ``out["code"]``: the index of the nearest codeword of each bottleneck token.
    bottleneck (`torch.FloatTensor` of shape `(batch_size, code_len, codeword_dim)`):
        big_vision ``out["bottleneck"]``: the standardised bottleneck before quantisation.
    bottleneck_q (`torch.FloatTensor` of shape `(batch_size, code_len, codeword_dim)`):
        big_vision ``out["bottleneck_q"]``: the quantised bottleneck (the codewords; straight-through gradient),
        or ``bottleneck`` when ``config.quantize`` is False.
    target_embeddings (`dict[str, torch.FloatTensor]`, each `(batch_size, num_patches, hidden_size)`):
        big_vision ``out["stem"]``: each target's ``embedding_<name>``.
    """

    code: torch.LongTensor | None = None
    bottleneck: torch.FloatTensor | None = None
    bottleneck_q: torch.FloatTensor | None = None
    target_embeddings: dict[str, torch.FloatTensor] | None = None


@dataclass
class BvUViMVQVAEOutput(BvUViMVQVAEEncoderOutput):
    r"""
    logits (`dict[str, torch.FloatTensor]`, each `(batch_size, num_patches, *outputs[name])`):
        big_vision ``out["logits"]``: per target, the decoder's ``head_<name>`` on every patch token (for one-hot
        targets, class logits on axis -2 for each of the patch's pixels on axis -1).
    """

    logits: dict[str, torch.FloatTensor] | None = None


class BvUViMVQVAEPreTrainedModel(BvViTPreTrainedModel):
    config: BvUViMVQVAEConfig
    config_class = BvUViMVQVAEConfig
    base_model_prefix = "uvim"
    main_input_name = "inputs"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's initialisers (``uvim/vit.py`` setup); loaded tensors and buffers are left alone."""
        super()._init_weights(module)
        if not isinstance(module, BvUViMVQVAEModel):
            return
        config = module.config
        for layer in [*module.target_embeddings.values(), module.encoder_head, module.decoder_stem]:
            init_flax_dense_(layer)  # nn.DenseGeneral / nn.Dense defaults
        for layer in module.heads.values():
            init_flax_dense_(layer, zero_kernel=config.head_zeroinit)
        for conv in (module.ctx_encoder_embedding, module.ctx_decoder_embedding):
            if conv is not None:
                init_flax_dense_(conv)
        for name in ("pos_embedding_encoder", "pos_embedding_decoder"):
            pe = getattr(module, name)
            if config.posemb == "learn":  # vit.get_posemb: normal(1/sqrt(width))
                init.normal_(pe, std=1 / np.sqrt(config.hidden_size))
            else:
                init.copy_(pe, posemb_sincos_2d(*config.grid_size, config.hidden_size))
        for matrix in (module.bottleneck_downsample, module.bottleneck_upsample):
            if matrix is not None:
                init.xavier_uniform_(matrix)
        init.normal_(module.dictionary, std=1 / np.sqrt(config.codebook_size))
        init.ones_(module.counts)


class BvUViMVQVAEModel(BvUViMVQVAEPreTrainedModel):
    r"""UViM stage I: the VQ-VAE that turns a task's label map into ``code_len`` discrete codes and back.

    Inputs are big_vision's: per target a ``[batch, num_patches, *inputs[name]]`` tensor (the label map cut into
    patches, one-hot for class-like targets; ``processing.uvim_tasks`` makes them from label maps), and the context
    image ``pixel_values`` (NCHW in [-1, 1]) when the model uses it. ``forward`` = big_vision ``__call__(x, ctx)``;
    ``encode`` / ``decode`` are big_vision's ``encode`` / ``decode(discrete_input=True)``.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvUViMVQVAEConfig, BvUViMVQVAEModel
        >>> config = BvUViMVQVAEConfig(inputs={"depth": [16, 64]}, image_size=32, patch_size=8, code_len=4,
        ...                            hidden_size=32, encoder_layers=1, decoder_layers=1, num_attention_heads=2,
        ...                            codebook_size=8, with_encoder_ctx=True, with_decoder_ctx=True,
        ...                            bottleneck_resize=True)
        >>> model = BvUViMVQVAEModel(config).eval()
        >>> depth = torch.nn.functional.one_hot(torch.randint(16, (1, 16, 64)), 16).transpose(-1, -2).float()
        >>> image = torch.zeros(1, 3, 32, 32)
        >>> out = model(inputs={"depth": depth}, pixel_values=image)
        >>> out.code.shape, out.logits["depth"].shape
        (torch.Size([1, 4]), torch.Size([1, 16, 16, 64]))
        >>> model.decode(out.code, pixel_values=image)["depth"].shape
        torch.Size([1, 16, 16, 64])

    Parity: ``big_vision.models.proj.uvim.vit.Model`` at commit 0127fb6 (``train=False``); logits, bottleneck and
    codes against the original JAX code in ``tests/test_bv_uvim.py`` (golden ``uvim_vqvae`` and two more configs).
    """

    def __init__(self, config: BvUViMVQVAEConfig):
        super().__init__(config)
        width, patch = config.hidden_size, config.patch_size
        num_patches = config.grid_size[0] * config.grid_size[1]
        # big_vision `embedding_<k>`: nn.DenseGeneral over the target's trailing axes, flattened row-major.
        self.target_embeddings = nn.ModuleDict(
            {k: nn.Linear(int(np.prod(shape)), width) for k, shape in config.inputs.items()}
        )
        self.ctx_encoder_embedding = (
            nn.Conv2d(config.num_channels, width, patch, stride=patch) if config.with_encoder_ctx else None
        )
        self.ctx_decoder_embedding = (
            nn.Conv2d(config.num_channels, width, patch, stride=patch) if config.with_decoder_ctx else None
        )
        for name in ("pos_embedding_encoder", "pos_embedding_decoder"):
            if config.posemb == "learn":
                setattr(self, name, nn.Parameter(torch.zeros(1, num_patches, width)))
            else:  # not a parameter; recomputed by _init_weights after meta-device loading
                self.register_buffer(name, posemb_sincos_2d(*config.grid_size, width), persistent=False)
        self.encoder = BvViTEncoder(_EncoderConfigView(config, config.encoder_layers))
        self.decoder = BvViTEncoder(_EncoderConfigView(config, config.decoder_layers))
        learned = not config.bottleneck_resize
        self.bottleneck_downsample = nn.Parameter(torch.zeros(num_patches, config.code_len)) if learned else None
        self.bottleneck_upsample = nn.Parameter(torch.zeros(config.code_len, num_patches)) if learned else None
        self.encoder_head = nn.Linear(width, config.codeword_dim)
        self.decoder_stem = nn.Linear(config.codeword_dim, width)
        self.heads = nn.ModuleDict({k: nn.Linear(width, int(np.prod(shape))) for k, shape in config.outputs.items()})
        # big_vision's `state` collection: the VQ dictionary (running sums of the assigned bottlenecks) and counts.
        self.register_buffer("dictionary", torch.zeros(config.codebook_size, config.codeword_dim))
        self.register_buffer("counts", torch.ones(config.codebook_size))
        self.post_init()

    def get_codewords(self) -> torch.Tensor:
        """``[codebook_size, codeword_dim]``: big_vision ``get_codewords``: ``dictionary / counts``, rows
        L2-normalised."""
        e = self.dictionary / self.counts[:, None]
        return e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)

    def _context(self, conv: nn.Conv2d | None, pixel_values: torch.Tensor | None, side: str) -> torch.Tensor | None:
        """The context image's patch tokens for the ``side`` ("encoder"/"decoder") that uses them, else None."""
        if conv is None:
            return None
        if pixel_values is None:
            raise ValueError(f"this VQ-VAE adds the image to its {side} (with_{side}_ctx): pass pixel_values")
        tokens = conv(pixel_values.to(conv.weight.dtype))  # (B, D, h, w)
        if tuple(tokens.shape[-2:]) != self.config.grid_size:
            raise ValueError(f"pixel_values give a {tuple(tokens.shape[-2:])} patch grid, the model expects "
                             f"{self.config.grid_size} (image_size {self.config.image_size})")
        return tokens.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major

    def _check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        if not isinstance(inputs, dict) or set(inputs) != set(self.config.inputs):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"inputs must be a dict with the targets {sorted(self.config.inputs)}, got {got}")
        n = self.config.grid_size[0] * self.config.grid_size[1]
        for name, shape in self.config.inputs.items():
            if tuple(inputs[name].shape[1:]) != (n, *shape):
                raise ValueError(f"inputs[{name!r}] must have shape (batch, {n}, {', '.join(map(str, shape))}), "
                                 f"got {tuple(inputs[name].shape)}")

    def encode(
        self, inputs: dict[str, torch.Tensor], pixel_values: torch.Tensor | None = None
    ) -> BvUViMVQVAEEncoderOutput:
        r"""Label-map inputs (+ context image) -> codes, as big_vision ``Model.encode(x, ctx=...)`` (``train=False``).

        Args:
            inputs: per target ``[batch, num_patches, *config.inputs[name]]``.
            pixel_values: the context image, NCHW in [-1, 1] (needed when ``config.with_encoder_ctx``).
        """
        self._check_inputs(inputs)
        dtype = self.encoder_head.weight.dtype
        stem = {}
        for name, layer in self.target_embeddings.items():
            x = inputs[name]
            stem[name] = layer(x.reshape(*x.shape[:2], -1).to(dtype))
        x = sum(stem.values())
        ctx = self._context(self.ctx_encoder_embedding, pixel_values, "encoder")
        if ctx is not None:
            x = x + ctx
        x = self.encoder(x + self.pos_embedding_encoder)
        if self.config.bottleneck_resize:
            x = resize_tokens(x, self.config.grid_size, self.config.code_grid)
        else:
            x = torch.einsum("btc,tn->bnc", x, self.bottleneck_downsample)
        x = standardize(self.encoder_head(x))
        codewords = self.get_codewords().to(x.dtype)
        # uvim/vit.py `quantize`: the squared distance decomposed as |x|^2 - 2 x.e + |e|^2.
        dist = (x * x).sum(-1, keepdim=True) - 2 * x @ codewords.T + (codewords * codewords).sum(-1)
        code = dist.argmin(dim=-1)
        x_q = (codewords[code] - x).detach() + x  # straight-through: `e[idx]` in the forward pass
        return BvUViMVQVAEEncoderOutput(
            code=code, bottleneck=x, bottleneck_q=x_q if self.config.quantize else x, target_embeddings=stem
        )

    def decode(
        self,
        codes: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        bottleneck: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""Codes (or a continuous bottleneck) (+ context image) -> per-target logits, as big_vision
        ``Model.decode(x, ctx=..., discrete_input=codes is not None)``.

        Args:
            codes: ``[batch, code_len]`` indices into the codebook. As jax indexing, ``-1`` is the last codeword
                (UViM stage II predicts ``code + 1``; a predicted 0 becomes -1 there).
            pixel_values: the context image, NCHW in [-1, 1] (needed when ``config.with_decoder_ctx``).
            bottleneck: instead of ``codes``, ``[batch, code_len, codeword_dim]`` vectors.

        Returns:
            ``{target: [batch, num_patches, *config.outputs[target]]}`` (big_vision ``out["logits"]``).
        """
        if (codes is None) == (bottleneck is None):
            raise ValueError("pass exactly one of codes and bottleneck")
        if codes is not None:
            size = self.config.codebook_size
            if codes.ndim != 2 or codes.shape[1] != self.config.code_len:
                raise ValueError(f"codes must have shape (batch, {self.config.code_len}), got {tuple(codes.shape)}")
            if codes.numel() and (int(codes.min()) < -size or int(codes.max()) >= size):
                raise ValueError(f"codes must be in [-{size}, {size}) (the codebook has {size} words)")
            x = self.get_codewords()[codes.long()]
        else:
            x = bottleneck
        x = x.to(self.decoder_stem.weight.dtype)
        if self.config.zero_decoder_seq:
            x = torch.zeros_like(x)
        x = self.decoder_stem(x)
        if self.config.bottleneck_resize:
            x = resize_tokens(x, self.config.code_grid, self.config.grid_size)
        else:
            x = torch.einsum("bnc,nt->btc", x, self.bottleneck_upsample)
        ctx = self._context(self.ctx_decoder_embedding, pixel_values, "decoder")
        if ctx is not None:
            x = x + ctx
        x = self.decoder(x + self.pos_embedding_decoder)
        return {name: head(x).reshape(*x.shape[:2], *self.config.outputs[name]) for name, head in self.heads.items()}

    def forward(
        self, inputs: dict[str, torch.Tensor], pixel_values: torch.Tensor | None = None, **kwargs
    ) -> BvUViMVQVAEOutput:
        r"""
        inputs (`dict[str, torch.FloatTensor]`): per target ``[batch, num_patches, *config.inputs[name]]``, e.g. from
            ``processing.uvim_tasks.panoptic_inputs``.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): the context image in [-1, 1].
        """
        enc = self.encode(inputs, pixel_values)
        logits = self.decode(pixel_values=pixel_values, bottleneck=enc.bottleneck_q)
        return BvUViMVQVAEOutput(logits=logits, **enc)


# ---------------------------------------------------------------------------------------------------------
# Stage II: the vision-to-text transformer (big_vision uvim/vtt.py)
# ---------------------------------------------------------------------------------------------------------


def shift_right(labels: torch.LongTensor) -> torch.LongTensor:
    """big_vision ``vtt.shift_right``: prepend 0, drop the last token (``-100`` labels also become 0)."""
    labels = labels.masked_fill(labels == -100, 0)
    return F.pad(labels, (1, 0), value=0)[:, :-1]


class BvUViMDecoderLayer(BvDecoderLayer):
    """big_vision ``vtt.EncoderDecoderBlock`` (`BvDecoderLayer`): pre-LN causal self-attention, cross-attention to
    the image tokens and ``vit.MlpBlock``, each with a residual (LayerNorms and MLP with biases, attention without)."""

    def __init__(self, config: BvUViMVTTConfig, layer_idx: int):
        super().__init__(config, layer_idx, config.vision_config.hidden_size, causal=True)


class BvUViMDecoder(BvTokenDecoder):
    """big_vision ``vtt.Decoder`` without ``LogitsDense`` (`BvTokenDecoder`): ``EmbedTargets`` +
    ``pos_embedding_decoder`` (then dropout), the blocks, ``LayerNorm``. Positions continue from the cache's length
    (``AddPositionEmbs(decode=True)``)."""

    def __init__(self, config: BvUViMVTTConfig):
        super().__init__(config, BvUViMDecoderLayer)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        cache: EncoderDecoderCache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        if self.config.zero_decoder_seq:
            x = torch.zeros_like(x)
        x = self.dropout(x + self.posemb(past, length, x.dtype))
        mask = create_causal_mask(
            config=self.config, inputs_embeds=x, attention_mask=None,
            cache=cache.self_attention_cache if cache is not None else None,
            position_ids=torch.arange(past, past + length, device=x.device)[None],
        )
        return self.run_layers(x, encoder_hidden_states, mask, cache, **kwargs)


class BvUViMVTTPreTrainedModel(BvEncoderDecoderMixin, BvViTPreTrainedModel):
    config: BvUViMVTTConfig
    config_class = BvUViMVTTConfig
    _no_split_modules = ["BvViTEmbeddings", "BvViTEncoderLayer", "BvUViMDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's initialisers (``uvim/vtt.py``); loaded tensors are left alone."""
        super()._init_weights(module)
        init_decoder_module_(module)
        if isinstance(module, BvUViMVTTForConditionalGeneration):
            init_flax_dense_(module.lm_head, zero_kernel=True)  # LogitsDense: kernel_init=zeros


class BvUViMVTTModel(BvUViMVTTPreTrainedModel):
    r"""UViM stage II without ``LogitsDense``: the image encoder (`BvViTModel`) and the code decoder; returns the
    decoder's final hidden states.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvUViMVTTConfig, BvUViMVTTModel
        >>> from big_vision_hf.configuration.configuration_bv_uvim import bv_vtt_kwargs_to_config
        >>> config = BvUViMVTTConfig(**bv_vtt_kwargs_to_config(dict(  # big_vision vtt.Model kwargs
        ...     num_heads=2, num_layers=1, mlp_dim=64, emb_dim=32, vocab_size=17, seq_len=4, input_size=32, patches=8)))
        >>> model = BvUViMVTTModel(config).eval()
        >>> out = model(torch.zeros(1, 3, 32, 32), decoder_input_ids=torch.zeros(1, 4, dtype=torch.long))
        >>> out.last_hidden_state.shape, out.encoder_last_hidden_state.shape
        (torch.Size([1, 4, 32]), torch.Size([1, 16, 32]))
    """

    def __init__(self, config: BvUViMVTTConfig):
        super().__init__(config)
        self.encoder = BvViTModel(config.vision_config)
        self.decoder = BvUViMDecoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images in [-1, 1].
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, length)`): the decoder's input tokens (for
            teacher forcing: the targets shifted right with 0, see `shift_right`).
        encoder_outputs: precomputed image tokens (`generate` passes them), instead of ``pixel_values``.
        cache: an ``EncoderDecoderCache`` (``use_cache=True`` makes one).
        """
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (or encoder_outputs)")
            encoder_outputs = self.encoder(pixel_values)
        encoded = encoder_hidden_states_of(encoder_outputs)
        if decoder_input_ids is None:
            raise ValueError("pass decoder_input_ids (or labels to the ...ForConditionalGeneration model)")
        use_cache = use_cache if use_cache is not None else False
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        hidden = self.decoder(decoder_input_ids, encoded, cache=cache if use_cache else None)
        return Seq2SeqModelOutput(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            encoder_last_hidden_state=encoded,
        )


class BvUViMVTTForConditionalGeneration(BvUViMVTTPreTrainedModel, GenerationMixin):
    r"""UViM stage II: image -> guide codes, teacher-forced (``labels``) or generated.

    ``model(pixel_values, labels=tokens)`` is big_vision's training forward ``model.apply(params, image, labels)``:
    the decoder reads ``shift_right(labels)`` under a causal mask and ``logits[:, i]`` predicts ``labels[:, i]``;
    the loss is the mean token cross-entropy (big_vision ``weighted_softmax_xent(normalize=True)``), ignoring 0 and
    -100 (stage II targets are ``code + 1``, never 0). ``generate(pixel_values)`` produces ``seq_len`` tokens after
    the start token 0: greedy by default (big_vision's ``temperature=1e-7``), or ``do_sample=True, temperature=T,
    top_k=K`` as ``uvim/decode.py temperature_sampling``. Codes for the stage I decoder are ``tokens[:, 1:] - 1``.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvUViMVTTConfig, BvUViMVTTForConditionalGeneration
        >>> from big_vision_hf.configuration.configuration_bv_uvim import bv_vtt_kwargs_to_config
        >>> config = BvUViMVTTConfig(**bv_vtt_kwargs_to_config(dict(  # big_vision vtt.Model kwargs
        ...     num_heads=2, num_layers=1, mlp_dim=64, emb_dim=32, vocab_size=17, seq_len=4, input_size=32, patches=8)))
        >>> model = BvUViMVTTForConditionalGeneration(config).eval()
        >>> image, codes = torch.zeros(2, 3, 32, 32), torch.randint(1, 17, (2, 4))
        >>> out = model(pixel_values=image, labels=codes)
        >>> out.logits.shape, out.loss.ndim
        (torch.Size([2, 4, 17]), 0)
        >>> model.generate(pixel_values=image).shape  # start token 0 + seq_len tokens
        torch.Size([2, 5])

    Parity: ``big_vision.models.proj.uvim.vtt.Model`` at commit 0127fb6 and ``uvim/decode.py``'s greedy decode;
    figures in ``tests/test_bv_uvim.py``.
    """

    _tied_weights_keys = {}

    def __init__(self, config: BvUViMVTTConfig):
        super().__init__(config)
        self.model = BvUViMVTTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)  # big_vision LogitsDense (with bias)
        self.post_init()
        # uvim/decode.py as train.py calls it: seq_len tokens after the start token 0, no EOS.
        self.generation_config.max_new_tokens = config.max_position_embeddings
        self.generation_config.eos_token_id = None

    @torch.no_grad()
    def generate(self, *args, **kwargs) -> torch.LongTensor:
        r"""transformers' ``generate`` with big_vision's sampling defaults: ``do_sample=True`` without ``top_k``
        samples from the whole softmax at ``temperature`` (``uvim/decode.py``: ``top_k=0``), where transformers would
        default to ``top_k=50``. Returns ``[batch, 1 + seq_len]`` tokens, the start token 0 first.

        Example:
            >>> import torch
            >>> from big_vision_hf import BvUViMVTTConfig, BvUViMVTTForConditionalGeneration
            >>> from big_vision_hf.configuration.configuration_bv_uvim import bv_vtt_kwargs_to_config
            >>> config = BvUViMVTTConfig(**bv_vtt_kwargs_to_config(dict(  # big_vision vtt.Model kwargs
            ...     num_heads=2, num_layers=1, mlp_dim=64, emb_dim=32, vocab_size=17, seq_len=4, input_size=32,
            ...     patches=8)))
            >>> model = BvUViMVTTForConditionalGeneration(config).eval()
            >>> image = torch.zeros(1, 3, 32, 32)
            >>> greedy = model.generate(pixel_values=image)  # big_vision temperature=1e-7
            >>> sampled = model.generate(pixel_values=image, do_sample=True, temperature=1.0, top_k=5)
            >>> greedy.shape, sampled.shape
            (torch.Size([1, 5]), torch.Size([1, 5]))
        """
        gen = kwargs.get("generation_config")
        if gen is not None and gen.do_sample and gen.top_k is None and "top_k" not in kwargs:
            kwargs["generation_config"] = gen = copy.deepcopy(gen)
            gen.top_k = 0
        elif kwargs.get("do_sample") and "top_k" not in kwargs:
            kwargs["top_k"] = 0
        return super().generate(*args, **kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images in [-1, 1].
        labels (`torch.LongTensor` of shape `(batch_size, seq_len)`): the target tokens (stage I codes + 1). The
            decoder input is `shift_right(labels)` unless ``decoder_input_ids`` are given.
        decoder_input_ids, encoder_outputs, cache: see `BvUViMVTTModel.forward`.
        """
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_right(labels)
        outputs = self.model(
            pixel_values, decoder_input_ids, encoder_outputs=encoder_outputs, cache=cache, use_cache=use_cache
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            targets = labels.masked_fill(labels == 0, -100).to(logits.device)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
        )
