"""PyTorch ports of GIVT's β-VAEs: the CNN of the ImageNet models and the ViT of the panoptic / depth models.

Ported from big_vision at commit 0127fb6:

- `BvGivtCNNVAEModel`: ``big_vision/models/proj/givt/cnn.py`` (``Model``, ``Encoder``, ``Decoder``, ``ResBlock``,
  ``_dsample``, ``_upsample``), itself adapted from MaskGIT's ``vqgan_tokenizer.py``;
- `BvGivtViTVAEModel`: ``big_vision/models/proj/givt/vit.py`` (``Model``), a fork of UViM's VQ-VAE without the
  quantiser;
- both: the Gaussian encoder of ``big_vision/models/proj/givt/vae.py`` (``encode -> (mu, logvar)``,
  ``reparametrize``, ``decode``).

Why our own ``PreTrainedModel``: transformers has no such VAE (diffusers' ``AutoencoderKL`` differs in layout, in the
residual blocks and in the latent layout).

Quirks reproduced (each commented where it acts):

- ``cnn.ResBlock``: when the width changes, the 1x1 "shortcut" conv is applied to the block's *output*, not to its
  input (``residual = conv(x)`` after ``x`` was overwritten, as in MaskGIT's ``vqgan_tokenizer.py``), so a
  width-changing block returns ``h + conv1x1(h)``;
- ``cnn._dsample``: TF-style average pooling (``padding="SAME"`` without counting the padding);
- ``malib_ckpt`` (the public ImageNet VAEs): inputs rescaled ``[-1, 1] -> [0, 1]``, outputs back, log-variance
  clipped to ``[-30, 20]``; decoded images are clipped to ``[-1, 1]``;
- latents are flattened row-major from the ``h x w`` grid, with an optional space-to-depth
  (``pixel_shuffle_patch_size``): ``b (h ph) (w pw) c -> b (h w) (c ph pw)``;
- ``vit.Model``: label-map inputs are one-hot encoded per ``inout_specs`` entry (``nn.one_hot``: a value that is no
  class id gives a zero vector), the bottleneck resizes the patch grid with ``jax.image.resize(..., "linear")``
  (antialiased when shrinking) or multiplies by the learned ``bottleneck_downsample``/``upsample`` matrices.

big_vision -> here: ``encode(x)`` -> ``encode(pixel_values)`` (``(mean, logvar)``, each ``[B, L, D]``);
``reparametrize`` -> ``reparametrize``; ``decode(z)`` -> ``decode(latents)`` (NCHW images in [-1, 1], or a dict of
NCHW logits for ``inout_specs``); ``__call__`` -> ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ..configuration.configuration_bv_givt import BvGivtCNNVAEConfig, BvGivtViTVAEConfig, pixel_shuffle_grid
from .loading import BvStrictLoadingMixin
from .modeling_bv_vit import (
    BvViTAttention,
    BvViTEncoder,
    BvViTMLP,
    init_flax_dense_,
    init_vit_block_module_,
    posemb_sincos_2d,
    resize_grid_antialiased,
)
from .modeling_bv_vqvae import BvSameConv2d


@dataclass
class BvGivtVAEOutput(ModelOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, or a dict of those):
        ``decode(latents)``: the image in [-1, 1], or per ``inout_specs`` name the logits (NCHW).
    latent_mean (`torch.FloatTensor` of shape `(batch_size, code_len, latent_dim)`):
        big_vision ``mu``: the posterior mean, one latent token per row.
    latent_logvar (`torch.FloatTensor` of shape `(batch_size, code_len, latent_dim)`):
        big_vision ``logvar``: the posterior log-variance.
    latents (`torch.FloatTensor` of shape `(batch_size, code_len, latent_dim)`):
        big_vision ``z``: what was decoded (``latent_mean``, or a posterior sample with ``sample_posterior=True``).
    """

    reconstruction: torch.FloatTensor | dict | None = None
    latent_mean: torch.FloatTensor | None = None
    latent_logvar: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


