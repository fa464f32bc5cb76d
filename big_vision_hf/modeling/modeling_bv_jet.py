"""PyTorch port of big_vision's Jet normalizing flow (``big_vision/models/proj/jet/jet.py``, arXiv:2412.15129).

Why our own ``PreTrainedModel``: transformers has no normalizing flow. The coupling network reuses the ViT encoder of
``modeling_bv_vit`` (big_vision's ``DNN`` reuses ``vit.Encoder``).

What the port reproduces (each against the golden fixture ``jet`` made by big_vision's own code):

- **Tokens.** ``Model.forward``/``inverse`` patchify ``"b (h hp) (w wp) c -> b (h w) (hp wp c)"`` and reassemble a
  square grid (``h = round(sqrt(n))``): inputs are square, of the ``image_size`` the posemb and the permutations
  were made for.
- **Couplings** (``Coupling.compact_setup``). A channel coupling multiplies the tokens by its frozen permutation
  ``P`` (``"ntk,km->ntm"``) and takes the two halves of the channels; a spatial one multiplies the token axis by its
  permutation ``S`` (``"ntk,tm->nmk"``), takes the two halves of the tokens and regroups each
  ``"n (s c) -> (n s) c"`` (s=2) so that both kinds hand the network ``[B, n, c/2]``. Merging is the reverse with
  ``P.T`` / ``S.T``. The matrices are the checkpoint's ``*-FREEZE_ME`` arrays, kept here as persistent buffers
  (``channel_coupling_masks``, ``spatial_coupling_masks``: one ``[c, c]`` / ``[n, n]`` matrix per coupling, all
  zero for the kind a coupling is not). big_vision runs these einsums with ``precision="highest"``: here they run
  in float32 with TF32 (and oneDNN's reduced-precision fp32) turned off for the call, so a permutation stays exact
  whatever the user's global matmul settings.
- **DNN.** ``init_proj`` Dense -> ``+ posemb [1, n, emb]`` -> ``vit.Encoder(depth=block_depth)`` (pre-LN blocks,
  MLP ``4 * emb``, final ``encoder_norm``) -> ``final_proj`` Dense to ``c`` split into ``(bias, raw_scale)``.
- **Affine step.** ``scale = sigmoid(raw) * scale_factor``; forward ``x2 = (x2 + bias) * scale``, inverse
  ``x2 = x2 / scale - bias``; ``logdet = sum(log_sigmoid(raw) + log(scale_factor))`` over tokens and channels
  (negated by the inverse), summed over couplings. The inverse runs the couplings in reverse order (``nn.scan(...,
  reverse=True)``). Log-determinants are accumulated in float32 whatever the model dtype.
- **Bits per dimension** (``trainers/proj/jet/train.py``: ``update_fn`` and ``_bits_per_dim``): images in
  ``[-1, 1]`` (``value_range(-1, 1)`` of 8-bit pixels) are dequantised with ``U[0, 1/127.5)`` noise, the prior is a
  standard normal, and ``log(127.5)`` per dimension converts the density on ``[-1, 1]`` to one on the 256 pixel
  levels: ``bpd = (sum(-log N(z; 0, 1) + log 127.5) - logdet) / (D * ln 2)``, ``D = H * W * C``.

Not supported: big_vision's class-conditional Jet (``DNN(context=...)``, cross-attention to the label): the trainer
feeds it ``label[:, None]`` directly as attention keys, no released config uses it, and a checkpoint with its
``MultiHeadDotProductAttention`` arrays is refused by the converter.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..configuration.configuration_bv_jet import BvJetConfig
from .modeling_bv_vit import BvViTEncoder, BvViTPreTrainedModel, init_flax_dense_

# ---------------------------------------------------------------------------------------------------------
# Coupling permutations (big_vision get_channels_coupling_init / get_spatial_coupling_init)
# ---------------------------------------------------------------------------------------------------------


def channel_coupling_masks(config: BvJetConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh ``[num_couplings, c, c]`` channel permutations, as big_vision ``get_channels_coupling_init``: for a
    ``"random"`` coupling ``w[i, p, arange(c)] = 1`` with ``p`` a random permutation (torch's RNG here, jax's there:
    the same distribution, not the same draw); all zeros for spatial couplings."""
    c = config.patch_dim
    w = torch.zeros(config.num_couplings, c, c)
    for i, (_, proj, _) in enumerate(config.coupling_schedule):
        if proj == "random":
            w[i, torch.randperm(c, generator=generator), torch.arange(c)] = 1.0
    return w


