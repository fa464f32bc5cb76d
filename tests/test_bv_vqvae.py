"""PaliGemma's segmentation VQ-VAE: parity with the original big_vision code through the user path.

- decoder: ``vqvae_seg_decoder`` golden fixture (big_vision ``segmentation.get_reconstruct_masks``, JAX);
- encoder and ``refcoco_mask2str``: ``paligemma_seg/`` (big_vision ``pp/proj/paligemma/segmentation.py``, TF),
  written by ``fixtures/make_paligemma_fixtures.py``.

Path: npz -> ``big-vision-hf convert`` (in-process CLI) -> folder -> ``AutoModel.from_pretrained`` -> forward.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.api import detect_family
from big_vision_hf.conversion.checkpoint import read_checkpoint
from big_vision_hf.modeling.modeling_bv_vqvae import BvSegVQVAEModel, tf_same_padding
from big_vision_hf.processing.image_processing_bv import resize_bilinear_antialias
from big_vision_hf.processing.paligemma_decoding import mask_crop_64, mask_to_tokens
from conftest import FIXTURES, Golden, convert_cli, max_abs_err, run_without_package

TOL = 1e-4
SEG = os.path.join(FIXTURES, "paligemma_seg")


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("vqvae_seg_decoder")


def _full_checkpoint(g: Golden, path, variant: str = "k4") -> str:
    """The golden decoder plus a random encoder, in ``vae-oid.npz``'s layout (what the real file holds)."""
    np.savez(path, **dict(np.load(g.params)), **dict(np.load(os.path.join(SEG, f"encoder_{variant}.npz"))))
    return str(path)


@pytest.fixture(scope="module")
def full_model(g, tmp_path_factory) -> BvSegVQVAEModel:
    tmp = tmp_path_factory.mktemp("vqvae")
    folder = tmp / "converted"
    convert_cli(_full_checkpoint(g, tmp / "vae-oid.npz"), str(folder))
    return AutoModel.from_pretrained(str(folder)).eval()


def test_vqvae_decoder_parity_through_cli(g, tmp_path):
    folder = tmp_path / "vae"
    convert_cli(g.params, str(folder))  # family detected from `_vq_vae._embedding`
    config = json.load(open(folder / "config.json"))
    assert config["model_type"] == "bv_seg_vqvae" and config["bv_model_name"] == "proj.paligemma.vqvae"
    assert config["auto_map"]["AutoModel"] == "modeling_bv_vqvae.BvSegVQVAEModel"
    assert "from ..configuration" not in (folder / "modeling_bv_vqvae.py").read_text()
    model = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(model, BvSegVQVAEModel) and model.encoder is None
    with torch.no_grad():
        out = model(codebook_indices=torch.from_numpy(g.inputs["codebook_indices"]))
    err_q = max_abs_err(out.quantized, g.outputs["quantized"])
    err_m = max_abs_err(out.masks[..., None], g.outputs["masks"])
    assert err_q <= TOL, f"quantized: max abs error {err_q:.3g} > {TOL} (fp32)"
    scale = float(np.abs(g.outputs["masks"]).max())
    assert err_m <= TOL, f"masks: max abs error {err_m:.3g} > {TOL} (fp32, |masks| up to {scale:.2f})"
    print(f"vqvae_seg_decoder fp32 max abs error: quantized {err_q:.2e}, masks {err_m:.2e}")


@pytest.mark.parametrize("variant", ["k4", "k3"])
def test_vqvae_encoder_matches_big_vision(g, tmp_path, variant):
    """``encode_to_codebook_indices`` (TF): same codes; kernel 3 checks TF's asymmetric SAME padding."""
    model = convert_checkpoint(_full_checkpoint(g, tmp_path / "vae.npz", variant))
    ref = np.load(os.path.join(SEG, f"encoder_{variant}_io.npz"))
    masks = torch.from_numpy(ref["masks"])  # big_vision layout [B, 64, 64, 1] in [0, 1]
    with torch.no_grad():
        latents = model.encode_latents(masks)
        codes = model(masks=masks).codebook_indices
    err = max_abs_err(latents, ref["latents"])
    assert err <= TOL, f"encoder latents ({variant}): max abs error {err:.3g} > {TOL}"
    assert codes.tolist() == ref["codebook_indices"].tolist(), f"codes differ from big_vision ({variant})"


