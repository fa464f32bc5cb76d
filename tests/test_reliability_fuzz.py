"""Property-based fuzzing of the checkpoint reader and mapping (hypothesis).

Valid big_vision checkpoints (the golden ``vit_tok`` fixture stored and deflated, the scan-layout ``vit_scan``) are
mutated: bytes anywhere, fields of the zip directory and local headers, the ``.npy`` headers (with and without a
fixed-up CRC), truncation, array names, dtypes, shapes and values. Each mutated file is converted and must give

* a one-line `CheckpointError`, or a correct model: for byte-level and structural mutations the very model of the
  unmutated file (state dict and config), for a cast to another float dtype the same model within that dtype's
  precision; a valid file (a float dtype, a ``params/`` prefix) must convert; a NaN/Inf must be refused;
* never another exception, never a hang (each case under ``CASE_SECONDS``, enforced with ``SIGALRM``);
* never more memory than the file's size plus its largest parameter (peak RSS of the case, ``/proc/self/status``
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with ``MEMORY_SLACK`` for allocator noise).

The suite runs a short, derandomized budget (``FUZZ_EXAMPLES``, a few seconds); ``benchmarks/fuzz_checkpoints.py``
runs the same property for many more cases with fresh randomness and prints how many were tried.
"""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import zipfile
import zlib
from dataclasses import dataclass

import hypothesis
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from big_vision_hf.conversion.api import build
from big_vision_hf.conversion.checkpoint import CheckpointError
from conftest import Golden

FUZZ_EXAMPLES = int(os.environ.get("BVHF_FUZZ_EXAMPLES", "150"))
CASE_SECONDS = 20
MEMORY_SLACK = 48 << 20  # bytes of peak RSS a case may use beyond file size + largest parameter (torch/allocator)
#: name -> (fixture, how it is written, how it is converted). "memory": ``build().instantiate()`` (the reader, the
#: mapping, ``load_into``); "folder": ``convert_to_folder`` into a folder read back with safetensors (PaliGemma's
#: streamed writer, the atomic folder).
BASES = {
    "vit_tok": ("vit_tok", "stored", "memory"),
    "vit_tok_deflated": ("vit_tok", "deflated", "memory"),
    "vit_scan": ("vit_scan", "stored", "memory"),
    "paligemma": ("paligemma", "stored", "folder"),
    # GIVT's ImageNet VAE as flax writes it (msgpack, no checksum): byte-level mutations only (`MSGPACK_MUTATIONS`),
    # and a flipped payload byte is a different but valid file, so the oracle is "structure" (see check_case).
    "givt_msgpack": ("givt_vae_cnn", "msgpack", "memory"),
}
SUITE_BASES = ("vit_tok", "vit_tok_deflated", "vit_scan", "paligemma", "givt_msgpack")
MSGPACK_MUTATIONS = ("bytes", "truncate")


@dataclass
class Base:
    """A valid checkpoint and the model it converts into."""

    name: str
    data: bytes
    arrays: dict[str, np.ndarray]
    model_name: str
    kwargs: dict
    how: str  # "memory" or "folder"
    state: dict[str, torch.Tensor]
    config: dict
    members: list  # zipfile.ZipInfo of each member
    cd_offset: int  # of the central directory
    eocd_offset: int


_BASES: dict[str, Base] = {}


class Case:
    """A mutated file, what must come of it, and a short description (hypothesis prints it on a failure)."""

    def __init__(self, data: bytes, expect: str, note: str):
        self.data, self.expect, self.note = data, expect, note

    def __repr__(self) -> str:
        return f"Case({self.note}, expect={self.expect!r}, {len(self.data)} bytes)"


_IRRELEVANT = ("_name_or_path", "transformers_version")


