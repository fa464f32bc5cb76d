"""BvImageProcessor and the big_vision pp ops, against TensorFlow outputs of big_vision's own op code.

``fixtures/bv_preprocessing.npz`` is made by ``fixtures/make_bv_preprocessing.py`` (needs TensorFlow; not run
here). Every comparison below is exact: our numpy port replays TF's float32 kernels in TF's order of operations.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from big_vision_hf import BvImageProcessor, BvViTConfig, BvViTForImageClassification
from big_vision_hf.processing.image_processing_bv import (
    central_crop,
    decode,
    image_processor_for,
    parse_pp,
    resize,
    resize_small,
    value_range,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bv_preprocessing.npz")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        return dict(f)


def _cases(ref, prefix):
    n = 0
    while f"{prefix}_in_{n}" in ref:
        n += 1
    assert n > 0
    return range(n)


def _assert_uint8_equal(ours, theirs, what):
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() == 0, f"{what}: {(diff > 0).sum()} of {diff.size} values differ, max {diff.max()}"


# ---- the ops, exactly as TF -------------------------------------------------------------------------------
def test_resize_bilinear_matches_tf(ref):
    for i in _cases(ref, "resize"):
        img, size = ref[f"resize_in_{i}"], tuple(int(s) for s in ref[f"resize_size_{i}"])
        _assert_uint8_equal(resize(img, size), ref[f"resize_out_{i}"], f"resize{img.shape[:2]}->{size}")


def test_resize_small_area_matches_tf(ref):
    """Includes all-255/all-254 images, where TF area weights give 254.99.. -> 254 after truncation."""
    for i in _cases(ref, "small"):
        img, s = ref[f"small_in_{i}"], int(ref[f"small_size_{i}"])
        _assert_uint8_equal(resize_small(img, s), ref[f"small_out_{i}"], f"resize_small{img.shape[:2]}, {s}")
    # The truncation quirk is really exercised by the fixture.
    assert any(ref[f"small_in_{i}"].min() == 255 and ref[f"small_out_{i}"].min() < 255 for i in _cases(ref, "small"))


def test_resize_small_central_crop_matches_tf(ref):
    for i in _cases(ref, "crop"):
        s, c = (int(v) for v in ref[f"crop_args_{i}"])
        out = central_crop(resize_small(ref[f"crop_in_{i}"], s), c)
        _assert_uint8_equal(out, ref[f"crop_out_{i}"], f"resize_small({s})|central_crop({c})")


def test_central_crop_offsets():
    img = np.arange(7 * 10 * 1, dtype=np.uint8).reshape(7, 10, 1)
    out = central_crop(img, (4, 5))
    assert out.shape == (4, 5, 1) and out[0, 0, 0] == img[1, 2, 0]  # dy = (7-4)//2, dx = (10-5)//2
    assert central_crop(img).shape == (7, 7, 1)
    with pytest.raises(ValueError):
        central_crop(img, 8)


def test_value_range_matches_tf(ref):
    out = value_range(ref["vr_in"], -1, 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref["vr_out"])  # bit-exact
    assert out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_array_equal(value_range(np.array([0, 255], np.uint8), 0, 1), [0.0, 1.0])


def test_resize_value_range_pipeline_matches_tf(ref):
    size = tuple(int(s) for s in ref["pipe_size"])
    np.testing.assert_array_equal(value_range(resize(ref["pipe_in"], size), -1, 1), ref["pipe_out"])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I16"])
def test_decode_png_matches_tf(ref, mode):
    data = ref[f"png_{mode}"].tobytes()
    expected = ref[f"png_{mode}_decoded"]
    _assert_uint8_equal(decode(Image.open(io.BytesIO(data))), expected, f"decode PNG {mode}")
    _assert_uint8_equal(decode(data), expected, f"decode PNG bytes {mode}")


def test_decode_jpeg_is_precise_decode(ref):
    """PIL's JPEG decoder equals big_vision decode(precise=True); TF's default DCT differs (documented)."""
    ours = decode(ref["jpeg"].tobytes())
    _assert_uint8_equal(ours, ref["jpeg_decoded_precise"], "decode JPEG (precise)")
    diff = np.abs(ours.astype(int) - ref["jpeg_decoded"].astype(int))
    assert 0 < diff.max() <= 8  # the known deviation from the default decode: small but nonzero


def test_ops_reject_float_images():
    with pytest.raises(ValueError, match="uint8"):
        resize(np.zeros((4, 4, 3), np.float32), 2)


def test_parse_pp():
    ops = parse_pp('decode|resize_small(256, method="area")|central_crop(224)|value_range(-1,1)|keep("image")')
    assert ops[1] == ("resize_small", (256,), {"method": "area"})
    assert ops[3] == ("value_range", (-1, 1), {})
    raw = BvImageProcessor.from_pp('decode(precise=True)|resize(8)|onehot(10, key="label")')
    assert raw.value_range is None and not raw.do_rescale and not raw.do_normalize  # uint8 values as float
    np.testing.assert_array_equal(raw(np.full((5, 6, 3), 7, np.uint8), return_tensors="pt")["pixel_values"], 7.0)
    with pytest.raises(NotImplementedError, match="flip_lr"):
        BvImageProcessor.from_pp("decode|flip_lr|resize(8)")


# ---- the processor ----------------------------------------------------------------------------------------
def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_processor_default_is_resize_value_range():
    proc = BvImageProcessor()
    img = _rgb(37, 51)
    pv = proc(Image.fromarray(img), return_tensors="pt")["pixel_values"]
    assert pv.shape == (1, 3, 224, 224) and pv.dtype == torch.float32
    expected = value_range(resize(img, 224), -1, 1).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(pv.numpy(), expected)
    assert -1.0 <= pv.min() and pv.max() <= 1.0


def test_processor_resize_small_central_crop(ref):
    proc = BvImageProcessor.from_pp("decode|resize_small(20)|central_crop(17)|value_range(-1, 1)")
    assert proc.resize_mode == "resize_small" and proc.size.shortest_edge == 20
    assert proc.do_center_crop and (proc.crop_size.height, proc.crop_size.width) == (17, 17)
    img = ref["crop_in_1"]  # (37, 53), resize_small(20)|central_crop(17) in the fixture
    assert tuple(ref["crop_args_1"]) == (20, 17)
    pv = proc(Image.fromarray(img), return_tensors="pt")["pixel_values"]
    expected = value_range(ref["crop_out_1"], -1, 1).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(pv.numpy(), expected)
    same = BvImageProcessor(resize_mode="resize_small", size=20, crop_size=17)
    np.testing.assert_array_equal(same(Image.fromarray(img), return_tensors="pt")["pixel_values"], pv)


def test_processor_inputs_rgba_gray_numpy_torch():
    proc = BvImageProcessor(size={"height": 16, "width": 16})
    rgba = np.random.default_rng(1).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    rgb_expected = proc(Image.fromarray(rgba[..., :3]), return_tensors="pt")["pixel_values"]
    # alpha is dropped (not composited onto white), from PIL, HWC numpy, CHW torch
    for inp in (Image.fromarray(rgba, "RGBA"), rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        np.testing.assert_array_equal(proc(inp, return_tensors="pt")["pixel_values"], rgb_expected)
    gray = rgba[..., 0]
    out = proc(Image.fromarray(gray, "L"), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(out, proc(np.repeat(gray[..., None], 3, -1), return_tensors="pt")["pixel_values"])
    np.testing.assert_array_equal(out, proc(gray[..., None], return_tensors="pt")["pixel_values"])  # (H, W, 1)
    batch = proc([Image.fromarray(rgba, "RGBA"), Image.fromarray(gray, "L")], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 16, 16)


def test_processor_value_range_none_uses_rescale_normalize():
    proc = BvImageProcessor(size={"height": 8, "width": 8}, value_range=None)
    img = _rgb(8, 8)
    pv = proc(Image.fromarray(img), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pv[0].numpy(), (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
    pv01 = BvImageProcessor(size={"height": 8, "width": 8}, value_range=(0, 1))(img, return_tensors="pt")
    assert BvImageProcessor(value_range=(0, 1)).image_mean == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(pv01["pixel_values"][0].numpy(), value_range(img, 0, 1).transpose(2, 0, 1))


def test_image_processor_for_config():
    config = BvViTConfig.from_variant("mu/16", image_size=224)
    proc, pp = image_processor_for(config, "resize_small")
    assert pp == "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
    assert proc.resize_mode == "resize_small" and proc.size.shortest_edge == 256 and proc.crop_size.height == 224
    proc, pp = image_processor_for(config, "resize")
    assert pp == "decode|resize(224)|value_range(-1, 1)" and (proc.size.height, proc.size.width) == (224, 224)


def test_processor_save_load_roundtrip(tmp_path):
    from transformers import AutoImageProcessor

    img = Image.fromarray(_rgb(30, 40))
    for proc in (
        BvImageProcessor(size={"height": 32, "width": 48}),
        BvImageProcessor(resize_mode="resize_small", size=36, crop_size=32),
        BvImageProcessor(size=16, value_range=None),
    ):
        proc.save_pretrained(tmp_path)
        cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
        assert cfg["image_processor_type"] == "BvImageProcessor" and "value_range" in cfg
        for loaded in (BvImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
            assert type(loaded) is BvImageProcessor
            assert loaded.to_dict() == proc.to_dict()
            a = proc(img, return_tensors="pt")["pixel_values"]
            np.testing.assert_array_equal(loaded(img, return_tensors="pt")["pixel_values"], a)


def _tiny_model():
    torch.manual_seed(0)
    id2label = {0: "cat", 1: "dog", 2: "bird"}
    config = BvViTConfig.from_variant("mu/16", image_size=32, num_labels=3, id2label=id2label)
    return BvViTForImageClassification(config).eval()


def test_image_classification_pipeline(tmp_path):
    from transformers import AutoImageProcessor, pipeline

    model = _tiny_model()
    proc = BvImageProcessor(size={"height": 32, "width": 32})
    img = Image.fromarray(_rgb(45, 60, seed=3), "RGB")
    clf = pipeline("image-classification", model=model, image_processor=proc)
    preds = clf(img, top_k=3)
    assert {p["label"] for p in preds} == {"cat", "dog", "bird"}
    with torch.no_grad():
        probs = model(**proc(img, return_tensors="pt")).logits.softmax(-1)[0]
    best = int(probs.argmax())
    assert preds[0]["label"] == model.config.id2label[best]
    assert abs(preds[0]["score"] - float(probs[best])) < 1e-5

    # Saved together, the folder's processor is found from the model's config (registered for bv_vit).
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is BvImageProcessor
    preds2 = pipeline("image-classification", model=str(tmp_path))(img, top_k=3)
    assert preds2[0]["label"] == preds[0]["label"] and abs(preds2[0]["score"] - preds[0]["score"]) < 1e-5


def test_resize_antialias_from_pp_string():
    """`resize(S, antialias=True)` (PaliGemma's training pp): TF's ScaleAndTranslate kernel, then uint8 truncation."""
    from PIL import Image

    from big_vision_hf.processing.image_processing_bv import BvImageProcessor, resize, resize_bilinear_antialias

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    proc = BvImageProcessor.from_pp("decode|resize(16, antialias=True)|value_range(-1, 1)")
    assert proc.resize_antialias is True
    out = proc(Image.fromarray(pixels), return_tensors="np")["pixel_values"][0]
    expected = np.clip(resize_bilinear_antialias(pixels.astype(np.float32), (16, 16)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(resize(pixels, 16, antialias=True), expected)
    np.testing.assert_allclose(out, np.moveaxis(expected, -1, 0) / 127.5 - 1, atol=1e-6)
    plain_pp = BvImageProcessor.from_pp("decode|resize(16)|value_range(-1, 1)")
    plain = plain_pp(Image.fromarray(pixels), return_tensors="np")
    assert not np.allclose(plain["pixel_values"][0], out)  # antialiasing really changed the result