def space_to_depth(z: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/ph)(W/pw), C*ph*pw]``: big_vision ``"b (h ph) (w pw) c -> b (h w) (c ph pw)"``."""
    (ph, pw), (b, c, hh, ww) = patch, z.shape
    z = z.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 1, 3, 5)  # b h w c ph pw
    return z.reshape(b, (hh // ph) * (ww // pw), c * ph * pw)


def depth_to_space(latents: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """The inverse of `space_to_depth` for a square image (big_vision ``cnn.Model.decode``)."""
    (ph, pw), (b, length, d) = patch, latents.shape
    h, w = pixel_shuffle_grid(length, patch)
    z = latents.reshape(b, h, w, d // (ph * pw), ph, pw).permute(0, 3, 1, 4, 2, 5)  # b c h ph w pw
    return z.reshape(b, d // (ph * pw), h * ph, w * pw)


def share_attn_implementation(config) -> None:
    """Gives the sub-configs read by plain sub-modules (the `BvViTEncoder` s) the model's attention implementation,
    which transformers resolves for the top-level config only at init."""
    for key in config.sub_configs:
        sub = getattr(config, key, None)
        if sub is not None and sub._attn_implementation is None:
            sub._attn_implementation_internal = config._attn_implementation


class BvGivtVAEPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    """Shared by both VAEs: the Gaussian posterior of big_vision ``vae.Model``."""

    base_model_prefix = "vae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # As `BvViTPreTrainedModel`: transformers skips parameter-less modules of custom code (the ViT blocks'
        # attention and MLP), whose `_init_weights` branches must run; the guarded initialisers keep loaded tensors.
        super()._initialize_weights(module, is_custom_code=False)

    def reparametrize(self, mean: torch.Tensor, logvar: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """big_vision ``vae.Model.reparametrize``: ``mean + exp(logvar / 2) * eps``, ``eps ~ N(0, 1)``."""
        std = torch.exp(0.5 * logvar)
        return mean + std * torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)

    def forward(self, pixel_values: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None, **kwargs) -> BvGivtVAEOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            What the encoder reads: an image in [-1, 1], or (ViT VAE with ``inout_specs``) label maps whose channels
            hold class ids.
        sample_posterior (`bool`): decode a posterior sample instead of the mean (big_vision samples in training).
        """
        mean, logvar = self.encode(pixel_values)
        latents = self.reparametrize(mean, logvar, generator) if sample_posterior else mean
        return BvGivtVAEOutput(reconstruction=self.decode(latents), latent_mean=mean, latent_logvar=logvar,
                               latents=latents)


# ---------------------------------------------------------------------------------------------------------------
# CNN VAE (big_vision proj/givt/cnn.py)
# ---------------------------------------------------------------------------------------------------------------


