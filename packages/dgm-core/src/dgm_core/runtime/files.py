"""Writing files and folders so that a crash leaves either the old version or the new one, never a mix.

Everything the runtime writes for later reading (checkpoints, exported models, run configs)
goes through these helpers: content is written under a hidden temporary name beside its
destination, flushed to disk (``fsync`` of the files and of their folder), then renamed into
place. A rename within one folder is atomic on POSIX file systems, so a reader, a resume or a
power cut sees a complete file or folder or none.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Temporary folders carry this prefix; start-up code may remove stale ones left by a crash.
TMP_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder entry to disk (best effort on file systems that refuse folder fsync)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _finish_tree(root: Path) -> None:
    """Give every file and folder the usual permissions and flush it to disk.

    Some writers (safetensors, ``mkstemp``) create private 0600 files; a checkpoint or a cached
    model shared with colleagues must be readable like anything else the user writes.
    """
    for folder, subfolders, files in os.walk(root):
        for name in files:
            _apply_umask(Path(folder) / name, folder=False)
            fsync_path(Path(folder) / name)
        for name in subfolders:
            _apply_umask(Path(folder) / name, folder=True)
        fsync_path(folder)


def _apply_umask(path: Path, folder: bool) -> None:
    """``mkstemp``/``mkdtemp`` create private (0600/0700) entries; give them the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def make_readable(path: str | os.PathLike) -> None:
    """Give a file written through ``mkstemp`` (mode 0600) the permissions the umask allows."""
    _apply_umask(Path(path), folder=False)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON next to ``path`` then rename over it: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        _apply_umask(Path(tmp), folder=False)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; on success it replaces ``final`` atomically.

    An existing ``final`` is moved aside before the new folder is renamed in and deleted only
    afterwards, so there is never a moment without a complete ``final``. On an exception the
    temporary folder is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        _apply_umask(tmp, folder=True)
        yield tmp
        _finish_tree(tmp)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
