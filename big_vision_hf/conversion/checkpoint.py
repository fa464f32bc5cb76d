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

A flax msgpack checkpoint (``flax.serialization``; GIVT's ImageNet VAEs are such files, without extension) is read
the same way (:func:`read_msgpack_arrays`): its structure is scanned, each array stays a byte range of the file.

Layout fixes that operate on names (scan stacking, old posemb placement, ...) live with the family's
converter; this module only reads. Pickled members are refused (``allow_pickle=False``).

Nothing in a file is trusted: every ``.npy`` header must account for exactly the bytes its zip member holds, and
those bytes must lie inside the file (a stored member) or be a possible deflate ratio (a compressed one), before
anything is allocated; each member's CRC-32 is checked as its bytes are read in order; anything the zip or ``.npy``
parsers raise on a malformed file becomes a one-line `CheckpointError`. Format-independent checks of the arrays
themselves (ranks before a builder reads shapes, floating dtypes, finite values) are :func:`check_tree`,
:func:`check_dtype` and :func:`check_finite`, applied by ``api.build`` and ``mapping`` to every reader's arrays.

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
    """A checkpoint could not be read or does not match what the converter expects (one-line message: control
    characters a mangled file put into names are escaped, ``\\n`` for a newline)."""

    def __init__(self, message: object = ""):
        super().__init__(str(message).translate(_ESCAPE_CONTROL))


_ESCAPE_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(32), 127)}


#: The dtypes a parameter array may have (bfloat16 is numpy's 2-byte void ``V2``, ``big_vision.utils.recover_dtype``).
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
#: Leaf names whose arrays have at least 2 dimensions in every big_vision model (Dense/Conv kernels, embedding
#: tables, Gemma's einsum ``w``); every other parameter has at least 1 (flax has no scalar parameters).
_MATRIX_LEAVES = ("kernel", "embedding", "input_embedding", "w")
#: deflate never compresses better than 1032:1; a member claiming more is corrupt (or a zip bomb).
_MAX_DEFLATE_RATIO = 1032


def check_tree(params: dict[str, "LazyArray"], source: str = "checkpoint") -> None:
    """Ranks and sizes of a parameter tree, before a builder reads its shapes (from the headers only).

    Every array has at least one dimension (two for ``_MATRIX_LEAVES``) and none of size 0. Raises one
    `CheckpointError` naming the arrays (a scalar stored where a kernel belongs, an empty array).
    """
    problems = []
    for name, array in params.items():
        leaf = name.rsplit("/", 1)[-1]
        need = 2 if leaf in _MATRIX_LEAVES else 1
        if len(array.shape) < need:
            kind = "a scalar" if not array.shape else f"{len(array.shape)}-D, shape {tuple(array.shape)}"
            problems.append(f"{name} is {kind} (a {leaf if need == 2 else 'parameter'} has at least {need} "
                            f"dimension{'s' if need > 1 else ''})")
        elif 0 in array.shape:
            problems.append(f"{name} is empty (shape {tuple(array.shape)})")
    if problems:
        raise CheckpointError(f"{source}: malformed array(s): " + "; ".join(problems[:8])
                              + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else ""))


def check_dtype(array: "LazyArray", what: str) -> None:
    """A parameter must be stored as a floating dtype (`FLOAT_DTYPES`); an integer, bool, string or structured
    array is a `CheckpointError` naming it (``what``), never a silent cast."""
    if array.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{what} is stored as {array.dtype}; a parameter must be one of "
                              f"{', '.join(FLOAT_DTYPES)}")


def check_finite(values, what: str) -> None:
    """A NaN or infinite value in a parameter (numpy array or torch tensor, any float dtype) is a `CheckpointError`
    naming it (``what``); ``big-vision-hf convert --allow-nonfinite`` skips this check."""
    import torch

    tensor = to_torch(values) if isinstance(values, np.ndarray) else values
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{what} holds {bad} NaN/infinite value(s) (--allow-nonfinite converts it anyway)")


# Prefixes that wrap the parameter tree in big_vision / flax checkpoints, tried in this order.
_TREE_PREFIXES = ("params/", "opt/target/")
# Flax variable collections beside `params/` that belong to the model (see `_strip_tree_prefix`).
_KEPT_COLLECTIONS = ("state/",)


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
    crc: int = 0  # the zip directory's CRC-32 of the member
    header_crc: int = 0  # CRC-32 of the .npy header bytes
    crc_next: int = 0  # payload bytes [0, crc_next) are in crc_running (stored members read in order)
    crc_running: int = 0
    crc_checked: bool = False