def convert(path: str, model_name: str, kwargs: dict, how: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(weights, config dict)`` of a conversion (raises `CheckpointError`)."""
    if how == "memory":
        model = build(path, model_name, kwargs).instantiate()
        config = {k: v for k, v in model.config.to_dict().items() if k not in _IRRELEVANT}
        return model.state_dict(), config
    import json

    from safetensors.torch import load_file

    from big_vision_hf.conversion.api import convert_to_folder

    out = path + ".hf"
    convert_to_folder(path, out, model_name, kwargs, progress=False, overwrite=True)
    with open(os.path.join(out, "config.json")) as f:
        config = {k: v for k, v in json.load(f).items() if k not in _IRRELEVANT}
    weights = {}
    for file in sorted(os.listdir(out)):
        if file.endswith(".safetensors"):
            weights.update(load_file(os.path.join(out, file)))
    return weights, config


def base(name: str, tmp_dir: str) -> Base:
    if name in _BASES:
        return _BASES[name]
    fixture, layout, how = BASES[name]
    if layout == "msgpack":
        with open(os.path.join(os.path.dirname(__file__), "fixtures", fixture, "vae_params"), "rb") as f:
            data = f.read()
        arrays, kwargs, model_name = {}, {}, "proj.givt.cnn"
    else:
        g = Golden(fixture)
        arrays = dict(np.load(g.params))
        buffer = io.BytesIO()
        (np.savez_compressed if layout == "deflated" else np.savez)(buffer, **arrays)
        data = buffer.getvalue()
        kwargs = g.model_kwargs
        if fixture == "paligemma":  # the tiny Gemma is not a named variant: its full config (test_paligemma_conversion)
            kwargs["llm"] = {**kwargs["llm"], "variant": g.config["gemma_variant_config"]}
        model_name = "proj.paligemma.paligemma" if fixture == "paligemma" else "vit"
    path = os.path.join(tmp_dir, f"base_{name}")
    with open(path, "wb") as f:
        f.write(data)
    state, config = convert(path, model_name, kwargs, how)
    members, cd_offset, eocd = [], 0, 0
    if layout != "msgpack":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
        eocd = data.rindex(b"PK\x05\x06")
        cd_offset = struct.unpack("<I", data[eocd + 16:eocd + 20])[0]
    _BASES[name] = Base(name, data, arrays, model_name, kwargs, how, {k: v.clone() for k, v in state.items()},
                        config, members, cd_offset, eocd)
    return _BASES[name]


# ---------------------------------------------------------------------------------------------------------
# Mutations: (bytes of the mutated file, expectation) with expectation one of
#   "same"    : a CheckpointError, or exactly the base model
#   "close:D" : the base model within dtype D's precision (a valid file: an error is a failure)
#   "valid"   : exactly the base model (a valid file: an error is a failure)
#   "error"   : a CheckpointError
#   "numpy"   : a CheckpointError, or the model of the arrays numpy's own reader (np.load) reads from the file
#   "structure": a CheckpointError, or the base model's config, names and shapes (msgpack: other values are valid)
# ---------------------------------------------------------------------------------------------------------

_LOCAL_FIELDS = {"version": (4, "H"), "flags": (6, "H"), "method": (8, "H"), "crc": (14, "I"), "csize": (18, "I"),
                 "usize": (22, "I"), "namelen": (26, "H"), "extralen": (28, "H")}
_CENTRAL_FIELDS = {"version": (6, "H"), "flags": (8, "H"), "method": (10, "H"), "crc": (16, "I"), "csize": (20, "I"),
                   "usize": (24, "I"), "namelen": (28, "H"), "extralen": (30, "H"), "commentlen": (32, "H"),
                   "disk": (34, "H"), "offset": (42, "I")}
_EOCD_FIELDS = {"disk": (4, "H"), "cd_disk": (6, "H"), "entries_disk": (8, "H"), "entries": (10, "H"),
                "cd_size": (12, "I"), "cd_offset": (16, "I"), "commentlen": (20, "H")}


def _central_offsets(b: Base) -> list[int]:
    out, pos = [], b.cd_offset
    for _ in b.members:
        out.append(pos)
        n, e, c = struct.unpack("<HHH", b.data[pos + 28:pos + 34])
        pos += 46 + n + e + c
    return out


def _put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    value &= (1 << (8 * struct.calcsize(fmt))) - 1
    struct.pack_into("<" + fmt, data, offset, value)


def _field_value(draw, old: int, fmt: str) -> int:
    top = (1 << (8 * struct.calcsize(fmt))) - 1
    return draw(st.sampled_from([0, 1, top, old + 1, old - 1, old * 2, old // 2, draw(st.integers(0, top))]))


@st.composite
def byte_flips(draw, b: Base):
    data, where = bytearray(b.data), []
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
        where.append(pos)
    return Case(bytes(data), "structure" if not b.members else "same", f"{b.name}: bytes flipped at {where}")


@st.composite
def truncations(draw, b: Base):
    cut = draw(st.integers(0, len(b.data) - 1))
    if draw(st.booleans()):
        return Case(b.data[:cut], "same", f"{b.name}: truncated to {cut} bytes")
    junk = draw(st.binary(min_size=1, max_size=64))
    return Case(b.data[:cut] + junk + b.data[cut:], "structure" if not b.members else "same",
                f"{b.name}: {len(junk)} bytes inserted at {cut}")


@st.composite
def zip_fields(draw, b: Base):
    data = bytearray(b.data)
    where = draw(st.sampled_from(["local", "central", "eocd"]))
    if where == "eocd":
        name = draw(st.sampled_from(sorted(_EOCD_FIELDS)))
        offset, fmt = _EOCD_FIELDS[name]
        offset += b.eocd_offset
    else:
        i = draw(st.integers(0, len(b.members) - 1))
        fields = _LOCAL_FIELDS if where == "local" else _CENTRAL_FIELDS
        name = draw(st.sampled_from(sorted(fields)))
        offset, fmt = fields[name]
        offset += b.members[i].header_offset if where == "local" else _central_offsets(b)[i]
    old = struct.unpack_from("<" + fmt, data, offset)[0]
    new = _field_value(draw, old, fmt)
    _put(data, offset, fmt, new)
    member = "" if where == "eocd" else f" of member {i}"
    return Case(bytes(data), "same", f"{b.name}: {where} {name}{member} {old} -> {new}")


def _fix_crc(data: bytearray, b: Base, i: int) -> None:
    """Recomputes member ``i``'s CRC-32 in its local and central headers (a "valid" zip of the mutated member)."""
    info = b.members[i]
    n, e = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + n + e
    crc = zlib.crc32(bytes(data[start:start + info.compress_size]))
    _put(data, info.header_offset + 14, "I", crc)
    _put(data, _central_offsets(b)[i] + 16, "I", crc)


@st.composite
def npy_headers(draw, b: Base):
    """Rewrites one stored member's ``.npy`` header dict (same length), optionally with a matching CRC."""
    data = bytearray(b.data)
    stored = [i for i, m in enumerate(b.members) if m.compress_type == zipfile.ZIP_STORED]
    if not stored:
        return Case(bytes(data), "same", f"{b.name}: unchanged (no stored member)")
    i = draw(st.sampled_from(stored))
    info = b.members[i]
    n, e = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + n + e
    hlen = struct.unpack_from("<H", data, start + 8)[0]
    text = bytes(data[start + 10:start + 10 + hlen]).decode("latin1")
    descr = draw(st.sampled_from(["<f4", "<f2", "<f8", ">f4", "<i4", "|u1", "|b1", "|V2", "|V4", "<c8", "|O",
                                  "<U2", "[('a', '<f4')]", "('<f4', (2,))", "<f4x", ""]))
    dims = draw(st.lists(st.integers(-2, 5000), max_size=5))
    shape = "(" + "".join(f"{d}, " for d in dims) + ")" if draw(st.booleans()) else draw(
        st.sampled_from(["()", "(1e9,)", "(-1,)", "'x'", "(2**62, 2**62)", "((1,),)", "(" * 50 + ")" * 50]))
    order = draw(st.sampled_from(["False", "True", "1", "None"]))
    new = draw(st.sampled_from([
        f"{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}",
        text.replace("False", order, 1),
        re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", text),
        re.sub(r"'descr': '[^']*'", f"'descr': '{descr}'", text),
    ]))
    new = (new + " " * hlen)[:hlen - 1] + "\n"
    data[start + 10:start + 10 + hlen] = new.encode("latin1", "replace")
    fix = draw(st.booleans())
    if fix:  # a valid zip of another .npy: the model must be numpy's reading of it, or an error
        _fix_crc(data, b, i)
    return Case(bytes(data), "numpy" if fix else "same", f"{b.name}: member {info.filename} header {new.strip()!r}")


def _savez(arrays: dict[str, np.ndarray], duplicate: str | None = None) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    if duplicate is not None:
        with zipfile.ZipFile(buffer, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
            f = io.BytesIO()
            np.lib.format.write_array(f, arrays[duplicate] * 2)
            zf.writestr(duplicate + ".npy", f.getvalue())
    return buffer.getvalue()


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view("V2")


@st.composite
def dtypes(draw, b: Base):
    arrays = dict(b.arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    kind = draw(st.sampled_from(["float16", "float64", "bfloat16", ">f4", "int32", "int8", "uint8", "bool",
                                 "complex64", "U3", "V4", "object"]))
    x = arrays[name]
    if kind == "bfloat16":
        arrays[name] = _bf16(x)
        expect = "close:bfloat16"
    elif kind in ("float16", "float64", ">f4"):
        arrays[name] = x.astype(kind)
        expect = "valid" if kind in ("float64", ">f4") else "close:float16"
    elif kind == "U3":
        arrays[name] = x.astype(kind)
        expect = "error"
    elif kind == "object":
        arrays[name] = np.array([None] * x.size, dtype=object)
        expect = "error"
    elif kind == "V4":
        arrays[name] = x.view("V4")
        expect = "error"
    else:
        arrays[name] = (x * 100).astype(kind)
        expect = "error"
    return Case(_savez(arrays), expect, f"{b.name}: {name} as {kind}")


@st.composite
def shapes(draw, b: Base):
    arrays = dict(b.arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    x = arrays[name]
    how = draw(st.sampled_from(["scalar", "empty", "flat", "expand", "transpose", "reshape", "slice", "tile",
                                "squeeze"]))
    if how == "scalar":
        y = np.float32(x.reshape(-1)[0])
    elif how == "empty":
        y = np.zeros((0,) + x.shape[1:], np.float32)
    elif how == "flat":
        y = x.reshape(-1)
    elif how == "expand":
        y = np.expand_dims(x, draw(st.integers(0, x.ndim)))
    elif how == "transpose":
        y = x.transpose(draw(st.permutations(range(x.ndim)))) if x.ndim else x
    elif how == "reshape":
        n, dims = x.size, []
        for f in (2, 3, 4, 2):
            if n % f == 0 and draw(st.booleans()):
                dims.append(f)
                n //= f
        y = x.reshape(*dims, n)
    elif how == "slice":
        y = x[: max(1, x.shape[0] - draw(st.integers(1, 3)))] if x.ndim else x
    elif how == "tile":
        y = np.concatenate([x, x]) if x.ndim else x
    else:
        y = x.reshape(tuple(d for d in x.shape if d != 1))
    arrays[name] = np.ascontiguousarray(y)
    return Case(_savez(arrays), "same", f"{b.name}: {name} {how} {x.shape} -> {np.shape(y)}")


@st.composite
def names(draw, b: Base):
    arrays = dict(b.arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    how = draw(st.sampled_from(["rename", "drop", "extra", "prefix", "foreign_prefix", "duplicate", "mangle"]))
    if how == "prefix":
        return Case(_savez({"params/" + k: v for k, v in arrays.items()}), "valid", f"{b.name}: params/ prefix")
    if how == "duplicate":
        return Case(_savez(arrays, duplicate=name), "same", f"{b.name}: {name} twice in the zip")
    if how == "rename":
        arrays[draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)) + ".x"] = arrays.pop(name)
    elif how == "drop":
        del arrays[name]
    elif how == "extra":
        arrays[name + "_extra"] = arrays[name]
    elif how == "foreign_prefix":
        arrays = {"model/" + k: v for k, v in arrays.items()}
    else:
        i = draw(st.integers(0, len(name) - 1))
        arrays[name[:i] + draw(st.sampled_from(["_", "0", "1", "/", ""])) + name[i + 1:]] = arrays.pop(name)
    return Case(_savez(arrays), "same", f"{b.name}: {name} {how}")


@st.composite
def values(draw, b: Base):
    arrays = dict(b.arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    x = arrays[name].copy()
    value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    x.reshape(-1)[draw(st.integers(0, x.size - 1))] = value
    arrays[name] = x
    return Case(_savez(arrays), f"nonfinite:{name}", f"{b.name}: {value} in {name}")


MUTATIONS = {"bytes": byte_flips, "truncate": truncations, "zip": zip_fields, "npy_header": npy_headers,
             "dtype": dtypes, "shape": shapes, "name": names, "value": values}


# ---------------------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout(f"a case ran over {CASE_SECONDS} s")


def _rss_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _largest_parameter(data: bytes) -> int:
    """The largest array the file holds, as its headers say (0 where they say nothing readable)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return max((i.file_size for i in zf.infolist() if i.file_size < 1 << 40), default=0)
    except Exception:
        return 0


def _numpy_reference(b: Base, data: bytes, path: str) -> dict[str, torch.Tensor] | None:
    """The state dict converted from what ``np.load`` reads in ``data`` (re-saved cleanly); ``None`` where numpy or
    the clean conversion refuses it."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        with open(path, "wb") as f:
            f.write(_savez(arrays))
        return convert(path, b.model_name, b.kwargs, b.how)[0]
    except Exception:
        return None


def check_case(b: Base, data: bytes, expect: str, path: str) -> str:
    """Converts ``data`` (written to ``path``) and checks the property; returns the outcome ("model" or "error")."""
    with open(path, "wb") as f:
        f.write(data)
    measure = _rss_peak_reset()
    before = _status_kb("VmRSS")
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CASE_SECONDS)
    try:
        state, config = convert(path, b.model_name, b.kwargs, b.how)
        outcome = "model"
    except CheckpointError as e:
        outcome, message = "error", str(e)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if measure:
        used = _status_kb("VmHWM") - before
        budget = len(data) + _largest_parameter(data) + MEMORY_SLACK
        assert used <= budget, f"{expect}: peak RSS grew by {used:,} bytes > {budget:,}"
    if outcome == "error":
        assert "\n" not in message, f"multi-line error: {message!r}"
        assert expect not in ("valid",) and not expect.startswith("close:"), f"valid file refused: {message}"
        if expect.startswith("nonfinite:"):
            leaf = "/".join(expect.split(":", 1)[1].split("/")[-2:])  # scanned arrays are named per layer
            assert "NaN/infinite" in message and leaf in message, message
        return outcome
    assert expect != "error" and not expect.startswith("nonfinite:"), f"{expect}: converted without an error"
    if expect == "numpy":
        reference = _numpy_reference(b, data, path + ".numpy.npz")
        assert reference is not None, "converted a file that numpy's reader (or its clean copy) refuses"
        assert set(state) == set(reference) and all(torch.equal(v, reference[k]) for k, v in state.items()), \
            "the model differs from numpy's reading of the file"
        return outcome
    assert config == b.config, "converted into another config"
    assert set(state) == set(b.state)
    if expect == "structure":  # no checksum: other bytes are another valid file, of the same model
        assert all(v.shape == b.state[k].shape for k, v in state.items()), "converted into other shapes"
        return outcome
    for k, v in state.items():
        if expect.startswith("close:"):
            tol = {"float16": 1e-3, "bfloat16": 1e-2}[expect.split(":")[1]]
            torch.testing.assert_close(v, b.state[k], rtol=tol, atol=tol * 1e-2, msg=k)
        else:
            assert torch.equal(v, b.state[k]), f"{expect}: {k} differs from the unmutated file's"
    return outcome


def fuzz_property(tmp_dir: str, examples: int, derandomize: bool, counts: dict | None = None,
                  seed: int | None = None, bases=SUITE_BASES) -> dict:
    """Runs the property for ``examples`` cases over every mutation and base; returns ``{(mutation, outcome):
    cases}`` (``counts``, filled as it goes, so a caller sees the cases tried even when a case fails)."""
    counts = counts if counts is not None else {}
    path = os.path.join(tmp_dir, "mutated.npz")

    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(st.data())
    def prop(data):
        b = base(data.draw(st.sampled_from(bases), label="base"), tmp_dir)
        kinds = MSGPACK_MUTATIONS if not b.members else sorted(MUTATIONS)
        kind = data.draw(st.sampled_from(kinds), label="mutation")
        case = data.draw(MUTATIONS[kind](b), label="file")
        outcome = check_case(b, case.data, case.expect, path)
        key = (kind, outcome)
        counts[key] = counts.get(key, 0) + 1

    prop()
    return counts


def test_fuzz_checkpoints(tmp_path):
    counts = fuzz_property(str(tmp_path), FUZZ_EXAMPLES, derandomize=True)
    tried = sum(counts.values())
    print(f"fuzz: {tried} cases", dict(sorted(counts.items())))
    assert tried >= FUZZ_EXAMPLES // 2


def test_fuzz_bases_convert(tmp_path):
    """The unmutated bases convert (else every case would pass as an error)."""
    for name in SUITE_BASES:
        b = base(name, str(tmp_path))
        assert check_case(b, b.data, "valid", str(tmp_path / "unmutated.npz")) == "model"
