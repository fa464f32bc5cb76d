"""PyTorch port of big_vision's ViT (``big_vision/models/vit.py``) and the shared transformer layers.

This file owns the attention, MLP, encoder layer, encoder, MAP head, posemb helpers and the one pooling function
(`pool`, with NaFlex's padding masks) that every big_vision tower reuses (FlexiViT, SigLIP towers, NaFlex, ...), as
big_vision reuses ``vit.Encoder``/``vit.MAPHead``; `BvViTModel.encode` is the trunk after the embeddings.

Why our own ``PreTrainedModel``: transformers' ``ViTModel`` always prepends a cls token with an N+1
posemb and classifies the raw cls token; ``SiglipVisionModel`` has neither cls tokens, sincos posembs,
``gap``/``0`` pooling nor ``rep_size``. No transformers class represents every big_vision ViT exactly.

big_vision ``out`` dict -> outputs here (hidden-state index ``i`` is the input of encoder layer ``i``;
index ``depth`` is the output of the last layer before ``encoder_norm``):
    ``out["with_posemb"]`` (+ ``[cls]`` for ``tok``) -> ``hidden_states[0]``
    ``out["encoder"]["blockNN"]["+mlp"]``           -> ``hidden_states[NN + 1]``
    ``out["encoded"]``                              -> ``last_hidden_state``
    ``out["pre_logits"]``                           -> ``pooler_output``
    ``out["pre_logits_2d"]`` / ``out["logits_2d"]`` -> ``pre_logits_2d`` / ``logits_2d`` (with ``output_2d=True``,
                                                       channels last, like big_vision)
    ``out["logits"]``                               -> ``logits``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..configuration.configuration_bv_vit import BvViTConfig

# ---------------------------------------------------------------------------------------------------------
# Position embeddings
# ---------------------------------------------------------------------------------------------------------


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """MoCo-v3 2-D sincos posemb ``[1, h*w, width]``, as big_vision ``vit.posemb_sincos_2d``.

    ``omega = 1 / temperature**(arange(width/4) / (width/4 - 1))`` (note the ``-1``); the features are
    ``[sin(x*omega), cos(x*omega), sin(y*omega), cos(y*omega)]`` with ``x`` the column, ``y`` the row index.
    Computed in float64 and rounded once, so it is the same on every device.
    """
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = torch.arange(width // 4, dtype=torch.float64) / (width // 4 - 1)
    omega = 1.0 / temperature**omega
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    pe = torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=1)
    return pe.to(torch.float32)[None]


def resample_posemb(posemb: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resizes a learned posemb ``[1, h*w, D]`` to another grid, as big_vision ``vit.resample_posemb``.

    big_vision uses ``scipy.ndimage.zoom(grid, zoom, order=1)``: linear interpolation whose corner samples
    coincide (``grid_mode=False``), i.e. ``align_corners=True`` bilinear. big_vision only handles square
    grids; the same interpolation is applied per axis here, so non-square grids work too.
    """
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    d = posemb.shape[-1]
    grid = posemb.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(posemb.dtype)