def spatial_coupling_masks(config: BvJetConfig) -> torch.Tensor:
    """``[num_couplings, n, n]`` token permutations, exactly big_vision ``get_spatial_coupling_init``: the first
    half of the permuted tokens are ``idx1`` (the conditioning half), the second ``idx2``; ``-inv`` swaps them."""
    nh = nw = config.grid_size
    n = nh * nw
    tokens = torch.arange(n)
    w = torch.zeros(config.num_couplings, n, n)
    for i, (_, _, proj) in enumerate(config.coupling_schedule):
        if proj == "zero":
            continue
        if proj.startswith("vstripes"):
            first = tokens % 2 == 0
        elif proj.startswith("hstripes"):
            first = (tokens // nw) % 2 == 0
        else:  # checkerboard: (row-major index + row) even
            first = (tokens.reshape(nh, nw) + torch.arange(nh).reshape(nh, 1)).flatten() % 2 == 0
        idx1, idx2 = tokens[first], tokens[~first]
        if proj.endswith("-inv"):
            idx1, idx2 = idx2, idx1
        w[i, idx1, torch.arange(n // 2)] = 1.0
        w[i, idx2, torch.arange(n // 2, n)] = 1.0
    return w


@contextlib.contextmanager
def _ieee_fp32_matmuls():
    """float32 matmuls without TF32 / reduced-precision fp32 inside the block (big_vision ``precision="highest"``)."""
    backends = [b for b in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
                if b is not None and hasattr(b, "fp32_precision")]
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in zip(backends, saved):
            b.fp32_precision = value


def permute(x: torch.Tensor, matrix: torch.Tensor, equation: str) -> torch.Tensor:
    """``einsum(equation, x, matrix)`` in float32 at full precision, returned in ``x``'s dtype."""
    with _ieee_fp32_matmuls():
        return torch.einsum(equation, x.float(), matrix.float()).to(x.dtype)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B, (H/p)*(W/p), p*p*C]``: einops ``"b (h hp) (w wp) c -> b (h w) (hp wp c)"``."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of `patchify` for a square grid (big_vision: ``h = round(sqrt(n))``)."""
    b, n, d = tokens.shape
    p = patch_size
    h = int(round(math.sqrt(n)))
    c = d // (p * p)
    x = tokens.reshape(b, h, n // h, p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, (n // h) * p, c)


# ---------------------------------------------------------------------------------------------------------
# Coupling layer (big_vision DNN, Coupling)
# ---------------------------------------------------------------------------------------------------------


class BvJetCouplingNetwork(nn.Module):
    """big_vision ``DNN``: ``init_proj`` -> ``+ posemb`` -> ViT encoder -> ``final_proj`` split into (bias, raw
    scale)."""

    def __init__(self, config: BvJetConfig):
        super().__init__()
        half = config.patch_dim // 2
        self.init_proj = nn.Linear(half, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))
        self.encoder = BvViTEncoder(config)
        self.final_proj = nn.Linear(config.hidden_size, 2 * half)

    def forward(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.init_proj(x1) + self.position_embedding
        hidden = self.encoder(hidden)
        bias, raw_scale = self.final_proj(hidden).chunk(2, dim=-1)
        return bias, raw_scale


class BvJetCoupling(nn.Module):
    """One affine coupling (big_vision ``Coupling``); ``kind`` is ``"channels"`` or ``"spatial"`` (static here,
    chosen by ``jax.lax.cond`` on the scanned ``kinds`` array there)."""

    def __init__(self, config: BvJetConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.scale_factor = config.scale_factor
        self.dnn = BvJetCouplingNetwork(config)

    def split(self, x: torch.Tensor, channel_proj: torch.Tensor, spatial_proj: torch.Tensor):
        if self.kind == "channels":
            return permute(x, channel_proj, "ntk,km->ntm").chunk(2, dim=-1)
        x1, x2 = permute(x, spatial_proj, "ntk,tm->nmk").chunk(2, dim=-2)
        # "... n (s c) -> ... (n s) c", s=2: [B, n/2, c] -> [B, n, c/2]
        return tuple(a.reshape(a.shape[0], a.shape[1] * 2, a.shape[2] // 2) for a in (x1, x2))

    def merge(self, x1: torch.Tensor, x2: torch.Tensor, channel_proj: torch.Tensor, spatial_proj: torch.Tensor):
        if self.kind == "channels":
            return permute(torch.cat([x1, x2], dim=-1), channel_proj.T, "ntk,km->ntm")
        x1, x2 = (a.reshape(a.shape[0], a.shape[1] // 2, a.shape[2] * 2) for a in (x1, x2))
        return permute(torch.cat([x1, x2], dim=-2), spatial_proj.T, "ntk,tm->nmk")

    def forward(
        self, x: torch.Tensor, channel_proj: torch.Tensor, spatial_proj: torch.Tensor, inverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, n, c]`` -> (``x`` transformed, ``logdet`` ``[B]`` float32, negative for the inverse)."""
        x1, x2 = self.split(x, channel_proj, spatial_proj)
        bias, raw_scale = self.dnn(x1)
        scale = torch.sigmoid(raw_scale) * self.scale_factor
        logdet = (F.logsigmoid(raw_scale.float()) + math.log(self.scale_factor)).sum(dim=(1, 2))
        x2 = x2 / scale - bias if inverse else (x2 + bias) * scale
        return self.merge(x1, x2, channel_proj, spatial_proj), -logdet if inverse else logdet


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BvJetOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, with `return_loss=True`):
        Mean bits per dimension of the batch (big_vision's training loss ``bits``).
    z (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
        The latent (big_vision ``forward``'s first output, here channels first like the input).
    logdet (`torch.FloatTensor` of shape `(batch_size,)`):
        ``log |det dz/dx|`` summed over the couplings (float32).
    bits_per_dim (`torch.FloatTensor` of shape `(batch_size,)`, with `return_loss=True`):
        Per-example bits per dimension of the (dequantised) input.
    """

    loss: torch.FloatTensor | None = None
    z: torch.FloatTensor | None = None
    logdet: torch.FloatTensor | None = None
    bits_per_dim: torch.FloatTensor | None = None


#: Pixel levels per unit of big_vision's ``value_range(-1, 1)``: 255 levels over a range of 2.
DEQUANTIZATION_SCALE = 127.5


class BvJetPreTrainedModel(BvViTPreTrainedModel):
    config: BvJetConfig
    config_class = BvJetConfig
    base_model_prefix = "jet"
    main_input_name = "pixel_values"
    # The loss is a per-example mean (bits per dimension): Trainer must average it over gradient accumulation steps
    # itself rather than pass `num_items_in_batch` (which the `**kwargs` of `forward` would otherwise announce).
    accepts_loss_kwargs = False
    _no_split_modules = ["BvJetCoupling"]
    _can_record_outputs = {}

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's initialisers (``jet.py``); loaded tensors are left alone. The ViT blocks are initialised as
        `BvViTPreTrainedModel` does."""
        super()._init_weights(module)
        if isinstance(module, BvJetCouplingNetwork):
            init_flax_dense_(module.init_proj)  # nn.Dense default
            init.normal_(module.position_embedding, std=1 / np.sqrt(module.position_embedding.shape[-1]))
            init_flax_dense_(module.final_proj, zero_kernel=True)  # kernel_init=zeros: the flow starts near identity
        elif isinstance(module, BvJetModel):
            init.copy_(module.channel_coupling_masks, channel_coupling_masks(module.config))
            init.copy_(module.spatial_coupling_masks, spatial_coupling_masks(module.config))


class BvJetModel(BvJetPreTrainedModel):
    r"""big_vision's Jet: an invertible map from images to latents of the same shape, with exact log-likelihood.

    ``model(pixel_values)`` returns the latent ``z`` (same NCHW shape) and ``logdet``, and by default the bits per
    dimension of the batch as ``loss`` (so it trains with ``Trainer``); :meth:`inverse` maps latents back to images.
    Images are in ``[-1, 1]`` (big_vision ``value_range(-1, 1)``). In training mode the input is dequantised with
    ``U[0, 1/127.5)`` noise first, as big_vision's trainer does.

    Parity: big_vision ``proj.jet.jet.Model`` (``forward``/``inverse`` methods), golden fixture ``jet`` (6 couplings:
    channels, channels, spatial with checkerboard / vstripes-inv; ps=4, 16x16), float32: ``z``, ``logdet`` and the
    inverse within 1e-4 (see ``tests/test_bv_jet.py``).

    Example:
        >>> import torch
        >>> from big_vision_hf import BvJetConfig, BvJetModel
        >>> config = BvJetConfig(num_couplings=3, image_size=16, patch_size=4, hidden_size=32, num_attention_heads=2)
        >>> model = BvJetModel(config).eval()
        >>> images = torch.rand(2, 3, 16, 16) * 2 - 1
        >>> out = model(images)
        >>> out.z.shape, out.logdet.shape, out.loss.shape
        (torch.Size([2, 3, 16, 16]), torch.Size([2]), torch.Size([]))
        >>> x, logdet = model.inverse(out.z)
        >>> bool(torch.allclose(x, images, atol=1e-4)), bool(torch.allclose(logdet, -out.logdet, atol=1e-4))
        (True, True)
        >>> model.bits_per_dim(images, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2])
    """

    def __init__(self, config: BvJetConfig):
        super().__init__(config)
        self.couplings = nn.ModuleList(BvJetCoupling(config, kind) for kind, _, _ in config.coupling_schedule)
        n, c = config.num_patches, config.patch_dim
        # big_vision "channel_coupling_masks-FREEZE_ME" / "spatial_coupling_masks-FREEZE_ME": frozen, saved, loaded.
        self.register_buffer("channel_coupling_masks", torch.zeros(config.num_couplings, c, c))
        self.register_buffer("spatial_coupling_masks", torch.zeros(config.num_couplings, n, n))
        self.post_init()

    def _check(self, images: torch.Tensor, what: str) -> None:
        size, channels = self.config.image_size, self.config.num_channels
        if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(f"{what} must be [batch, {channels}, {size}, {size}] (the image_size the flow was made "
                             f"for), got {list(images.shape)}")

    def transform(self, x: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow on channels-last ``[B, H, W, C]`` (big_vision's layout): ``(y, logdet)``, ``logdet`` float32."""
        p = self.config.patch_size
        x = patchify(x, p)
        logdet = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        order = range(len(self.couplings))
        for i in reversed(order) if inverse else order:
            x, step = self.couplings[i](x, self.channel_coupling_masks[i], self.spatial_coupling_masks[i], inverse)
            logdet = logdet + step
        return unpatchify(x, p), logdet

    def forward(
        self,
        pixel_values: torch.Tensor,
        return_loss: bool = True,
        dequantize: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> BvJetOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images in ``[-1, 1]``.
        return_loss (`bool`, *optional*, defaults to `True`):
            Also compute the bits per dimension (``loss`` = their batch mean).
        dequantize (`bool`, *optional*):
            Add ``U[0, 1/127.5)`` noise to the pixels first (big_vision's trainer and evaluator do); default: only in
            training mode, so that an eval-mode call is deterministic.
        generator (`torch.Generator`, *optional*):
            Source of the dequantisation noise.
        """
        self._check(pixel_values, "pixel_values")
        if self.training if dequantize is None else dequantize:
            pixel_values = dequantize_pixels(pixel_values, generator)
        z, logdet = self.transform(pixel_values.permute(0, 2, 3, 1))
        z = z.permute(0, 3, 1, 2)
        if not return_loss:
            return BvJetOutput(z=z, logdet=logdet)
        bits = bits_per_dim(z, logdet)
        return BvJetOutput(loss=bits.mean(), z=z, logdet=logdet, bits_per_dim=bits)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``[B, C, H, W]`` -> ``(images, logdet)``; ``logdet`` is big_vision ``inverse``'s (``-logdet`` of
        the forward at those images)."""
        self._check(z, "z")
        x, logdet = self.transform(z.permute(0, 2, 3, 1), inverse=True)
        return x.permute(0, 3, 1, 2), logdet

    def bits_per_dim(
        self, pixel_values: torch.Tensor, dequantize: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-example bits per dimension of images in ``[-1, 1]`` (big_vision's ``bits``), dequantised with
        ``U[0, 1/127.5)`` noise unless ``dequantize=False``. An upper bound on the 8-bit images' negative
        log2-likelihood per dimension, in expectation over the noise."""
        return self(pixel_values, dequantize=dequantize, generator=generator).bits_per_dim

    def log_likelihood(
        self, pixel_values: torch.Tensor, dequantize: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-example log-likelihood in nats of the dequantised pixels on the 0..255 scale: ``-bpd * D * ln 2``."""
        bits = self.bits_per_dim(pixel_values, dequantize, generator)
        return -bits * math.log(2) * math.prod(pixel_values.shape[1:])


def dequantize_pixels(pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + U[0, 1/127.5)`` (big_vision jet ``update_fn``: ``jax.random.uniform(..., maxval=1.0 / 127.5)``)."""
    noise = torch.rand(pixel_values.shape, generator=generator, device=pixel_values.device, dtype=pixel_values.dtype)
    return pixel_values + noise / DEQUANTIZATION_SCALE


def bits_per_dim(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """big_vision jet ``_bits_per_dim(reduce=False)``: ``(sum(-log N(z; 0, 1) + log 127.5) - logdet) / (D ln 2)``."""
    z = z.float().flatten(1)
    nll = (0.5 * z.square() + 0.5 * math.log(2 * math.pi) + math.log(DEQUANTIZATION_SCALE)).sum(dim=1)
    return (nll - logdet) / (math.log(2) * z.shape[1])
