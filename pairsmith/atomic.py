"""Atomic writes for files and folders: the one way pairsmith puts something on disk.

- A file: written to a temp file in the same folder, fsynced, renamed over the target, and the
  folder fsynced (:func:`atomic_write_bytes`, ``_text``, ``_json``; :func:`replace_file` for a
  file written elsewhere in the same folder).
- A folder: built under a temp name beside the target, every file fsynced, then swapped in
  (:func:`replace_dir`, :func:`write_dir`). Where the target exists, Linux swaps the two names
  in one step (``renameat2(RENAME_EXCHANGE)``), so a reader or a crash sees the old folder or
  the new one at the target, never neither. Elsewhere (another OS, a file system without the
  exchange) the old folder is moved aside and the new one renamed in: a crash between the two
  renames leaves the target missing and the old folder under ``.NAME.old-*`` beside it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# renameat2 syscall numbers where glibc does not export the wrapper (glibc < 2.28).
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh, unused name beside ``path`` (same folder, so a rename onto ``path`` is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def replace_file(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make the finished file ``tmp`` (same folder as ``path``) become ``path``, durably."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_symlink():
            continue
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def _renameat2():
    """The libc ``renameat2`` (or a syscall shim), or None where the OS has none."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return fn
    nr = _SYS_RENAMEAT2.get(platform.machine().lower())
    if nr is None:
        return None

    def shim(olddirfd, old, newdirfd, new, flags):
        return libc.syscall(nr, olddirfd, old, newdirfd, new, flags)

    return shim


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the OS or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # no renameat2 in this kernel, or this file system lacks RENAME_EXCHANGE
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def replace_dir(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Make the finished directory ``src`` (same file system) become ``dest``, durably.

    Every file and folder in ``src`` is fsynced first. An existing ``dest`` is swapped with
    ``src`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``: ``dest`` holds the old or the new
    folder at every moment) and the old one, now under ``src``'s name, is removed after the
    parent folder is fsynced. Without the exchange (see the module docstring) the old folder is
    moved aside to ``.NAME.old-*`` first.
    """
    src, dest = Path(src), Path(dest)
    _fsync_tree(src)
    if dest.exists() or dest.is_symlink():
        if exchange(src, dest):
            fsync_dir(dest.parent)
            if src.parent != dest.parent:
                fsync_dir(src.parent)
            shutil.rmtree(src, ignore_errors=True)  # the old folder, under the temp name now
            return
        old = dest.parent / f".{dest.name}.old-{int(time.time() * 1e6)}"
        os.replace(dest, old)
        os.replace(src, dest)
        fsync_dir(dest.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


def write_dir(dest: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmpdir)`` on a fresh folder beside ``dest``, then :func:`replace_dir` it in.

    A failing ``writer`` leaves ``dest`` as it was and removes the temp folder.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        writer(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
