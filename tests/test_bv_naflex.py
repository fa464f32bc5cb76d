"""NaFlex ViT (SigLIP 2 NaFlex): parity with the original big_vision code, its preprocessing, the Siglip2 export.

The fixture's outputs come from the ORIGINAL ``big_vision.models.proj.image_text.naflex_vit`` (commit 0127fb6) on
random parameters (``posemb="learn_2d(16)"``, ``nposemb=4``, MAP pool, head 10); its inputs were made by
big_vision's own TF NaFlex ops from two random uint8 images (24x56 at <= 16 patches: a 3x5 grid + 1 pad; 40x20 at
<= 9 patches: a 4x2 grid + 8 pads). Per-token outputs are compared at patch positions only (``ptype == 1``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, Siglip2VisionModel

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.convert_bv_naflex import export_to_siglip2
from big_vision_hf.modeling.modeling_bv_naflex import (
    BvNaFlexViTForImageClassification,
    BvNaFlexViTModel,
    naflex_position_embeddings,
    patch_coords_from_spatial_shapes,
)
from big_vision_hf.processing.image_processing_bv_naflex import (
    BvNaFlexImageProcessor,
    get_image_size_for_seq,
    resize_bilinear_antialias,
)
from conftest import Golden, assert_max_abs_errors, convert_cli, max_abs_err, rewrite_npz, run_without_package

TOL = 1e-4
FAMILY = "proj.image_text.naflex_vit"


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("naflex_vit")


@pytest.fixture(scope="module")
def folder(g, tmp_path_factory):
    out = tmp_path_factory.mktemp("naflex") / "converted"
    convert_cli(g.params, str(out), "--model-name", FAMILY, "--model-config", json.dumps(g.model_kwargs))
    return out


def _raw_images(seed: int = 0):
    """The uint8 images the fixture's inputs were made from (refharness `_naflex_inputs`)."""
    rng = np.random.default_rng([seed, 99])
    return [(rng.integers(0, 256, size=(24, 56, 3)).astype(np.uint8), 16),
            (rng.integers(0, 256, size=(40, 20, 3)).astype(np.uint8), 9)]


def test_naflex_parity_cli_folder_from_pretrained(g, folder):
    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert isinstance(model, BvNaFlexViTForImageClassification)
    assert model.config.nposemb == 4 and model.config.posemb_canvas_size == 16 and model.config.patch_size == [8, 8]
    valid = g.inputs["ptype"] == 1
    report = {}
    for coords in (False, True):  # spatial_shapes (Siglip2 API) and big_vision's (yidx, xidx)
        with torch.no_grad():
            out = model(**g.naflex_inputs(coords))
            base = model.vit(**g.naflex_inputs(coords), output_hidden_states=True)
        tag = "coords" if coords else "shapes"
        report[f"{tag}/logits"] = max_abs_err(out.logits, g.outputs["logits"])
        report[f"{tag}/pre_logits"] = max_abs_err(out.pooler_output, g.outputs["pre_logits"])
        pairs = {"encoded": base.last_hidden_state, "with_posemb": base.hidden_states[0]}
        pairs.update({f"encoder/block{i:02d}/+mlp": base.hidden_states[i + 1] for i in range(2)})
        for name, ours in pairs.items():
            report[f"{tag}/{name}"] = float(np.abs(ours.numpy() - g.outputs[name])[valid].max())
    assert_max_abs_errors("naflex_vit (patch tokens only for per-token outputs)", report, TOL)


def test_naflex_processor_reproduces_big_vision_pp(g, folder):
    """Our numpy pp gives big_vision's TF-made fixture inputs bit for bit (patches, ptype, grid)."""
    processor = AutoImageProcessor.from_pretrained(str(folder))
    assert isinstance(processor, BvNaFlexImageProcessor) and processor.patch_size == 8
    for b, (image, max_seq) in enumerate(_raw_images()):
        out = processor(image, max_num_patches=max_seq, return_tensors="np")
        n = int(out["pixel_attention_mask"].sum())
        err = float(np.abs(out["pixel_values"][0, :n] - g.inputs["patches"][b, :n]).max())
        assert err == 0.0, f"example {b}: patches differ from big_vision's by {err:.2e}"
        assert n == int(g.inputs["ptype"][b].sum()) and (out["pixel_attention_mask"][0, :n] == 1).all()
        grid = (g.inputs["yidx"][b].max() + 1, g.inputs["xidx"][b].max() + 1)
        assert tuple(out["spatial_shapes"][0]) == grid
    # Padded to max_num_patches: the full fixture rows, pads included.
    out = processor([im for im, _ in _raw_images()][:1], max_num_patches=16, return_tensors="pt")
    np.testing.assert_array_equal(out["pixel_values"][0].numpy(), g.inputs["patches"][0])
    np.testing.assert_array_equal(out["pixel_attention_mask"][0].numpy(), g.inputs["ptype"][0])
    assert processor.pp_string() == "decode|value_range(-1, 1)|resize_to_sequence(8, 256)|patchify(8)|pad_to_shape(256)"


