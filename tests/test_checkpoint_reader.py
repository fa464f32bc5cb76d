"""The one checkpoint reader: lazy, one array at a time, every big_vision layout."""

from __future__ import annotations

import numpy as np
import pytest

from big_vision_hf.conversion import api, checkpoint
from big_vision_hf.conversion.checkpoint import CheckpointError, bfloat16_to_float32, read_checkpoint
from big_vision_hf.conversion.mapping import convert_pre_linen, materialize, unstack_scan
from conftest import Golden, rewrite_npz


def test_names_and_shapes_without_reading_data(monkeypatch):
    reads = []
    monkeypatch.setattr(checkpoint, "_read_member", lambda path, member: reads.append(member))
    g = Golden("vit_scan")
    cls, config, mapped, family = api.build(g.params, "vit", g.model_kwargs, image_size=32)
    assert family == "vit" and reads == []  # building the mapping reads headers only
    assert mapped["vit.encoder.layers.1.self_attn.q_proj.weight"].shape == (48, 48)


def test_stacked_arrays_are_read_once(monkeypatch):
    g = Golden("vit_scan")
    real = checkpoint._read_member
    reads = []

    def counting(path, member):
        reads.append(member)
        return real(path, member)

    monkeypatch.setattr(checkpoint, "_read_member", counting)
    _, _, mapped, _ = api.build(g.params, "vit", g.model_kwargs, image_size=32)
    tensors = materialize(mapped)
    assert len(tensors) == len(mapped)
    assert len(reads) == len(set(reads)) == len(np.load(g.params).files)  # each member exactly once


def test_subtree_and_prefixes(tmp_path):
    g = Golden("vit_tok")
    path = rewrite_npz(g.params, str(tmp_path / "two.npz"),
                       lambda a: {**{f"params/img/{k}": v for k, v in a.items()}, "params/t": np.ones(1, np.float32)})
    img = read_checkpoint(f"{path}:img")
    assert set(img) == set(np.load(g.params).files)
    assert set(read_checkpoint(path)) == {f"img/{k}" for k in img} | {"t"}


def test_bfloat16_void_is_exact():
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    raw = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.dtype("V2"))
    back = bfloat16_to_float32(raw)
    assert back.dtype == np.float32 and np.array_equal(back[:3], x[:3])
    assert abs(back[3] - 1e-3) < 1e-5


def test_convert_pre_linen_renumbers_per_class():
    names = ["Transformer/encoderblock_0/LayerNorm_0/scale", "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/bias",
             "Transformer/encoderblock_0/LayerNorm_2/scale", "Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias",
             *[f"Transformer/encoderblock_{i}/LayerNorm_0/scale" for i in range(1, 11)]]
    out = convert_pre_linen({n: n for n in names})
    assert out["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/bias"].endswith("_1/out/bias")
    assert out["Transformer/encoderblock_0/LayerNorm_1/scale"].endswith("LayerNorm_2/scale")
    assert out["Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias"].endswith("MlpBlock_3/Dense_0/bias")
    # natural order keeps block 10 as 10 (a lexicographic sort would renumber it to 2)
    assert out["Transformer/encoderblock_10/LayerNorm_0/scale"] == "Transformer/encoderblock_10/LayerNorm_0/scale"


def test_unstack_scan_slices_lazily():
    from big_vision_hf.conversion.checkpoint import LazyArray

    stacked = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    params = {"T/encoderblock/x": LazyArray.constant(stacked, "f:T/encoderblock/x")}
    out = unstack_scan(params, "T/encoderblock/", "T/encoderblock_{}/", axis=1)
    assert set(out) == {"T/encoderblock_0/x", "T/encoderblock_1/x", "T/encoderblock_2/x"}
    assert out["T/encoderblock_1/x"].shape == (2, 4)
    np.testing.assert_array_equal(out["T/encoderblock_1/x"].load(), stacked[:, 1])


def test_detect_family_from_structure():
    g = Golden("vit_gap_learn")
    assert api.detect_family(read_checkpoint(g.params)) == "vit"
    with pytest.raises(CheckpointError, match="cannot tell"):
        api.detect_family({"foo/bar": None})
