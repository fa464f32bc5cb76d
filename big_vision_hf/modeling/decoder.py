"""The transformer decoder shared by big_vision's encoder-decoder models: CapPa (``proj/cappa/cappa.py``), UViM's
VTT (``proj/uvim/vtt.py``) and GIVT (``proj/givt/givt.py``).

Their ``EncoderDecoderBlock`` s are one computation: ``x + SA(LN1(x))``, ``+ CA(LN2(.), encoded)``,
``+ MLP(LN3(.))``, dropout after both attentions and none after the MLP, flax attention without biases
(``use_bias=False``) and big_vision's ``MlpBlock``. They differ only in the biases of the LayerNorms and of the
MLP, in GIVT's optional encoder, and in the name the cross-attention has in converted folders (CapPa
``encoder_attn``, the others ``cross_attn``): `BvDecoderLayer` takes these as arguments. CapPa's and UViM's
``Decoder`` (``EmbedTargets``, a ``1 x seq_len`` posemb, the blocks, a final ``LayerNorm``) is `BvTokenDecoder`.

Example:
    >>> import torch
    >>> from big_vision_hf import BvUViMVTTConfig
    >>> from big_vision_hf.modeling.decoder import BvDecoderLayer
    >>> config = BvUViMVTTConfig(vision_config={"hidden_size": 16, "num_attention_heads": 2},
    ...                          hidden_size=32, num_attention_heads=2, intermediate_size=64)
    >>> layer = BvDecoderLayer(config, 0, cross_width=16, norm_bias=False)
    >>> layer(torch.zeros(1, 3, 32), torch.zeros(1, 5, 16)).shape
    torch.Size([1, 3, 32])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .modeling_bv_vit import BvViTMLP, eager_attention_forward, posemb_sincos_2d


class BvDecoderAttention(nn.Module):
    """flax ``nn.SelfAttention`` / ``nn.MultiHeadDotProductAttention`` with ``use_bias=False``, cached.

    Self-attention by default; with ``is_cross_attention``, attention from the decoder tokens to
    ``key_value_states`` (``kv_width`` wide). With an ``EncoderDecoderCache``, self-attention appends this step's
    keys and values and cross-attention computes the encoder's once (the first step) and reuses them; with a
    self-attention cache of another kind (GIVT's), cross-attention recomputes them at every step, as big_vision's.
    ``is_causal`` tells the attention functions that a missing mask means causal (transformers'
    ``create_causal_mask`` leaves it out for sdpa / flash); otherwise the masks are explicit.
    """

    def __init__(self, config, kv_width: int, layer_idx: int, is_cross_attention: bool = False,
                 is_causal: bool = False):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.head_dim = width // config.num_attention_heads
        self.scaling = self.head_dim**-0.5  # flax divides the query by sqrt(head_dim)
        self.dropout = getattr(config, "attention_dropout", config.dropout)
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.is_causal = is_causal and not is_cross_attention
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(kv_width, width, bias=False)
        self.v_proj = nn.Linear(kv_width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length = hidden_states.shape[:2]
        query = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)  # (B, H, Tq, Dh)
        reuse = False
        if isinstance(cache, EncoderDecoderCache):
            reuse = self.is_cross_attention and bool(cache.is_updated.get(self.layer_idx))
            if self.is_cross_attention:
                cache.is_updated[self.layer_idx] = True
            cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache
        elif self.is_cross_attention:
            cache = None  # a self-attention cache: the encoder's keys are recomputed
        if reuse:
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            source = key_value_states if self.is_cross_attention else hidden_states
            key = self.k_proj(source).view(batch, source.shape[1], -1, self.head_dim).transpose(1, 2)  # (B, H, Tk, Dh)
            value = self.v_proj(source).view(batch, source.shape[1], -1, self.head_dim).transpose(1, 2)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_interface(
            self, query, key, value, attention_mask, is_causal=self.is_causal, scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.reshape(batch, length, -1).contiguous()), weights


class BvDecoderLayer(GradientCheckpointingLayer):
    """big_vision's ``EncoderDecoderBlock``: ``x + SA(LN1(x))``, ``+ CA(LN2(.), encoded)``, ``+ MLP(LN3(.))``.

    ``cross_width``: the encoder's width (``None``: no cross-attention, GIVT without an encoder); ``norm_bias`` /
    ``mlp_bias``: the biases of the three LayerNorms / of the MLP's Dense layers; ``causal``: the self-attention
    mask may be left out for a causal one; ``cross_attention_name``: the cross-attention's name in the state dict.
    """

    def __init__(self, config, layer_idx: int, cross_width: int | None, norm_bias: bool = True,
                 mlp_bias: bool = True, causal: bool = False, cross_attention_name: str = "cross_attn"):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.cross_attention_name = cross_attention_name
        self.layer_norm1 = nn.LayerNorm(width, eps=eps, bias=norm_bias)
        self.self_attn = BvDecoderAttention(config, width, layer_idx, is_causal=causal)
        cross = cross_width is not None
        self.layer_norm2 = nn.LayerNorm(width, eps=eps, bias=norm_bias) if cross else None
        self.add_module(cross_attention_name,
                        BvDecoderAttention(config, cross_width, layer_idx, is_cross_attention=True) if cross else None)
        self.layer_norm3 = nn.LayerNorm(width, eps=eps, bias=norm_bias)
        self.mlp = BvViTMLP(width, config.intermediate_size, config.hidden_act, config.dropout, bias=mlp_bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attended, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask=attention_mask, cache=cache)
        hidden_states = hidden_states + self.dropout(attended)
        cross_attn = getattr(self, self.cross_attention_name)
        if cross_attn is not None and encoder_hidden_states is not None:  # big_vision: `if encoded is not None`
            attended, _ = cross_attn(self.layer_norm2(hidden_states), key_value_states=encoder_hidden_states,
                                     cache=cache)
            hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.mlp(self.layer_norm3(hidden_states))


class BvTokenDecoder(nn.Module):
    """big_vision's token ``Decoder`` up to its final ``LayerNorm`` (CapPa, UViM VTT): ``EmbedTargets``
    (``embed_tokens``), the decoder posemb (``"learn"``, or ``"sincos2d"`` on a ``1 x seq_len`` grid, recomputed
    rather than stored), the ``layer_class`` blocks and ``LayerNorm`` (always with bias).

    A token at position ``past + i`` (``past``: tokens already in the cache) gets the posemb row ``past + i``
    (`posemb`), as flax's ``AddPositionEmbs(decode=True)`` cache index; more positions than
    ``max_position_embeddings`` is an error.
    """

    def __init__(self, config, layer_class: type[nn.Module], num_embeddings: int | None = None):
        super().__init__()
        self.config = config
        width, length = config.hidden_size, config.max_position_embeddings
        self.embed_tokens = nn.Embedding(num_embeddings or config.vocab_size, width)
        if config.posemb == "learn":
            self.position_embedding = nn.Parameter(torch.zeros(1, length, width))
        else:  # vit.get_posemb(..., (1, seq_len), ...): not a parameter; recomputed by _init_weights after meta loading
            self.register_buffer("position_embedding", posemb_sincos_2d(1, length, width), persistent=False)
        self.layers = nn.ModuleList([layer_class(config, i) for i in range(config.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def posemb(self, past: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        """The posemb rows of positions ``past .. past + length - 1``, ``(1, length, width)``."""
        positions = self.position_embedding.shape[1]
        if past + length > positions:
            raise ValueError(
                f"the decoder has {positions} positions (big_vision seq_len) but was given {past} cached + {length} "
                f"new tokens; generate at most max_length={positions + 1} tokens (the start token included)"
            )
        return self.position_embedding[:, past : past + length].to(dtype)

    def run_layers(self, hidden: torch.Tensor, encoder_hidden_states: torch.Tensor, mask: torch.Tensor | None,
                   cache: Cache | None, **kwargs) -> torch.Tensor:
        """The blocks, then the final ``LayerNorm``."""
        encoder_hidden_states = encoder_hidden_states.to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, encoder_hidden_states, attention_mask=mask, cache=cache, **kwargs)
        return self.layer_norm(hidden)


class BvEncoderDecoderMixin:
    """The accessors that ``generate`` and embedding resizing use, for a ``PreTrainedModel`` whose base model
    (``self.base_model``: itself, or its ``model``) holds an image ``encoder`` and a `BvTokenDecoder` ``decoder``.
    transformers' own ``get_output_embeddings`` then finds ``lm_head``. Put it before the ``PreTrainedModel`` base:
    its attributes are those of an image-to-text model whose encoder (`BvViTModel`) records its own outputs."""

    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _can_record_outputs = {}  # the decoder records nothing

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.base_model.encoder

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.decoder.embed_tokens = value


def encoder_hidden_states_of(encoder_outputs) -> torch.Tensor:
    """The image tokens from ``encoder_outputs`` (a ``ModelOutput`` or a tuple, as transformers passes them)."""
    if isinstance(encoder_outputs, (tuple, list)):
        return encoder_outputs[0]
    return encoder_outputs.last_hidden_state


def init_decoder_module_(module: nn.Module) -> None:
    """big_vision's flax initialisers for this module's parts: attention ``lecun_normal`` kernels (the flax
    default); ``EmbedTargets`` ``normal(1.0)``; the decoder posemb ``normal(1/sqrt(width))`` or sincos."""
    if isinstance(module, BvDecoderAttention):
        for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            init.lecun_normal_(proj.weight)
    elif isinstance(module, BvTokenDecoder):
        init.normal_(module.embed_tokens.weight, std=1.0)
        length, width = module.position_embedding.shape[1:]
        if module.config.posemb == "learn":
            init.normal_(module.position_embedding, std=1 / np.sqrt(width))
        else:
            init.copy_(module.position_embedding, posemb_sincos_2d(1, length, width))