def test_resize_to_sequence_target_sizes():
    """big_vision ``_get_image_size_for_seq``: largest AR-preserving size with <= N patches, sides % p == 0."""
    assert get_image_size_for_seq((24, 56), 8, 16)[1] == (24, 40)
    assert get_image_size_for_seq((40, 20), 8, 9)[1] == (32, 16)
    for hw, p, n in [((480, 640), 16, 256), ((1000, 10), 16, 256), ((7, 7), 14, 1024), ((300, 200), 16, 64)]:
        th, tw = get_image_size_for_seq(hw, p, n)[1]
        assert th % p == 0 and tw % p == 0 and (th // p) * (tw // p) <= n and min(th, tw) >= p


def test_posemb_resize_is_jax_scale_and_translate(g):
    """The posemb resize is jax's ``scale_and_translate(bilinear, antialias=True)`` as big_vision calls it
    (references made with jax: ``fixtures/naflex_posemb_resize/make_fixture.py``), 1-wide tall grids included
    (torch's ``F.interpolate(antialias=True)`` gets those wrong), and gives the fixture's per-token posemb."""
    ref = np.load(os.path.join(os.path.dirname(g.dir), "naflex_posemb_resize", "posemb_resize.npz"))
    worst, checked = 0.0, 0
    for key in ref.files:
        if "_to_" not in key:
            continue
        name, shape = key.split("_to_")
        h, w = map(int, shape.split("x"))
        coords = patch_coords_from_spatial_shapes(torch.tensor([[h, w]]), h * w)
        ours = naflex_position_embeddings(torch.from_numpy(ref[name]), coords, 64)[0].reshape(h, w, -1)
        worst, checked = max(worst, float(np.abs(ours.numpy() - ref[key]).max())), checked + 1
    assert checked == 24 and worst <= 1e-6, f"posemb resize differs from jax's by {worst:.2e}"
    # The fixture: with_posemb - stem is big_vision's per-token posemb.
    x = g.naflex_inputs(coords=True)
    params = np.load(g.params)
    ours = naflex_position_embeddings(torch.from_numpy(params["pos_embedding"]), x["patch_coords"], 16)
    ref = g.outputs["with_posemb"] - g.outputs["stem"]
    err = float(np.abs(ours.numpy() - ref).max())  # pads too: they get the (0, 0) entry
    assert err <= 1e-6, f"per-token posemb differs from big_vision's by {err:.2e}"


def test_posemb_beyond_canvas_is_nan_like_big_vision(g):
    """``learn_2d(L)``: big_vision gathers with mode="fill", so tokens at yidx/xidx >= L get NaN."""
    pe = torch.randn(4, 4, 6)
    coords = torch.tensor([[[0, 0], [0, 15], [0, 16], [17, 3]]])
    out = naflex_position_embeddings(pe, coords, canvas_size=16)
    assert out[0, :2].isfinite().all() and out[0, 2:].isnan().all()


def test_naflex_posemb_not_mangled_by_fix_old_checkpoints(g, tmp_path):
    """nposemb = k**2 + 1 (5): vit.fix_old_checkpoints would cut a row off; we keep [5, 5, D]."""
    d = g.outputs["stem"].shape[-1]
    posemb = np.random.default_rng(1).standard_normal((5, 5, d)).astype(np.float32)
    path = rewrite_npz(g.params, str(tmp_path / "p5.npz"), lambda a: {**a, "pos_embedding": posemb})
    model = convert_checkpoint(path, FAMILY, {**g.model_kwargs, "nposemb": 5})
    assert tuple(model.vit.embeddings.position_embedding.shape) == (5, 5, d)


def test_naflex_converter_errors(g, tmp_path):
    with pytest.raises(CheckpointError, match="nposemb=8"):
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "nposemb": 8})
    with pytest.raises(CheckpointError, match="unknown big_vision NaFlex option 'seqhw'"):
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "seqhw": 4})
    vit = Golden("vit_map_sincos")
    with pytest.raises(CheckpointError, match="plain ViT"):
        convert_checkpoint(vit.params, FAMILY, {})
    with pytest.raises(ValueError, match="Unknown pool type"):
        BvNaFlexViTConfig(pool_type="tok")


def test_naflex_base_model_gap_and_max_pools_mask_pads(g):
    """gap/max pooling ignore pads: appending pads (any content) leaves the pooled features unchanged."""
    for pool in ("gap", "max"):
        model = BvNaFlexViTModel(BvNaFlexViTConfig.from_variant("mu/8", nposemb=4, pool_type=pool)).eval()
        x = torch.randn(1, 6, 192)
        short = model(x, spatial_shapes=torch.tensor([[2, 3]])).pooler_output
        padded = torch.cat([x, 5 * torch.randn(1, 4, 192)], dim=1)
        long = model(padded, spatial_shapes=torch.tensor([[2, 3]])).pooler_output
        assert torch.allclose(short, long, atol=1e-5), pool


def test_export_to_siglip2_deviation(g, folder, tmp_path):
    """The Siglip2VisionModel export: its measured deviation from the exact class, written into the card."""
    model = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(model, BvNaFlexViTModel)
    out_dir, deviation = export_to_siglip2(model, str(tmp_path / "siglip2"), max_num_patches=16,
                                           inputs=g.naflex_inputs())
    print("Siglip2VisionModel vs BvNaFlexViTModel on the fixture:", deviation)
    assert max(deviation.values()) <= 1e-5, deviation
    s2 = Siglip2VisionModel.from_pretrained(out_dir).eval()
    with torch.no_grad():
        pooled = s2(**g.naflex_inputs()).pooler_output
    err = max_abs_err(pooled, g.outputs["pre_logits"])
    assert err <= TOL, f"Siglip2VisionModel pooler_output vs big_vision pre_logits {err:.2e} > {TOL}"
    card = open(os.path.join(out_dir, "README.md")).read()
    assert "Siglip2VisionModel" in card and f"pooler_output {deviation['pooler_output']:.1e}" in card
    with pytest.raises(ValueError, match="classification head"):
        export_to_siglip2(AutoModelForImageClassification.from_pretrained(str(folder)), str(tmp_path / "x"))


_CHILD = """
from transformers import AutoImageProcessor, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
pp = processor(np.zeros((30, 50, 3), np.uint8), max_num_patches=16, return_tensors="np")
outputs, remote = {"logits": logits, "shapes": pp["spatial_shapes"]}, {"model": model, "processor": processor}
"""


def test_naflex_trust_remote_code_without_package(g, folder, tmp_path):
    inputs = {k: v.numpy() for k, v in g.naflex_inputs().items()}
    child = run_without_package(tmp_path, folder, _CHILD, inputs)
    err = float(np.abs(child["logits"] - g.outputs["logits"]).max())
    assert err <= TOL, f"remote-code logits max abs error {err:.2e}"


def test_resize_bilinear_antialias_identity_and_constant():
    img = np.random.default_rng(0).uniform(-1, 1, (12, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear_antialias(img, (12, 9)), img)
    const = np.full((13, 7, 3), 0.25, np.float32)
    np.testing.assert_allclose(resize_bilinear_antialias(const, (5, 11)), 0.25, atol=1e-6)


def test_naflex_scan_layout_converts_identically(g, tmp_path):
    """big_vision ``scan=True`` trees (``Transformer/encoderblock/...`` stacked on axis 0) convert to the same model."""

    def to_scan(arrays):
        out = {k: v for k, v in arrays.items() if "/encoderblock_" not in k}
        for key in [k for k in arrays if k.startswith("Transformer/encoderblock_0/")]:
            rest = key[len("Transformer/encoderblock_0/"):]
            layers = [arrays[f"Transformer/encoderblock_{i}/{rest}"] for i in range(2)]
            out["Transformer/encoderblock/" + rest] = np.stack(layers)
        return out

    path = rewrite_npz(g.params, str(tmp_path / "scan.npz"), to_scan)
    model = convert_checkpoint(path, FAMILY, {**g.model_kwargs, "scan": True})
    with torch.no_grad():
        err = max_abs_err(model(**g.naflex_inputs()).logits, g.outputs["logits"])
    assert err <= TOL, f"scan-layout logits max abs error {err:.2e}"
