"""The notebooks in notebooks/ run top to bottom on their tiny default (no Jupyter needed).

Each code cell's source is executed, in order, in one shared namespace, in a temporary working directory, with the
matplotlib Agg backend and ``BVHF_NOTEBOOK_SMOKE=1`` (the configuration cell then cuts steps and evaluation sizes).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("datasets")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["lora_captioning_vqa.ipynb", "lora_detection.ipynb", "lora_segmentation.ipynb"]


def _load(name: str) -> dict:
    with open(NOTEBOOKS / name, encoding="utf-8") as f:
        return json.load(f)


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def run_notebook(name: str, tmp_path, monkeypatch) -> dict:
    """Executes the code cells of ``notebooks/name`` in one namespace; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("BVHF_NOTEBOOK_SMOKE", "1")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
        for i, cell in enumerate(_load(name)["cells"]):
            if cell["cell_type"] == "code":
                exec(compile(_source(cell), f"{name}[cell {i}]", "exec"), namespace)  # noqa: S102
    plt.close("all")
    return namespace


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean_nbformat4(name):
    nb = _load(name)
    assert nb["nbformat"] == 4 and isinstance(nb["metadata"], dict)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["cell_type"] in ("code", "markdown") for c in nb["cells"])
    for c in code:
        assert c["outputs"] == [] and c["execution_count"] is None, "outputs are not stored"
        assert not any(line.lstrip().startswith(("%", "!")) for line in _source(c).splitlines()), "no magics"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    # One configuration cell, near the top, where a real checkpoint is switched on.
    config = [i for i, c in enumerate(code) if "MODEL_DIR = None" in _source(c)]
    assert config == [0], config
    assert "load_model_and_processor(MODEL_DIR)" in "".join(_source(c) for c in code)
    text = "".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    for topic in ("token_type_ids", "per example", '"\\n"', "SigLIP"):
        assert topic in text, topic


def _assert_saved_folder(ns, tmp_path):
    out = tmp_path / ns["OUTPUT_DIR"]
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.model"} <= files, files
    assert "adapter_config.json" not in files  # merged, loads without PEFT
    model, _ = ns["load_model_and_processor"](str(out))
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_captioning_vqa_notebook(tmp_path, monkeypatch):
    ns = run_notebook("lora_captioning_vqa.ipynb", tmp_path, monkeypatch)
    losses = [loss for _, loss in ns["losses"]]
    assert len(losses) >= 3 and min(losses[-3:]) < losses[0] - 0.3, losses  # LoRA learned something
    assert set(ns["before"]) == set(ns["after"]) == {"synthetic_caption", "synthetic_count"}
    assert "cider" in ns["after"]["synthetic_caption"].metrics
    assert "acc" in ns["after"]["synthetic_count"].metrics
    assert ns["result"].trainable_parameters < ns["result"].total_parameters / 5
    _assert_saved_folder(ns, tmp_path)


def test_detection_notebook(tmp_path, monkeypatch):
    from big_vision_hf.processing.paligemma_decoding import PaliGemmaObject

    ns = run_notebook("lora_detection.ipynb", tmp_path, monkeypatch)
    metrics = ns["after"]["synthetic_detect"].metrics
    assert {"boxacc/0.5", "invalid", "total"} <= set(metrics)
    # Targets decode back to their boxes (within one <loc> bin).
    row = ns["train_rows"][0]
    (obj,) = ns["processor"].decode_detections(row["suffix"], row["image"])
    assert isinstance(obj, PaliGemmaObject) and row["prefix"] == f"detect {obj.label}"
    assert max(abs(a - b) for a, b in zip(obj.box_normalized, row["bbox"])) < 1e-3
    assert (tmp_path / ns["OUTPUT_DIR"] / "predictions.png").stat().st_size > 0
    _assert_saved_folder(ns, tmp_path)


def test_segmentation_notebook(tmp_path, monkeypatch):
    ns = run_notebook("lora_segmentation.ipynb", tmp_path, monkeypatch)
    metrics = ns["after"]["synthetic_segment"].metrics
    assert {"miou", "boxacc/0.5", "invalid"} <= set(metrics)
    row = ns["train_rows"][0]
    assert row["suffix"].count("<seg") == 16 and row["suffix"].count("<loc") == 4
    objects = ns["processor"].decode_segmentation(row["suffix"], row["image"], ns["vqvae"])
    assert objects[0].mask is not None and objects[0].mask.shape == row["image"].size[::-1]
    assert (tmp_path / ns["OUTPUT_DIR"] / "predictions.png").stat().st_size > 0
    _assert_saved_folder(ns, tmp_path)


MODEL_NOTEBOOKS = ["captioners_cappa_uvim.ipynb", "generative_givt_jet.ipynb"]


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_model_notebook_is_clean_nbformat4(name):
    nb = _load(name)
    assert nb["nbformat"] == 4
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, "outputs are not stored"


def test_captioners_notebook(tmp_path, monkeypatch):
    """CapPa captions (greedy, beam, parallel) and UViM gives a panoptic map, on the fixtures' tiny models."""
    ns = run_notebook("captioners_cappa_uvim.ipynb", tmp_path, monkeypatch)
    assert set(ns["captions"]) == {"greedy", "beam", "parallel"}
    assert all(isinstance(c, str) for c in ns["captions"].values())
    assert type(ns["pipe"]).__name__ == "UViMPanopticPipeline"
    assert ns["panoptic"].shape == (64, 64, 2)


def test_generative_notebook(tmp_path, monkeypatch):
    """GIVT samples images through the pipeline (CFG, seed), Jet computes bits per dimension and inverts."""
    ns = run_notebook("generative_givt_jet.ipynb", tmp_path, monkeypatch)
    assert len(ns["samples"]) == 3
    assert all(float(b) > 0 for b in ns["bpd"])
    assert ns["round_trip_error"] < 1e-3
