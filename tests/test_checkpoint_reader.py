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
    monkeypatch.setattr(checkpoint, "_read_block", lambda m, start, shape: reads.append(m.member))
    g = Golden("vit_scan")
    built = api.build(g.params, "vit", g.model_kwargs, image_size=32)
    mapped, family = built.mapped, built.family
    assert family == "vit" and reads == []  # building the mapping reads headers only
    assert mapped["vit.encoder.layers.1.self_attn.q_proj.weight"].shape == (48, 48)


def test_stacked_arrays_are_read_once_layer_by_layer(monkeypatch):
    g = Golden("vit_scan")
    real = checkpoint._read_block
    reads: dict[str, list[tuple[int, int]]] = {}

    def counting(m, start, shape):
        reads.setdefault(m.member, []).append((start, int(np.prod(shape))))
        return real(m, start, shape)

    monkeypatch.setattr(checkpoint, "_read_block", counting)
    mapped = api.build(g.params, "vit", g.model_kwargs, image_size=32).mapped
    tensors = materialize(mapped)
    assert len(tensors) == len(mapped)
    arrays = np.load(g.params)
    assert set(reads) == {m + ".npy" for m in arrays.files}
    for name in arrays.files:  # each byte exactly once; a stacked array one layer at a time
        spans, shape = sorted(reads[name + ".npy"]), arrays[name].shape
        assert [s for s, _ in spans] == [0] + list(np.cumsum([n for _, n in spans])[:-1])
        assert sum(n for _, n in spans) == int(np.prod(shape))
        if "encoderblock/" in name:
            assert len(spans) == shape[0] and all(n == np.prod(shape[1:]) for _, n in spans), (name, spans)


def _stacked_npz(tmp_path, dtype: str, compressed: bool = False):
    """An npz with a stacked ``[4, 3, 5]`` array (bfloat16 stored as ``V2``, as big_vision saves it)."""
    x = (np.arange(60, dtype=np.float32).reshape(4, 3, 5) - 30) / 7
    stored = (x.view(np.uint32) >> 16).astype(np.uint16).view("V2") if dtype == "bfloat16" else x
    path = str(tmp_path / f"s_{dtype}_{compressed}.npz")
    save = np.savez_compressed if compressed else np.savez
    save(path, **{"params/a/b": stored, "params/c": np.ones(7, np.float32)})
    return path, stored


class _CountingFile:
    """A raw file whose reads are counted (``checkpoint._open_file`` returns it)."""

    def __init__(self, path, counter):
        self.f, self.counter = open(path, "rb", buffering=0), counter

    def readinto(self, b):
        n = self.f.readinto(b)
        self.counter.append(n)
        return n

    def read(self, n=-1):
        data = self.f.read(n)
        self.counter.append(len(data))
        return data

    def seek(self, *args):
        return self.f.seek(*args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_take_reads_only_that_layer(tmp_path, monkeypatch, dtype):
    """``take(i)`` / ``rows(a, b)`` of a stored member read exactly those bytes, decoded like a full read."""
    path, stored = _stacked_npz(tmp_path, dtype)
    full = read_checkpoint(path)["a/b"].load()
    assert full.dtype == np.float32
    counter = []
    monkeypatch.setattr(checkpoint, "_open_file", lambda p: _CountingFile(p, counter))
    array = read_checkpoint(path)["a/b"]
    assert array.sliceable and array.dtype == dtype
    np.testing.assert_array_equal(array.take(0).load(), full[0])  # also finds the payload's offset
    itemsize = stored.dtype.itemsize
    for part, expected, raw in [(array.take(2), full[2], stored[2]), (array.rows(1, 3), full[1:3], stored[1:3]),
                                (array.take(3).take(1), full[3, 1], stored[3, 1]),
                                (array.take(1).rows(1, 2), full[1, 1:2], stored[1, 1:2])]:
        counter.clear()
        np.testing.assert_array_equal(part.load(), expected)
        assert sum(counter) == expected.size * itemsize  # only that range, no header re-read
        assert part.load().dtype == np.float32
        counter.clear()
        got = part.load_stored()  # as stored: bfloat16 stays 2-byte bits
        assert got.dtype == stored.dtype and got.tobytes() == raw.tobytes() and sum(counter) == raw.nbytes
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        t = checkpoint.to_torch(array.take(2).load_stored())
        assert t.dtype == torch.bfloat16 and torch.equal(t.float(), torch.from_numpy(full[2]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_take_maps_only_that_layer(tmp_path, monkeypatch, dtype):
    """Large blocks are memory-mapped (copy-on-write): the mapping ends where the layer ends and starts at most one
    allocation granule before it; the array is writable and decoded like a full read."""
    import mmap

    path, stored = _stacked_npz(tmp_path, dtype)
    full = read_checkpoint(path)["a/b"].load()
    maps = []
    real = mmap.mmap

    def recording(fileno, length, **kw):
        maps.append((length, kw["offset"]))
        return real(fileno, length, **kw)

    monkeypatch.setattr(checkpoint, "_MMAP_MIN_BYTES", 0)
    monkeypatch.setattr(checkpoint.mmap, "mmap", recording)
    array = read_checkpoint(path)["a/b"]
    for i in range(4):
        maps.clear()
        raw = array.take(i).load_stored()
        (length, offset), = maps
        assert raw.flags.writeable and raw.tobytes() == stored[i].tobytes()
        assert stored[i].nbytes <= length < stored[i].nbytes + mmap.ALLOCATIONGRANULARITY
        np.testing.assert_array_equal(array.take(i).load(), full[i])
    np.testing.assert_array_equal(array.load(), full)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_take_on_compressed_members(tmp_path, dtype):
    """Compressed members (``np.savez_compressed``) are read by streaming decompression up to the range."""
    path, stored = _stacked_npz(tmp_path, dtype, compressed=True)
    plain, _ = _stacked_npz(tmp_path, dtype)
    full = read_checkpoint(plain)["a/b"].load()
    array = read_checkpoint(path)["a/b"]
    np.testing.assert_array_equal(array.load(), full)
    for i in (1, 2, 0, 3):  # forward reuses the open stream, backward restarts it
        np.testing.assert_array_equal(array.take(i).load(), full[i])
    np.testing.assert_array_equal(array.rows(1, 3).take(1).load(), full[2])
    assert checkpoint._STREAM  # kept open for a later range
    np.testing.assert_array_equal(array.take(3).load(), full[3])
    assert not checkpoint._STREAM  # closed once the member was read to its end


def test_derived_row_wise_arrays_stay_sliceable(tmp_path):
    path, _ = _stacked_npz(tmp_path, "float32")
    array = read_checkpoint(path)["a/b"]
    swapped = array.derive(lambda x: np.swapaxes(x, -1, -2), (4, 5, 3), layout_only=True, row_wise=True)
    assert swapped.sliceable and swapped.take(2).shape == (5, 3)
    np.testing.assert_array_equal(swapped.take(2).load(), array.load()[2].T)
    np.testing.assert_array_equal(swapped.rows(1, 3).load(), np.swapaxes(array.load()[1:3], -1, -2))
    summed = array.derive(lambda x: x + 1, array.shape)  # arithmetic: not sliceable, take reads the whole array
    assert not summed.sliceable
    np.testing.assert_array_equal(summed.take(1).load(), array.load()[1] + 1)


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
    names = ["Transformer/encoderblock_0/LayerNorm_0/scale",
             "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/bias",
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
