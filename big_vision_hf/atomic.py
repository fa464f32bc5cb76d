"""Output folders that appear whole or not at all (``convert``, ``transfer``, ``evaluate``).

:func:`atomic_folder` hands out a temporary folder beside the target (``.NAME.tmp-PID-XXXX`` in the same parent, so
on the same file system) and renames it to the target when the block ends without an exception. A process killed at
any moment (``kill -9``, out of memory, power cut of the writer) therefore leaves either no target folder or a
complete one, never a folder that ``from_pretrained`` loads with missing or partial shards. The temporary folder of
a killed run is removed by the next run writing the same target.

An existing, non-empty target is replaced only with ``overwrite=True`` (``--overwrite``): on Linux the two folders
are swapped in one ``renameat2(RENAME_EXCHANGE)``, so the target is always the old or the new complete folder;
elsewhere the old one is renamed aside (``.NAME.old-PID-XXXX``, kept if the run dies before the new one is in)
and the new one renamed in. The old folder is then deleted.

Example:
    >>> with atomic_folder("out/vit-s16") as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator


class OutputExistsError(ValueError):
    """The output folder exists and ``overwrite`` was not given (one-line message)."""


def check_output(path: str, overwrite: bool = False) -> None:
    """Refuses a target that is a file, or a non-empty folder without ``overwrite``, before any work is done."""
    if os.path.isfile(path):
        raise OutputExistsError(f"{path} exists and is a file, not a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists and is not empty (--overwrite replaces it)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _remove_stale(parent: str, base: str) -> None:
    """Temporary / set-aside folders of ``base`` left by a killed run (their process is gone)."""
    for kind in ("tmp", "old"):
        prefix = f".{base}.{kind}-"
        for entry in os.listdir(parent):
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix):].split("-", 1)[0]
            if kind == "old" and not os.path.isdir(os.path.join(parent, base)):
                continue  # killed between the two renames: the set-aside folder is the only complete one
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary folder; on success it becomes ``path`` in one rename, on an exception it is removed.

    Raises `OutputExistsError` (a ``ValueError``) when ``path`` is a non-empty folder and not ``overwrite``.
    """
    path = os.path.abspath(path)
    check_output(path, overwrite)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent, base)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would make the published folder private
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, path, overwrite)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(tmp: str, path: str, overwrite: bool = False) -> None:
    """Renames the finished folder ``tmp`` to ``path`` (an empty ``path`` folder is replaced; a non-empty one only
    with ``overwrite``: swapped with the new one in one step where the OS can, else set aside first; then deleted)."""
    check_output(path, overwrite)
    if os.path.isdir(path) and os.listdir(path):
        if _exchange(tmp, path):  # tmp now holds the old folder
            shutil.rmtree(tmp, ignore_errors=True)
            return
        parent, base = os.path.split(path)
        old = tempfile.mkdtemp(prefix=f".{base}.old-{os.getpid()}-", dir=parent)
        os.replace(path, os.path.join(old, base))
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)  # rename(2) replaces an empty folder