def _group_norm(config: BvGivtCNNVAEConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(config.group_norm_groups, channels, eps=config.group_norm_eps)  # flax GroupNorm defaults


class BvGivtCNNResBlock(nn.Module):
    """big_vision ``cnn.ResBlock``: ``GN -> act -> conv3x3 -> GN -> act -> conv3x3`` plus a residual."""

    def __init__(self, config: BvGivtCNNVAEConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(config, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(config, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        if self.shortcut is not None:
            # big_vision (and MaskGIT's vqgan_tokenizer.py): the 1x1 "shortcut" takes the block's output, not its input.
            residual = self.shortcut(x)
        return x + residual


def tf_avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """big_vision ``cnn._dsample``: 2x2 / stride 2 average pooling with TF's ``SAME`` padding, the padding not
    counted in the average (``_tensorflow_style_avg_pooling``)."""
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


def _level_widths(config: BvGivtCNNVAEConfig) -> list[int]:
    return [config.filters * m for m in config.channel_multipliers]


class BvGivtCNNStack(nn.Module):
    """What big_vision's ``cnn.Encoder`` and ``cnn.Decoder`` share: ``conv_in``, groups of ``num_res_blocks``
    `BvGivtCNNResBlock` s (one group per entry of ``group_widths``, the group's output width) with the subclass's
    `resample` between groups, then GN, act and ``conv_out``. ``res_blocks`` is flat, in flax creation order
    (``ResBlock_i``)."""

    def __init__(self, config: BvGivtCNNVAEConfig, conv_in: nn.Conv2d, group_widths: list[int], out_channels: int,
                 out_kernel: int):
        super().__init__()
        self.config = config
        self.conv_in = conv_in
        blocks, width = [], conv_in.out_channels
        for group_width in group_widths:
            for _ in range(config.num_res_blocks):
                blocks.append(BvGivtCNNResBlock(config, width, group_width))
                width = group_width
        self.res_blocks = nn.ModuleList(blocks)
        self.norm_out = _group_norm(config, width)
        self.conv_out = nn.Conv2d(width, out_channels, out_kernel, padding=out_kernel // 2)
        self.act = ACT2FN[config.hidden_act]

    def resample(self, group: int, x: torch.Tensor) -> torch.Tensor:
        """What comes between the blocks of group ``group`` and those of the next."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.config.num_res_blocks
        x = self.conv_in(x)
        for group in range(len(self.res_blocks) // n):
            if group:
                x = self.resample(group - 1, x)
            for block in self.res_blocks[group * n : (group + 1) * n]:
                x = block(x)
        return self.conv_out(self.act(self.norm_out(x)))


class BvGivtCNNEncoder(BvGivtCNNStack):
    """big_vision ``cnn.Encoder``: ``conv_in``, per level ``num_res_blocks`` blocks then a downsampling (all but the
    last level), ``num_res_blocks`` more blocks, GN, act, a 1x1 conv to ``2 * codeword_dim`` (mean | logvar).

    ``downsample`` is in flax creation order (``Conv_1...``)."""

    def __init__(self, config: BvGivtCNNVAEConfig):
        widths = _level_widths(config)
        conv_in = nn.Conv2d(config.num_channels, config.filters, 3, padding=1, bias=False)
        super().__init__(config, conv_in, [*widths, widths[-1]], 2 * config.codeword_dim, 1)
        self.downsample = nn.ModuleList(
            [BvSameConv2d(w, w, 4, stride=2) for w in widths[:-1]] if config.conv_downsample else [])  # flax SAME

    def resample(self, group: int, x: torch.Tensor) -> torch.Tensor:
        if group == len(self.config.channel_multipliers) - 1:  # the last level: no downsampling
            return x
        return self.downsample[group](x) if self.config.conv_downsample else tf_avg_pool_2x2(x)


class BvGivtCNNDecoder(BvGivtCNNStack):
    """big_vision ``cnn.Decoder``: ``conv_in`` (3x3, bias), ``num_res_blocks`` blocks, then per level from the last
    ``num_res_blocks`` blocks and (all but the first level) a nearest 2x upsampling + 3x3 conv; GN, act, 3x3 conv to
    the image."""

    def __init__(self, config: BvGivtCNNVAEConfig):
        widths = _level_widths(config)
        conv_in = nn.Conv2d(config.codeword_dim, widths[-1], 3, padding=1)
        super().__init__(config, conv_in, [widths[-1], *widths[::-1]], config.num_channels, 3)
        self.upsample = nn.ModuleList([nn.Conv2d(w, w, 3, padding=1) for w in widths[:0:-1]])

    def resample(self, group: int, x: torch.Tensor) -> torch.Tensor:
        if group == 0:  # after the blocks at the bottom width: straight into the last level
            return x
        # jax.image.resize(..., "nearest") at exactly 2x = torch nearest (pixel i <- i // 2)
        return self.upsample[group - 1](F.interpolate(x, scale_factor=2, mode="nearest"))


class BvGivtCNNVAEModel(BvGivtVAEPreTrainedModel):
    r"""GIVT's convolutional β-VAE (big_vision ``proj.givt.cnn.Model``): the ImageNet VAEs.

    ``encode`` maps images in [-1, 1] to the posterior ``(mean, logvar)`` of ``[B, (H/16)(W/16), 16]`` latent tokens
    (row-major, optionally pixel-shuffled), ``decode`` maps latent tokens back to images in [-1, 1].

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtCNNVAEConfig
        >>> vae = BvGivtCNNVAEModel(BvGivtCNNVAEConfig(filters=32, num_res_blocks=1, channel_multipliers=[1, 2],
        ...                                            codeword_dim=4)).eval()
        >>> mean, logvar = vae.encode(torch.zeros(1, 3, 16, 16))
        >>> tuple(mean.shape), tuple(vae.decode(mean).shape)
        ((1, 64, 4), (1, 3, 16, 16))

    Parity (``tests/test_bv_givt.py``, fp32, against big_vision ``cnn.Model`` at commit 0127fb6 on random weights,
    fixtures ``givt_vae_cnn`` -- a flax msgpack file in the malib layout of the public VAEs, also rewritten as
    ``.npz`` with and without ``params/`` and as bfloat16 -- and ``givt_vae_cnn_convdown``): max abs error 2.8e-6
    on ``mean`` / ``logvar``, 7.5e-6 on decoded images. Not checked against the real ImageNet VAEs (not available
    here); their tree below ``ema_params`` is assumed to be ``cnn.Model``'s, as big_vision's loader assumes.
    """

    config: BvGivtCNNVAEConfig
    config_class = BvGivtCNNVAEConfig

    def __init__(self, config: BvGivtCNNVAEConfig):
        super().__init__(config)
        self.encoder = BvGivtCNNEncoder(config)
        self.decoder = BvGivtCNNDecoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """flax defaults: ``nn.Conv`` lecun_normal kernels and zero biases, ``nn.GroupNorm`` ones and zeros."""
        if isinstance(module, nn.Conv2d):
            init.lecun_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, H, W]`` in [-1, 1] (square) -> ``(mean, logvar)``, each ``[B, L, latent_dim]``."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(f"pixel_values must be [batch, {self.config.num_channels}, height, width] images in "
                             f"[-1, 1], got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[-1] != pixel_values.shape[-2]:
            raise ValueError(f"big_vision's CNN VAE needs square images, got {tuple(pixel_values.shape[-2:])}")
        x = pixel_values.to(self.dtype)
        if self.config.malib_ckpt:
            x = (x + 1.0) / 2.0  # trained on [0, 1] images
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        if self.config.malib_ckpt:
            logvar = logvar.clamp(-30.0, 20.0)
        patch = self.config.pixel_shuffle_patch_size
        return space_to_depth(mean, patch), space_to_depth(logvar, patch)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent tokens ``[B, L, latent_dim]`` -> images ``[B, 3, H, W]`` clipped to [-1, 1]."""
        if latents.ndim != 3 or latents.shape[-1] != self.config.latent_dim:
            raise ValueError(f"latents must be [batch, tokens, {self.config.latent_dim}] (this VAE's latent width), "
                             f"got shape {tuple(latents.shape)}")
        x = self.decoder(depth_to_space(latents.to(self.dtype), self.config.pixel_shuffle_patch_size))
        if self.config.malib_ckpt:
            x = 2.0 * x - 1.0
        return x.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# ViT VAE (big_vision proj/givt/vit.py)
# ---------------------------------------------------------------------------------------------------------------


def resize_token_grid(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``[B, h*w, C]`` row-major tokens -> ``[B, H*W, C]`` by ``jax.image.resize(x, (B, H, W, C), "linear")``
    (big_vision ``vit.Model`` ``bottleneck_resize``), through `resize_grid_antialiased` with the batch folded into
    the channels."""
    b, _, c = tokens.shape
    grid_tokens = tokens.reshape(b, grid[0], grid[1], c).permute(1, 2, 0, 3).reshape(grid[0], grid[1], b * c)
    resized = resize_grid_antialiased(grid_tokens, size)
    return resized.reshape(size[0], size[1], b, c).permute(2, 0, 1, 3).reshape(b, size[0] * size[1], c)


class BvGivtViTVAEModel(BvGivtVAEPreTrainedModel):
    r"""GIVT's ViT β-VAE (big_vision ``proj.givt.vit.Model``): the panoptic and depth VAEs (UViM stage I).

    The encoder embeds the (one-hot) label map or image in patches, runs a ViT, maps the patch grid to ``code_len``
    tokens and predicts ``(mean, logvar)`` per token; the decoder maps tokens back to the grid, runs a ViT and
    predicts per-pixel logits for each ``inout_specs`` entry (or an RGB image).

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_givt import BvGivtViTVAEConfig
        >>> vit = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 16,
        ...        "patch_size": 4, "pool_type": "none", "num_hidden_layers": 1}
        >>> config = BvGivtViTVAEConfig(encoder_config={**vit, "num_channels": 8}, decoder_config=vit,
        ...                             codeword_dim=4, code_len=4, bottleneck_resize=True,
        ...                             inout_specs={"semantics": (0, 5), "instances": (1, 3)})
        >>> vae = BvGivtViTVAEModel(config).eval()
        >>> mean, logvar = vae.encode(torch.zeros(1, 2, 16, 16))  # channel 0: semantics ids, 1: instance ids
        >>> tuple(mean.shape), {k: tuple(v.shape) for k, v in vae.decode(mean).items()}
        ((1, 4, 4), {'semantics': (1, 5, 16, 16), 'instances': (1, 3, 16, 16)})

    Parity (``tests/test_bv_givt.py``, fp32, against big_vision ``vit.Model`` at commit 0127fb6 on random weights,
    fixtures ``givt_vae_vit`` (panoptic-like, scanned) and ``givt_vae_vit_rgb`` (learned bottleneck, sincos2d),
    ``params/`` and bfloat16 layouts): max abs error 1.4e-6.
    """

    config: BvGivtViTVAEConfig
    config_class = BvGivtViTVAEConfig
    _no_split_modules = ["BvViTEncoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: BvGivtViTVAEConfig):
        super().__init__(config)
        share_attn_implementation(config)
        enc = config.encoder_config
        width, (ph, pw), grid = enc.hidden_size, enc.patch_size, config.grid_size
        num_patches = grid[0] * grid[1]
        self.embedding = nn.Conv2d(enc.num_channels, width, kernel_size=(ph, pw), stride=(ph, pw))
        if enc.posemb == "learn":
            self.pos_embedding_encoder = nn.Parameter(torch.zeros(1, num_patches, width))
            self.pos_embedding_decoder = nn.Parameter(torch.zeros(1, num_patches, width))
        else:  # sincos2d: not parameters (recomputed by _init_weights after meta-device loading)
            pe = posemb_sincos_2d(*grid, width)
            self.register_buffer("pos_embedding_encoder", pe, persistent=False)
            self.register_buffer("pos_embedding_decoder", pe.clone(), persistent=False)
        self.encoder = BvViTEncoder(enc)
        if config.bottleneck_resize:
            self.bottleneck_downsample = self.bottleneck_upsample = None
        else:
            self.bottleneck_downsample = nn.Parameter(torch.zeros(num_patches, config.code_len))
            self.bottleneck_upsample = nn.Parameter(torch.zeros(config.code_len, num_patches))
        self.encoder_head = nn.Linear(width, 2 * config.codeword_dim)
        self.decoder_stem = nn.Linear(config.codeword_dim, width)
        self.decoder = BvViTEncoder(config.decoder_config)
        self.decoder_head = nn.Linear(width, config.num_output_channels * ph * pw)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision ``vit.Model``'s initialisers (the ViT blocks as `BvViTPreTrainedModel` does)."""
        super()._init_weights(module)
        if module is self:
            enc = self.config.encoder_config
            if enc.posemb == "learn":
                for pe in (self.pos_embedding_encoder, self.pos_embedding_decoder):
                    init.normal_(pe, std=enc.hidden_size**-0.5)  # vit.get_posemb: normal(1/sqrt(width))
            else:
                pe = posemb_sincos_2d(*self.config.grid_size, enc.hidden_size)
                init.copy_(self.pos_embedding_encoder, pe)
                init.copy_(self.pos_embedding_decoder, pe)
            if self.bottleneck_downsample is not None:
                init.xavier_uniform_(self.bottleneck_downsample)
                init.xavier_uniform_(self.bottleneck_upsample)
            init_flax_dense_(self.embedding)
            init_flax_dense_(self.encoder_head)
            init_flax_dense_(self.decoder_stem)
            init_flax_dense_(self.decoder_head, zero_kernel=self.config.head_zeroinit)
        elif isinstance(module, (BvViTAttention, BvViTMLP)):
            init_vit_block_module_(module)

    def _one_hot_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """big_vision ``vit.Model.encode``: ``concat(one_hot(x[..., in_ch], classes) for each spec)``, channels first.
        ``nn.one_hot`` compares with ``arange``: a value that is no class id gives zeros."""
        parts = []
        for _, channel, num_classes in self.config.inout_specs:
            ids = x[:, channel]
            classes = torch.arange(num_classes, device=x.device, dtype=ids.dtype)
            parts.append((ids[:, None] == classes[None, :, None, None]).to(self.dtype))
        return torch.cat(parts, dim=1)

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` -> ``(mean, logvar)``, each ``[B, code_len, codeword_dim]``. With ``inout_specs`` the
        channels hold class ids (each ``inout_specs`` entry names its channel); else an RGB image in
        [-1, 1]."""
        h, w = self.config.encoder_config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (h, w):
            raise ValueError(f"pixel_values must be [batch, channels, {h}, {w}], got {tuple(pixel_values.shape)}")
        x = self._one_hot_inputs(pixel_values) if self.config.inout_specs is not None else pixel_values.to(self.dtype)
        x = self.embedding(x).flatten(2).transpose(1, 2)  # (B, h*w, width), row-major patches
        x = self.encoder(x + self.pos_embedding_encoder.to(x.dtype))
        grid = self.config.grid_size
        if self.config.bottleneck_resize:
            x = resize_token_grid(x, grid, self.config.code_grid)
        else:
            x = torch.einsum("btc,tn->bnc", x, self.bottleneck_downsample)
        mean, logvar = self.encoder_head(x).chunk(2, dim=-1)
        return mean, logvar

    def decode(self, latents: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """``[B, code_len, codeword_dim]`` -> the image ``[B, 3, H, W]`` clipped to [-1, 1], or (``inout_specs``) a
        dict ``name -> logits [B, classes, H, W]``."""
        cfg = self.config
        if latents.ndim != 3 or tuple(latents.shape[1:]) != (cfg.code_len, cfg.codeword_dim):
            raise ValueError(f"latents must be [batch, {cfg.code_len}, {cfg.codeword_dim}] (this VAE's code_len and "
                             f"latent width), got shape {tuple(latents.shape)}")
        x = self.decoder_stem(latents.to(self.dtype))
        grid = cfg.grid_size
        if cfg.bottleneck_resize:
            x = resize_token_grid(x, cfg.code_grid, grid)
        else:
            x = torch.einsum("bnc,nt->btc", x, self.bottleneck_upsample)
        x = self.decoder_head(self.decoder(x + self.pos_embedding_decoder.to(x.dtype)))
        (ph, pw), b = cfg.encoder_config.patch_size, x.shape[0]
        # "b (h w) (p q c) -> b (h p) (w q) c", here channels first
        x = x.reshape(b, grid[0], grid[1], ph, pw, -1).permute(0, 5, 1, 3, 2, 4)
        x = x.reshape(b, -1, grid[0] * ph, grid[1] * pw)
        if cfg.inout_specs is None:
            return x.clamp(-1.0, 1.0)
        out, start = {}, 0
        for name, _, num_classes in cfg.inout_specs:
            out[name] = x[:, start:start + num_classes]
            start += num_classes
        return out


__all__ = ["BvGivtCNNVAEModel", "BvGivtViTVAEModel", "BvGivtVAEPreTrainedModel", "BvGivtVAEOutput"]
