"""Configuration of the PaliGemma segmentation VQ-VAE (``vae-oid.npz``; big_vision
``evaluators/proj/paligemma/transfers/segmentation.py`` decoder, ``pp/proj/paligemma/segmentation.py`` encoder).

The VQ-VAE (Ning et al. 2023, https://arxiv.org/abs/2301.02229, trained on OpenImages) turns a 64x64 binary mask
into 16 codes of a 128-entry codebook (PaliGemma's ``<seg000>`` ... ``<seg127>`` tokens) and back.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class BvSegVQVAEConfig(PreTrainedConfig):
    r"""Configuration of the PaliGemma mask VQ-VAE.

    big_vision hard-codes the decoder (``segmentation.Decoder``: ``dim = 128``, ``num_res_blocks = 2``,
    ``num_upsample_layers = 4``) and reads the encoder's kernels from the checkpoint
    (``pp/proj/paligemma/segmentation.py``: ``NUM_DOWNSAMPLE_LAYERS = 4``, ``NUM_RES_BLOCKS = 2``); the converter
    reads every size below from the arrays.

    Args:
        num_embeddings: codebook size (``_vq_vae._embedding`` rows; 128 = the number of ``<seg>`` tokens).
        embedding_dim: code width ``D`` (``_vq_vae._embedding`` columns; 512 in ``vae-oid.npz`` per third-party
            ports, 32 in our test fixture).
        hidden_size: decoder width after its first 1x1 conv (big_vision ``Decoder``: ``dim = 128``). The four
            transposed convs output ``hidden_size, hidden_size/2, hidden_size/4, hidden_size/8`` channels.
        num_res_blocks: residual blocks in the decoder and in the encoder (big_vision: 2).
        num_upsample_layers: stride-2 transposed convs of the decoder = stride-2 convs of the encoder
            (big_vision: 4, so 4x4 codes <-> 64x64 masks).
        codes_grid: the codes form a ``codes_grid x codes_grid`` grid, row-major (big_vision: 4x4 = 16 tokens).
        encoder_hidden_sizes: output channels of the encoder's stride-2 convs (``encoder.{0,2,4,6}``), or
            ``None`` for a decoder-only checkpoint (what big_vision's evaluator loads).
        encoder_kernel_size: kernel of those convs (read from ``encoder.0.weight``).
        encoder_output_kernel_size: kernel of the encoder's last conv ``encoder.10`` (to ``embedding_dim``).

    Example:
        >>> from big_vision_hf.configuration.configuration_bv_vqvae import BvSegVQVAEConfig
        >>> config = BvSegVQVAEConfig(embedding_dim=32)
        >>> config.num_tokens, config.mask_size
        (16, 64)
    """

    model_type = "bv_seg_vqvae"

    num_embeddings: int = 128
    embedding_dim: int = 512
    hidden_size: int = 128
    num_res_blocks: int = 2
    num_upsample_layers: int = 4
    codes_grid: int = 4
    encoder_hidden_sizes: list[int] | None = None
    encoder_kernel_size: int = 4
    encoder_output_kernel_size: int = 1

    def __post_init__(self, **kwargs):
        if self.hidden_size % (2 ** (self.num_upsample_layers - 1)):
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by 2**(num_upsample_layers - 1) "
                f"= {2 ** (self.num_upsample_layers - 1)} (the decoder halves it after each upsampling)"
            )
        if self.encoder_hidden_sizes is not None:
            self.encoder_hidden_sizes = [int(c) for c in self.encoder_hidden_sizes]
            if len(self.encoder_hidden_sizes) != self.num_upsample_layers:
                raise ValueError(
                    f"encoder_hidden_sizes has {len(self.encoder_hidden_sizes)} entries, expected "
                    f"num_upsample_layers={self.num_upsample_layers}"
                )
        super().__post_init__(**kwargs)

    @property
    def num_tokens(self) -> int:
        """Codes per mask (big_vision: 16 ``<seg>`` tokens)."""
        return self.codes_grid * self.codes_grid

    @property
    def mask_size(self) -> int:
        """Side of the decoded mask (big_vision: 64)."""
        return self.codes_grid * 2**self.num_upsample_layers

    @property
    def has_encoder(self) -> bool:
        return self.encoder_hidden_sizes is not None