def test_tf_same_padding():
    assert tf_same_padding(64, 4, 2) == (1, 1)  # = torch padding=1 for the 4x4 stride-2 convs
    assert tf_same_padding(64, 3, 2) == (0, 1)  # odd kernel: the extra pixel goes after, as in TF
    assert tf_same_padding(4, 1, 1) == (0, 0)


def test_resize_bilinear_antialias_matches_tf():
    ref = np.load(os.path.join(SEG, "resize_antialias.npz"))
    for i in range(6):
        ours = resize_bilinear_antialias(ref[f"in_{i}"][..., None], (64, 64))[..., 0]
        err = float(np.abs(ours - ref[f"out_{i}"]).max())
        shape = ref[f"in_{i}"].shape
        assert err == 0.0, f"case {i} {shape}: max abs error {err:.3g} vs tf.image.resize(antialias=True)"


def test_mask_to_tokens_matches_refcoco_mask2str(full_model):
    """The whole RefCOCO target op: crop at round(h*y1).., antialiased resize, /255, encoder, loc binning."""
    ref = np.load(os.path.join(SEG, "mask2str.npz"))
    n = len([k for k in ref if k.startswith("suffix_")])
    for i in range(n):
        mask, bbox = ref[f"mask_{i}"], ref[f"bbox_{i}"]
        crop = mask_crop_64(mask, bbox)
        assert float(np.abs(crop - ref[f"crop64_{i}"]).max()) == 0.0, f"case {i}: 64x64 crop differs"
        assert mask_to_tokens(mask, full_model, bbox) == str(ref[f"suffix_{i}"]), f"case {i}"
    # A tight box taken from the mask itself (convenience) equals passing that box.
    mask = ref["mask_0"]
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    box = (ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w)
    assert mask_to_tokens(mask, full_model) == mask_to_tokens(mask, full_model, box)
    with pytest.raises(ValueError, match="empty"):
        mask_to_tokens(mask, full_model, (0.5, 0.5, 0.5, 0.6))


def test_encode_decode_roundtrip_shapes(full_model):
    out = full_model(masks=torch.zeros(3, 64, 64))
    assert out.codebook_indices.shape == (3, 16) and out.masks.shape == (3, 64, 64)
    assert out.latents.shape == (3, 4, 4, full_model.config.embedding_dim)


def test_vqvae_clear_errors(g, full_model):
    decoder_only = convert_checkpoint(g.params)
    with pytest.raises(ValueError, match="no encoder"):
        decoder_only.encode(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="exactly one"):
        full_model()
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        full_model(codebook_indices=torch.full((1, 16), 128))
    with pytest.raises(ValueError, match="shape"):
        full_model(codebook_indices=torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        full_model.encode(torch.zeros(1, 32, 32))


def test_convert_vqvae_rejects_wrong_arrays(g, tmp_path):
    arrays = dict(np.load(g.params))
    assert detect_family(read_checkpoint(g.params)) == "proj.paligemma.vqvae"
    extra = tmp_path / "extra.npz"
    np.savez(extra, **arrays, **{"decoder.99.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match="decoder.99.weight"):
        convert_checkpoint(str(extra))
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "decoder.12.bias"})
    with pytest.raises(CheckpointError, match="conv_out.bias"):
        convert_checkpoint(str(missing))
    with pytest.raises(CheckpointError, match="embedding_dim=512"):
        convert_checkpoint(g.params, "proj.paligemma.vqvae", {"embedding_dim": 512})
    # big_vision's own `model='oi'` option names the file and is accepted.
    assert convert_checkpoint(g.params, "proj.paligemma.vqvae", {"model": "oi"}).config.embedding_dim == 32


_CHILD = """
from transformers import AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    masks = model(codebook_indices=torch.from_numpy(inputs["codes"])).masks.numpy()
outputs, remote = {"masks": masks}, {"model": model}
"""


def test_vqvae_folder_loads_as_remote_code(g, tmp_path):
    folder = tmp_path / "vae"
    convert_cli(g.params, str(folder))
    child = run_without_package(tmp_path, folder, _CHILD, {"codes": g.inputs["codebook_indices"]})
    err = float(np.abs(child["masks"] - g.outputs["masks"][..., 0]).max())
    assert err <= TOL, f"remote-code masks: max abs error {err:.3g} > {TOL}"
