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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
from .loading import BvStrictLoadingMixin

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
# Packed images (NaViT, "Patch n' Pack", https://arxiv.org/abs/2307.06304)
#
# The packed input layout (made by `processing.image_processing_bv_navit` / `processing.navit_collator`), next to
# patches `pixel_values [S, L, p*p*C]`:
# - `segment_ids [S, L]`: 1, 2, ..., k for the images of a row, each image one contiguous run, numbered in order
#   along the row; 0 for padding (big_vision `datasets/sequence_packing.py`'s convention). Images are numbered
#   row-major (image j is the j-th run met reading row 0, then row 1, ...); per-image outputs, logits and labels
#   follow that order.
# - `patch_coords [S, L, 2]`: each token's (row, column) in its image's patch grid (big_vision yidx/xidx); tokens
#   may be missing (token dropping) or in any order inside their run.
# - `spatial_shapes [num_images, 2]`: each image's full patch grid (h, w), also when tokens were dropped.
# What follows does not depend on a model: the layout of the real tokens (`PackedLayout`, read once per forward),
# and the variable-length attention kernels (`SegmentAttention`) that never build an [L, L] mask. The dense
# block-diagonal mask is `block_diagonal_mask`; which path runs is `resolve_packed_attention`'s choice.
# ---------------------------------------------------------------------------------------------------------

PACKED_ATTENTION = ("auto", "dense", "varlen", "segments", "flex", "flash")


