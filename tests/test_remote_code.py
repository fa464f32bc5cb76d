"""A converted folder loads with trust_remote_code=True where big_vision_hf cannot be imported."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoModelForImageClassification

import big_vision_hf  # noqa: F401
from conftest import Golden, convert_cli, run_without_package

_CHILD = """
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
model = model.eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
x = torch.from_numpy(inputs["image"])
with torch.no_grad():
    logits = model(x).logits.numpy()
    pooled = base(x).pooler_output.numpy()
pixel_values = processor(Image.new("RGB", (40, 30), (200, 10, 90)), return_tensors="pt")["pixel_values"]
outputs = {"logits": logits, "pooled": pooled, "pixel_values": pixel_values.numpy()}
remote = {"model": model, "base": base, "processor": processor}
"""


def test_trust_remote_code_without_package(tmp_path):
    g = Golden("vit_tok")
    folder = tmp_path / "converted"
    convert_cli(g.params, str(folder), "--model-name", "vit", "--model-config", json.dumps(g.model_kwargs))
    config = json.load(open(folder / "config.json"))
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_bv_vit.BvViTForImageClassification"
    assert config["auto_map"]["AutoModel"] == "modeling_bv_vit.BvViTModel"
    for name in ("modeling_bv_vit.py", "configuration_bv_vit.py", "model.safetensors", "preprocessor_config.json"):
        assert (folder / name).exists(), name
    assert "from ..configuration" not in (folder / "modeling_bv_vit.py").read_text()

    # the model, its backbone and the processor are really the folder's copies (`transformers_modules.*`)
    child = run_without_package(tmp_path, folder, _CHILD, {"image": g.image_nchw().numpy()})

    model = AutoModelForImageClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(g.image_nchw()).logits.numpy()
    np.testing.assert_array_equal(child["logits"], logits)
    assert np.abs(child["logits"] - g.outputs["logits"]).max() <= 1e-4
    assert np.abs(child["pooled"] - g.outputs["pre_logits"]).max() <= 1e-4
    assert child["pixel_values"].shape[1:] == (3, 32, 32)