def antialiased_resize_weights(in_size: int, out_size: int, device=None) -> torch.Tensor:
    """``[out, in]`` weights of ``jax.image.scale_and_translate(method="bilinear", antialias=True)`` along one axis
    (``jax/_src/image/scale.py compute_weight_mat``, translation 0): half-pixel centres, a triangle kernel widened
    by ``1 / scale`` when downsampling, each row normalised. Computed in float32 as jax does.

    Not ``F.interpolate(bilinear, antialias=True)``: it agrees in general, but torch 2.13 collapses a height
    resize when the output is 1 wide (every row gets the first row's value): a tall 1-wide NaFlex or FlexiViT grid.
    """
    f32 = torch.float32
    scale = torch.tensor(out_size, dtype=f32) / torch.tensor(in_size, dtype=f32)
    inv_scale = 1.0 / scale
    kernel_scale = torch.clamp(inv_scale, min=1.0)
    sample = (torch.arange(out_size, dtype=f32, device=device) + 0.5) * inv_scale - 0.5
    weights = (1.0 - (sample[:, None] - torch.arange(in_size, dtype=f32, device=device)[None, :]).abs()
               / kernel_scale).clamp(min=0.0)
    total = weights.sum(-1, keepdim=True)
    weights = torch.where(total.abs() > 1000.0 * torch.finfo(f32).eps, weights / torch.where(total != 0, total, 1.0),
                          0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return torch.where(inside[:, None], weights, 0.0)


def resize_grid_antialiased(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w, D]`` -> ``[H, W, D]`` as ``jax.image.resize(grid, (H, W, D), "linear")`` /
    ``jax.image.scale_and_translate(bilinear, antialias=True)`` with scale ``(H/h, W/w)``: separable,
    ``W_y @ grid @ W_x^T`` with :func:`antialiased_resize_weights`. Float32 at least; returns ``grid``'s dtype."""
    compute = torch.promote_types(grid.dtype, torch.float32)
    w_y = antialiased_resize_weights(grid.shape[0], int(size[0]), grid.device).to(compute)
    w_x = antialiased_resize_weights(grid.shape[1], int(size[1]), grid.device).to(compute)
    return torch.einsum("hy,yxd,wx->hwd", w_y, grid.to(compute), w_x).to(grid.dtype)


# ---------------------------------------------------------------------------------------------------------
# Shared transformer layers (big_vision vit.MlpBlock / Encoder1DBlock / Encoder / MAPHead)
# ---------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class BvViTAttention(nn.Module):
    """flax ``nn.MultiHeadDotProductAttention``: biased q/k/v/out projections, no mask by default.

    Used for self-attention (``key_value_states=None``) and for the MAP head's probe (cross-attention).
    """

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5  # flax divides the query by sqrt(head_dim) before q.k
        self.dropout = config.attention_dropout
        self.is_causal = False  # else SDPA turns causal when no mask is given
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kv = hidden_states if key_value_states is None else key_value_states
        q_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        kv_shape = (*kv.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(q_shape).transpose(1, 2)  # (B, H, Lq, Dh)
        key = self.k_proj(kv).view(kv_shape).transpose(1, 2)  # (B, H, Lk, Dh)
        value = self.v_proj(kv).view(kv_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            is_causal=False,
            scaling=self.scale,
            dropout=0.0 if not self.training else self.dropout,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.out_proj(attn_output), attn_weights


class BvViTMLP(nn.Module):
    """big_vision ``vit.MlpBlock`` (also ``mlp_mixer.MlpBlock``): Dense -> GELU (tanh) -> Dropout -> Dense.

    Widths are arguments because the MLP-Mixer applies the same block over tokens and over channels.
    """

    def __init__(self, width: int, mlp_dim: int, hidden_act: str, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.activation_fn = ACT2FN[hidden_act]
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class BvViTEncoderLayer(GradientCheckpointingLayer):
    """big_vision ``vit.Encoder1DBlock``: pre-LN self-attention and MLP, each with a residual."""

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = BvViTAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BvViTMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs)
        hidden_states = residual + self.dropout(hidden_states)  # out["+sa"]
        residual = hidden_states
        hidden_states = self.mlp(self.layer_norm2(hidden_states))
        return residual + self.dropout(hidden_states)  # out["+mlp"]


class BvViTEncoder(nn.Module):
    """big_vision ``vit.Encoder``: ``depth`` blocks then ``encoder_norm`` (here ``post_layernorm``)."""

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.layers = nn.ModuleList([BvViTEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return self.post_layernorm(hidden_states)


class BvMAPHead(nn.Module):
    """big_vision ``vit.MAPHead``: a learned probe attends to the tokens, then ``x + MLP(LN(x))``, token 0.

    There is no LayerNorm on the keys and none after the MLP. ``attention_mask`` (optional, additive, for
    padded sequences) masks keys.
    """

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = BvViTAttention(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BvViTMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)
        x, _ = self.attention(probe, key_value_states=hidden_states, attention_mask=attention_mask)
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Padding masks and pooling (big_vision vit._Model, naflex_vit._Model, text_transformer._Model)
# ---------------------------------------------------------------------------------------------------------


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask -> an additive one: 0 where ``allowed``, ``finfo(dtype).min`` elsewhere.

    flax ``MultiHeadDotProductAttention`` masks logits with ``finfo.min`` (not ``-inf``): a pad query, whose row is
    fully masked, gets a uniform softmax instead of NaN, as in big_vision.
    """
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device))


def additive_masks(valid: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, N]`` bool (``True`` for real tokens, ``False`` for pads) -> additive (self-attention ``[B, 1, N, N]``,
    pooling ``[B, 1, 1, N]``) masks, as big_vision ``naflex_vit._Model``: ``sa_mask = valid_q & valid_k`` and
    ``pool_mask = valid`` (the MAP head's keys)."""
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    return additive_mask(pair, dtype), additive_mask(valid[:, None, None, :], dtype)


def pool(
    encoded: torch.Tensor,
    pool_type: str,
    valid: torch.Tensor | None = None,
    map_head: BvMAPHead | None = None,
    map_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """big_vision's pooling of encoder tokens ``[B, N, D]``: one function for every tower.

    ``valid`` (``[B, N]`` bool, optional) marks real tokens of padded sequences (NaFlex ``ptype == 1``); the pools
    big_vision ``naflex_vit._Model`` masks (``gap``, ``max``, ``map``) then ignore the pads, as it does:

    - ``"map"``: ``map_head(encoded)`` (`BvMAPHead`, big_vision ``vit.MAPHead``); its keys are masked by
      ``map_attention_mask`` (additive, or whatever the attention implementation takes), by default built from
      ``valid`` (naflex ``MAPHead(mask=pool_mask)``).
    - ``"gap"``: the mean over tokens (``vit``: ``jnp.mean(x, axis=1)``; text ``"gap"``/``"mean"``); with ``valid``,
      naflex's ``sum(x * mask) / sum(mask)``.
    - ``"max"``: the max over tokens (text ``"max"``/``"gmp"``: ``x.max(axis=1)``); with ``valid``, naflex's
      ``max(mask * x + where(mask, 0, finfo.min))``: a pad counts as ``finfo.min``, not as ``-inf``.
    - ``"tok"``, ``"0"``, ``"first"``: token 0 (``vit``'s ``[cls]`` or first patch; text ``"first"``).
    - ``"last"``: the last token (text tower: "Assuming 'sticky' EOS tokenization, last token is always EOS").
    - ``"none"``: every token, unpooled.
    """
    if pool_type == "map":
        if map_head is None:
            raise ValueError("pool_type='map' needs the MAP head")
        if map_attention_mask is None and valid is not None:
            map_attention_mask = additive_mask(valid[:, None, None, :], encoded.dtype)
        return map_head(encoded, attention_mask=map_attention_mask)
    if pool_type == "gap":
        if valid is None:
            return encoded.mean(dim=1)
        keep = valid[..., None].to(encoded.dtype)
        return (encoded * keep).sum(dim=1) / keep.sum(dim=1)
    if pool_type == "max":
        if valid is None:
            return encoded.amax(dim=1)
        keep = valid[..., None].to(encoded.dtype)
        ignore = torch.where(valid[..., None], 0.0, torch.finfo(encoded.dtype).min).to(encoded.dtype)
        return (keep * encoded + ignore).amax(dim=1)
    if pool_type in ("tok", "0", "first"):
        return encoded[:, 0]
    if pool_type == "last":
        if valid is not None:
            raise ValueError("pool_type='last' reads a fixed position; big_vision has no masked form of it")
        return encoded[:, -1]
    if pool_type == "none":
        return encoded
    raise ValueError(f"Unknown pool type: {pool_type!r}")


# ---------------------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------------------


class BvViTEmbeddings(nn.Module):
    """Conv patchify, + posemb, then (for ``pool_type="tok"``) prepend ``[cls]``, as big_vision ``vit._Model``.

    The posemb is added BEFORE the cls token is prepended, so ``cls`` gets no posemb.
    """

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.grid_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        num_patches = self.grid_size[0] * self.grid_size[1]
        if config.posemb == "learn":
            self.position_embedding = nn.Parameter(torch.zeros(1, num_patches, config.hidden_size))
        else:  # sincos2d is not a parameter; recomputed by _init_weights after meta-device loading.
            self.register_buffer(
                "position_embedding", posemb_sincos_2d(*self.grid_size, config.hidden_size), persistent=False
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.pool_type == "tok" else None
        self.dropout = nn.Dropout(config.dropout)

    def position_embedding_for(self, grid: tuple[int, int], interpolate: bool) -> torch.Tensor:
        if tuple(grid) == tuple(self.grid_size):
            return self.position_embedding
        if self.config.posemb == "sincos2d":
            pe = posemb_sincos_2d(*grid, self.config.hidden_size)
            return pe.to(device=self.position_embedding.device, dtype=self.position_embedding.dtype)
        if not interpolate:
            raise ValueError(
                f"input gives a {grid[0]}x{grid[1]} patch grid but the learned posemb is "
                f"{self.grid_size[0]}x{self.grid_size[1]}; pass interpolate_pos_encoding=True to resample it "
                "(big_vision resample_posemb)"
            )
        return resample_posemb(self.position_embedding, self.grid_size, grid)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, h, w) = out["stem"]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major tokens
        x = x + self.position_embedding_for(grid, interpolate_pos_encoding)  # out["with_posemb"]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.dropout(x), grid


@dataclass
class BvViTModelOutput(BaseModelOutputWithPooling):
    r"""
    pre_logits_2d (`torch.FloatTensor` of shape `(batch_size, h, w, dim)`, with `output_2d=True`):
        big_vision ``out["pre_logits_2d"]``: the per-patch tokens (cls dropped) after ``pre_logits``.
    """

    pre_logits_2d: torch.FloatTensor | None = None


@dataclass
class BvImageClassifierOutput(ImageClassifierOutput):
    r"""
    logits_2d (`torch.FloatTensor` of shape `(batch_size, h, w, num_labels)`, with `output_2d=True`):
        big_vision ``out["logits_2d"]``: the classification head applied to every patch token.
    pooler_output (`torch.FloatTensor`): big_vision ``out["pre_logits"]``, the input of the head.
    """

    logits_2d: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


def init_flax_dense_(layer: nn.Module, zero_kernel: bool = False) -> None:
    """flax ``nn.Dense``/``nn.Conv`` defaults: lecun_normal kernel, zero bias; ``zero_kernel`` for big_vision's
    zero-initialised heads (``kernel_init=nn.initializers.zeros``, e.g. ``head_zeroinit``). Guarded (transformers'
    ``initialization``): loaded tensors are left alone."""
    if zero_kernel:
        init.zeros_(layer.weight)
    else:
        init.lecun_normal_(layer.weight)
    init.zeros_(layer.bias)


class BvViTPreTrainedModel(PreTrainedModel):
    config: BvViTConfig
    config_class = BvViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # The unsplittable modules of every model on this base (ViT, FlexiViT, NaFlex, the text tower; composite models
    # also collect their towers' lists in `post_init`).
    _no_split_modules = [
        "BvViTEmbeddings", "BvFlexiViTEmbeddings", "BvNaFlexViTEmbeddings", "BvTextEmbeddings", "BvViTEncoderLayer",
        "BvMAPHead",
    ]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": BvViTEncoderLayer,
        "attentions": OutputRecorder(BvViTAttention, index=1, layer_name="encoder.layers"),
    }

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # transformers treats models outside its package as custom code and then skips modules without parameters of
        # their own (attention, MLP, the model itself), so their branches below would never run. `_init_weights` uses
        # only the guarded `transformers.initialization` functions, which leave loaded tensors alone, so the
        # built-in behaviour is safe here.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers (``models/vit.py``); loaded tensors are left alone."""
        super()._init_weights(module)
        if isinstance(module, BvViTEmbeddings):
            init_flax_dense_(module.patch_embedding)  # nn.Conv default
            if module.config.posemb == "learn":
                init.normal_(module.position_embedding, std=1 / np.sqrt(module.config.hidden_size))
            else:
                init.copy_(module.position_embedding, posemb_sincos_2d(*module.grid_size, module.config.hidden_size))
            if module.cls_token is not None:
                init.zeros_(module.cls_token)
        elif isinstance(module, BvViTAttention):  # MHA kernel_init=xavier_uniform, zero biases
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(proj.weight)
                init.zeros_(proj.bias)
        elif isinstance(module, BvViTMLP):  # vit.MlpBlock: xavier_uniform kernels, normal(1e-6) biases
            for fc in (module.fc1, module.fc2):
                init.xavier_uniform_(fc.weight)
                init.normal_(fc.bias, std=1e-6)
        elif isinstance(module, BvMAPHead):  # MAPHead probe: xavier_uniform over (1, d)
            bound = float(np.sqrt(6.0 / (1 + module.probe.shape[-1])))
            init.uniform_(module.probe, -bound, bound)
        elif isinstance(module, BvViTModel) and module.pre_logits is not None:
            init_flax_dense_(module.pre_logits)
        elif isinstance(module, BvViTForImageClassification):
            init_flax_dense_(module.classifier, zero_kernel=module.config.head_zeroinit)


class BvViTModel(BvViTPreTrainedModel):
    r"""big_vision ViT without the classification head: returns ``pre_logits`` as ``pooler_output``.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvViTConfig, BvViTModel
        >>> config = BvViTConfig.from_variant("mu/16", image_size=64, pool_type="map")
        >>> model = BvViTModel(config).eval()
        >>> out = model(torch.zeros(1, 3, 64, 64))
        >>> tuple(out.pooler_output.shape)
        (1, 32)

    Parity: ``big_vision.models.vit._Model`` at commit 0127fb6, pools gap/map/tok, posemb learn/sincos2d,
    rep_size, loop and scan checkpoints; fp32 max abs error on ``logits`` against the original JAX code is
    reported by ``tests/test_parity_bv_vit.py`` (below 1e-5 on every fixture).
    """

    embeddings_class: type[nn.Module] = BvViTEmbeddings  # FlexiViT swaps in its resizing embeddings

    def __init__(self, config: BvViTConfig):
        super().__init__(config)
        self.embeddings = self.embeddings_class(config)
        self.encoder = BvViTEncoder(config)
        self.map_head = BvMAPHead(config) if config.pool_type == "map" else None
        rep = config.representation_size
        self.pre_logits = nn.Linear(config.hidden_size, rep) if rep else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_2d: bool = False,
        **kwargs,
    ) -> BvViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images in [-1, 1] (big_vision ``value_range(-1, 1)``), e.g. from `BvImageProcessor`.
        interpolate_pos_encoding (`bool`): resample a learned posemb to the input's patch grid, as big_vision
            ``resample_posemb`` does (sincos2d posembs are recomputed for any grid regardless).
        output_2d (`bool`): also return ``pre_logits_2d`` (big_vision ``out["pre_logits_2d"]``).
        """
        embeddings, grid = self.embeddings(pixel_values, interpolate_pos_encoding)
        return self.encode(embeddings, grid, output_2d=output_2d, **kwargs)

    def encode(
        self,
        embeddings: torch.Tensor,
        grid: tuple[int, int] | None = None,
        output_2d: bool = False,
        valid: torch.Tensor | None = None,
        **kwargs,
    ) -> BvViTModelOutput:
        """Encoder -> pooling -> ``rep_size``: everything after the embeddings, shared with towers that embed
        differently (FlexiViT, NaFlex). ``grid`` is the patch grid ``(h, w)`` of ``embeddings`` (for ``output_2d``).

        ``valid`` (``[B, N]`` bool, NaFlex): the real tokens of padded sequences. As big_vision ``naflex_vit``, the
        self-attention then only pairs real tokens and the pooling ignores the pads (see `pool`).
        """
        sa_mask = pool_mask = None
        if valid is not None:
            sa_mask, pool_mask = additive_masks(valid, embeddings.dtype)
        encoded = self.encoder(embeddings, attention_mask=sa_mask, **kwargs)  # out["encoded"]
        pool_type = self.config.pool_type
        pooled = pool(encoded, pool_type, valid, self.map_head, pool_mask)
        patch_tokens = encoded[:, 1:] if pool_type == "tok" else encoded  # vit._Model drops [cls] for the 2-D map
        if self.pre_logits is not None:  # rep_size: tanh(Dense(x)), shared by the pooled and 2-D outputs
            pooled = torch.tanh(self.pre_logits(pooled))
        pre_logits_2d = None
        if output_2d:
            if grid is None:
                raise ValueError("output_2d needs the patch grid of the tokens")
            pre_logits_2d = patch_tokens.reshape(patch_tokens.shape[0], grid[0], grid[1], -1)
            if self.pre_logits is not None:
                pre_logits_2d = torch.tanh(self.pre_logits(pre_logits_2d))
        return BvViTModelOutput(last_hidden_state=encoded, pooler_output=pooled, pre_logits_2d=pre_logits_2d)


def image_classifier_output(
    model: PreTrainedModel, outputs: BaseModelOutputWithPooling, labels: torch.Tensor | None = None
) -> BvImageClassifierOutput:
    """big_vision's ``head`` Dense on a backbone's outputs: ``out["logits"] = head(out["pre_logits"])``, and
    ``out["logits_2d"]`` = the head on every position of ``pre_logits_2d`` when the backbone returned it; with
    ``labels``, transformers' loss for ``model.config``. ``model.classifier`` is the head. Shared by the image
    classifiers (ViT, FlexiViT, NaFlex, BiT, Mixer)."""
    logits = model.classifier(outputs.pooler_output)
    pre_logits_2d = getattr(outputs, "pre_logits_2d", None)
    logits_2d = model.classifier(pre_logits_2d) if pre_logits_2d is not None else None
    loss = model.loss_function(labels, logits, model.config) if labels is not None else None
    return BvImageClassifierOutput(
        loss=loss,
        logits=logits,
        logits_2d=logits_2d,
        pooler_output=outputs.pooler_output,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


class BvViTForImageClassification(BvViTPreTrainedModel):
    r"""big_vision ViT with its ``head`` Dense: ``logits = head(pre_logits)``.

    ``labels`` give a loss as in transformers (cross-entropy, or BCE for ``problem_type=
    "multi_label_classification"``), so the model trains with ``Trainer``. LoRA target modules:
    ``q_proj, k_proj, v_proj, out_proj, fc1, fc2`` (``modules_to_save=["classifier"]``).

    Example:
        >>> import torch
        >>> from big_vision_hf import BvViTConfig, BvViTForImageClassification
        >>> config = BvViTConfig.from_variant("mu/16", image_size=64, num_labels=10)
        >>> model = BvViTForImageClassification(config).eval()
        >>> model(torch.zeros(2, 3, 64, 64)).logits.shape
        torch.Size([2, 10])

    Parity: as `BvViTModel`; ``logits`` and ``logits_2d`` match big_vision ``out["logits"]``/``out["logits_2d"]``.
    """

    base_model_class: type[BvViTModel] = BvViTModel  # FlexiViT swaps in its model

    def __init__(self, config: BvViTConfig):
        super().__init__(config)
        self.vit = self.base_model_class(config)
        self.classifier = nn.Linear(config.representation_size or config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vit.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_2d: bool = False,
        **kwargs,
    ) -> BvImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the loss.
        interpolate_pos_encoding, output_2d: see `BvViTModel.forward`.
        """
        outputs = self.vit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, output_2d=output_2d, **kwargs
        )
        return image_classifier_output(self, outputs, labels)
