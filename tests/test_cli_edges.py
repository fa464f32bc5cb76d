"""Rough CLI edges of issue 19, each a one-line message instead of a traceback or a silent surprise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from big_vision_hf.cli import main
from conftest import Golden, rewrite_npz

BIN = os.path.join(os.path.dirname(sys.executable), "big-vision-hf")


def _run(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_into_a_closed_pipe_has_no_traceback():
    result = subprocess.run(f"'{BIN}' list | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_missing_data_file_and_a_folder_without_images(tmp_path, capsys):
    rc, _, err = _run(capsys, ["transfer", "--data", str(tmp_path / "train.jsonl"), "--output", str(tmp_path / "o"),
                               "--quiet"])
    assert rc == 2 and "train.jsonl: no such file or folder" in err and len(err.strip().splitlines()) == 1, err
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"image": "a.jpg", "prefix": "caption en", "suffix": "a cat"}\n')
    rc, _, err = _run(capsys, ["transfer", "--data", str(folder), "--output", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "neither a save_to_disk dataset nor an image folder" in err, err
    assert "train.jsonl" in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(str(tmp_path / "o") + ".partial")


def test_bad_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from big_vision_hf.conversion import api

    def never(*args, **kwargs):
        raise AssertionError("the folder was being written")

    monkeypatch.setattr(api, "write_folder", never)
    g = Golden("siglip")
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\x01not a sentencepiece model" * 10)
    rc, _, err = _run(capsys, ["convert", g.params, str(tmp_path / "out"), "--model-name",
                               "proj.image_text.two_towers", "--model-config", json.dumps(g.model_kwargs),
                               "--tokenizer", str(bad), "--quiet"])
    assert rc == 2 and "not a SentencePiece model" in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "out")


def test_unregistered_sincos_vit_needs_its_image_size(tmp_path, capsys):
    g = Golden("vit_map_sincos")
    args = ["convert", g.params, str(tmp_path / "out"), "--model-name", "vit", "--model-config",
            json.dumps(g.model_kwargs), "--quiet"]
    rc, _, err = _run(capsys, args)
    assert rc == 2 and "--image-size" in err and "sincos2d" in err and len(err.strip().splitlines()) == 1, err
    assert _run(capsys, args + ["--image-size", "32", "48"])[0] == 0


def test_two_towers_without_tokenizer_warn_and_quiet_is_quiet(tmp_path, capsys):
    g = Golden("siglip")
    common = ["--model-name", "proj.image_text.two_towers", "--model-config", json.dumps(g.model_kwargs), "--quiet"]
    rc, out, err = _run(capsys, ["convert", g.params, str(tmp_path / "a"), *common])
    assert rc == 0 and "has no tokenizer" in err and "--tokenizer" in err, err
    from tiny_folders import siglip_folder

    _, spm_file = siglip_folder(tmp_path / "s")  # a c4-like SentencePiece model
    capsys.readouterr()
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), lambda a: {k: np.asarray(v) for k, v in a.items()})
    rc, out, err = _run(capsys, ["convert", params, str(tmp_path / "b"), *common, "--tokenizer", spm_file])
    assert rc == 0 and out.strip() == f"wrote {tmp_path / 'b'}"
    assert "[transformers]" not in err and "Model config" not in err and "%|" not in err, err


def test_report_to_is_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    import transformers.integrations as integrations

    from big_vision_hf.transfer.reporting import check_report_to

    monkeypatch.setattr(integrations, "is_wandb_available", lambda: False)
    rc, _, err = _run(capsys, ["transfer", "--report-to", "wandb", "--output", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "wandb package is not installed (pip install wandb)" in err and len(err.splitlines()) == 1
    rc, _, err = _run(capsys, ["transfer", "--report-to", "comet", "--output", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "--report-to comet: unknown" in err
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(str(tmp_path / "o") + ".partial")
    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(integrations, "is_mlflow_available", lambda: True)
    assert check_report_to(["tensorboard", "mlflow"]) == ["tensorboard", "mlflow"]
    assert check_report_to(None) == ["none"]
