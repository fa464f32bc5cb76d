"""One reader for every big_vision checkpoint: lazy, one array at a time.

A big_vision ``.npz`` is a zip of ``.npy`` members whose names are the flax parameter paths joined by
``/`` (``big_vision.utils.tree_flatten_with_names``). This module turns such a file into a flat
``{name: LazyArray}`` dict with canonical names:

* the ``params/`` (big_vision trainers) and ``opt/target/`` (old flax optimizer) prefixes are removed;
* ``file.npz:img`` selects the ``img/`` sub-tree, as ``big_vision.utils.load_params`` does;
* bfloat16 arrays, which numpy stores as the void dtype ``V2`` (``big_vision.utils.recover_dtype``),
  are read back exactly;
* nothing is read until ``LazyArray.load()`` is called, so memory stays near the largest tensor;
* a leading-axis index or slice (``LazyArray.take(i)``, ``LazyArray.rows(a, b)``) reads only its bytes: the
  ``.npy`` payload is C-contiguous, so layer ``i`` of a scan-stacked ``[L, ...]`` array is one byte range of the
  zip member (read directly for stored members, as ``np.savez`` writes them; compressed members are decompressed
  as a stream up to the range, never whole).

Layout fixes that operate on names (scan stacking, old posemb placement, ...) live with the family's
converter; this module only reads. Pickled members are refused (``allow_pickle=False``).

Example:
    >>> ckpt = read_checkpoint("vit_s16_i1k_300ep.npz")  # doctest: +SKIP
    >>> ckpt["embedding/kernel"].shape  # doctest: +SKIP
    (16, 16, 3, 384)
"""

from __future__ import annotations

import atexit
import math
import mmap
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not match what the converter expects (one-line message)."""


# Prefixes that wrap the parameter tree in big_vision / flax checkpoints, tried in this order.
_TREE_PREFIXES = ("params/", "opt/target/")


@dataclass
class LazyArray:
    """An array that is read (or computed) only when ``load()`` is called.

    ``shape`` is known without reading data. ``source`` names the file member the data comes from (used to
    group reads); ``name`` is the canonical big_vision name, for error messages.

    ``raw_loader`` (optional) returns the array as stored: bfloat16 stays numpy's 2-byte void ``V2`` (the bits),
    so a bf16 -> bf16 conversion never goes through float32 (:func:`to_torch` views it as ``torch.bfloat16``).
    ``indexer`` (optional) maps an ``int`` or a step-1 ``slice`` on axis 0 to the lazy array of that part, which
    reads only its own bytes (see :meth:`take`).
    """

    shape: tuple[int, ...]
    dtype: str
    loader: Callable[[], np.ndarray] = field(repr=False)
    source: str = ""
    name: str = ""
    raw_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    indexer: Callable[[int | slice], "LazyArray"] | None = field(default=None, repr=False, compare=False)

    def _checked(self, array: np.ndarray) -> np.ndarray:
        if tuple(array.shape) != tuple(self.shape):
            raise CheckpointError(f"{self.source}: expected shape {self.shape}, read {tuple(array.shape)}")
        return array

    def load(self) -> np.ndarray:
        """The array, decoded (bfloat16 -> float32, exactly)."""
        return self._checked(self.loader())

    def load_stored(self) -> np.ndarray:
        """The array as stored: bfloat16 as numpy ``V2`` bits (exact, half the memory of ``load()``); other
        dtypes, and arrays computed by arithmetic, as ``load()``."""
        return self._checked((self.raw_loader or self.loader)())

    @property
    def sliceable(self) -> bool:
        """Whether :meth:`take` / :meth:`rows` read only the part asked for."""
        return self.indexer is not None

    def take(self, index: int) -> "LazyArray":
        """``array[index]`` along axis 0, lazily. Reads only that part when :attr:`sliceable`, else the whole array
        at every ``load()`` (``mapping.unstack_scan`` caches that case)."""
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"{self.source}: index {index} out of range for axis 0 of size {self.shape[0]}")
        if self.indexer is not None:
            return self.indexer(index)
        return self.derive(lambda x: x[index], self.shape[1:], f"[{index}]", layout_only=True)

    def rows(self, start: int, stop: int) -> "LazyArray":
        """``array[start:stop]`` along axis 0, lazily (reads only those rows when :attr:`sliceable`)."""
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        stop = max(start, stop)
        if self.indexer is not None:
            return self.indexer(slice(start, stop))
        return self.derive(lambda x: x[start:stop], (stop - start, *self.shape[1:]), f"[{start}:{stop}]",
                           layout_only=True)

    def derive(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        shape: tuple[int, ...],
        note: str = "",
        *,
        layout_only: bool = False,
        row_wise: bool = False,
    ) -> "LazyArray":
        """A new lazy array computed from this one by ``fn`` (still nothing is read).

        ``layout_only``: ``fn`` only moves elements (transpose, reshape, index), so it also runs on the stored
        bits (``load_stored`` stays exact and bf16 stays bf16). ``row_wise``: ``fn`` keeps axis 0 and commutes
        with indexing or slicing it (``fn(x)[i] == fn(x[i])``), so the result is as sliceable as this array.
        """
        shape = tuple(shape)
        raw = (lambda: fn(self.load_stored())) if layout_only else None
        indexer = None
        if row_wise and self.indexer is not None:
            def indexer(key, fn=fn, shape=shape):
                part = self.indexer(key)
                part_shape = shape[1:] if isinstance(key, int) else (part.shape[0], *shape[1:])
                return part.derive(fn, part_shape, note, layout_only=layout_only, row_wise=True)
        return LazyArray(shape, self.dtype, lambda: fn(self.load()), self.source + note, self.name, raw, indexer)

    @staticmethod
    def constant(array: np.ndarray, source: str = "<computed>") -> "LazyArray":
        return LazyArray(tuple(array.shape), str(array.dtype), lambda: array, source,
                         indexer=lambda key: LazyArray.constant(array[key], source))


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Exact bfloat16 -> float32 for arrays numpy stored as ``V2`` (2-byte void)."""
    bits = raw.view(np.uint16).astype(np.uint32)
    bits <<= 16
    return bits.view(np.float32)