def _member_info(zf: zipfile.ZipFile, path: str, member: str, file_size: int) -> _Member:
    """The member's header, checked against the zip directory and the file before anything is allocated."""
    info = zf.getinfo(member)
    what = f"{path}: array {member[:-len('.npy')]!r}"
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{what} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{what} uses zip compression method {info.compress_type}; numpy writes stored or "
                              "deflated members (np.savez / np.savez_compressed)")
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        npy_header = f.tell()
    with zf.open(member) as f:
        header_crc = zlib.crc32(f.read(npy_header))
    shape = tuple(shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise CheckpointError(f"{what}: invalid shape {shape} in its header")
    if dtype.hasobject:
        raise CheckpointError(f"{path}: member {member!r} holds pickled objects; refusing to unpickle")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise CheckpointError(f"{what} has the unsupported dtype {dtype}")
    payload = math.prod(shape) * dtype.itemsize
    if npy_header + payload != info.file_size:
        raise CheckpointError(f"{what}: its header claims {shape} {dtype} ({payload:,} bytes) but the zip member "
                              f"holds {info.file_size - npy_header:,}; the file is corrupt")
    stored = info.compress_type == zipfile.ZIP_STORED
    if stored and info.compress_size != info.file_size:
        raise CheckpointError(f"{what}: stored member of {info.compress_size:,} bytes claims {info.file_size:,}; "
                              "the file is corrupt")
    if not stored and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CheckpointError(f"{what}: {info.compress_size:,} compressed bytes claim {info.file_size:,}, an "
                              "impossible size; the file is corrupt")
    if info.header_offset + 30 + info.compress_size > file_size:  # 30: the local header before the name
        raise CheckpointError(f"{what} claims {info.compress_size:,} bytes past the end of the file "
                              f"({file_size:,} bytes); the file is truncated or corrupt")
    return _Member(path, member, shape, dtype, bool(fortran), npy_header, stored, info.header_offset,
                   info.file_size, crc=info.CRC, header_crc=header_crc, crc_running=header_crc)


def _track_crc(m: _Member, offset: int, data) -> None:
    """Feeds the bytes read at payload ``offset`` into the member's CRC-32 when they continue what was read so far
    (a member read whole, or layer by layer in order); at the end of the payload compares it with the directory's.
    Out-of-order parts are not checked (every conversion reads each member in order)."""
    if m.crc_checked:
        return
    if offset == 0:
        m.crc_next, m.crc_running = 0, m.header_crc
    if offset != m.crc_next:
        return
    m.crc_running = zlib.crc32(data, m.crc_running)
    m.crc_next += len(data)
    if m.npy_header + m.crc_next >= m.size:
        m.crc_checked = True
        if m.crc_running != m.crc:
            raise zipfile.BadZipFile(f"CRC-32 mismatch (directory {m.crc:08x}, data {m.crc_running:08x})")


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
    if offset + nbytes > m.size:
        raise CheckpointError(f"{what}: elements [{start}, {start + count}) lie past its end")
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
                    out = np.frombuffer(mapped, m.dtype, count, position - aligned).reshape(shape)
                else:
                    out = np.empty(shape, m.dtype)
                    f.seek(position)
                    _readinto_exact(f, memoryview(out.reshape(-1).view(np.uint8)), what)
            _track_crc(m, offset - m.npy_header, out.reshape(-1).view(np.uint8))
        else:
            out = np.empty(shape, m.dtype)
            buffer = memoryview(out.reshape(-1).view(np.uint8))
            f = _compressed_stream(m, offset)
            _readinto_exact(f, buffer, what)
            if f.tell() >= m.size:  # read to the end: zipfile checks the CRC-32 at EOF; nothing more to stream
                f.read(1)
                _close_stream()
    except CheckpointError:
        _close_stream()
        raise
    except Exception as e:  # whatever zipfile / zlib / the OS raise on a corrupt file
        _close_stream()
        raise CheckpointError(f"{what} is unreadable, the file is corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    if not out.dtype.isnative:  # a big-endian .npy: torch only takes native byte order
        out = out.astype(out.dtype.newbyteorder("="))
    return out


def _member_array(m: _Member, start: int, shape: tuple[int, ...], source: str, name: str) -> LazyArray:
    """The lazy array of ``shape`` at element ``start`` of member ``m``; sliceable on axis 0 (C order)."""
    dtype_name = "bfloat16" if m.dtype == np.dtype("V2") else m.dtype.name  # ">f4" too is "float32" (read native)
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
    if is_flax_msgpack(path):  # the GIVT ImageNet VAEs: a flax msgpack file (see `read_msgpack_arrays`)
        return _select_tree(path, read_msgpack_arrays(path), subtree)
    try:
        zf = zipfile.ZipFile(path)
    except Exception:  # BadZipFile, and whatever else zipfile raises on a mangled directory
        raise CheckpointError(
            f"{path}: not a readable .npz (not a zip archive, or the file is truncated)"
        ) from None
    arrays: dict[str, LazyArray] = {}
    with zf:
        try:
            file_size = os.path.getsize(path)
            members = [m for m in zf.namelist() if m.endswith(".npy")]
            if len(set(members)) != len(members):
                twice = sorted({m for m in members if members.count(m) > 1})
                raise CheckpointError(f"{path}: the zip directory names {', '.join(twice[:4])} more than once")
            for member in members:
                info = _member_info(zf, path, member, file_size)
                name = member[: -len(".npy")]
                arrays[name] = _member_array(info, 0, info.shape, f"{os.path.basename(path)}:{name}", name)
        except CheckpointError:
            raise
        except Exception as e:  # zipfile and numpy's header parser raise many kinds on a mangled file
            raise CheckpointError(f"{path}: corrupt or truncated .npz ({type(e).__name__}: {e})") from None
    if not arrays:
        raise CheckpointError(f"{path}: the .npz holds no arrays")
    return _select_tree(path, arrays, subtree)


def _select_tree(path: str, arrays: dict[str, LazyArray], subtree: str | None) -> dict[str, LazyArray]:
    """The parameter tree of a file's arrays (any format): tree prefix stripped, canonical names, ``:subtree``."""
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
            # Keep only the model's variables: an optimizer state or step counter next to them is not one. Flax
            # variable collections other than `params` stay under their own prefix: `state/` (UViM's VQ-VAE
            # dictionary, uvim/vit.py; the only big_vision model with one), as a file without the prefix has it.
            kept = {k: v for k, v in arrays.items() if k.startswith(_KEPT_COLLECTIONS)}
            return {**inside, **kept}
    return arrays


# ---------------------------------------------------------------------------------------------------------------------
# flax msgpack checkpoints (flax.serialization.msgpack_serialize / to_bytes; the ImageNet GIVT VAE files)
# ---------------------------------------------------------------------------------------------------------------------
#
# flax writes a state dict as one msgpack map; an array leaf is the extension type 1 whose payload is itself msgpack:
# ``(shape, dtype name, raw C-order bytes)`` (``flax.serialization._ndarray_to_bytes``), arrays over 1 GiB are split
# into ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": flat part, ...}}``. The scanner below
# walks the structure reading headers only and records where each array's bytes are; nothing is unpacked with
# ``msgpack`` (no object hooks, no pickle), every length is checked against the file before it is skipped.

_MSGPACK_EXT_NDARRAY, _MSGPACK_EXT_COMPLEX, _MSGPACK_EXT_NPSCALAR = 1, 2, 3  # flax serialization._MsgpackExtType
#: The dtype names an array may carry (``arr.dtype.name``); anything else is refused, never passed to ``np.dtype``.
_MSGPACK_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64", "bfloat16", "complex64", "complex128",
)
_MSGPACK_MAX_DEPTH = 64
_CHUNKED = "__msgpack_chunked_array__"


def is_flax_msgpack(path: str) -> bool:
    """Whether ``path`` starts like a flax msgpack checkpoint (a msgpack map header), not a zip (``PK``)."""
    with open(path, "rb") as f:
        head = f.read(1)
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


@dataclass
class _MsgpackArray:
    """Where an array's bytes are: file segments ``(offset, elements)`` of its flat C-order data (one segment, or one
    per chunk of a chunked array)."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    segments: list[tuple[int, int]]

    def read(self, start: int, count: int) -> np.ndarray:
        """Flat elements ``[start, start + count)``, as stored (bfloat16 as ``V2``), in native byte order."""
        out = np.empty(count, self.dtype)
        itemsize, first = self.dtype.itemsize, 0
        try:
            with _open_file(self.path) as f:
                for offset, n in self.segments:
                    lo, hi = max(start, first), min(start + count, first + n)
                    if lo < hi:
                        f.seek(offset + (lo - first) * itemsize)
                        _readinto_exact(f, memoryview(out[lo - start:hi - start].view(np.uint8)), self.path)
                    first += n
        except (OSError, EOFError) as e:
            raise CheckpointError(f"{self.path}: an array is unreadable, the file is truncated ({e})") from None
        return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _msgpack_lazy(data: _MsgpackArray, start: int, shape: tuple[int, ...], source: str, name: str) -> LazyArray:
    """The lazy array of ``shape`` at flat element ``start`` of ``data``; sliceable on axis 0 (C order)."""
    row = math.prod(shape[1:])

    def raw():
        return data.read(start, math.prod(shape)).reshape(shape)

    def indexer(key):
        if isinstance(key, slice):
            a, b, step = key.indices(shape[0])
            if step != 1:
                raise ValueError("only step-1 slices are read lazily")
            return _msgpack_lazy(data, start + a * row, (max(0, b - a), *shape[1:]), source, name)
        index = int(key)
        if not 0 <= index < shape[0]:
            raise IndexError(f"{source}: index {index} out of range for axis 0 of size {shape[0]}")
        return _msgpack_lazy(data, start + index * row, shape[1:], source, name)

    dtype_name = "bfloat16" if data.dtype == np.dtype("V2") else data.dtype.name
    return LazyArray(shape, dtype_name, lambda: _decode(raw()), source, name, raw, indexer if shape else None)


class _MsgpackScanner:
    """Reads a msgpack document's structure from a file: maps (nested dicts), arrays (as dicts ``"0"``, ``"1"``,
    ...), flax ndarray extensions (`_MsgpackArray`, data left on disk) and scalars; strings, binaries and other
    non-array values become ``None``. Raises ``EOFError`` / ``ValueError`` on a malformed file."""

    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError(f"{n - len(data)} bytes missing at offset {self.f.tell()}")
        return data

    def skip(self, n: int) -> None:
        target = self.f.tell() + n
        if target > self.size:
            raise EOFError(f"a value of {n:,} bytes at offset {self.f.tell():,} runs past the end of the file")
        self.f.seek(target)

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.read(nbytes), "big")

    def count(self, n: int, what: str) -> int:
        if n > self.size - self.f.tell():  # every element takes at least one byte
            raise EOFError(f"a {what} of {n:,} elements at offset {self.f.tell():,} cannot fit in the file")
        return n

    def value(self, depth: int = 0):
        if depth > _MSGPACK_MAX_DEPTH:
            raise ValueError(f"nested deeper than {_MSGPACK_MAX_DEPTH} levels")
        b = self.read(1)[0]
        if b <= 0x7F or b >= 0xE0:  # fixints
            return b if b <= 0x7F else b - 0x100
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            n = b & 0x0F if b <= 0x8F else self.uint(2 if b == 0xDE else 4)
            out = {}
            for _ in range(self.count(n, "map")):
                key = self.value(depth + 1)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise ValueError(f"a map key of type {type(key).__name__} (flax keys are strings)")
                if str(key) in out:
                    raise ValueError(f"the key {str(key)!r} appears twice in one map")
                out[str(key)] = self.value(depth + 1)
            return out
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n = b & 0x0F if b <= 0x9F else self.uint(2 if b == 0xDC else 4)
            return {str(i): self.value(depth + 1) for i in range(self.count(n, "list"))}
        if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):  # str
            n = b & 0x1F if b <= 0xBF else self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[b])
            self.count(n, "string")
            return self.read(n).decode("utf-8", errors="replace") if n <= 4096 else self.skip(n)
        if b in (0xC4, 0xC5, 0xC6):  # bin: not an array
            return self.skip(self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b]))
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if b in (0xCA, 0xCB):
            return float(np.frombuffer(self.read(4 if b == 0xCA else 8), ">f4" if b == 0xCA else ">f8")[0])
        if 0xCC <= b <= 0xD3:  # uint8..64, int8..64
            nbytes = 1 << ((b - 0xCC) % 4)
            return int.from_bytes(self.read(nbytes), "big", signed=b >= 0xD0)
        if 0xD4 <= b <= 0xD8 or b in (0xC7, 0xC8, 0xC9):  # fixext 1..16, ext 8/16/32
            n = 1 << (b - 0xD4) if b >= 0xD4 else self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
            code = int.from_bytes(self.read(1), "big", signed=True)
            self.count(n, "extension")
            if code in (_MSGPACK_EXT_NDARRAY, _MSGPACK_EXT_NPSCALAR):
                return self.ndarray(n, scalar=code == _MSGPACK_EXT_NPSCALAR)
            if code == _MSGPACK_EXT_COMPLEX:
                return self.skip(n)
            raise ValueError(f"unknown msgpack extension type {code} (flax writes 1, 2 and 3)")
        raise ValueError(f"invalid msgpack byte 0x{b:02x} at offset {self.f.tell() - 1:,}")

    def ndarray(self, length: int, scalar: bool):
        """flax ``_ndarray_to_bytes``: a 3-list ``(shape, dtype name, bytes)``; the bytes stay on disk. An npscalar
        (a numpy scalar such as a step counter) is not an array: ``None``."""
        end = self.f.tell() + length
        if self.read(1)[0] != 0x93:
            raise ValueError("an ndarray extension that is not (shape, dtype, bytes)")
        shape = self.value(_MSGPACK_MAX_DEPTH - 1)
        shape = tuple(shape[str(i)] for i in range(len(shape))) if isinstance(shape, dict) else None
        if shape is None or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
            raise ValueError("an ndarray extension with an invalid shape")
        dtype_name = self.value(_MSGPACK_MAX_DEPTH - 1)
        if dtype_name not in _MSGPACK_DTYPES:
            raise ValueError(f"an array of dtype {dtype_name!r} (only numeric dtypes; nothing is unpickled)")
        b = self.read(1)[0]
        if b not in (0xC4, 0xC5, 0xC6):
            raise ValueError("an ndarray extension whose data is not a msgpack bin")
        nbytes = self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
        dtype = np.dtype("V2") if dtype_name == "bfloat16" else np.dtype(dtype_name).newbyteorder("<")
        if nbytes != math.prod(shape) * dtype.itemsize or self.f.tell() + nbytes != end:
            raise ValueError(f"an array claims shape {shape} {dtype_name} but holds {nbytes:,} bytes")
        offset = self.f.tell()
        self.skip(nbytes)
        return None if scalar else _MsgpackArray(self.path, dtype, shape, [(offset, math.prod(shape))])


def _unchunk(node: dict, name: str) -> _MsgpackArray:
    """flax ``_unchunk``: ``{"__msgpack_chunked_array__", "shape", "chunks"}`` -> one array over the chunks."""
    shape, chunks = node.get("shape"), node.get("chunks")
    if not isinstance(shape, dict) or not isinstance(chunks, dict) or set(node) != {_CHUNKED, "shape", "chunks"}:
        raise ValueError(f"{name}: a malformed chunked array")
    shape = tuple(shape.get(str(i)) for i in range(len(shape)))
    parts = [chunks.get(str(i)) for i in range(len(chunks))]
    if any(not isinstance(d, int) or d < 0 for d in shape) or not parts or any(
            not isinstance(p, _MsgpackArray) or len(p.shape) != 1 or p.dtype != parts[0].dtype for p in parts):
        raise ValueError(f"{name}: a malformed chunked array")
    segments = [segment for part in parts for segment in part.segments]
    if sum(n for _, n in segments) != math.prod(shape):
        raise ValueError(f"{name}: chunks of {sum(n for _, n in segments):,} elements for shape {shape}")
    return _MsgpackArray(parts[0].path, parts[0].dtype, shape, segments)


def read_msgpack_arrays(path: str) -> dict[str, LazyArray]:
    """The arrays of a flax msgpack checkpoint as ``{"a/b/c": LazyArray}`` (names joined by ``/`` as big_vision's
    ``tree_flatten_with_names`` does); nothing is read but the structure. Scalars, strings and other non-array
    values (a step counter, metadata) are not arrays and are left out. Raises a one-line ``CheckpointError`` for a
    truncated or malformed file."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            scanner = _MsgpackScanner(f, path, size)
            tree = scanner.value()
            if f.tell() != size:
                raise ValueError(f"{size - f.tell():,} bytes after the end of the msgpack document")
    except EOFError as e:
        raise CheckpointError(f"{path}: truncated flax msgpack checkpoint ({e})") from None
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable flax msgpack checkpoint ({e})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: a flax msgpack checkpoint must hold a map of parameters")
    arrays: dict[str, LazyArray] = {}

    def walk(node, name: str) -> None:
        if isinstance(node, dict):
            if _CHUNKED in node:
                try:
                    node = _unchunk(node, name)
                except ValueError as e:
                    raise CheckpointError(f"{path}: {e}") from None
            else:
                for key, child in node.items():
                    walk(child, f"{name}/{key}" if name else key)
                return
        if isinstance(node, _MsgpackArray):
            arrays[name] = _msgpack_lazy(node, 0, node.shape, f"{os.path.basename(path)}:{name}", name)

    walk(tree, "")
    if not arrays:
        raise CheckpointError(f"{path}: the flax msgpack checkpoint holds no arrays")
    return arrays
