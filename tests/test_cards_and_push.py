"""Model cards as the Hub reads them (license, a valid base_model or none, model-index results) whose usage
snippets run as written on their folders, and ``--push-to-hub`` uploading only the model folder (the upload call
is intercepted: nothing leaves the machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from tiny_folders import paligemma_folder, siglip_folder, vit_folder

from big_vision_hf.cli import main
from big_vision_hf.conversion.model_card import hub_id, known_hub_id
from big_vision_hf.hub import CARD_PLACEHOLDER, is_pickle, upload_plan
from conftest import Golden


@pytest.fixture
def uploads(monkeypatch):
    """Intercepts HfApi.create_repo / upload_folder: records (repo_id, folder, files)."""
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, folder_path, repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, folder_path, list(allow_patterns)))

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture(scope="module")
def transfer_folder(tmp_path_factory):
    """A short transfer of the built-in tiny model through the CLI (its folder keeps checkpoints/ with pickles)."""
    out = tmp_path_factory.mktemp("transfer") / "out"
    rc = main(["transfer", "--task", "synthetic_count", "--max-steps", "4", "--batch-size", "8", "--eval-limit", "8",
               "--output", str(out), "--quiet"])
    assert rc == 0
    return str(out)


def test_transfer_card_and_push(transfer_folder, uploads):
    card = ModelCard.load(os.path.join(transfer_folder, "README.md"))
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # tiny from scratch: no base id
    results = card.data.eval_results
    assert results and {r.metric_type for r in results} >= {"acc"} and results[0].dataset_name == "synthetic_count"
    state = json.load(open(os.path.join(transfer_folder, "checkpoints", "checkpoint-4", "trainer_state.json")))
    assert any("eval_loss" in h for h in state["log_history"]) and any("learning_rate" in h
                                                                          for h in state["log_history"])
    files = upload_plan(transfer_folder)
    assert "model.safetensors" in files and "README.md" in files and "tokenizer.json" in files
    assert not any(f.startswith("checkpoints/") for f in files)
    pickles = [os.path.relpath(os.path.join(r, n), transfer_folder) for r, _, ns in os.walk(transfer_folder)
               for n in ns if is_pickle(os.path.join(r, n))]
    assert pickles and all(p.startswith("checkpoints") for p in pickles)  # optimizer.pt, rng_state.pth, ...

    # what `transfer --push-to-hub` runs after the run: the same list, and the card's snippet names the repository
    from big_vision_hf.hub import push_folder

    push_folder(transfer_folder, "me/pg-transfer")
    (repo, folder, sent), = uploads
    assert repo == "me/pg-transfer" and folder == transfer_folder and sent == files
    assert not any(is_pickle(os.path.join(transfer_folder, f)) for f in sent)
    text = open(os.path.join(transfer_folder, "README.md")).read()
    assert CARD_PLACEHOLDER not in text and 'folder = "me/pg-transfer"' in text
    # back to a local path for the snippet test
    with open(os.path.join(transfer_folder, "README.md"), "w") as f:
        f.write(text.replace("me/pg-transfer", CARD_PLACEHOLDER))


def test_convert_push_to_hub(tmp_path, uploads):
    g = Golden("vit_tok")
    out = tmp_path / "vit"
    assert main(["convert", g.params, str(out), "--model-name", "vit", "--model-config", json.dumps(g.model_kwargs),
                 "--quiet", "--push-to-hub", "me/vit-tiny", "--hub-private"]) == 0
    (repo, folder, sent), = uploads
    assert repo == "me/vit-tiny" and sorted(sent) == sorted(os.listdir(out)) and "model.safetensors" in sent


def test_hub_ids():
    assert known_hub_id("/x/paligemma2-10b-mix-448.b16.npz") == "google/paligemma2-10b-mix-448"
    assert known_hub_id("pt_224.npz") is None and known_hub_id(None) is None
    assert hub_id("google/siglip-base-patch16-224") == "google/siglip-base-patch16-224"
    assert hub_id("(tiny, from scratch)") is None and hub_id(os.getcwd()) is None and hub_id("a/b/c") is None


_RUNNER = """
import os, sys
blocks = [(folder, open(path).read()) for folder, path in zip(sys.argv[1::2], sys.argv[2::2])]
for folder, code in blocks:
    exec(compile(code.replace({placeholder!r}, folder), folder, "exec"), {{"__name__": "__main__"}})
    print("ran", folder, flush=True)
"""


def test_every_card_snippet_runs_as_written(tmp_path, transfer_folder):
    """Each ```python block of each card, with the folder's path where the card says "path/to/this/folder", in a
    fresh Python with a cat.jpg beside it."""
    cards = {"classification": vit_folder(tmp_path), "zero-shot": siglip_folder(tmp_path)[0],
             "paligemma": paligemma_folder(tmp_path / "pg"), "transfer": transfer_folder}
    args = []
    for name, folder in cards.items():
        blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(folder, "README.md")).read(), re.S)
        assert blocks, name
        for i, block in enumerate(blocks):
            path = tmp_path / f"{name}_{i}.py"
            path.write_text(block)
            args += [folder, str(path)]
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (48, 64, 3), dtype=np.uint8)).save(work / "cat.jpg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    code = _RUNNER.format(placeholder=CARD_PLACEHOLDER)
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ran ") == len(args) // 2