def to_torch(array: np.ndarray):
    """A numpy array (bfloat16 as ``V2`` bits included) as a torch tensor sharing its memory."""
    import torch

    if array.dtype == np.dtype("V2"):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _decode(array: np.ndarray) -> np.ndarray:
    return bfloat16_to_float32(array) if array.dtype == np.dtype("V2") else array


@dataclass
class _Member:
    """Where one ``.npy`` member's data lives: the zip entry, and the payload's place inside it."""

    path: str
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    npy_header: int  # bytes of the .npy header before the payload (offset inside the uncompressed member)
    stored: bool  # ZIP_STORED and not encrypted: the payload is a byte range of the file
    header_offset: int  # of the zip local file header
    size: int  # of the uncompressed member (.npy header + payload)
    data_offset: int | None = None  # in the file, of the payload (stored members; found on the first read)


def _member_info(zf: zipfile.ZipFile, path: str, member: str) -> _Member:
    info = zf.getinfo(member)
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        npy_header = f.tell()
    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1
    return _Member(path, member, tuple(shape), dtype, bool(fortran), npy_header, stored, info.header_offset,
                   info.file_size)


#: Blocks from this size on are memory-mapped rather than read (see ``_read_block``).
_MMAP_MIN_BYTES = 1 << 20


def _open_file(path: str):
    """The raw file object block reads go through (a function so that tests can count the bytes read)."""
    return open(path, "rb", buffering=0)


def _readinto_exact(f, buffer: memoryview, what: str) -> None:
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise EOFError(f"{what}: {len(buffer) - done} bytes missing")
        done += n


# One open decompressing stream, so that reading the layers of a compressed member in order decompresses it once.
_STREAM: list = []  # [(path, member), ZipFile, ZipExtFile] or empty


def _close_stream() -> None:
    if _STREAM:
        _, zf, f = _STREAM
        f.close()
        zf.close()
        _STREAM.clear()


atexit.register(_close_stream)


def _compressed_stream(m: _Member, position: int):
    """A decompressing stream of member ``m`` positioned at ``position`` (reused when reading forward)."""
    if not _STREAM or _STREAM[0] != (m.path, m.member) or _STREAM[2].tell() > position:
        _close_stream()
        zf = zipfile.ZipFile(m.path)
        _STREAM[:] = [(m.path, m.member), zf, zf.open(m.member)]
    f = _STREAM[2]
    f.seek(position)  # forward: decompresses and drops, in bounded chunks
    return f


