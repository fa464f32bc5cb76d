"""One reader for every big_vision checkpoint: lazy, one array at a time.

A big_vision ``.npz`` is a zip of ``.npy`` members whose names are the flax parameter paths joined by
``/`` (``big_vision.utils.tree_flatten_with_names``). This module turns such a file into a flat
``{name: LazyArray}`` dict with canonical names:

* the ``params/`` (big_vision trainers) and ``opt/target/`` (old flax optimizer) prefixes are removed;
* ``file.npz:img`` selects the ``img/`` sub-tree, as ``big_vision.utils.load_params`` does;
* bfloat16 arrays, which numpy stores as the void dtype ``V2`` (``big_vision.utils.recover_dtype``),
  are read back exactly;
* nothing is read until ``LazyArray.load()`` is called, so memory stays near the largest tensor.

Layout fixes that operate on names (scan stacking, old posemb placement, ...) live with the family's
converter; this module only reads. Pickled members are refused (``allow_pickle=False``).

Example:
    >>> ckpt = read_checkpoint("vit_s16_i1k_300ep.npz")  # doctest: +SKIP
    >>> ckpt["embedding/kernel"].shape  # doctest: +SKIP
    (16, 16, 3, 384)
"""

from __future__ import annotations

import os
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
    """

    shape: tuple[int, ...]
    dtype: str
    loader: Callable[[], np.ndarray] = field(repr=False)
    source: str = ""
    name: str = ""

    def load(self) -> np.ndarray:
        array = self.loader()
        if tuple(array.shape) != tuple(self.shape):
            raise CheckpointError(f"{self.source}: expected shape {self.shape}, read {tuple(array.shape)}")
        return array

    def derive(self, fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], note: str = "") -> "LazyArray":
        """A new lazy array computed from this one by ``fn`` (still nothing is read)."""
        return LazyArray(tuple(shape), self.dtype, lambda: fn(self.load()), self.source + note, self.name)

    @staticmethod
    def constant(array: np.ndarray, source: str = "<computed>") -> "LazyArray":
        return LazyArray(tuple(array.shape), str(array.dtype), lambda: array, source)


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Exact bfloat16 -> float32 for arrays numpy stored as ``V2`` (2-byte void)."""
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _member_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


def _read_member(path: str, member: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            array = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as e:
        raise CheckpointError(f"{path}: array {member!r} is unreadable, the file may be truncated ({e})") from None
    if array.dtype == np.dtype("V2"):
        array = bfloat16_to_float32(array)
    return array


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
                shape, dtype = _member_header(zf, member)
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: member {member!r} holds pickled objects; refusing to unpickle")
                name = member[: -len(".npy")]
                dtype_name = "bfloat16" if dtype == np.dtype("V2") else str(dtype)
                arrays[name] = LazyArray(
                    shape, dtype_name, lambda m=member: _read_member(path, m), f"{os.path.basename(path)}:{name}", name
                )
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
