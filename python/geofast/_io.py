"""Crash-safe file writes: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written file: it finds either the old content or the new. The file
gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the 0600
of ``mkstemp``; :func:`make_staging_dir` does the same for folders (0777 less the umask).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(r"^Umask:\s*([0-7]+)", f.read(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (no other thread of geofast touches the umask)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def make_staging_dir(target: Path) -> Path:
    """A new empty folder beside ``target`` (to be renamed onto it once complete) with the
    permissions ``mkdir`` would give, not ``mkdtemp``'s 0700."""
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(staged, 0o777 & ~current_umask())
    return staged


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``
    (permissions: 0666 less the umask, as ``open`` would create it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_dir(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Install the complete folder ``staged`` as ``target`` by renames (``target → target.old``,
    ``staged → target``, then remove ``.old``): a reader sees the old folder or the new one."""
    import shutil

    src, dst = Path(staged), Path(target)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst
