"""CLIPPO: parity with the original big_vision one_tower model, Unifont text rendering, the processor.

The fixture's outputs come from the ORIGINAL ``big_vision.models.proj.clippo.one_tower`` (commit 0127fb6) on
random parameters (ViT patch 8, 32px, MAP pool, ``out_dim=48``); its "text" input is an image through the same
tower. The renders in ``clippo_render.npz`` come from big_vision's TF ``render_unifont`` op
(``fixtures/make_clippo_render.py``) with Debian's ``unifont`` 15.0.01 ``unifont.hex``; the rendering tests skip
when that font file is not installed (``apt-get install unifont``, or set ``BV_UNIFONT_HEX``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.conversion import CheckpointError, convert_checkpoint, detect_family, read_checkpoint
from big_vision_hf.modeling.modeling_bv_clippo import BvClippoModel
from big_vision_hf.processing.image_processing_bv import value_range
from big_vision_hf.processing.processing_bv_clippo import BvClippoProcessor, load_unifont, render_unifont
from conftest import FIXTURES, Golden, assert_max_abs_errors, convert_cli, max_abs_err, rewrite_npz, run_without_package

TOL = 1e-4
FAMILY = "proj.clippo.one_tower"
UNIFONT = os.environ.get("BV_UNIFONT_HEX", "/usr/share/unifont/unifont.hex")
UPPER = os.path.join(FIXTURES, "clippo_unifont_upper_test.hex")
RENDERS = os.path.join(FIXTURES, "clippo_render.npz")


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("clippo")


@pytest.fixture(scope="module")
def folder(g, tmp_path_factory):
    """Converted with the CLI; the family is detected from the tree (no --model-name)."""
    out = tmp_path_factory.mktemp("clippo") / "converted"
    convert_cli(g.params, str(out), "--model-config", json.dumps(g.model_kwargs))
    return out


def _font_or_skip() -> str:
    if not os.path.isfile(UNIFONT):
        pytest.skip(f"Unifont font file {UNIFONT} not installed (apt-get install unifont, or set BV_UNIFONT_HEX)")
    ref = np.load(RENDERS)["font_sha256"].tobytes().decode()
    if hashlib.sha256(open(UNIFONT, "rb").read()).hexdigest() != ref:
        pytest.skip(f"{UNIFONT} is not the Unifont file the TF reference renders were made with (sha256 {ref[:12]}...)")
    return UNIFONT


def test_clippo_parity_cli_folder_from_pretrained(g, folder):
    model = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(model, BvClippoModel) and model.config.bv_model_name == FAMILY
    image, text = g.image_nchw("image"), g.image_nchw("text")
    with torch.no_grad():
        out = model(pixel_values=image, text_pixel_values=text, output_hidden_states=True)
        img_feat = model.get_image_features(image).pooler_output
        txt_feat = model.get_text_features(text).pooler_output
    o = g.outputs
    report = {
        "zimg": max_abs_err(out.image_embeds, o["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, o["ztxt"]),
        "img/logits (head)": max_abs_err(img_feat, o["img/logits"]),
        "txt/logits (head)": max_abs_err(txt_feat, o["txt/logits"]),
        "img/pre_logits": max_abs_err(out.vision_model_output.pooler_output, o["img/pre_logits"]),
        "txt/encoded": max_abs_err(out.text_model_output.last_hidden_state, o["txt/encoded"]),
        "t": max_abs_err(model.logit_scale.exp(), o["t"]),
        "logits_per_image": max_abs_err(out.logits_per_image, o["zimg"] @ o["ztxt"].T * o["t"]),
    }
    assert_max_abs_errors("clippo", report, TOL)


def test_clippo_softmax_loss(g, folder):
    """big_vision ``softmax_loss``: mean of the two directions' cross-entropies on ``zimg @ ztxt.T * t``."""
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = model(pixel_values=g.image_nchw("image"), text_pixel_values=g.image_nchw("text"), return_loss=True)
    logits = g.outputs["zimg"] @ g.outputs["ztxt"].T * g.outputs["t"]

    def ce(x):
        x = x - x.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(x).sum(axis=1)) - np.diag(x)))

    ref = 0.5 * (ce(logits) + ce(logits.T))
    assert abs(out.loss.item() - ref) <= 1e-5, (out.loss.item(), ref)


def test_clippo_detection_and_errors(g, tmp_path):
    assert detect_family(read_checkpoint(g.params)) == FAMILY
    two_tower = rewrite_npz(g.params, str(tmp_path / "tt.npz"),
                            lambda a: {**a, "txt/Embed_0/embedding": np.zeros((4, 4))})
    with pytest.raises(CheckpointError, match="two-tower"):
        convert_checkpoint(two_tower, FAMILY, g.model_kwargs)
    with pytest.raises(CheckpointError, match="num_classes=32 but head/kernel has 48"):
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "out_dim": 32})
    with pytest.raises(CheckpointError, match="image_model='proj.image_text.naflex_vit'"):
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "image_model": "proj.image_text.naflex_vit"})


def test_render_unifont_matches_big_vision_tf():
    """Our numpy renderer equals big_vision's TF op pixel for pixel (ASCII, accents, CJK, wrapping, upper planes,
    monospace, brightness, spacing, max_chars, 224px)."""
    glyphs = load_unifont(_font_or_skip(), UPPER)
    refs = np.load(RENDERS)
    i = 0
    while f"text_{i}" in refs:
        text = refs[f"text_{i}"].tobytes().decode("utf-8")
        kwargs = json.loads(refs[f"kwargs_{i}"].tobytes())
        ours = render_unifont(text, glyphs, **kwargs)
        diff = int((ours != refs[f"out_{i}"]).sum())
        assert diff == 0, f"case {i} ({text[:20]!r}, {kwargs}): {diff} pixels differ from big_vision's render"
        i += 1
    assert i >= 10


def test_clippo_processor_renders_text_and_images(g, folder):
    font = _font_or_skip()
    processor = AutoProcessor.from_pretrained(str(folder), unifont_path=font)
    assert isinstance(processor, BvClippoProcessor)
    batch = processor(images=[np.full((20, 40, 3), 200, np.uint8)], text=["Hello CLIPPO", "a cat"], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (1, 3, 32, 32)
    assert tuple(batch["text_pixel_values"].shape) == (2, 3, 32, 32)
    expected = value_range(render_unifont("Hello CLIPPO", load_unifont(font), image_size=32), -1, 1)
    np.testing.assert_array_equal(batch["text_pixel_values"][0].permute(1, 2, 0).numpy(), expected)
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert tuple(model(**batch).logits_per_image.shape) == (1, 2)


def test_clippo_missing_font_is_a_clear_error_and_images_still_work(g, folder, tmp_path):
    missing = str(tmp_path / "unifont-9.0.06.hex")
    processor = AutoProcessor.from_pretrained(str(folder), unifont_path=missing)
    with pytest.raises(FileNotFoundError, match="unifont-9.0.06.hex") as err:
        processor(text="a photo of a cat")
    assert "\n" not in str(err.value)
    batch = processor(images=[np.zeros((32, 32, 3), np.uint8)], return_tensors="pt")  # images need no font
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert model(**batch).image_embeds.shape == (1, 48)


_CHILD = """
from transformers import AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(inputs["image"]), text_pixel_values=torch.from_numpy(inputs["text"]))
outputs, remote = {"zimg": out.image_embeds.numpy(), "ztxt": out.text_embeds.numpy()}, {"model": model}
"""


def test_clippo_trust_remote_code_without_package(g, folder, tmp_path):
    inputs = {"image": g.image_nchw("image").numpy(), "text": g.image_nchw("text").numpy()}
    child = run_without_package(tmp_path, folder, _CHILD, inputs)
    for key in ("zimg", "ztxt"):
        err = float(np.abs(child[key] - g.outputs[key]).max())
        assert err <= TOL, f"remote-code {key} max abs error {err:.2e}"


def test_clippo_training_checkpoint_layout(g, tmp_path):
    """Released CLIPPO files are training checkpoints: ``params/`` prefix, optimizer state next to it."""
    path = rewrite_npz(g.params, str(tmp_path / "ckpt.npz"),
                       lambda a: {**{f"params/{k}": v for k, v in a.items()}, "opt/state/step": np.zeros(())})
    model = convert_checkpoint(path, FAMILY, g.model_kwargs)
    with torch.no_grad():
        err = max_abs_err(model(pixel_values=g.image_nchw("image")).image_embeds, g.outputs["zimg"])
    assert err <= TOL, f"zimg max abs error {err:.2e}"
    no_t = rewrite_npz(g.params, str(tmp_path / "no_t.npz"), lambda a: {k: v for k, v in a.items() if k != "t"})
    with pytest.raises(CheckpointError, match="no 't'"):
        convert_checkpoint(no_t, FAMILY, g.model_kwargs)
