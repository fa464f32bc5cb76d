"""A converted folder loads with trust_remote_code=True where big_vision_hf cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModelForImageClassification

import big_vision_hf  # noqa: F401
from conftest import Golden, convert_cli

_CHILD = r"""
import sys, json
sys.modules["big_vision_hf"] = None  # any import of our package now fails
import numpy as np, torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification
folder, image_path, out_path = sys.argv[1:4]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
x = torch.from_numpy(np.load(image_path))
with torch.no_grad():
    logits = model(x).logits.numpy()
    pooled = base(x).pooler_output.numpy()
from PIL import Image
pixel_values = processor(Image.new("RGB", (40, 30), (200, 10, 90)), return_tensors="pt")["pixel_values"]
np.savez(out_path, logits=logits, pooled=pooled, pixel_values=pixel_values.numpy())
print(json.dumps({"model": type(model).__module__, "processor": type(processor).__module__}))
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

    np.save(tmp_path / "image.npy", g.image_nchw().numpy())
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(tmp_path / "image.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert modules["model"].startswith("transformers_modules."), modules  # really the remote copy
    assert modules["processor"].startswith("transformers_modules."), modules
    child = np.load(tmp_path / "out.npz")

    model = AutoModelForImageClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(g.image_nchw()).logits.numpy()
    np.testing.assert_array_equal(child["logits"], logits)
    assert np.abs(child["logits"] - g.outputs["logits"]).max() <= 1e-4
    assert np.abs(child["pooled"] - g.outputs["pre_logits"]).max() <= 1e-4
    assert child["pixel_values"].shape[1:] == (3, 32, 32)
