"""PaliGemma's segmentation VQ-VAE (``gs://big_vision/paligemma/vae-oid.npz``) -> `BvSegVQVAEModel`.

Unlike every other big_vision checkpoint this file holds a **PyTorch** state dict (the model was trained in
PyTorch, Ning et al. 2023): keys ``_vq_vae._embedding``, ``decoder.N[.net.M].{weight,bias}`` and
``encoder.N[.net.M].{weight,bias}``, conv weights OIHW and ``ConvTranspose2d`` weights ``[in, out, kh, kw]``, as
torch stores them. big_vision converts them to flax in ``evaluators/proj/paligemma/transfers/segmentation.py
_get_params`` (decoder) and reads them in TF in ``pp/proj/paligemma/segmentation.py`` (encoder); both tables
below follow those two functions, and every array is used as stored (identity transforms).

The torch ``nn.Sequential`` indices interleave ReLUs: decoder ``0`` conv, ``2, 3`` ResBlocks, ``4, 6, 8, 10``
transposed convs, ``12`` conv; encoder ``0, 2, 4, 6`` stride-2 convs, ``8, 9`` ResBlocks, ``10`` conv. Inside a
ResBlock ``net.0``, ``net.2``, ``net.4`` are the three convs.

    big-vision-hf convert vae-oid.npz vae-oid/       # detected from `_vq_vae._embedding`
"""

from __future__ import annotations

import re

from ..configuration.configuration_bv_vqvae import BvSegVQVAEConfig
from ..modeling.modeling_bv_vqvae import BvSegVQVAEModel
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import Rule, map_params

# Arrays some VQ-VAE-EMA state dicts carry next to the codebook; big_vision reads neither.
IGNORED = {
    r"_vq_vae\._ema_cluster_size": "EMA codebook statistics used only while training the VQ-VAE",
    r"_vq_vae\._ema_w": "EMA codebook statistics used only while training the VQ-VAE",
}


def _conv(bv: str, hf: str) -> list[Rule]:
    return [Rule(rf"{re.escape(bv)}\.(weight|bias)", hf + ".{0}")]


def _res_block(bv: str, hf: str) -> list[Rule]:
    """``ResBlock.net.{0,2,4}`` (conv3x3, ReLU, conv3x3, ReLU, conv1x1) -> ``conv1..3``."""
    return [r for n, m in ((1, 0), (2, 2), (3, 4)) for r in _conv(f"{bv}.net.{m}", f"{hf}.conv{n}")]


def vqvae_rules(num_res_blocks: int = 2, num_layers: int = 4, encoder: bool = True) -> list[Rule]:
    """The table for big_vision's layout (``num_res_blocks=2``, ``num_layers=4``: the indices in the module doc).

    Decoder (``segmentation._get_params``): ``Conv_0`` <- ``decoder.0``, ``ResBlock_i`` <- ``decoder.{2+i}.net``,
    ``ConvTranspose_j`` <- ``decoder.{2+R+2j}``, ``Conv_1`` <- ``decoder.{2+R+2L}``. Encoder
    (``encode_to_codebook_indices``): ``encoder.{2j}`` stride-2 convs, ``encoder.{2L+i}.net`` ResBlocks,
    ``encoder.{2L+R}`` the last conv.
    """
    r, n = num_res_blocks, num_layers
    rules = [
        Rule(r"_vq_vae\._embedding", "quantizer.embedding.weight"),
        *_conv("decoder.0", "decoder.conv_in"),
        *[rule for i in range(r) for rule in _res_block(f"decoder.{2 + i}", f"decoder.res_blocks.{i}")],
        *[rule for j in range(n) for rule in _conv(f"decoder.{2 + r + 2 * j}", f"decoder.upsample.{j}")],
        *_conv(f"decoder.{2 + r + 2 * n}", "decoder.conv_out"),
    ]
    if encoder:
        rules += [
            *[rule for j in range(n) for rule in _conv(f"encoder.{2 * j}", f"encoder.downsample.{j}")],
            *[rule for i in range(r) for rule in _res_block(f"encoder.{2 * n + i}", f"encoder.res_blocks.{i}")],
            *_conv(f"encoder.{2 * n + r}", "encoder.conv_out"),
        ]
    return rules


def infer_vqvae_config(params: dict[str, LazyArray]) -> dict:
    """Every size from the arrays' shapes (nothing is read). Raises ``CheckpointError`` naming what is missing."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            tops = ", ".join(sorted({k.split(".")[0] for k in params})[:8])
            raise CheckpointError(
                f"not a PaliGemma segmentation VQ-VAE checkpoint (vae-oid.npz layout): no {name!r} array "
                f"(top-level names: {tops})"
            )
        return tuple(params[name].shape)

    num_embeddings, embedding_dim = shape("_vq_vae._embedding")
    hidden_size = shape("decoder.0.weight")[0]
    res = sorted({int(m.group(1)) for k in params if (m := re.fullmatch(r"decoder\.(\d+)\.net\..*", k))})
    if not res or res != list(range(2, 2 + len(res))):
        raise CheckpointError(f"decoder residual blocks must be decoder.2.net, decoder.3.net, ...; found {res}")
    num_res_blocks = len(res)
    plain = {int(m.group(1)) for k in params if (m := re.fullmatch(r"decoder\.(\d+)\.weight", k))}
    run = 2 + num_res_blocks  # transposed convs at 2 + R, 2 + R + 2, ..., then the last conv at 2 + R + 2L
    while run + 2 in plain:
        run += 2
    num_layers = (run - 2 - num_res_blocks) // 2
    if num_layers < 1 or run not in plain:
        raise CheckpointError(f"cannot find the decoder's transposed convs after decoder.{1 + num_res_blocks}.net")
    config = dict(
        num_embeddings=num_embeddings,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_res_blocks=num_res_blocks,
        num_upsample_layers=num_layers,
    )
    if any(k.startswith("encoder.") for k in params):
        config["encoder_hidden_sizes"] = [shape(f"encoder.{2 * j}.weight")[0] for j in range(num_layers)]
        config["encoder_kernel_size"] = shape("encoder.0.weight")[2]
        config["encoder_output_kernel_size"] = shape(f"encoder.{2 * num_layers + num_res_blocks}.weight")[2]
    return config


def build_vqvae(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> Built:
    """`BvSegVQVAEModel` for ``vae-oid.npz`` (nothing read yet).

    ``model_kwargs`` may only restate what the arrays say (big_vision configs pass ``model='oi'``, a file name,
    never sizes).
    """
    inferred = infer_vqvae_config(params)
    for key, value in dict(model_kwargs or {}).items():
        if key == "model":  # big_vision evaluator/pp `model='oi'`: which file, not a size
            continue
        if key not in inferred:
            raise CheckpointError(
                f"unknown VQ-VAE option {key!r}; everything is read from the arrays ({', '.join(inferred)})"
            )
        if inferred[key] != value:
            raise CheckpointError(f"model config says {key}={value!r} but the checkpoint arrays have {inferred[key]!r}")
    config = BvSegVQVAEConfig(**inferred)
    rules = vqvae_rules(config.num_res_blocks, config.num_upsample_layers, encoder=config.has_encoder)
    return Built(BvSegVQVAEModel, config, map_params(params, rules, IGNORED))


FAMILY = Family(
    name="proj.paligemma.vqvae",
    build=build_vqvae,
    summary="PaliGemma's segmentation VQ-VAE (vae-oid.npz, a PyTorch state dict): masks <-> <seg> tokens",
    signatures=(("_vq_vae._embedding",),),
    options=(),
    classes=("BvSegVQVAEModel",),
)