def _read_block(m: _Member, start: int, shape: tuple[int, ...]) -> np.ndarray:
    """Elements ``[start, start + prod(shape))`` of member ``m``'s payload (C order), as stored (bf16 = ``V2``).

    The one place data is read. Stored members: exactly that byte range of the file, mapped copy-on-write
    (``mmap``, no copy out of the page cache; unmapped when the array is freed) from ``_MMAP_MIN_BYTES`` on, else
    one seek and one read. Compressed members: a stream decompressed up to the range (kept open for the next,
    later range).
    """
    count, offset = math.prod(shape), m.npy_header + start * m.dtype.itemsize
    nbytes = count * m.dtype.itemsize
    what = f"{m.path}: array {m.member!r}"
    try:
        if m.stored:
            with _open_file(m.path) as f:
                if m.data_offset is None:
                    f.seek(m.header_offset)
                    local = f.read(30)
                    if len(local) != 30 or local[:4] != b"PK\x03\x04":
                        raise zipfile.BadZipFile("bad local file header")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    m.data_offset = m.header_offset + 30 + name_len + extra_len
                position = m.data_offset + offset
                if nbytes >= _MMAP_MIN_BYTES and hasattr(f, "fileno"):
                    if os.fstat(f.fileno()).st_size < position + nbytes:  # mapping past the end would SIGBUS
                        raise EOFError(f"{what}: the file ends before the array")
                    aligned = position - position % mmap.ALLOCATIONGRANULARITY
                    mapped = mmap.mmap(f.fileno(), position + nbytes - aligned, offset=aligned,
                                       access=mmap.ACCESS_COPY)
                    return np.frombuffer(mapped, m.dtype, count, position - aligned).reshape(shape)
                out = np.empty(shape, m.dtype)
                f.seek(position)
                _readinto_exact(f, memoryview(out.reshape(-1).view(np.uint8)), what)
        else:
            out = np.empty(shape, m.dtype)
            buffer = memoryview(out.reshape(-1).view(np.uint8))
            f = _compressed_stream(m, offset)
            _readinto_exact(f, buffer, what)
            if f.tell() >= m.size:  # read to the end: nothing more to stream from it
                _close_stream()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as e:
        _close_stream()
        raise CheckpointError(f"{what} is unreadable, the file may be truncated ({e})") from None
    return out


def _member_array(m: _Member, start: int, shape: tuple[int, ...], source: str, name: str) -> LazyArray:
    """The lazy array of ``shape`` at element ``start`` of member ``m``; sliceable on axis 0 (C order)."""
    dtype_name = "bfloat16" if m.dtype == np.dtype("V2") else str(m.dtype)
    if m.fortran:  # the payload is the transposed array in C order: whole reads only
        def raw():
            return _read_block(m, 0, shape[::-1]).T

        return LazyArray(shape, dtype_name, lambda: _decode(raw()), source, name, raw)
    row = math.prod(shape[1:])

    def raw():
        return _read_block(m, start, shape)

    def indexer(key):
        if isinstance(key, slice):
            a, b, step = key.indices(shape[0])
            if step != 1:
                raise ValueError("only step-1 slices are read lazily")
            return _member_array(m, start + a * row, (max(0, b - a), *shape[1:]), source, name)
        index = int(key)
        if not 0 <= index < shape[0]:
            raise IndexError(f"{source}: index {index} out of range for axis 0 of size {shape[0]}")
        return _member_array(m, start + index * row, shape[1:], source, name)

    return LazyArray(shape, dtype_name, lambda: _decode(raw()), source, name, raw, indexer if shape else None)


def split_subtree(spec: str) -> tuple[str, str | None]:
    """``"file.npz:img"`` -> ``("file.npz", "img")``; a plain path -> ``(path, None)``."""
    if ":" in os.path.basename(spec) and not os.path.exists(spec):
        head, _, sub = spec.rpartition(":")
        return head, sub.strip("/")
    return spec, None


def read_checkpoint(spec: str) -> dict[str, LazyArray]:
    """Reads the names and shapes of a big_vision ``.npz`` (``path`` or ``path:subtree``); data stays on disk.

    Raises ``CheckpointError`` with a one-line message for a missing, truncated or non-npz file, a pickled
    member, or an unknown sub-tree.
    """
    path, subtree = split_subtree(spec)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a readable .npz (not a zip archive, or the file is truncated)"
        ) from None
    arrays: dict[str, LazyArray] = {}
    with zf:
        try:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
            for member in members:
                info = _member_info(zf, path, member)
                if info.dtype.hasobject:
                    raise CheckpointError(f"{path}: member {member!r} holds pickled objects; refusing to unpickle")
                name = member[: -len(".npy")]
                arrays[name] = _member_array(info, 0, info.shape, f"{os.path.basename(path)}:{name}", name)
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: corrupt or truncated .npz ({e})") from None
    if not arrays:
        raise CheckpointError(f"{path}: the .npz holds no arrays")
    arrays = _strip_tree_prefix(arrays)
    for name, array in arrays.items():
        array.name = name
    if subtree:
        prefix = subtree + "/"
        selected = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not selected:
            tops = sorted({k.split("/")[0] for k in arrays})
            raise CheckpointError(f"{path}: no sub-tree {subtree!r} (top-level names: {', '.join(tops)})")
        arrays = selected
    return arrays


def _strip_tree_prefix(arrays: dict[str, LazyArray]) -> dict[str, LazyArray]:
    for prefix in _TREE_PREFIXES:
        inside = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if inside:
            # Keep only the parameter tree: an optimizer state or step counter next to it is not a parameter.
            return inside
    return arrays
