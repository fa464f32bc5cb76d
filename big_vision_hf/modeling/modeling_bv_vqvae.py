"""PyTorch port of PaliGemma's segmentation VQ-VAE (``vae-oid.npz``): ``<seg>`` codes <-> 64x64 masks.

Ported from big_vision at commit 0127fb6:

- decoder: ``big_vision/evaluators/proj/paligemma/transfers/segmentation.py`` (``Decoder``, ``ResBlock``,
  ``_quantized_values_from_codebook_indices``, ``get_reconstruct_masks``), flax;
- encoder: ``big_vision/pp/proj/paligemma/segmentation.py`` (``encode_to_codebook_indices``, ``_conv_tf``,
  ``_resblock_tf``, ``_get_codebook_indices``), TensorFlow, used by the ``refcoco_mask2str`` pp op to build
  RefCOCO training targets.

Why our own ``PreTrainedModel``: transformers has no such model; PaliGemma's HF port leaves mask decoding to the
user (the HF Space ships a JAX copy of the big_vision decoder).

big_vision -> outputs here:
    ``_quantized_values_from_codebook_indices(idx, emb)`` ``[B, 4, 4, D]``  -> ``quantized`` (same layout)
    ``reconstruct_masks(idx)`` ``[B, 64, 64, 1]``                            -> ``masks`` ``[B, 64, 64]``
    ``encode_to_codebook_indices(ckpt, masks)`` ``[B, 16]``                  -> ``codebook_indices``
    the encoder's last conv output ``[B, 4, 4, D]`` (no big_vision name)    -> ``latents``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, initialization as init
from transformers.utils import ModelOutput

from ..configuration.configuration_bv_vqvae import BvSegVQVAEConfig
from .loading import BvStrictLoadingMixin


@dataclass
class BvSegVQVAEOutput(ModelOutput):
    r"""
    masks (`torch.FloatTensor` of shape `(batch_size, 64, 64)`):
        Decoded masks, roughly in [-1, 1]; the mask is ``masks > 0`` (big_vision evaluator threshold).
    quantized (`torch.FloatTensor` of shape `(batch_size, 4, 4, embedding_dim)`):
        Codebook vectors of ``codebook_indices`` on the row-major 4x4 grid (big_vision layout, channels last).
    codebook_indices (`torch.LongTensor` of shape `(batch_size, 16)`):
        The codes (``<segNNN>`` token numbers), given or found by the encoder.
    latents (`torch.FloatTensor` of shape `(batch_size, 4, 4, embedding_dim)`, *optional*):
        The encoder output before quantization (only when ``masks`` were encoded).
    """

    masks: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    codebook_indices: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``padding='SAME'``: ``(before, after)`` with the odd pixel after (``tf.nn.conv2d``)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class BvSameConv2d(nn.Conv2d):
    """``tf.nn.conv2d(x, kernel, strides, padding='SAME') + bias`` (big_vision ``segmentation._conv_tf``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = tf_same_padding(x.shape[-2], kh, sh)
        left, right = tf_same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class BvSegVQVAEResBlock(nn.Module):
    """big_vision ``ResBlock`` / ``_resblock_tf``: ``x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))``.

    No ReLU after the addition. ``conv1..3`` are ``{decoder.2,decoder.3,encoder.8,encoder.9}.net.{0,2,4}`` of
    ``vae-oid.npz``. The decoder's flax convs pad explicitly (``padding=1`` / ``0``), the encoder's TF convs pad
    ``SAME``: identical for these odd kernels at stride 1, but the encoder keeps TF's rule for any kernel.
    """

    def __init__(self, channels: int, same_padding: bool = False):
        super().__init__()
        if same_padding:
            self.conv1 = BvSameConv2d(channels, channels, 3)
            self.conv2 = BvSameConv2d(channels, channels, 3)
            self.conv3 = BvSameConv2d(channels, channels, 1)
        else:
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv3 = nn.Conv2d(channels, channels, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return x + self.conv3(h)


class BvSegVQVAEDecoder(nn.Module):
    """big_vision ``segmentation.Decoder``: codes ``[B, D, 4, 4]`` -> mask logits ``[B, 1, 64, 64]``.

    ``Conv_0`` 1x1 + ReLU, two ``ResBlock``, four ``ConvTranspose(4x4, stride 2, padding=2,
    transpose_kernel=True)`` + ReLU (exactly torch ``ConvTranspose2d(k=4, s=2, p=1)`` with the stored torch
    weight, checked numerically in ``tests/test_bv_vqvae.py``), ``Conv_1`` 1x1 to one channel.
    """

    def __init__(self, config: BvSegVQVAEConfig):
        super().__init__()
        dim = config.hidden_size
        self.conv_in = nn.Conv2d(config.embedding_dim, dim, 1)
        self.res_blocks = nn.ModuleList([BvSegVQVAEResBlock(dim) for _ in range(config.num_res_blocks)])
        upsample, in_dim = [], dim
        for _ in range(config.num_upsample_layers):  # features = dim, then dim //= 2 (big_vision Decoder)
            upsample.append(nn.ConvTranspose2d(in_dim, dim, kernel_size=4, stride=2, padding=1))
            in_dim, dim = dim, dim // 2
        self.upsample = nn.ModuleList(upsample)
        self.conv_out = nn.Conv2d(in_dim, 1, 1)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_in(quantized))
        for block in self.res_blocks:
            x = block(x)
        for layer in self.upsample:
            x = F.relu(layer(x))
        return self.conv_out(x)


class BvSegVQVAEEncoder(nn.Module):
    """big_vision ``encode_to_codebook_indices`` up to the codebook lookup: mask ``[B, 1, 64, 64]`` in [-1, 1]
    -> latents ``[B, D, 4, 4]``.

    Four TF-``SAME`` stride-2 convs + ReLU (``encoder.{0,2,4,6}``), two ``ResBlock`` (``encoder.{8,9}.net``), a
    stride-1 ``SAME`` conv to ``embedding_dim`` (``encoder.10``, no ReLU).
    """

    def __init__(self, config: BvSegVQVAEConfig):
        super().__init__()
        sizes = config.encoder_hidden_sizes
        self.downsample = nn.ModuleList(
            [
                BvSameConv2d(c_in, c_out, config.encoder_kernel_size, stride=2)
                for c_in, c_out in zip([1] + sizes[:-1], sizes)
            ]
        )
        self.res_blocks = nn.ModuleList(
            [BvSegVQVAEResBlock(sizes[-1], same_padding=True) for _ in range(config.num_res_blocks)]
        )
        self.conv_out = BvSameConv2d(sizes[-1], config.embedding_dim, config.encoder_output_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.downsample:
            x = F.relu(layer(x))
        for block in self.res_blocks:
            x = block(x)
        return self.conv_out(x)


class BvSegVQVAEQuantizer(nn.Module):
    """The codebook (``_vq_vae._embedding``, ``[num_embeddings, D]``) and big_vision's nearest-code search."""

    def __init__(self, config: BvSegVQVAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.num_embeddings, config.embedding_dim)

    def codes_to_vectors(self, codebook_indices: torch.Tensor, grid: int) -> torch.Tensor:
        """big_vision ``_quantized_values_from_codebook_indices``: ``[B, 16]`` -> ``[B, 4, 4, D]`` (row-major)."""
        vectors = self.embedding(codebook_indices.long())
        return vectors.reshape(codebook_indices.shape[0], grid, grid, -1)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """big_vision ``_get_codebook_indices``: ``[B, 4, 4, D]`` -> ``[B, 16]``, argmin of the squared L2 distance
        written as ``|x|^2 + |e|^2 - 2 x.e`` (the same float32 expression; ties go to the lowest index, as
        ``tf.argmin``)."""
        embeddings = self.embedding.weight
        flat = latents.reshape(-1, embeddings.shape[1])
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True) + embeddings.pow(2).sum(dim=1) - 2 * flat @ embeddings.T
        )
        return distances.argmin(dim=1).reshape(latents.shape[0], -1)


class BvSegVQVAEPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    config: BvSegVQVAEConfig
    config_class = BvSegVQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "codebook_indices"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's defaults, which the original (PyTorch) VQ-VAE was trained from: ``kaiming_uniform(a=sqrt(5))``
        conv kernels with ``U(+-1/sqrt(fan_in))`` biases; the codebook ``U(+-1/num_embeddings)`` as in the
        reference VQ-VAE code. Only used for fresh models; loaded tensors are left alone."""
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            # torch's fan_in reads weight dim 1 for both (in_channels of a Conv2d, out_channels of a ConvTranspose2d).
            fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            n = module.weight.shape[0]
            init.uniform_(module.weight, -1.0 / n, 1.0 / n)


class BvSegVQVAEModel(BvSegVQVAEPreTrainedModel):
    r"""PaliGemma's mask VQ-VAE: 16 ``<seg>`` codes -> a 64x64 mask (decoder), and a 64x64 mask -> 16 codes
    (encoder, present when the checkpoint has ``encoder.*`` arrays).

    ``model(codebook_indices=idx)`` decodes; ``model(masks=m)`` encodes ``m`` (``[B, 64, 64]`` or big_vision's
    ``[B, 64, 64, 1]``, values in [0, 1]) and decodes the codes it found (a reconstruction). See
    :func:`big_vision_hf.processing.paligemma_decoding.decode_segmentation` / ``mask_to_tokens`` for the box
    pasting and cropping around it.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_vqvae import BvSegVQVAEConfig
        >>> model = BvSegVQVAEModel(BvSegVQVAEConfig(embedding_dim=32, encoder_hidden_sizes=[16, 32, 64, 128]))
        >>> out = model(codebook_indices=torch.zeros(2, 16, dtype=torch.long))
        >>> tuple(out.masks.shape), tuple(out.quantized.shape)
        ((2, 64, 64), (2, 4, 4, 32))
        >>> tuple(model.encode(torch.ones(2, 64, 64)).shape)
        (2, 16)

    Parity (``tests/test_bv_vqvae.py``, fp32, random weights in the ``vae-oid.npz`` layout, big_vision commit
    0127fb6): decoder vs ``big_vision.evaluators.proj.paligemma.transfers.segmentation.get_reconstruct_masks``
    (JAX): max abs error 0 on ``quantized``, 9.5e-6 on ``masks`` (values up to 6.4); encoder vs
    ``big_vision.pp.proj.paligemma.segmentation.encode_to_codebook_indices`` (TF): identical codes, latents within
    7e-6, also with odd kernels (TF's asymmetric ``SAME`` padding); ``refcoco_mask2str`` suffixes identical. Not
    checked against the real ``vae-oid.npz`` (not available here); its encoder kernel sizes are read from the file.
    """

    def __init__(self, config: BvSegVQVAEConfig):
        super().__init__(config)
        self.quantizer = BvSegVQVAEQuantizer(config)
        self.decoder = BvSegVQVAEDecoder(config)
        self.encoder = BvSegVQVAEEncoder(config) if config.has_encoder else None
        self.post_init()

    def embed_codes(self, codebook_indices: torch.Tensor) -> torch.Tensor:
        """``[B, 16]`` codes -> ``quantized`` ``[B, 4, 4, D]``."""
        n = self.config.num_tokens
        if codebook_indices.ndim != 2 or codebook_indices.shape[1] != n:
            raise ValueError(f"codebook_indices must have shape (batch, {n}), got {tuple(codebook_indices.shape)}")
        if codebook_indices.numel() and (
            int(codebook_indices.min()) < 0 or int(codebook_indices.max()) >= self.config.num_embeddings
        ):
            raise ValueError(f"codebook_indices must lie in [0, {self.config.num_embeddings}), "
                             f"got [{int(codebook_indices.min())}, {int(codebook_indices.max())}]")
        return self.quantizer.codes_to_vectors(codebook_indices.to(self.device), self.config.codes_grid)

    def decode(self, codebook_indices: torch.Tensor) -> torch.Tensor:
        """``[B, 16]`` codes -> mask values ``[B, 64, 64]`` (big_vision ``reconstruct_masks`` without the channel)."""
        return self(codebook_indices=codebook_indices).masks

    def encode_latents(self, masks: torch.Tensor) -> torch.Tensor:
        """``[B, 64, 64]`` (or ``[B, 64, 64, 1]``) masks in [0, 1] -> encoder output ``[B, 4, 4, D]``."""
        if self.encoder is None:
            raise ValueError(
                "this VQ-VAE has no encoder (its checkpoint had no `encoder.*` arrays; big_vision's evaluator only "
                "ships the decoder): convert the full vae-oid.npz to encode masks"
            )
        size = self.config.mask_size
        if masks.ndim == 4 and masks.shape[-1] == 1:
            masks = masks[..., 0]
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (size, size):
            raise ValueError(f"masks must have shape (batch, {size}, {size}) with values in [0, 1], "
                             f"got {tuple(masks.shape)}")
        x = masks.to(device=self.device, dtype=self.dtype)[:, None]
        x = 2.0 * (x - 0.5)  # big_vision `_norm`: [0, 1] -> [-1, 1]
        return self.encoder(x).permute(0, 2, 3, 1)

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """``[B, 64, 64]`` masks in [0, 1] -> ``[B, 16]`` codes (big_vision ``encode_to_codebook_indices``)."""
        return self.quantizer.nearest(self.encode_latents(masks))

    def forward(
        self, codebook_indices: torch.Tensor | None = None, masks: torch.Tensor | None = None, **kwargs
    ) -> BvSegVQVAEOutput:
        if (codebook_indices is None) == (masks is None):
            raise ValueError("pass exactly one of `codebook_indices` (to decode) or `masks` (to encode and decode)")
        latents = None
        if masks is not None:
            latents = self.encode_latents(masks)
            codebook_indices = self.quantizer.nearest(latents)
        quantized = self.embed_codes(codebook_indices)
        decoded = self.decoder(quantized.permute(0, 3, 1, 2))
        return BvSegVQVAEOutput(
            masks=decoded[:, 0], quantized=quantized, codebook_indices=codebook_indices.long(), latents=latents
        )


__all__ = ["BvSegVQVAEModel", "BvSegVQVAEPreTrainedModel", "BvSegVQVAEOutput"]