@dataclass
class PackedLayout:
    """Where the real tokens of a packed batch are: the "stream" of real tokens, row-major, sorted by image.

    ``rows``/``cols`` (``[T]``) index the input layout ``[S, L]`` (``None`` for a layout made here, e.g. with
    inserted ``[cls]`` tokens); ``image`` (``[T]``, non-decreasing) is each token's image; ``lengths`` the tokens
    per image; ``row_of_image`` each image's row.
    """

    image: torch.Tensor
    lengths: list[int]
    row_of_image: torch.Tensor
    shape: tuple[int, int]
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    _starts: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.image.shape[0])

    @property
    def starts(self) -> torch.Tensor:
        """``[num_images]``: the stream index of each image's first token."""
        if self._starts is None:
            lengths = torch.tensor(self.lengths, device=self.image.device)
            self._starts = torch.cumsum(lengths, 0) - lengths
        return self._starts

    def segment_ids(self) -> torch.Tensor:
        """The stream as one packed row: ``[1, T]`` segment ids ``image + 1``."""
        return (self.image + 1)[None]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[S, L, ...]`` in the input layout -> ``[T, ...]`` real tokens (the stream)."""
        return x[self.rows, self.cols]

    def scatter(self, stream: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[S, L, ...]`` in the input layout, zeros at the padding (differentiable)."""
        out = stream.new_zeros(*self.shape, *stream.shape[1:])
        return out.index_put((self.rows, self.cols), stream)

    def image_slots(self) -> torch.Tensor:
        """``[num_images]``: each image's place among its row's images (``segment id - 1``)."""
        per_row = torch.bincount(self.row_of_image, minlength=self.shape[0])
        first_of_row = torch.cumsum(per_row, 0) - per_row
        return torch.arange(self.num_images, device=self.image.device) - first_of_row[self.row_of_image]

    def left_aligned(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The dense path's layout: each input row's tokens left-aligned, trailing pads trimmed. Returns the
        ``(row, position)`` ``[T]`` of every stream token there and the rows' ``segment_ids`` ``[S, L']``."""
        row = self.row_of_image[self.image]
        counts = torch.bincount(row, minlength=self.shape[0])
        position = torch.arange(self.num_tokens, device=row.device) - (torch.cumsum(counts, 0) - counts)[row]
        segment_ids = row.new_zeros(self.shape[0], int(counts.max()))
        segment_ids[row, position] = self.image_slots()[self.image] + 1
        return row, position, segment_ids

    def with_leading_tokens(self) -> tuple[PackedLayout, torch.Tensor]:
        """A layout with one extra token before each image's tokens (ViT's ``[cls]``), and the permutation ``perm``
        with ``new_stream = cat([stream, extra_tokens])[perm]``."""
        n, t = self.num_images, self.num_tokens
        device = self.image.device
        new_lengths = [length + 1 for length in self.lengths]
        # old token i (image j) moves to i + j + 1; image j's new token goes to starts[j] + j.
        dest_old = torch.arange(t, device=device) + self.image + 1
        dest_new = self.starts + torch.arange(n, device=device)
        perm = torch.empty(t + n, dtype=torch.long, device=device)
        perm[dest_old] = torch.arange(t, device=device)
        perm[dest_new] = torch.arange(t, t + n, device=device)
        image = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(new_lengths, device=device))
        return PackedLayout(image, new_lengths, self.row_of_image, self.shape), perm


def packed_layout(segment_ids: torch.Tensor) -> PackedLayout:
    """Reads ``segment_ids`` ``[S, L]`` (see the module docstring) into a `PackedLayout`.

    Raises a ``ValueError`` unless every row's images are contiguous runs numbered ``1, 2, ...`` in order.
    """
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [num_sequences, length], got shape {tuple(segment_ids.shape)}")
    seg = segment_ids.long()
    rows, cols = (seg > 0).nonzero(as_tuple=True)  # row-major
    ids = seg[rows, cols]
    per_row = seg.amax(dim=1).clamp(min=0)
    offsets = torch.cumsum(per_row, 0) - per_row
    image = offsets[rows] + ids - 1
    num_images = int(per_row.sum())
    lengths = torch.bincount(image, minlength=num_images) if image.numel() else image.new_zeros(num_images)
    runs = 1 + int((image[1:] != image[:-1]).sum()) if image.numel() else 0
    if num_images == 0 or bool((image[1:] < image[:-1]).any()) or runs != num_images or bool((lengths == 0).any()):
        raise ValueError(
            "segment_ids must give each image of a row one contiguous run, numbered 1, 2, ... along the row "
            "(0 for padding), with at least one image"
        )
    row_of_image = torch.repeat_interleave(torch.arange(seg.shape[0], device=seg.device), per_row)
    return PackedLayout(image, lengths.tolist(), row_of_image, tuple(seg.shape), rows, cols)


def grid_coords(spatial_shapes: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``[T, 2]`` row-major ``(row, column)`` of complete images: image ``j`` has ``lengths[j] = h*w`` tokens."""
    shapes = spatial_shapes.to(torch.long)
    if [int(h) * int(w) for h, w in shapes.tolist()] != list(lengths):
        raise ValueError("without patch_coords every image needs exactly h*w tokens (spatial_shapes), row-major")
    index = torch.cat([torch.arange(n, device=shapes.device) for n in lengths])
    width = torch.repeat_interleave(shapes[:, 1], torch.tensor(list(lengths), device=shapes.device))
    return torch.stack([index // width, index % width], dim=-1)


def patchify_images(images: Sequence[torch.Tensor], patch_size: Sequence[int]) -> dict[str, torch.Tensor]:
    """A list of ``[C, H, W]`` images (sides multiples of the patch) -> one packed row (no padding): ``pixel_values``
    ``[1, T, ph*pw*C]`` (patches row-major, each flattened ``(ph, pw, C)`` as big_vision ``patchify``),
    ``segment_ids``/``patch_coords`` and ``spatial_shapes [N, 2]``."""
    ph, pw = int(patch_size[0]), int(patch_size[1])
    patches, shapes = [], []
    for image in images:
        c, h, w = image.shape
        if h % ph or w % pw:
            raise ValueError(f"image of {h}x{w} pixels is not a whole number of {ph}x{pw} patches")
        x = image.reshape(c, h // ph, ph, w // pw, pw).permute(1, 3, 2, 4, 0)  # (nh, nw, ph, pw, C)
        patches.append(x.reshape((h // ph) * (w // pw), ph * pw * c))
        shapes.append((h // ph, w // pw))
    lengths = [h * w for h, w in shapes]
    device = patches[0].device
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    seg = torch.repeat_interleave(torch.arange(1, len(lengths) + 1, device=device),
                                  torch.tensor(lengths, device=device))
    return {
        "pixel_values": torch.cat(patches)[None],
        "segment_ids": seg[None],
        "patch_coords": grid_coords(spatial_shapes, lengths)[None],
        "spatial_shapes": spatial_shapes,
    }


def unpack_tokens(tokens: torch.Tensor, segment_ids: torch.Tensor) -> list[torch.Tensor]:
    """``[S, L, D]`` packed token states (``last_hidden_state``) -> a list of ``[n_j, D]``, one per image."""
    layout = packed_layout(segment_ids)
    return list(layout.gather(tokens).split(layout.lengths))


_COMPILED_FLEX = None


def _flex_attention():
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # static shapes: one kernel per packed length (fixed in training). torch 2.13's CPU flex template emits
        # C++ that does not compile for symbolic lengths (undeclared `cur_qSplitSize8`), which automatic dynamic
        # shapes reach as soon as flex_attention has been compiled for another shape in the process.
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


def varlen_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The fastest variable-length kernel here: torch's flash varlen (CUDA, fp16/bf16), ``flex_attention`` (CUDA),
    else per-image SDPA (``"segments"``: CPU; flex_attention has no CPU backward in torch 2.13 and compiles slowly)."""
    if device.type == "cuda":
        if dtype in (torch.float16, torch.bfloat16) and _torch_varlen() is not None:
            return "flash"
        return "flex"
    return "segments"


def resolve_packed_attention(requested: str, attn_implementation: str | None, device: torch.device,
                             dtype: torch.dtype) -> str:
    """``packed_attention`` -> the path that runs: ``"dense"`` (block-diagonal mask through the model's attention
    implementation) or a variable-length kernel (``"segments"``, ``"flex"``, ``"flash"``).

    ``"auto"``: ``"dense"`` under ``attn_implementation="eager"`` (the one that returns attention weights), else
    ``"varlen"``; ``"varlen"``: `varlen_kernel`. Every path gives the same results (up to float rounding).
    """
    if requested not in PACKED_ATTENTION:
        raise ValueError(f"packed_attention={requested!r}; expected one of {PACKED_ATTENTION}")
    if requested == "auto":
        requested = "dense" if attn_implementation == "eager" else "varlen"
    if requested == "varlen":
        return varlen_kernel(device, dtype)
    return requested


@dataclass
class SegmentAttention:
    """Attention inside each segment of ONE packed row ``[1, T]`` (the compact stream): passed to the encoder in
    place of an attention mask; `BvViTAttention` calls it with ``query/key/value [1, H, T, Dh]`` and gets
    ``[1, T, H, Dh]`` back, as from the attention interface.

    ``kernel``: ``"segments"`` (one SDPA per segment: forward and backward on every device), ``"flex"``
    (``flex_attention`` with a document block mask, compiled; no dropout; no CPU backward in torch 2.13) or
    ``"flash"`` (``torch.nn.attention.varlen.varlen_attn``: CUDA, fp16/bf16, no dropout).
    """

    lengths: list[int]
    kernel: str = "segments"
    _cu_seqlens: torch.Tensor | None = field(default=None, repr=False)
    _block_mask: object = field(default=None, repr=False)

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                 dropout: float = 0.0) -> torch.Tensor:
        if query.shape[0] != 1:
            raise ValueError("SegmentAttention runs on one packed row [1, H, T, Dh]")
        if self.kernel == "segments":
            pieces = [
                F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
                for q, k, v in zip(query.split(self.lengths, 2), key.split(self.lengths, 2),
                                   value.split(self.lengths, 2))
            ]
            return torch.cat(pieces, dim=2).transpose(1, 2)
        if dropout:
            raise ValueError(f"packed_attention kernel {self.kernel!r} has no attention dropout; use 'segments'")
        if self.kernel == "flex":
            if not query.is_cuda and torch.is_grad_enabled() and query.requires_grad:
                raise ValueError("flex_attention has no backward on CPU (torch 2.13): use packed_attention="
                                 "'segments' or 'dense' to train on CPU")
            out = _flex_attention()(query, key, value, block_mask=self.block_mask(query), scale=scaling)
            return out.transpose(1, 2)
        if self.kernel == "flash":
            varlen_attn = _torch_varlen()
            cu = self.cu_seqlens(query.device)
            longest = max(self.lengths)
            out = varlen_attn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, cu,
                              longest, longest, scale=scaling)
            return out[None]
        raise ValueError(f"unknown packed attention kernel {self.kernel!r}")

    def cu_seqlens(self, device: torch.device) -> torch.Tensor:
        if self._cu_seqlens is None:
            lengths = torch.tensor([0, *self.lengths], dtype=torch.int32, device=device)
            self._cu_seqlens = torch.cumsum(lengths, 0, dtype=torch.int32)
        return self._cu_seqlens

    def block_mask(self, query: torch.Tensor):
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            t = query.shape[2]
            doc = torch.repeat_interleave(torch.arange(len(self.lengths), device=query.device),
                                          torch.tensor(self.lengths, device=query.device))

            def same_image(b, h, q_idx, kv_idx):
                return doc[q_idx] == doc[kv_idx]

            # compiled on CUDA: no [T, T] tensor; on CPU (inference only) a [T, T] bool is evaluated once per forward
            self._block_mask = create_block_mask(same_image, None, None, t, t, device=query.device,
                                                 _compile=query.is_cuda)
        return self._block_mask


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
    ``attention_mask`` is an additive mask for the attention interface, or a `SegmentAttention` (packed sequences:
    attention inside each image, no ``[L, L]`` mask). ViT-22B options (https://arxiv.org/abs/2302.05442, sec. 2):
    ``qk_layernorm`` applies a LayerNorm over each head's features to the queries and to the keys before
    ``q.k`` (as flax ``MultiHeadDotProductAttention(normalize_qk=True)``: scale, no bias), ``qkv_bias=False``
    drops the q/k/v projection biases.
    """

    def __init__(self, config: BvViTConfig, qk_layernorm: bool = False, qkv_bias: bool = True):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5  # flax divides the query by sqrt(head_dim) before q.k
        self.dropout = config.attention_dropout
        self.is_causal = False  # else SDPA turns causal when no mask is given
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        eps = config.layer_norm_eps
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps, bias=False) if qk_layernorm else None
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps, bias=False) if qk_layernorm else None

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
        query = self.q_proj(hidden_states).view(q_shape)  # (B, Lq, H, Dh)
        key = self.k_proj(kv).view(kv_shape)  # (B, Lk, H, Dh)
        if self.q_norm is not None:  # ViT-22B: softmax(LN(X W_q) LN(X W_k)^T / sqrt(d))
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)  # (B, H, L, Dh)
        value = self.v_proj(kv).view(kv_shape).transpose(1, 2)

        dropout = 0.0 if not self.training else self.dropout
        if isinstance(attention_mask, SegmentAttention):  # packed images, variable-length kernel
            attn_output = attention_mask(query, key, value, self.scale, dropout)
            attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
            return self.out_proj(attn_output), None

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
            dropout=dropout,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.out_proj(attn_output), attn_weights


class BvViTMLP(nn.Module):
    """big_vision ``vit.MlpBlock`` (also ``mlp_mixer.MlpBlock``): Dense -> GELU (tanh) -> Dropout -> Dense.

    Widths are arguments because the MLP-Mixer applies the same block over tokens and over channels. ``bias=False``
    drops both biases (CapPa's ``decoder_bias=False``).
    """

    def __init__(self, width: int, mlp_dim: int, hidden_act: str, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim, bias=bias)
        self.activation_fn = ACT2FN[hidden_act]
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(mlp_dim, width, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class BvViTEncoderLayer(GradientCheckpointingLayer):
    """big_vision ``vit.Encoder1DBlock``: pre-LN self-attention and MLP, each with a residual.

    With ``config.parallel_block`` (ViT-22B, https://arxiv.org/abs/2302.05442 sec. 2, "parallel layers"):
    ``y = LN(x); x + MLP(y) + Attention(y)``, one LayerNorm (no ``layer_norm2``). The other ViT-22B options,
    ``qk_layernorm`` and ``qkv_bias``, are the attention's. Configs without these fields (text towers) get the
    standard block.
    """

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.parallel = getattr(config, "parallel_block", False)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = BvViTAttention(
            config, qk_layernorm=getattr(config, "qk_layernorm", False), qkv_bias=getattr(config, "qkv_bias", True)
        )
        self.layer_norm2 = None if self.parallel else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BvViTMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        residual = hidden_states
        if self.parallel:
            normed = self.layer_norm1(hidden_states)
            attended, _ = self.self_attn(normed, attention_mask=attention_mask, **kwargs)
            return residual + self.dropout(attended) + self.dropout(self.mlp(normed))
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
    padded sequences) masks keys. ``num_probes`` (packed images): that many copies of the probe per row, each
    masked to its own image's keys; returns ``[B, num_probes, D]`` then, else ``[B, D]``.
    """

    def __init__(self, config: BvViTConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = BvViTAttention(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BvViTMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, num_probes: int | None = None
    ) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], num_probes or 1, -1)
        x, _ = self.attention(probe, key_value_states=hidden_states, attention_mask=attention_mask)
        x = x + self.mlp(self.layernorm(x))
        return x if num_probes is not None else x[:, 0]


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


def block_diagonal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed images (NaViT): ``[B, N]`` segment ids (0 = padding) -> the additive self-attention mask
    ``[B, 1, N, N]`` letting each token attend to the tokens of its own image only: big_vision naflex's
    ``valid_q & valid_k`` with "same image" added. Pad queries see nothing (a uniform softmax, see `additive_mask`)."""
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return additive_mask(same & (segment_ids > 0)[:, None, :, None], dtype)


def pool(
    encoded: torch.Tensor,
    pool_type: str,
    valid: torch.Tensor | None = None,
    map_head: BvMAPHead | None = None,
    map_attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
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

    ``segment_ids`` (``[B, N]``, packed images, NaViT; see `PackedLayout`) pools each image of the rows on its
    own, as the pool of that image's tokens alone, and returns ``[num_images, D]`` in the packed image order
    (``valid`` and ``map_attention_mask`` are then not used): the MAP head runs one probe per image slot of a
    row, its keys masked to the image; ``gap``/``max`` reduce over each image's tokens; ``tok``/``0``/``first``/
    ``last`` take each image's first/last token (a ViT's ``[cls]`` leads its image's run).
    """
    layout = packed_layout(segment_ids) if segment_ids is not None and pool_type != "none" else None
    tokens = layout.gather(encoded) if layout is not None else None  # (T, D) real tokens, sorted by image
    if pool_type == "map":
        if map_head is None:
            raise ValueError("pool_type='map' needs the MAP head")
        if layout is not None:
            slot = layout.image_slots()
            slot_ids = torch.arange(1, int(slot.max()) + 2, device=encoded.device)
            keys = segment_ids[:, None, None, :] == slot_ids[None, None, :, None]  # (B, 1, slots, N)
            probes = map_head(encoded, attention_mask=additive_mask(keys, encoded.dtype), num_probes=len(slot_ids))
            return probes[layout.row_of_image, slot]
        if map_attention_mask is None and valid is not None:
            map_attention_mask = additive_mask(valid[:, None, None, :], encoded.dtype)
        return map_head(encoded, attention_mask=map_attention_mask)
    if pool_type == "gap":
        if layout is not None:
            sums = tokens.new_zeros(layout.num_images, tokens.shape[-1]).index_add(0, layout.image, tokens)
            return sums / torch.tensor(layout.lengths, device=tokens.device, dtype=tokens.dtype)[:, None]
        if valid is None:
            return encoded.mean(dim=1)
        keep = valid[..., None].to(encoded.dtype)
        return (encoded * keep).sum(dim=1) / keep.sum(dim=1)
    if pool_type == "max":
        if layout is not None:
            lowest = tokens.new_full((layout.num_images, tokens.shape[-1]), torch.finfo(tokens.dtype).min)
            return lowest.scatter_reduce(0, layout.image[:, None].expand_as(tokens), tokens, "amax")
        if valid is None:
            return encoded.amax(dim=1)
        keep = valid[..., None].to(encoded.dtype)
        ignore = torch.where(valid[..., None], 0.0, torch.finfo(encoded.dtype).min).to(encoded.dtype)
        return (keep * encoded + ignore).amax(dim=1)
    if pool_type in ("tok", "0", "first"):
        return tokens[layout.starts] if layout is not None else encoded[:, 0]
    if pool_type == "last":
        if layout is not None:
            return tokens[layout.starts + torch.tensor(layout.lengths, device=tokens.device) - 1]
        if valid is not None:
            raise ValueError("pool_type='last' reads a fixed position; big_vision has no masked form of it")
        return encoded[:, -1]
    if pool_type == "none":
        return encoded
    raise ValueError(f"Unknown pool type: {pool_type!r}")


# ---------------------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------------------


def gather_grid_posembs(posemb_for: Callable, patch_coords: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """The posemb of every token of packed images: ``posemb_for((h, w), True)`` (``[1, h*w, D]``, row-major) once
    per distinct grid in ``shapes [T, 2]``, read at ``patch_coords [T, 2]`` -> ``[T, D]``."""
    coords, shapes = patch_coords.to(torch.long), shapes.to(torch.long)
    out = None
    for h, w in torch.unique(shapes, dim=0).tolist():
        table = posemb_for((h, w), True)[0]
        if out is None:
            out = table.new_empty(coords.shape[0], table.shape[-1])
        sel = (shapes == torch.tensor([h, w], device=shapes.device)).all(dim=-1)
        out[sel] = table[coords[sel, 0] * w + coords[sel, 1]]
    return out


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

    def packed(self, patches: torch.Tensor, patch_coords: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        """Packed images (NaViT): ``[T, ph*pw*C]`` patches (``(ph, pw, C)`` order, as big_vision ``patchify``) at
        ``patch_coords [T, 2]`` of grids ``shapes [T, 2]`` -> ``[T, D]``: the conv as a Dense, + each image's posemb
        (resampled to its grid, as ``interpolate_pos_encoding=True``); no ``[cls]`` (the model inserts it)."""
        weight = self.patch_embedding.weight  # (D, C, ph, pw)
        kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        x = F.linear(patches.to(weight.dtype), kernel, self.patch_embedding.bias)
        return self.dropout(x + gather_grid_posembs(self.position_embedding_for, patch_coords, shapes))

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


def init_vit_block_module_(module: nn.Module) -> None:
    """big_vision ``vit.Encoder1DBlock``'s initialisers (also for models holding `BvViTEncoder` s plainly, not as a
    `BvViTPreTrainedModel`): MHA xavier_uniform kernels and zero biases, ``MlpBlock`` xavier_uniform kernels and
    normal(1e-6) biases (loaded tensors are left alone: the ``transformers.initialization`` functions are guarded)."""
    if isinstance(module, BvViTAttention):
        for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            init.xavier_uniform_(proj.weight)
            if proj.bias is not None:  # ViT-22B: no q/k/v biases
                init.zeros_(proj.bias)
    elif isinstance(module, BvViTMLP):
        for fc in (module.fc1, module.fc2):
            init.xavier_uniform_(fc.weight)
            if fc.bias is not None:  # CapPa's decoder_bias=False
                init.normal_(fc.bias, std=1e-6)


class BvViTPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
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
        elif isinstance(module, (BvViTAttention, BvViTMLP)):
            init_vit_block_module_(module)
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

    Packed images (NaViT, not in big_vision): ``segment_ids``/``patch_coords``/``spatial_shapes`` with patches, or
    a list of ``[C, H, W]`` images; see `encode_packed`. Each image's outputs equal its unpacked forward with
    ``interpolate_pos_encoding=True`` (``tests/test_navit.py``). ViT-22B options (``parallel_block``,
    ``qk_layernorm``, ``qkv_bias=False``; off by default) are checked against a numpy reference of the paper.
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
        pixel_values: torch.Tensor | list[torch.Tensor],
        interpolate_pos_encoding: bool = False,
        output_2d: bool = False,
        segment_ids: torch.Tensor | None = None,
        patch_coords: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        packed_attention: str = "auto",
        **kwargs,
    ) -> BvViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images in [-1, 1] (big_vision ``value_range(-1, 1)``), e.g. from `BvImageProcessor`. Packed images
            (with ``segment_ids``): patches ``[num_sequences, length, ph*pw*C]``; or a list of ``[C, H, W]`` images
            of any sizes (multiples of the patch), which are patchified and packed into one sequence.
        interpolate_pos_encoding (`bool`): resample a learned posemb to the input's patch grid, as big_vision
            ``resample_posemb`` does (sincos2d posembs are recomputed for any grid regardless).
        output_2d (`bool`): also return ``pre_logits_2d`` (big_vision ``out["pre_logits_2d"]``).
        segment_ids, patch_coords, spatial_shapes (packed images, NaViT; see `encode_packed`):
            ``[S, L]`` image runs numbered ``1, 2, ...`` per row (0 = pad), ``[S, L, 2]`` patch ``(row, col)``
            (default: complete images, row-major), ``[num_images, 2]`` patch grids.
        packed_attention (`str`): ``"auto"``, ``"dense"``, ``"varlen"``, ``"segments"``, ``"flex"``, ``"flash"``
            (see `resolve_packed_attention`).
        """
        if isinstance(pixel_values, (list, tuple)):
            packed = patchify_images(pixel_values, self.config.patch_size)
            pixel_values, segment_ids = packed["pixel_values"], packed["segment_ids"]
            patch_coords, spatial_shapes = packed["patch_coords"], packed["spatial_shapes"]
        if segment_ids is not None:
            if output_2d:
                raise ValueError("output_2d is not available for packed images (grids differ per image)")
            layout = packed_layout(segment_ids.to(pixel_values.device))
            coords, shapes = packed_coords(layout, patch_coords, spatial_shapes)
            embeddings = self.embeddings.packed(layout.gather(pixel_values), coords, shapes)
            return self.encode_packed(embeddings, layout, packed_attention, **kwargs)
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

    def encode_packed(
        self, embeddings: torch.Tensor, layout: PackedLayout, packed_attention: str = "auto", **kwargs
    ) -> BvViTModelOutput:
        """`encode` for packed images (NaViT, https://arxiv.org/abs/2307.06304): ``embeddings [T, D]`` are the real
        tokens of ``layout`` (its stream: row-major, sorted by image), with their posembs.

        A ``[cls]`` (``pool_type="tok"``) is inserted before each image's tokens. Attention stays inside each image:
        ``"dense"`` runs left-aligned rows with `block_diagonal_mask` through the attention implementation; the
        variable-length kernels (`SegmentAttention`) run the stream as ONE row with no padding and no ``[L, L]``
        mask. Then each image is pooled (`pool` with ``segment_ids``) and ``rep_size`` applied.

        Returns ``pooler_output [num_images, D]`` and ``last_hidden_state`` in the input layout ``[S, L, D]``
        (patch tokens; zeros at pads; ``[cls]`` states are not in it). Each image's outputs are its unpacked
        forward's (``interpolate_pos_encoding=True`` for a ViT, no padding for NaFlex) up to float rounding.
        Recorded ``hidden_states`` are in the layout the encoder ran: rows ``[S, L', D]`` (dense) or ``[1, T', D]``.
        """
        stream = layout
        cls_token = getattr(self.embeddings, "cls_token", None)  # NaFlex has none
        if cls_token is not None:  # vit._Model: [cls] + tokens, per image
            stream, perm = layout.with_leading_tokens()
            cls = cls_token[0].to(embeddings.dtype).expand(layout.num_images, -1)
            embeddings = torch.cat([embeddings, cls])[perm]
        backend = resolve_packed_attention(
            packed_attention, self.config._attn_implementation, embeddings.device, embeddings.dtype
        )
        if backend == "dense":
            row, position, segment_ids = stream.left_aligned()
            rows = embeddings.new_zeros(*segment_ids.shape, embeddings.shape[-1])
            rows = rows.index_put((row, position), embeddings)  # (S, L', D)
            mask = block_diagonal_mask(segment_ids, embeddings.dtype)
            encoded = self.encoder(rows, attention_mask=mask, **kwargs)[row, position]  # out["encoded"]
        else:
            attention = SegmentAttention(stream.lengths, kernel=backend)
            encoded = self.encoder(embeddings[None], attention_mask=attention, **kwargs)[0]  # out["encoded"]
        pooled = pool(encoded[None], self.config.pool_type, map_head=self.map_head, segment_ids=stream.segment_ids())
        if stream is not layout:  # drop the [cls] states
            encoded = encoded[perm.argsort()[: layout.num_tokens]]
        if self.pre_logits is not None:
            pooled = torch.tanh(self.pre_logits(pooled))
        if self.config.pool_type == "none":
            pooled = layout.scatter(pooled[0])
        return BvViTModelOutput(last_hidden_state=layout.scatter(encoded), pooler_output=pooled)


def packed_coords(
    layout: PackedLayout, patch_coords: torch.Tensor | None, spatial_shapes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per real token of packed images: ``(row, col)`` coordinates and its image's grid, both ``[T, 2]``.

    ``spatial_shapes [num_images, 2]`` defaults to each image's ``max(coords) + 1`` (as big_vision naflex, wrong
    if tokens were dropped); ``patch_coords`` to complete images in row-major order."""
    device = layout.image.device
    if patch_coords is None:
        if spatial_shapes is None:
            raise ValueError("packed images need spatial_shapes (num_images, 2) and/or patch_coords (S, L, 2)")
        coords = grid_coords(spatial_shapes.to(device), layout.lengths)
    else:
        coords = layout.gather(patch_coords.to(device)).to(torch.long)
    if spatial_shapes is None:
        lowest = coords.new_zeros(layout.num_images, 2)
        spatial_shapes = lowest.scatter_reduce(0, layout.image[:, None].expand_as(coords), coords, "amax") + 1
    spatial_shapes = spatial_shapes.to(device).to(torch.long)
    if spatial_shapes.shape != (layout.num_images, 2):
        raise ValueError(
            f"spatial_shapes has shape {tuple(spatial_shapes.shape)}; packed images need ({layout.num_images}, 2)"
        )
    return coords, spatial_shapes[layout.image]


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
