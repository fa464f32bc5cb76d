"""PyTorch port of big_vision's GIVT (https://arxiv.org/abs/2312.02116): the transformer, its Gaussian-mixture
head, the iRevNet adaptor, the samplers, and a class label -> image / image -> prediction pipeline.

Ported from big_vision at commit 0127fb6:

- `BvGivtModel`: ``big_vision/models/proj/givt/givt.py`` (``Model``, ``Decoder``, ``EncoderDecoderBlock``); the
  encoder of the image-conditional models is big_vision's ``vit.Encoder`` (`BvViTEncoder`);
- `BvGaussianMixture`: ``givt.Model.get_pdf`` (distrax ``MixtureSameFamily`` of ``MultivariateNormalDiag`` or,
  per channel, of ``Normal``; ``MultivariateNormalTri`` for ``multivariate``), also used by JetFormer;
- `BvGivtModel.generate`: ``big_vision/models/proj/givt/decode.py`` (``generate``: ancestral sampling with a KV
  cache, temperatures, beam / fan search) and ``parallel_decode.py`` (``decode_masked``: the MaskGIT schedule);
  `BvCFGDensity`: ``parallel_decode.CFGDensity`` (classifier-free guidance by rejection sampling);
- `BvGivtAdaptor`: ``big_vision/models/proj/givt/adaptor.py`` (``IRevNet``, ``Model``), trained with the GIVT and
  stored under ``params_adaptor`` by ``big_vision/trainers/proj/givt/generative.py``;
- `BvGivtPipeline`: ``generative.py``'s ``predict_fn_sampling`` (sample, adaptor inverse, VAE decode) and its
  panoptic / depth post-processing (``uvim/panoptic_task.py panoptic_predictions_from_logits``,
  ``givt/utils.py unbin_depth``).

Why our own ``PreTrainedModel``: no transformers model predicts a continuous mixture distribution over VAE latents.

big_vision -> here (``model.apply(..., sequence, labels, image=..., input_mask=...)`` returns ``(logits, pdf)``):
    ``logits``                         -> ``BvGivtOutput.logits`` (the raw head output)
    ``-pdf.log_prob(sequence)``        -> ``BvGivtOutput.nll`` (``[B, L]``, or ``[B, L, D]`` per channel)
    ``pdf``                            -> ``model.get_distribution(logits)`` (`BvGaussianMixture`)
    the trainer's ``loss``             -> ``BvGivtOutput.loss`` (mean NLL; over the masked tokens for MaskGIT)
    ``decode(..., return_reps=True)``  -> ``hidden_states`` (``output_hidden_states=True``; ``blockN_rep`` is
                                          ``hidden_states[N + 1].mean(1)``) and ``last_hidden_state``
                                          (``pre_logits`` is its mean over the sequence)

Quirks reproduced (commented where they act): the causal input is ``[label, tokens[:-1]]``; the masked input
prepends the label and drops it from the logits; ``mask_style="concat"`` keeps the EVEN channels of two
embeddings; ``drop_labels_probability >= 0.999`` replaces every label by ``NOLABEL``, also at inference; decoder
LayerNorms and attention have no biases, the final LayerNorm has; ``temp_probs`` MULTIPLIES the mixture logits;
in beam search big_vision runs one more (discarded) step whose KV-cache write and position are clamped to the
last slot, and that step still re-ranks the beams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, initialization as init
from transformers.utils import ModelOutput
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_givt import BvGivtConfig
from .decoder import BvDecoderAttention, BvDecoderLayer, init_decoder_module_
from .loading import BvStrictLoadingMixin
from .modeling_bv_givt_vae import share_attn_implementation
from .modeling_bv_vit import BvViTAttention, BvViTEncoder, BvViTMLP, additive_mask, init_vit_block_module_

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------------
# The output distribution (big_vision givt.Model.get_pdf) and classifier-free guidance (parallel_decode.CFGDensity)
# ---------------------------------------------------------------------------------------------------------------


def square_plus(x: torch.Tensor, fixed: bool = True) -> torch.Tensor:
    """big_vision ``Model._square_plus`` (https://twitter.com/jon_barron/status/1387167648669048833):
    ``(x + sqrt(x^2 + 4)) / 2``; ``fixed=False`` is the original ``x + sqrt(x^2 + 4) / 2``."""
    root = torch.sqrt(x * x + 4)
    return (x + root) / 2 if fixed else x + root / 2


def normal_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """distrax ``Normal(loc, scale).log_prob(x)``, elementwise."""
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(scale) - 0.5 * LOG_2PI


class BvGaussianMixture:
    r"""A mixture of Gaussians per position, as big_vision's ``givt.Model.get_pdf`` returns it (distrax).

    Three layouts:

    - joint (``per_channel=False``): ``log_weights [..., M]``, ``locs``/``scales [..., M, D]``: a mixture of
      diagonal ``D``-dimensional Gaussians (``MixtureSameFamily(Categorical, MultivariateNormalDiag)``);
      ``log_prob(x [..., D]) -> [...]``;
    - per channel (``per_channel=True``): ``log_weights``, ``locs``, ``scales [..., D, M]``: an independent
      one-dimensional mixture per channel (``MixtureSameFamily(Categorical, Normal)``); ``log_prob -> [..., D]``;
    - full covariance: ``locs [..., 1, D]`` and ``scale_tril [..., 1, D, D]`` (``MultivariateNormalTri``, one
      component; only the lower triangle is used); ``log_prob -> [...]``.

    ``sample(generator=...)`` picks a component with the mixture weights, then ``loc + scale * eps``; seeded
    generators make it reproducible. Build it from a head output with :meth:`from_logits` (or
    `BvGivtModel.get_distribution`).

    Example:
        >>> import torch
        >>> logits = torch.randn(2, 16, 4 + 2 * 4 * 8)  # 4 components of 8-dimensional Gaussians
        >>> pdf = BvGaussianMixture.from_logits(logits, num_mixtures=4, out_dim=8, per_channel_mixtures=False)
        >>> x = pdf.sample(generator=torch.Generator().manual_seed(0))
        >>> tuple(x.shape), tuple(pdf.log_prob(x).shape)
        ((2, 16, 8), (2, 16))
    """

    def __init__(self, log_weights: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor | None = None, *,
                 scale_tril: torch.Tensor | None = None, per_channel: bool = False):
        if (scales is None) == (scale_tril is None):
            raise ValueError("give exactly one of `scales` (diagonal) or `scale_tril` (full covariance)")
        if per_channel and scale_tril is not None:
            raise ValueError("a per-channel mixture has one-dimensional components: no scale_tril")
        self.per_channel = per_channel
        # Internally every layout is a mixture over the last axis of `log_weights` of E-dimensional Gaussians;
        # per channel, E = 1 and the channels are a batch axis.
        self.log_weights = torch.log_softmax(log_weights, dim=-1)
        self.locs = locs[..., None] if per_channel else locs
        self.scales = None if scales is None else (scales[..., None] if per_channel else scales)
        self.scale_tril = None if scale_tril is None else torch.tril(scale_tril)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, *, num_mixtures: int, out_dim: int, per_channel_mixtures: bool = True,
                    multivariate: bool = False, fix_square_plus: bool = True, scale_tol: float = 1e-6,
                    temperature_scales: float | None = None,
                    temperature_probs: float | None = None) -> BvGaussianMixture:
        """big_vision ``givt.Model.get_pdf(logits, temperature_scales, temperature_probs)``: the head output
        ``[..., num_logits]`` -> the distribution. ``temperature_scales`` multiplies the scales (big_vision's
        ``temp``); ``temperature_probs`` MULTIPLIES the mixture logits (``temp_probs``: an inverse temperature)."""
        d, m = out_dim, num_mixtures
        if multivariate:
            if logits.shape[-1] != d * d + d:
                raise ValueError(f"expected {d * d + d} logits for a {d}-dimensional full-covariance Gaussian, "
                                 f"got {logits.shape[-1]}")
            scales = square_plus(logits[..., : d * d], fix_square_plus).unflatten(-1, (d, d))
            eye = torch.eye(d, dtype=logits.dtype, device=logits.device)
            scales = torch.maximum(scales, eye * scale_tol)  # keeps the diagonal positive
            if temperature_scales is not None:
                scales = scales * temperature_scales
            zeros = logits.new_zeros(*logits.shape[:-1], 1)
            return cls(zeros, logits[..., None, d * d:], scale_tril=scales[..., None, :, :])
        if per_channel_mixtures:
            if logits.shape[-1] != 3 * m * d:
                raise ValueError(f"expected 3 * {m} * {d} = {3 * m * d} logits (per-channel mixtures), "
                                 f"got {logits.shape[-1]}")
            # [..., 3 * M * D] -> [..., 3 * D, M] -> three [..., D, M]
            probs, locs, scales = logits.unflatten(-1, (3 * d, m)).split(d, dim=-2)
            if temperature_probs is not None:
                probs = probs * temperature_probs
            scales = torch.clamp(square_plus(scales, fix_square_plus), min=scale_tol)
            if temperature_scales is not None:
                scales = scales * temperature_scales
            return cls(probs, locs, scales, per_channel=True)
        if logits.shape[-1] != m + 2 * m * d:
            raise ValueError(f"expected {m} + 2 * {m} * {d} = {m + 2 * m * d} logits (a mixture of {m} "
                             f"{d}-dimensional Gaussians), got {logits.shape[-1]}")
        # [M mixture logits | (M, 2, D): locs and raw scales]
        prob_logits, other = logits[..., :m], logits[..., m:].unflatten(-1, (m, 2, d))
        if temperature_probs is not None:
            prob_logits = prob_logits * temperature_probs
        scales = torch.clamp(square_plus(other[..., 1, :], fix_square_plus), min=scale_tol)
        if temperature_scales is not None:
            scales = scales * temperature_scales
        return cls(prob_logits, other[..., 0, :], scales)

    @property
    def num_components(self) -> int:
        return self.log_weights.shape[-1]

    def _event(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., None] if self.per_channel else x

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; loc_m, scale_m)`` of every component ``m``: ``[..., M]`` (per channel ``[..., D, M]``)."""
        diff = self._event(x)[..., None, :] - self.locs  # [..., M, E]
        if self.scale_tril is None:
            return normal_log_prob(diff, torch.zeros_like(diff), self.scales).sum(-1)
        z = torch.linalg.solve_triangular(self.scale_tril, diff[..., None], upper=False)[..., 0]
        log_det = torch.log(torch.abs(torch.diagonal(self.scale_tril, dim1=-2, dim2=-1))).sum(-1)
        return -0.5 * (z * z).sum(-1) - log_det - 0.5 * diff.shape[-1] * LOG_2PI

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)``: ``[...]`` for ``x [..., D]`` (per channel: ``[..., D]``), distrax ``log_prob``."""
        return torch.logsumexp(self.log_weights + self.component_log_prob(x), dim=-1)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_prob(x))

    def mean(self) -> torch.Tensor:
        """The mixture mean ``[..., D]``."""
        mean = (self.log_weights.exp()[..., None] * self.locs).sum(-2)
        return mean[..., 0] if self.per_channel else mean

    def sample_components(self, sample_shape: Sequence[int] = (),
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Component indices drawn with the mixture weights: ``[*sample_shape, *batch]`` (per channel the channels
        are part of the batch)."""
        weights = self.log_weights.exp().expand(*sample_shape, *self.log_weights.shape)
        flat = weights.reshape(-1, weights.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(weights.shape[:-1])

    def _select(self, tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``tensor[..., index, :...]`` along the component axis (``-2`` of locs/scales, ``-3`` of scale_tril)."""
        extra = tensor.ndim - self.log_weights.ndim  # trailing event axes after the component axis
        tensor = tensor.expand(*index.shape, *tensor.shape[-extra - 1:])
        idx = index.reshape(*index.shape, 1, *([1] * extra)).expand(*index.shape, 1, *tensor.shape[-extra:])
        return tensor.gather(index.ndim, idx).squeeze(index.ndim)

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> torch.Tensor:
        """``[*sample_shape, ..., D]`` samples: a component per position (per channel), then a Gaussian draw."""
        index = self.sample_components(sample_shape, generator)
        loc = self._select(self.locs, index)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        if self.scale_tril is None:
            x = loc + self._select(self.scales, index) * eps
        else:
            x = loc + (self._select(self.scale_tril, index) @ eps[..., None])[..., 0]
        return x[..., 0] if self.per_channel else x

    def component(self, generator: torch.Generator | None = None,
                  index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One Gaussian per position and channel: ``(loc, scale, index)``, each ``[..., D]`` (big_vision
        ``parallel_decode._assert_single_component_get_loc_scale``). A joint mixture draws the component (or takes
        ``index``); a per-channel model must have a single component."""
        if self.scale_tril is not None:
            raise ValueError("classifier-free guidance needs a mixture of diagonal Gaussians (big_vision: "
                             "'Expected mixture!'), not a full-covariance Gaussian")
        if self.per_channel:
            if self.num_components != 1:
                raise ValueError(f"classifier-free guidance needs one Gaussian per channel, this head has "
                                 f"{self.num_components} per channel (big_vision: 'Expected one mixture!')")
            return self.locs[..., 0, 0], self.scales[..., 0, 0], None
        if index is None:
            index = self.sample_components((), generator)
        return self._select(self.locs, index), self._select(self.scales, index), index


class BvCFGDensity:
    r"""Classifier-free guidance as big_vision ``parallel_decode.CFGDensity``: per channel, the unnormalised density
    ``p(x) = p_c(x)^(1 + w) / p_u(x)^w`` of the conditional and unconditional Gaussians of one mixture component
    (drawn from the conditional mixture, the same for both), sampled by rejection from ``N(loc_c, 2 max(s_c, s_u))``
    with big_vision's envelope factor (the peak ratio over ``loc_c + linspace(-10, 10, 1001)``); the first accepted
    of ``max_samples`` candidates is kept, else a draw from the conditional Gaussian.

    Candidates are drawn in chunks until every entry has one accepted (the first accepted of a sequence of
    candidates is the same in distribution as big_vision's first accepted among 1000 drawn at once).

    Example:
        >>> import torch
        >>> logits_c, logits_u = torch.randn(2, 3, 4 + 2 * 4 * 8), torch.randn(2, 3, 4 + 2 * 4 * 8)
        >>> kw = dict(num_mixtures=4, out_dim=8, per_channel_mixtures=False)
        >>> cfg = BvCFGDensity(BvGaussianMixture.from_logits(logits_c, **kw),
        ...                    BvGaussianMixture.from_logits(logits_u, **kw), weight=0.4,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> tuple(cfg.sample(generator=torch.Generator().manual_seed(1)).shape)
        (2, 3, 8)
    """

    def __init__(self, pdf_c: BvGaussianMixture, pdf_u: BvGaussianMixture, weight: float,
                 generator: torch.Generator | None = None):
        self.loc_c, self.scale_c, index = pdf_c.component(generator)
        self.loc_u, self.scale_u, _ = pdf_u.component(index=index)
        self.weight = w = float(weight)
        self.simple_scale = torch.maximum(self.scale_c, self.scale_u) * 2
        # log p(x) = -((1 + w) z_c^2 - w z_u^2) / 2 + const, z = (x - loc) / scale
        self._inv_c, self._inv_u = 1.0 / self.scale_c, 1.0 / self.scale_u
        self._const = -(1 + w) * torch.log(self.scale_c) + w * torch.log(self.scale_u) - 0.5 * LOG_2PI
        # big_vision: fac = max_t p(loc_c + t) / simple.prob(loc_c), t over linspace(-10, 10, 1001). log p(loc_c + t)
        # is a quadratic in t, so the grid maximum is at a grid point next to its vertex or at an end: 4 candidates.
        curvature = -0.5 * ((1 + w) * self._inv_c**2 - w * self._inv_u**2)
        slope = w * (self.loc_c - self.loc_u) * self._inv_u**2
        vertex = torch.where(curvature < 0, -slope / (2 * curvature.clamp(max=-torch.finfo(curvature.dtype).tiny)),
                             torch.zeros_like(curvature))
        k = torch.floor((vertex.clamp(-10.0, 10.0) + 10.0) / 0.02)
        steps = torch.stack([torch.zeros_like(k), k.clamp(0, 1000), (k + 1).clamp(0, 1000), torch.full_like(k, 1000)])
        peak = self.prob(self.loc_c[None] + (steps * 0.02 - 10.0)).amax(0)
        self.fac = peak / torch.exp(normal_log_prob(self.loc_c, self.loc_c, self.simple_scale))  # 1/(sqrt(2 pi) s)
        self.acceptance: torch.Tensor | None = None

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``(1 + w) log p_c(x) - w log p_u(x)``, per channel (big_vision ``_unnormalized_p``)."""
        z_c, z_u = (x - self.loc_c) * self._inv_c, (x - self.loc_u) * self._inv_u
        return -0.5 * ((1 + self.weight) * z_c * z_c - self.weight * z_u * z_u) + self._const

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_prob(x))

    def sample(self, generator: torch.Generator | None = None, max_samples: int = 1000) -> torch.Tensor:
        """Rejection sampling (big_vision ``rejection_sample``); ``self.acceptance`` is then the fraction of entries
        that found a sample (big_vision's ``rejection_sampling_success``, divided by 100)."""
        shape, loc, simple = self.loc_c.shape, self.loc_c, self.simple_scale
        out, done = torch.zeros_like(loc), torch.zeros(shape, dtype=torch.bool, device=loc.device)
        drawn, chunk = 0, 8
        while drawn < max_samples:  # growing chunks of candidates, until every entry accepted one
            n = min(chunk, max_samples - drawn)
            xs = loc + simple * torch.randn((n, *shape), generator=generator, device=loc.device, dtype=loc.dtype)
            envelope = self.fac * torch.exp(normal_log_prob(xs, loc, simple))
            ys = torch.rand((n, *shape), generator=generator, device=loc.device, dtype=loc.dtype) * envelope
            accepted = ys < self.prob(xs)
            first = accepted.to(torch.uint8).argmax(0)  # the first accepted candidate (if any)
            found = accepted.any(0)
            out = torch.where(found & ~done, xs.gather(0, first[None]).squeeze(0), out)
            done |= found
            drawn, chunk = drawn + n, chunk * 4
            if bool(done.all()):
                break
        fallback = loc + self.scale_c * torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)
        self.acceptance = done.float().mean()
        return torch.where(done, out, fallback)


# ---------------------------------------------------------------------------------------------------------------
# MaskGIT schedule (big_vision givt.apply_mask_schedule, givt._random_mask_with_ratios, parallel_decode)
# ---------------------------------------------------------------------------------------------------------------


def apply_mask_schedule(ratio: float | torch.Tensor, method: str) -> torch.Tensor:
    """big_vision ``givt.apply_mask_schedule``: the fraction still masked, ``cos(pi/2 r)`` or ``1 - r^e``
    (``"pow:e"``), clipped to ``[1e-6, 1]``; float32 as in big_vision."""
    ratio = torch.as_tensor(ratio, dtype=torch.float32)
    if method == "cosine":
        mask_ratio = torch.cos(torch.tensor(math.pi / 2.0, dtype=torch.float32) * ratio)
    elif method.startswith("pow:"):
        mask_ratio = 1.0 - ratio ** float(method[len("pow:"):])
    else:
        raise ValueError(f"unknown mask schedule {method!r}")
    return mask_ratio.clamp(1e-6, 1.0)


def random_mask_with_ratios(ratios: torch.Tensor, seq_len: int, generator: torch.Generator | None = None
                            ) -> torch.Tensor:
    """big_vision ``givt._random_mask_with_ratios``: per row, the first ``ratio * seq_len`` of ``seq_len`` positions
    are True, then the row is shuffled. Returns ``[B, seq_len]`` bool."""
    ratios = ratios.clamp(0, 1)
    indices = torch.arange(seq_len, dtype=torch.float32, device=ratios.device)
    mask = indices[None, :] < ratios[:, None] * seq_len
    order = torch.rand(mask.shape, generator=generator, device=mask.device).argsort(dim=-1)
    return mask.gather(-1, order)


def mask_by_random_topk(mask_len: torch.Tensor, probs: torch.Tensor, temperature: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """big_vision ``parallel_decode.mask_by_random_topk``: True at the ``mask_len`` (per row) positions of lowest
    ``log(probs) + temperature * gumbel`` (a stable sort, as ``jnp.argsort``)."""
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
    confidence = torch.log(probs) + temperature * gumbel
    order = confidence.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                             .expand_as(order).contiguous())
    return ranks < mask_len


# ---------------------------------------------------------------------------------------------------------------
# The transformer (big_vision givt.Decoder / EncoderDecoderBlock) and the adaptor (adaptor.py)
# ---------------------------------------------------------------------------------------------------------------


class BvGivtKVCache:
    """Keys and values of the decoder's self-attention, per layer ``[B, heads, length, head_dim]`` (big_vision's
    flax ``decode=True`` cache), with the batch re-indexing of beam search."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self.keys:
            key = torch.cat([self.keys[layer_idx], key], dim=2)
            value = torch.cat([self.values[layer_idx], value], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    def get_seq_length(self) -> int:
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keeps the batch rows ``index`` (beam search)."""
        for store in (self.keys, self.values):
            for layer, tensor in store.items():
                store[layer] = tensor.index_select(0, index)

    def truncate(self, length: int) -> None:
        for store in (self.keys, self.values):
            for layer, tensor in store.items():
                store[layer] = tensor[:, :, :length]


class BvGivtDecoderLayer(BvDecoderLayer):
    """big_vision ``givt.EncoderDecoderBlock`` (`BvDecoderLayer`): bias-free LayerNorm -> bias-free self-attention
    -> residual, (with an encoder) LayerNorm -> cross-attention -> residual, LayerNorm -> ``vit.MlpBlock`` (with
    biases) -> residual. Dropout after both attentions (and inside them and the MLP), none after the MLP. The
    cross-attention recomputes the image keys at every decoding step (`BvGivtKVCache` holds self-attention only), as
    big_vision's does."""

    def __init__(self, config: BvGivtConfig, layer_idx: int):
        cross_width = config.hidden_size if config.encoder_config is not None else None
        super().__init__(config, layer_idx, cross_width, norm_bias=False)


class BvGivtDecoder(nn.Module):
    """big_vision ``givt.Decoder``: learned ``pos_emb`` (``PosEmbedTargets``), the blocks, a LayerNorm (with bias)
    and ``LogitsDense``."""

    def __init__(self, config: BvGivtConfig):
        super().__init__()
        self.position_embedding = nn.Parameter(torch.zeros(1, config.decoder_length, config.hidden_size))
        self.layers = nn.ModuleList([BvGivtDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.num_logits)

    def forward(self, embeds: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values: BvGivtKVCache | None = None,
                position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds [B, L, E]`` at positions ``position .. position + L - 1`` -> ``(logits, normed hidden states)``."""
        hidden = embeds + self.position_embedding[:, position:position + embeds.shape[1]].to(embeds.dtype)
        for layer in self.layers:
            hidden = layer(hidden, encoder_hidden_states, attention_mask, past_key_values)
        hidden = self.norm(hidden)
        return self.head(hidden), hidden


class BvGivtImageEncoder(nn.Module):
    """The image encoder of big_vision ``givt.Model.encode``: ``EmbedPatches`` conv, ``pos_embedding_encoder``,
    ``vit.Encoder`` (with its final ``encoder_norm``). No dropout after the posemb (unlike ``vit._Model``)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        grid = config.grid_size
        self.position_embedding = nn.Parameter(torch.zeros(1, grid[0] * grid[1], config.hidden_size))
        self.encoder = BvViTEncoder(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h, w = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (self.config.num_channels, h, w):
            raise ValueError(f"pixel_values must be [batch, {self.config.num_channels}, {h}, {w}] images in "
                             f"[-1, 1], got shape {tuple(pixel_values.shape)}")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, E), row-major patches
        return self.encoder(x + self.position_embedding)


class BvGivtIRevNetBlock(nn.Module):
    """big_vision ``adaptor.IRevNetBlock``: ``(x1, x2) -> (x2, x1 + F(x2))``; ``F`` = [GN, ReLU] (not in the first
    block), conv3x3, GN, ReLU, conv3x3, dropout, GN, ReLU, conv3x3 (bias-free convs, padding 1)."""

    def __init__(self, channels: int, bottleneck: int, groups: int, first: bool, dropout: float):
        super().__init__()
        self.norm0 = None if first else nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv0 = nn.Conv2d(channels, bottleneck, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, bottleneck, eps=1e-6)
        self.conv1 = nn.Conv2d(bottleneck, bottleneck, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.GroupNorm(groups, bottleneck, eps=1e-6)
        self.conv2 = nn.Conv2d(bottleneck, channels, 3, padding=1, bias=False)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm0 is not None:
            x = F.relu(self.norm0(x))
        x = F.relu(self.norm1(self.conv0(x)))
        x = F.relu(self.norm2(self.dropout(self.conv1(x))))
        return self.conv2(x)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x2, self.residual(x2) + x1

    def inverse(self, x2: torch.Tensor, y1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -self.residual(x2) + y1, x2


class BvGivtAdaptor(nn.Module):
    """big_vision ``adaptor.Model``: the invertible iRevNet between the VAE latents and GIVT's tokens. The sequence
    ``[B, L, C]`` is laid out as an ``h x w`` image (``pixel_shuffle_patch_size``), its channels split in halves."""

    def __init__(self, config: BvGivtConfig):
        super().__init__()
        self.grid = config.adaptor_grid
        channels = config.out_dim
        bottleneck = config.adaptor_bottleneck_channels or channels
        groups = min(32, channels // 2)
        self.blocks = nn.ModuleList([
            BvGivtIRevNetBlock(channels // 2, bottleneck // 2, groups, i == 0, config.adaptor_dropout)
            for i in range(config.adaptor_num_blocks)
        ])

    def _image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.grid
        image = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)  # "b (h w) c -> b h w c", channels first
        return image.chunk(2, dim=1)

    @staticmethod
    def _sequence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], dim=1)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents -> GIVT tokens (big_vision ``adaptor.Model.forward``)."""
        a, b = self._image(latents)
        for block in self.blocks:
            a, b = block(a, b)
        return self._sequence(a, b)

    def inverse(self, tokens: torch.Tensor) -> torch.Tensor:
        """GIVT tokens -> VAE latents (``adaptor.Model.inverse``)."""
        a, b = self._image(tokens)
        for block in reversed(self.blocks):
            a, b = block.inverse(a, b)
        return self._sequence(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Outputs and the model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BvGivtOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        big_vision's training loss: the mean of ``nll`` (MaskGIT: over the masked tokens only).
    logits (`torch.FloatTensor` of shape `(batch_size, seq_len, num_logits)`):
        The raw head output (big_vision ``logits``); `BvGivtModel.get_distribution` turns it into the mixture.
    nll (`torch.FloatTensor` of shape `(batch_size, seq_len)`, or `(batch_size, seq_len, out_dim)` per channel):
        ``-log p(latents)`` per token (big_vision ``-pdf.log_prob(sequence)``), of the adaptor's output when the
        model has one.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, seq_len, hidden_size)`):
        The decoder output after its final LayerNorm (big_vision ``pre_logits`` is its mean over the sequence).
    hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
        The decoder's input (after the posemb) and the output of every block (``blockN_rep`` is the mean over the
        sequence of entry ``N + 1``).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    nll: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BvGivtGenerateOutput(ModelOutput):
    r"""
    latents (`torch.FloatTensor` of shape `(batch_size, seq_len, out_dim)`):
        The sampled sequence in the VAE's latent space (after the adaptor's inverse, if any): decode it with the
        VAE.
    sequences (`torch.FloatTensor` of shape `(batch_size, seq_len, out_dim)`):
        The sampled sequence as GIVT sees it (equal to ``latents`` without an adaptor).
    log_probs (`torch.FloatTensor` of shape `(batch_size, seq_len)`):
        Causal models: ``log p`` of each sampled token under the distribution it was sampled from (temperatures
        and guidance applied; unnormalised with guidance).
    logits (`torch.FloatTensor` of shape `(batch_size, seq_len, num_logits)`, with `output_logits=True`):
        Causal models: the head output that each token was sampled from, computed with the KV cache.
    uncovered_at_step (`torch.LongTensor` of shape `(batch_size, seq_len)`):
        Masked models: the decoding step at which each token was fixed.
    """

    latents: torch.FloatTensor | None = None
    sequences: torch.FloatTensor | None = None
    log_probs: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    uncovered_at_step: torch.LongTensor | None = None


class BvGivtPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    config: BvGivtConfig
    config_class = BvGivtConfig
    base_model_prefix = "givt"
    main_input_name = "latents"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BvGivtDecoderLayer", "BvViTEncoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": BvGivtDecoderLayer}

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # As `BvViTPreTrainedModel`: transformers skips parameter-less modules of custom code, whose branches below
        # must run; the guarded `transformers.initialization` functions leave loaded tensors alone.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers (``givt.py``, ``adaptor.py``, ``vit.py``); loaded tensors are left alone."""
        super()._init_weights(module)
        if isinstance(module, BvGivtModel):
            if module.config.zero_embedding_init:
                init.zeros_(module.label_embedding.weight)
            else:
                init.normal_(module.label_embedding.weight, std=1.0)  # EmbedLabels: normal(1.0)
            init.lecun_normal_(module.latent_embedding.weight)  # EmbedTargets: nn.Dense defaults
            init.zeros_(module.latent_embedding.bias)
        elif isinstance(module, BvGivtDecoder):
            init.normal_(module.position_embedding, std=module.position_embedding.shape[-1] ** -0.5)
            init.zeros_(module.head.weight)  # LogitsDense: kernel_init=zeros
            init.zeros_(module.head.bias)
        elif isinstance(module, BvDecoderAttention):
            init_decoder_module_(module)  # flax MHA default: lecun_normal kernels
        elif isinstance(module, (BvViTAttention, BvViTMLP)):
            init_vit_block_module_(module)
        elif isinstance(module, BvGivtImageEncoder):
            init.lecun_normal_(module.patch_embedding.weight)
            init.zeros_(module.patch_embedding.bias)
            init.normal_(module.position_embedding, std=module.position_embedding.shape[-1] ** -0.5)
        elif isinstance(module, BvGivtIRevNetBlock):
            for conv in (module.conv0, module.conv1, module.conv2):
                init.lecun_normal_(conv.weight)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class BvGivtModel(BvGivtPreTrainedModel):
    r"""GIVT: a transformer over VAE latent tokens with a Gaussian-mixture output (big_vision ``proj.givt.givt``).

    ``model(latents=[B, L, D], class_labels=[B])`` (``input_mask=[B, L]`` bool, True = masked, for MaskGIT models;
    ``pixel_values`` for image-conditional models) returns the head output ``logits``, ``nll = -log p(latents)`` per
    token and the training ``loss``; ``get_distribution(logits)`` is the mixture; ``generate`` samples new latent
    sequences as big_vision's samplers do. Trains with ``Trainer`` (``loss`` is big_vision's NLL; in training mode the
    label dropout of classifier-free guidance and the MaskGIT training masks are drawn as the trainer draws them).

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtConfig
        >>> config = BvGivtConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        ...                       num_classes=10, seq_len=16, out_dim=4, num_mixtures=2, per_channel_mixtures=False,
        ...                       drop_labels_probability=0.1, fix_square_plus=True)
        >>> model = BvGivtModel(config).eval()
        >>> out = model(latents=torch.randn(2, 16, 4), class_labels=torch.tensor([3, 7]))
        >>> tuple(out.logits.shape), tuple(out.nll.shape)
        ((2, 16, 18), (2, 16))
        >>> samples = model.generate(class_labels=torch.tensor([3, 7]), cfg_weight=0.4, temperature=0.95, seed=0)
        >>> tuple(samples.latents.shape)
        (2, 16, 4)

    Parity (``tests/test_bv_givt.py``, fp32, against big_vision at commit 0127fb6 on random weights, from ``.npz``
    with or without ``params/``, float32 or bfloat16): max abs error on ``logits`` / ``nll`` 1.2e-6 / 3.8e-6 on the
    golden ``givt_ar``, 1.1e-6 / 5.7e-6 on ``givt_masked`` (``mask_style="concat"``), 4.9e-7 / 1.9e-6 on
    ``givt_encdec`` (image-conditional, per-channel), 8.3e-7 / 1.9e-6 on ``givt_adaptor``; the samplers match the
    moments of big_vision's ``decode.generate`` and ``parallel_decode.decode_masked`` (with and without guidance)
    on many samples, and the KV-cached logits equal the forward's within 1.4e-6. Not checked against the real
    checkpoints (not available here).
    """

    def __init__(self, config: BvGivtConfig):
        super().__init__(config)
        share_attn_implementation(config)
        self.label_embedding = nn.Embedding(config.label_vocab_size, config.hidden_size)
        self.latent_embedding = nn.Linear(config.out_dim, config.hidden_size)
        self.image_encoder = BvGivtImageEncoder(config.encoder_config) if config.encoder_config is not None else None
        self.decoder = BvGivtDecoder(config)
        self.adaptor = BvGivtAdaptor(config) if config.adaptor_num_blocks else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.latent_embedding

    # -- inputs ----------------------------------------------------------------------------------------------------

    def _check_latents(self, latents: torch.Tensor) -> None:
        d, length = self.config.out_dim, self.config.seq_len
        if latents.ndim != 3 or latents.shape[-1] != d or latents.shape[1] > length:
            raise ValueError(f"latents must be [batch, <= {length}, {d}] (this GIVT models {d}-dimensional tokens, "
                             f"big_vision out_dim; the VAE's latent width must match), got {tuple(latents.shape)}")

    def label_ids(self, class_labels: torch.Tensor | Sequence[int] | None, batch_size: int,
                  drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The label-embedding ids of a batch (big_vision ``Model._drop_labels`` + ``embed_labels``): the class ids,
        ``NOLABEL`` where ``drop_labels`` is True (or everywhere with ``drop_labels_probability >= 0.999``); without
        labels, id 0 (the BOS token of models with ``num_labels=None``)."""
        cfg, device = self.config, self.label_embedding.weight.device
        if class_labels is None:
            if cfg.num_classes not in (None, 1):
                raise ValueError(f"this GIVT is class-conditional ({cfg.num_classes} classes): pass class_labels")
            return torch.zeros(batch_size, dtype=torch.long, device=device)  # big_vision embed_labels(None)
        ids = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if ids.shape[0] != batch_size:
            raise ValueError(f"class_labels has {ids.shape[0]} entries for a batch of {batch_size}")
        num = cfg.num_classes or 1
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num):
            raise ValueError(f"class_labels must lie in [0, {num}), got [{int(ids.min())}, {int(ids.max())}]")
        nolabel = cfg.special_labels.get("nolabel")
        if cfg.drop_labels_probability >= 0.999:  # big_vision: "Dropping all labels..."
            return torch.full_like(ids, nolabel)
        if drop_labels is not None:
            if nolabel is None:
                raise ValueError("drop_labels needs a NOLABEL embedding: this model has drop_labels_probability=0 "
                                 "(no classifier-free guidance)")
            ids = torch.where(torch.as_tensor(drop_labels, device=device).bool(), nolabel, ids)
        return ids

    def _special(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self.label_embedding(torch.full(shape, self.config.special_labels[name], dtype=torch.long,
                                               device=self.label_embedding.weight.device))

    def _masked_inputs(self, sequence: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        """big_vision ``Model._decode_masked``'s token embeddings ``[B, L, E]``: masked tokens (True) replaced by
        ``MASK`` (``"replace"``), or ``[MASK|NOMASK][..., ::2] ++ [REPLACE|token][..., ::2]`` (``"concat"``)."""
        b, s, _ = sequence.shape
        masked = input_mask.to(sequence.device).bool()[:, :, None]
        tokens = self.latent_embedding(sequence)
        if self.config.mask_style == "replace":
            return torch.where(masked, self._special("mask", (b, s)), tokens)
        marks = torch.where(masked, self._special("mask", (b, s)), self._special("nomask", (b, s)))
        tokens = torch.where(masked, self._special("replace", (b, s)), tokens)
        return torch.cat([marks[..., ::2], tokens[..., ::2]], dim=-1)  # even channels of each, as big_vision

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The conditioning image ``[B, 3, H, W]`` in [-1, 1] -> the encoder output ``[B, patches, E]`` (big_vision
        ``Model.encode``)."""
        if self.image_encoder is None:
            raise ValueError("this GIVT has no image encoder (big_vision num_layers=0): it takes no pixel_values")
        return self.image_encoder(pixel_values)

    def _encoded(self, pixel_values, encoder_hidden_states):
        if encoder_hidden_states is not None:
            return encoder_hidden_states
        if self.image_encoder is None:
            if pixel_values is not None:
                raise ValueError("this GIVT has no image encoder (big_vision num_layers=0): it takes no pixel_values")
            return None
        if pixel_values is None:
            raise ValueError("this GIVT is conditioned on an image: pass pixel_values")
        return self.encode_image(pixel_values)

    def get_distribution(self, logits: torch.Tensor, temperature: float | None = None,
                         temperature_probs: float | None = None) -> BvGaussianMixture:
        """The mixture of a head output (big_vision ``Model.get_pdf(logits, temperature_scales, temperature_probs)``):
        ``temperature`` multiplies the scales, ``temperature_probs`` the mixture logits."""
        cfg = self.config
        return BvGaussianMixture.from_logits(
            logits, num_mixtures=cfg.num_mixtures, out_dim=cfg.out_dim, per_channel_mixtures=cfg.per_channel_mixtures,
            multivariate=cfg.multivariate, fix_square_plus=cfg.fix_square_plus, scale_tol=cfg.scale_tol,
            temperature_scales=temperature, temperature_probs=temperature_probs)

    def _training_inputs(self, batch_size: int, seq_len: int, class_labels, input_mask, drop_labels, device):
        """What big_vision's trainer draws per step (``generative.py loss_fn``): label dropout for CFG
        (``get_drop_labels``) and, for MaskGIT, the input mask (``get_input_mask_training``)."""
        cfg = self.config
        if drop_labels is None and class_labels is not None and 0 < cfg.drop_labels_probability < 0.999:
            drop_labels = torch.rand(batch_size, device=device) <= cfg.drop_labels_probability
        if input_mask is None and cfg.style == "masked":
            keep = torch.rand(batch_size, device=device) * (1.0 - cfg.min_masking_rate_training)
            input_mask = random_mask_with_ratios(apply_mask_schedule(keep, cfg.mask_schedule_train).to(device),
                                                 seq_len)
        return input_mask, drop_labels

    # -- forward ---------------------------------------------------------------------------------------------------

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        latents: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        input_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        drop_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_loss: bool = True,
        **kwargs,
    ) -> BvGivtOutput:
        r"""
        latents (`torch.FloatTensor` of shape `(batch_size, seq_len, out_dim)`):
            VAE latent tokens (big_vision ``sequence``), e.g. ``vae.encode(images)[0]``.
        class_labels (`torch.LongTensor` of shape `(batch_size,)`):
            Class ids of a class-conditional model (big_vision ``labels``).
        input_mask (`torch.BoolTensor` of shape `(batch_size, seq_len)`):
            MaskGIT models: True where the token is masked (hidden from the model). Drawn by the training schedule
            in training mode when omitted.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            The conditioning image of an image-conditional model, in [-1, 1] (big_vision ``image``).
        drop_labels (`torch.BoolTensor` of shape `(batch_size,)`):
            Replace these labels by ``NOLABEL`` (the unconditional branch of classifier-free guidance).
        encoder_hidden_states (`torch.FloatTensor`): a precomputed `encode_image` output instead of ``pixel_values``.
        return_loss (`bool`): compute ``loss`` (always cheap; lets ``Trainer`` evaluate without labels).
        """
        self._check_latents(latents)
        b, s, _ = latents.shape
        if self.training:
            input_mask, drop_labels = self._training_inputs(b, s, class_labels, input_mask, drop_labels,
                                                            latents.device)
        elif self.config.style == "masked" and input_mask is None:
            raise ValueError("a masked GIVT needs input_mask [batch, seq_len] (True = masked); big_vision: "
                             "'Cannot run masked model without input mask!'")
        sequence = latents.to(self.dtype)
        if self.adaptor is not None:  # generative.py: the adaptor maps the VAE latents to GIVT's tokens
            sequence = self.adaptor(sequence)
        encoded = self._encoded(pixel_values, encoder_hidden_states)
        labels = self.label_embedding(self.label_ids(class_labels, b, drop_labels))[:, None]  # (B, 1, E)
        if self.config.style == "ar":
            # [label, tokens[:-1]] with a causal mask (big_vision Model._decode_ar)
            embeds = torch.cat([labels, self.latent_embedding(sequence)[:, :-1]], dim=1)
            causal = torch.ones(s, s, dtype=torch.bool, device=embeds.device).tril()
            logits, hidden = self.decoder(embeds, encoded, additive_mask(causal[None, None], embeds.dtype))
        else:
            if input_mask.shape != (b, s):
                raise ValueError(f"input_mask must be [batch, seq_len] = {(b, s)}, got {tuple(input_mask.shape)}")
            embeds = torch.cat([labels, self._masked_inputs(sequence, input_mask)], dim=1)
            logits, hidden = self.decoder(embeds, encoded)
            logits, hidden = logits[:, 1:], hidden[:, 1:]  # the label token is not predicted
        nll = -self.get_distribution(logits).log_prob(sequence)
        loss = None
        if return_loss:
            if self.config.style == "masked":
                # big_vision: nll.mean(where=input_mask), i.e. over the masked tokens (and their channels)
                weight = input_mask.to(nll.dtype).reshape(b, s, *([1] * (nll.ndim - 2))).expand_as(nll)
                loss = (nll * weight).sum() / weight.sum()
            else:
                loss = nll.mean()
        return BvGivtOutput(loss=loss, logits=logits, nll=nll, last_hidden_state=hidden)

    # -- sampling --------------------------------------------------------------------------------------------------

    def _step(self, embeds: torch.Tensor, cache: BvGivtKVCache, encoded: torch.Tensor | None,
              position: int | None = None) -> torch.Tensor:
        """One cached decoder step: ``embeds [B, 1, E]`` at the cache's next position -> logits ``[B, num_logits]``."""
        position = cache.get_seq_length() if position is None else position
        logits, _ = self.decoder(embeds, encoded, past_key_values=cache, position=position)
        return logits[:, 0]

    def _sampling_options(self, options: dict) -> dict:
        """Explicit options, else the checkpoint's big_vision sampling config, else big_vision's defaults."""
        cfg = self.config
        if cfg.style == "ar":
            bv = dict(cfg.ar_generation_config or {})
            names = {"temperature": "temp", "temperature_probs": "temp_probs", "cfg_weight": "cfg_inference_weight",
                     "beam_size": "beam_size", "fan_size": "fan_size", "rand_top_k": "rand_top_k",
                     "rand_top_k_temperature": "rand_top_k_temp"}
            defaults = {"temperature": None, "temperature_probs": None, "cfg_weight": None, "beam_size": 1,
                        "fan_size": 1, "rand_top_k": False, "rand_top_k_temperature": 1.0}
        else:
            bv = dict(cfg.masked_generation_config or {})
            names = {"num_steps": "num_steps", "choice_temperature": "choice_temperature",
                     "anneal_choice_temperature": "should_anneal_temperature", "schedule": "schedule",
                     "cfg_weight": "cfg_inference_weight", "ordering": "ordering"}
            defaults = {"num_steps": 16, "choice_temperature": 1.0, "anneal_choice_temperature": True,
                        "schedule": "cosine", "cfg_weight": 0.0, "ordering": "maskgit"}  # MaskedGenerationConfig
        unknown = sorted(k for k, v in options.items() if v is not None and k not in names)
        if unknown:
            raise ValueError(f"{', '.join(unknown)} do(es) not apply to a {cfg.style!r} GIVT; its options: "
                             f"{', '.join(names)}")
        return {k: options[k] if options.get(k) is not None else bv.get(names[k], defaults[k]) for k in names}

    @torch.no_grad()
    def generate(
        self,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        pixel_values: torch.Tensor | None = None,
        batch_size: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        temperature_probs: float | None = None,
        cfg_weight: float | None = None,
        beam_size: int | None = None,
        fan_size: int | None = None,
        rand_top_k: bool | None = None,
        rand_top_k_temperature: float | None = None,
        num_steps: int | None = None,
        choice_temperature: float | None = None,
        anneal_choice_temperature: bool | None = None,
        schedule: str | None = None,
        ordering: str | None = None,
        output_logits: bool = False,
        progress: bool = False,
    ) -> BvGivtGenerateOutput:
        r"""Samples latent sequences as big_vision does: ``decode.generate`` for causal models, ``parallel_decode.
        decode_masked`` for MaskGIT models. Unset options come from the checkpoint's big_vision sampling config
        (``config.ar_generation_config`` / ``masked_generation_config``), else big_vision's defaults.

        Args:
            class_labels: ``[B]`` class ids (class-conditional models).
            pixel_values: ``[B, 3, H, W]`` conditioning images in [-1, 1] (image-conditional models).
            batch_size: the number of samples when there are neither labels nor images.
            seed / generator: a seed, or a ``torch.Generator``, for reproducible samples.
            temperature: causal: multiplies the mixture scales (big_vision ``temp``).
            temperature_probs: causal: multiplies the mixture logits (big_vision ``temp_probs``).
            cfg_weight: classifier-free guidance weight ``w`` (``cfg_inference_weight``; 0 or None: none): tokens are
                drawn from ``p_c^(1+w) / p_u^w`` (`BvCFGDensity`).
            beam_size / fan_size / rand_top_k / rand_top_k_temperature: causal: big_vision's beam / fan search
                (each of ``beam_size`` beams proposes ``fan_size`` samples, the best ``beam_size`` are kept).
            num_steps / choice_temperature / anneal_choice_temperature / schedule / ordering: MaskGIT decoding
                (``MaskedGenerationConfig``).
            output_logits: causal: also return the head output each token was sampled from (KV-cached).
            progress: show a progress bar over the decoding steps.
        """
        opts = self._sampling_options(dict(
            temperature=temperature, temperature_probs=temperature_probs, cfg_weight=cfg_weight, beam_size=beam_size,
            fan_size=fan_size, rand_top_k=rand_top_k, rand_top_k_temperature=rand_top_k_temperature,
            num_steps=num_steps, choice_temperature=choice_temperature,
            anneal_choice_temperature=anneal_choice_temperature, schedule=schedule, ordering=ordering))
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        if class_labels is not None:
            batch_size = len(class_labels)
        elif pixel_values is not None:
            batch_size = pixel_values.shape[0]
        elif batch_size is None:
            raise ValueError("pass class_labels, pixel_values or batch_size")
        encoded = self._encoded(pixel_values, None)
        cfg_weight = opts.pop("cfg_weight") or None
        if cfg_weight is not None and class_labels is None:
            raise ValueError("classifier-free guidance needs class_labels (big_vision: 'Need labels for CFG!')")
        if cfg_weight is not None and "nolabel" not in self.config.special_labels:
            raise ValueError("classifier-free guidance needs a model trained with drop_labels_probability > 0")
        if self.config.style == "ar":
            out = self._generate_ar(class_labels, batch_size, encoded, generator, cfg_weight, progress=progress,
                                    output_logits=output_logits, **opts)
        else:
            out = self._generate_masked(class_labels, batch_size, encoded, generator, cfg_weight, progress=progress,
                                        **opts)
        out.latents = self.adaptor.inverse(out.sequences) if self.adaptor is not None else out.sequences
        return out

    def _token_distribution(self, logits, logits_u, cfg_weight, temperature, temperature_probs, generator):
        pdf = self.get_distribution(logits, temperature, temperature_probs)
        if cfg_weight is None:
            return pdf
        return BvCFGDensity(pdf, self.get_distribution(logits_u, temperature, temperature_probs), cfg_weight,
                            generator)

    @staticmethod
    def _token_log_prob(pdf, tokens: torch.Tensor) -> torch.Tensor:
        lp = pdf.log_prob(tokens)
        return lp.sum(-1) if lp.shape == tokens.shape else lp  # per channel -> per token

    def _generate_ar(self, class_labels, batch_size, encoded, generator, cfg_weight, *, temperature,
                     temperature_probs, beam_size, fan_size, rand_top_k, rand_top_k_temperature, progress,
                     output_logits):
        """big_vision ``decode.generate``: prefill the label token, then sample token ``i`` from the logits after
        feeding token ``i - 1`` (KV cache); with beams, keep the best ``beam_size`` of ``beam_size * fan_size``
        candidates per step by cumulative log-probability."""
        from tqdm.auto import tqdm

        length, nb, nf = self.config.seq_len, int(beam_size), int(fan_size)
        beams = nb > 1 or nf > 1
        if beams and cfg_weight is not None:
            raise ValueError("big_vision does not combine classifier-free guidance with beam search")
        rows = batch_size * nb
        ids = self.label_ids(class_labels, batch_size).repeat_interleave(nb)
        if encoded is not None:
            encoded = encoded.repeat_interleave(nb, dim=0)
        cache, cache_u = BvGivtKVCache(), None
        logits = self._step(self.label_embedding(ids)[:, None], cache, encoded)
        logits_u = None
        if cfg_weight is not None:
            cache_u = BvGivtKVCache()
            nolabel = torch.full_like(ids, self.config.special_labels["nolabel"])
            logits_u = self._step(self.label_embedding(nolabel)[:, None], cache_u, encoded)
        sample = dict(cfg_weight=cfg_weight, temperature=temperature, temperature_probs=temperature_probs,
                      generator=generator)
        dtype = logits.dtype
        sequences = torch.zeros(rows, length, self.config.out_dim, dtype=dtype, device=logits.device)
        log_probs = torch.zeros(rows, length, dtype=dtype, device=logits.device)
        all_logits = torch.zeros(rows, length, logits.shape[-1], dtype=dtype, device=logits.device)
        pdf = self._token_distribution(logits, logits_u, **sample)
        sequences[:, 0] = pdf.sample(generator=generator)
        log_probs[:, 0] = self._token_log_prob(pdf, sequences[:, 0])
        all_logits[:, 0] = logits
        cumulative = log_probs[:, 0].clone()
        # The ranking value of big_vision's beam search: per-channel log-probs summed, where a joint distribution's
        # token log-prob is broadcast to every channel first (a factor out_dim; matters only for rand_top_k).
        rank_scale = 1 if self.config.per_channel_mixtures and not self.config.multivariate else self.config.out_dim
        steps = length - 1 + int(beams)
        for i in tqdm(range(steps), desc="sampling", unit="token", disable=not progress):
            position = i + 1
            if position == length:
                # Beam search only: big_vision runs one more step; its cache write and posemb index are clamped to
                # the last slot (overwriting token L-2's keys/values), and the step still re-ranks the beams.
                cache.truncate(length - 1)
                position = length - 1
            logits = self._step(self.latent_embedding(sequences[:, i])[:, None], cache, encoded, position)
            if cfg_weight is not None:
                logits_u = self._step(self.latent_embedding(sequences[:, i])[:, None], cache_u, encoded, position)
            if not beams:
                pdf = self._token_distribution(logits, logits_u, **sample)
                sequences[:, i + 1] = pdf.sample(generator=generator)
                log_probs[:, i + 1] = self._token_log_prob(pdf, sequences[:, i + 1])
                all_logits[:, i + 1] = logits
                continue
            fan_logits = logits.repeat_interleave(nf, dim=0)  # candidate j of a row comes from beam j // nf
            pdf = self._token_distribution(fan_logits, None, **sample)
            tokens = pdf.sample(generator=generator)
            token_lp = self._token_log_prob(pdf, tokens)
            candidates = (token_lp + cumulative.repeat_interleave(nf)).reshape(batch_size, nb * nf)
            if rand_top_k:
                weights = torch.softmax(candidates * rank_scale / rand_top_k_temperature, dim=-1)
                top = torch.multinomial(weights, nb, replacement=False, generator=generator)
            else:
                top = torch.argsort(-candidates, dim=-1, stable=True)[:, :nb]  # lax.top_k: ties to the lower index
            offsets = torch.arange(batch_size, device=top.device)[:, None]
            beam_rows = (offsets * nb + top // nf).reshape(-1)
            cand_rows = (offsets * nb * nf + top).reshape(-1)
            sequences, log_probs, all_logits = sequences[beam_rows], log_probs[beam_rows], all_logits[beam_rows]
            cache.reorder(beam_rows)
            if position == i + 1:  # not the clamped extra step, whose token big_vision drops
                sequences[:, i + 1] = tokens[cand_rows]
                log_probs[:, i + 1] = token_lp[cand_rows]
                all_logits[:, i + 1] = fan_logits[cand_rows]
                cumulative = candidates.reshape(-1)[cand_rows]
        keep = slice(None, None, nb)  # big_vision: sequences[::beam_size], the best beam of each example
        return BvGivtGenerateOutput(sequences=sequences[keep], log_probs=log_probs[keep],
                                    logits=all_logits[keep] if output_logits else None)

    def _generate_masked(self, class_labels, batch_size, encoded, generator, cfg_weight, *, num_steps,
                         choice_temperature, anneal_choice_temperature, schedule, ordering, progress):
        """big_vision ``parallel_decode.decode_masked`` (MaskGIT): at each step predict every masked token, sample
        them, keep the most confident (``log p + temperature * gumbel``) and re-mask the rest, fewer each step
        (``schedule``)."""
        from tqdm.auto import tqdm

        if ordering != "maskgit":
            raise ValueError(f"unknown ordering {ordering!r}; big_vision implements 'maskgit'")
        length, d = self.config.seq_len, self.config.out_dim
        device, dtype = self.device, self.dtype
        ids = self.label_ids(class_labels, batch_size)
        labels = self.label_embedding(ids)[:, None]
        labels_u = None
        if cfg_weight is not None:
            labels_u = self.label_embedding(torch.full_like(ids, self.config.special_labels["nolabel"]))[:, None]
        current = torch.zeros(batch_size, length, d, device=device, dtype=dtype)
        unknown = torch.ones(batch_size, length, dtype=torch.bool, device=device)
        uncovered_at = torch.full((batch_size, length), -1, dtype=torch.long, device=device)

        def logits_for(label_embeds):
            embeds = torch.cat([label_embeds, self._masked_inputs(current, unknown)], dim=1)
            return self.decoder(embeds, encoded)[0][:, 1:]

        for step in tqdm(range(num_steps), desc="sampling", unit="step", disable=not progress):
            ratio = (step + 1) / num_steps
            mask_len = torch.floor(length * apply_mask_schedule(ratio, schedule)).to(device)
            num_unknown = unknown.sum(-1, keepdim=True)
            # Keep at least one prediction per round (big_vision: min(num_unknown - 1, mask_len), at least 0)
            mask_len = torch.clamp(torch.minimum(num_unknown - 1, mask_len), min=0)
            pdf = self.get_distribution(logits_for(labels))
            if cfg_weight is not None:
                pdf = BvCFGDensity(pdf, self.get_distribution(logits_for(labels_u)), cfg_weight, generator)
            sample = pdf.sample(generator=generator)
            sampled = torch.where(unknown[..., None], sample, current)
            prob = pdf.prob(sampled)
            if prob.shape == sampled.shape:  # per channel (or guided): independent channels
                prob = prob.prod(-1)
            confidence = torch.where(unknown, prob, torch.full_like(prob, float("inf")))  # known tokens stay
            temp = choice_temperature * (1.0 - ratio) if anneal_choice_temperature else choice_temperature
            masking = mask_by_random_topk(mask_len, confidence, temp, generator)
            masking = torch.where(mask_len == 0, torch.zeros_like(masking), masking)
            sampled = torch.where(masking[..., None], torch.zeros_like(sampled), sampled)
            uncovered_at = torch.where(unknown & ~masking, step, uncovered_at)
            unknown = unknown & masking
            current = sampled
        return BvGivtGenerateOutput(sequences=current, uncovered_at_step=uncovered_at)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline: class label -> image, image -> panoptic / depth prediction
# ---------------------------------------------------------------------------------------------------------------


def panoptic_predictions_from_logits(semantics: torch.Tensor, instances: torch.Tensor,
                                     min_fraction: float = 0.0) -> torch.Tensor:
    """big_vision ``uvim/panoptic_task.py panoptic_predictions_from_logits``: per pixel (instance id, its class),
    the class of an instance being the argmax of its pixels' summed semantic logits; instances covering at most
    ``min_fraction`` of the image are zeroed. ``semantics [B, H, W, K]``, ``instances [B, H, W, N]`` (channels last)
    -> ``[B, H, W, 2]`` int (semantic class, instance id)."""
    ins = instances.argmax(-1)
    masks = F.one_hot(ins, instances.shape[-1])  # (B, H, W, N)
    label = torch.einsum("bhwk,bhwn->bnk", semantics.float(), masks.float()).argmax(-1)
    sem = torch.einsum("bhwn,bn->bhw", masks, label)
    out = torch.stack([sem, ins], dim=-1)
    fraction = masks.sum(dim=(1, 2), keepdim=True) / (ins.shape[1] * ins.shape[2])
    big = (masks * (fraction > min_fraction)).sum(-1, keepdim=True) > 0
    return out * big


def unbin_depth(depth_logits: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """big_vision ``trainers/proj/givt/utils.py unbin_depth``: ``[..., num_bins]`` logits -> depth
    ``(argmax + 0.5) / num_bins * (max - min) + min``."""
    depth = (depth_logits.argmax(-1).float() + 0.5) / depth_logits.shape[-1]
    return depth * (max_depth - min_depth) + min_depth


@dataclass
class BvGivtPipelineOutput(ModelOutput):
    r"""
    images (`list[PIL.Image.Image]`, or `torch.FloatTensor` / `np.ndarray`):
        The generated images (class-conditional models), as ``output_type`` asks.
    predictions (`torch.Tensor`):
        Image-conditional models: ``[B, H, W, 2]`` panoptic (class, instance) maps, or ``[B, H, W]`` depth, or the
        VAE's raw decoded logits for another task.
    latents (`torch.FloatTensor` of shape `(batch_size, seq_len, out_dim)`): the sampled VAE latents.
    """

    images: object = None
    predictions: torch.Tensor | dict | None = None
    latents: torch.FloatTensor | None = None


class BvGivtPipeline:
    r"""GIVT + its VAE, end to end (big_vision ``generative.py`` ``predict_fn_sampling``): sample latents with the
    GIVT, map them through the adaptor's inverse (inside `BvGivtModel.generate`), decode them with the VAE.

    - class-conditional GIVTs (ImageNet): ``pipe(class_labels, seed=0)`` -> images;
    - image-conditional GIVTs (COCO panoptic, NYU depth): ``pipe(images=...)`` -> panoptic ``(class, instance)``
      maps or depth maps (``predictions``), as ``predict_fn_sampling_panoptic`` / ``_depth`` compute them.

    Sampling options (``temperature``, ``cfg_weight``, ``num_steps``, ...) are those of `BvGivtModel.generate`
    and default to the checkpoint's big_vision sampling config.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtCNNVAEConfig, BvGivtConfig
        >>> from big_vision_hf.modeling.modeling_bv_givt_vae import BvGivtCNNVAEModel
        >>> vae = BvGivtCNNVAEModel(BvGivtCNNVAEConfig(filters=32, num_res_blocks=1, channel_multipliers=[1, 2],
        ...                                            codeword_dim=4, code_len=16))
        >>> givt = BvGivtModel(BvGivtConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                 intermediate_size=64, num_classes=10, seq_len=16, out_dim=4,
        ...                                 drop_labels_probability=0.1, per_channel_mixtures=False))
        >>> pipe = BvGivtPipeline(givt, vae)
        >>> out = pipe([1, 2], seed=0, cfg_weight=0.4, progress=False)
        >>> len(out.images), out.images[0].size
        (2, (8, 8))
    """

    def __init__(self, givt: BvGivtModel, vae: PreTrainedModel, image_processor=None):
        self.givt, self.vae, self.image_processor = givt.eval(), vae.eval(), image_processor
        check_latent_width(givt.config, vae.config)

    @classmethod
    def from_pretrained(cls, givt: str, vae: str, **kwargs) -> BvGivtPipeline:
        """Loads both converted folders (``AutoModel``; ``kwargs`` such as ``trust_remote_code`` go to both) and the
        GIVT folder's image processor, if it has one (image-conditional models)."""
        from transformers import AutoImageProcessor, AutoModel

        givt_model, vae_model = AutoModel.from_pretrained(givt, **kwargs), AutoModel.from_pretrained(vae, **kwargs)
        if not isinstance(givt_model, BvGivtModel) and type(givt_model).__name__ != "BvGivtModel":
            raise ValueError(f"{givt}: not a GIVT folder (it holds a {type(givt_model).__name__}); pass the GIVT "
                             "first and its VAE second")
        processor = None
        if givt_model.config.encoder_config is not None:
            processor = AutoImageProcessor.from_pretrained(givt, **{k: v for k, v in kwargs.items()
                                                                    if k == "trust_remote_code"})
        return cls(givt_model, vae_model, processor)

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int] | torch.Tensor | None = None, *, images=None,
                 pixel_values: torch.Tensor | None = None, batch_size: int | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", progress: bool = True,
                 min_fraction: float = 0.0, min_depth: float = 0.001, max_depth: float = 10.0,
                 **sampling) -> BvGivtPipelineOutput:
        """Class labels -> images, or (image-conditional GIVT) images -> predictions.

        ``output_type``: ``"pil"`` (a list of images), ``"pt"`` (NCHW in [-1, 1]) or ``"np"`` (NHWC in [0, 1]).
        ``min_fraction`` (panoptic, big_vision's default 0), ``min_depth``/``max_depth`` (depth; the values of
        ``configs/proj/givt/givt_nyu_depth.py``) shape the predictions."""
        if images is not None and pixel_values is None:
            if self.image_processor is None:
                raise ValueError("images need an image processor: pass pixel_values, or load the pipeline from a "
                                 "folder with one")
            pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.givt.device, self.givt.dtype)
        out = self.givt.generate(class_labels, pixel_values, batch_size, seed=seed, generator=generator,
                                 progress=progress, **sampling)
        decoded = self.vae.decode(out.latents.to(self.vae.device, self.vae.dtype))
        if isinstance(decoded, dict):
            return BvGivtPipelineOutput(predictions=self._predictions(decoded, min_fraction, min_depth, max_depth),
                                        latents=out.latents)
        return BvGivtPipelineOutput(images=to_output_type(decoded, output_type), latents=out.latents)

    @staticmethod
    def _predictions(decoded: dict, min_fraction: float, min_depth: float, max_depth: float):
        last = {name: logits.permute(0, 2, 3, 1) for name, logits in decoded.items()}  # channels last
        if set(last) == {"semantics", "instances"}:
            return panoptic_predictions_from_logits(last["semantics"], last["instances"], min_fraction)
        if set(last) == {"depth"}:
            return unbin_depth(last["depth"], min_depth, max_depth)
        return decoded


def check_latent_width(givt_config: BvGivtConfig, vae_config) -> None:
    """One line if a VAE's latent tokens cannot be a GIVT's (width, or length for the ViT VAE)."""
    width = getattr(vae_config, "latent_dim", None)
    if width is None:
        raise ValueError(f"the VAE given is a {type(vae_config).__name__}, not a GIVT VAE (proj.givt.cnn / vit)")
    if width != givt_config.out_dim:
        raise ValueError(f"the VAE's latent width is {width} but the GIVT models {givt_config.out_dim}-dimensional "
                         "tokens (out_dim): they were not trained together")
    length = getattr(vae_config, "code_len", None)
    if getattr(vae_config, "model_type", "") == "bv_givt_vit_vae" and length != givt_config.seq_len:
        raise ValueError(f"the VAE has {length} latent tokens but the GIVT models {givt_config.seq_len} (seq_len)")


def to_output_type(images: torch.Tensor, output_type: str):
    """NCHW images in [-1, 1] -> ``"pt"`` (as is), ``"np"`` (NHWC in [0, 1]) or ``"pil"`` (uint8 PIL images)."""
    if output_type == "pt":
        return images
    array = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    if output_type == "pil":
        from PIL import Image

        return [Image.fromarray(np.round(a * 255).astype(np.uint8)) for a in array]
    raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")


__all__ = [
    "BvCFGDensity", "BvGaussianMixture", "BvGivtAdaptor", "BvGivtGenerateOutput", "BvGivtModel", "BvGivtOutput",
    "BvGivtPipeline", "BvGivtPipelineOutput", "BvGivtPreTrainedModel",
]
