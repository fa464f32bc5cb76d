"""Bad inputs to the converter give one-line errors that name the problem (never a deep traceback)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from big_vision_hf.cli import main
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from conftest import Golden, rewrite_npz


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"expected exit code 2, got {rc}: {err}"
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("big-vision-hf convert: error: "), err
    return err


def test_truncated_file(tmp_path, capsys):
    g = Golden("vit_tok")
    data = open(g.params, "rb").read()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    err = _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "out"), "--quiet"])
    assert "truncated" in err and "truncated.npz" in err


def test_truncated_member_data(tmp_path, capsys):
    """A zip whose directory survived but whose data is corrupt: caught when the array is read."""
    g = Golden("vit_tok")
    data = bytearray(open(g.params, "rb").read())
    for i in range(2000, 2600):  # scribble over the first member's data
        data[i] ^= 0xFF
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(data))
    err = _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "out"), "--quiet"])
    assert "corrupt.npz" in err


def test_not_an_npz(tmp_path, capsys):
    bad = tmp_path / "model.npz"
    bad.write_text("this is not a checkpoint")
    err = _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "out"), "--quiet"])
    assert "not a readable .npz" in err


def test_missing_file(tmp_path, capsys):
    err = _one_line_error(capsys, ["convert", str(tmp_path / "nope.npz"), str(tmp_path / "out"), "--quiet"])
    assert "no such checkpoint file" in err


def test_pickled_member_is_refused(tmp_path, capsys):
    bad = tmp_path / "pickled.npz"
    np.savez(bad, **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    err = _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "out"), "--quiet"])
    assert "unpickle" in err


def test_wrong_family(tmp_path, capsys):
    g = Golden("vit_tok")
    err = _one_line_error(capsys, ["convert", g.params, str(tmp_path / "out"), "--model-name", "mlp_mixer", "--quiet"])
    assert "mlp_mixer" in err.lower() or "mixer" in err.lower()


def test_unknown_family_name(tmp_path, capsys):
    g = Golden("vit_tok")
    err = _one_line_error(capsys, ["convert", g.params, str(tmp_path / "out"), "--model-name", "resnet9000", "--quiet"])
    assert "unknown --model-name 'resnet9000'" in err


def test_undetectable_family(tmp_path, capsys):
    bad = tmp_path / "other.npz"
    np.savez(bad, **{"foo/bar": np.zeros(3, np.float32)})
    err = _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "out"), "--quiet"])
    assert "cannot tell the big_vision model family" in err and "--model-name" in err


def test_extra_array(tmp_path):
    g = Golden("vit_tok")
    params = rewrite_npz(g.params, str(tmp_path / "extra.npz"),
                         lambda a: {**a, "Transformer/encoderblock_0/Surprise_0/kernel": np.ones((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"not used by this model: Transformer/encoderblock_0/Surprise_0/kernel"):
        convert_checkpoint(params, "vit")


def test_missing_array(tmp_path):
    g = Golden("vit_tok")
    params = rewrite_npz(g.params, str(tmp_path / "missing.npz"),
                         lambda a: {k: v for k, v in a.items() if k != "Transformer/encoderblock_1/LayerNorm_0/bias"})
    missing = r"missing from the checkpoint: vit\.encoder\.layers\.1\.layer_norm1\.bias"
    with pytest.raises(CheckpointError, match=missing):
        convert_checkpoint(params, "vit")


def test_shape_mismatch(tmp_path):
    g = Golden("vit_tok")
    params = rewrite_npz(g.params, str(tmp_path / "shape.npz"),
                         lambda a: {**a, "Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias": np.ones(95, np.float32)})
    with pytest.raises(CheckpointError, match=r"shape mismatch: Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"):
        convert_checkpoint(params, "vit")


def test_config_contradicting_arrays(tmp_path, capsys):
    g = Golden("vit_tok")
    err = _one_line_error(capsys, ["convert", g.params, str(tmp_path / "out"), "--model-name", "vit",
                                   "--model-config", json.dumps({"variant": "B/16"}), "--quiet"])
    assert "hidden_size=768" in err and "48" in err


def test_bad_model_config_json(tmp_path, capsys):
    g = Golden("vit_tok")
    err = _one_line_error(capsys, ["convert", g.params, str(tmp_path / "out"), "--model-config", "{variant: B}",
                                   "--quiet"])
    assert "not valid JSON" in err


def test_unknown_subtree(tmp_path, capsys):
    g = Golden("vit_tok")
    path = tmp_path / "ckpt.npz"
    shutil.copy(g.params, path)
    err = _one_line_error(capsys, ["convert", f"{path}:img", str(tmp_path / "out"), "--quiet"])
    assert "no sub-tree 'img'" in err
