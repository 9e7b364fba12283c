"""The on-disk format of an image database: file names, npy headers, checksums, the manifest.

See :mod:`geofast.db` for the layout. Everything here is pure file handling (no model, no FAISS).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from geofast._geofast import __version__
from geofast._io import file_sha256
from geofast.errors import DatabaseError

FORMAT = "geofast-image-db"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
COORDS = "coords.npy"
META = "meta.jsonl"
FAILED = "failed.csv"
INDEX = "index.faiss"
STATE = "state.json"

#: Databases up to this size are fully checksummed on every open; larger ones get a sampled check.
FULL_VERIFY_BYTES = 256 << 20
_SAMPLE_BLOCKS = 64
_SAMPLE_BLOCK_BYTES = 64 << 10
_DTYPES = {"f16": np.float16, "f32": np.float32}

#: ``on_progress(done, total)``: source entries processed so far (committed chunks included).
Progress = Callable[[int, int], None]
#: ``on_event(message)``: one-line notices (resuming, starting over, indexing).
Event = Callable[[str], None]

# ----------------------------------------------------------------------------------------------
# Files: hashing writers, checksums, npy headers
# ----------------------------------------------------------------------------------------------


def _is_flat(factory: str) -> bool:
    return factory.strip().lower() in ("flat", "indexflatip", "flatip")


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.f.write(data)
        self.h.update(data)
        n = len(data) if isinstance(data, bytes) else data.nbytes
        self.size += n
        return n


def _sample_sha256(path: Path) -> str:
    """sha256 of the size and of 64 evenly spaced 64 KiB blocks (the whole file when smaller)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLE_BLOCKS * _SAMPLE_BLOCK_BYTES:
            h.update(f.read())
        else:
            span = size - _SAMPLE_BLOCK_BYTES
            for i in range(_SAMPLE_BLOCKS):
                f.seek(span * i // (_SAMPLE_BLOCKS - 1))
                h.update(f.read(_SAMPLE_BLOCK_BYTES))
    return h.hexdigest()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_record(path: Path, sha256: str | None = None) -> dict[str, Any]:
    return {
        "bytes": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else file_sha256(path),
        "sample_sha256": _sample_sha256(path),
    }


# ----------------------------------------------------------------------------------------------
# Manifest helpers
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sibling(root: Path, suffix: str) -> Path:
    return root.with_name(root.name + suffix)


def _rebuild_hint(root: Path, manifest: dict[str, Any] | None) -> str:
    sources = [s.get("source") for s in (manifest or {}).get("sources", []) if s.get("kind") in ("csv", "folder")]
    src = sources[0] if len(sources) == 1 else "SOURCE"
    extra = " (then geofast db add for the other sources)" if len(sources) > 1 else ""
    return f"the database is damaged; rebuild it: geofast db build {src} --out {root}{extra}"


def _read_manifest(root: Path) -> dict[str, Any]:
    partial = _sibling(root, ".partial")
    if not root.exists():
        if _sibling(root, ".old").exists() or (partial / "db" / MANIFEST).is_file():
            raise DatabaseError(
                f"database {root} does not exist: a rebuild was interrupted while installing it",
                hint=f"rerun the same geofast db build ... --out {root} (or geofast db add) to finish it",
            )
        if partial.exists():
            raise DatabaseError(
                f"database {root} does not exist yet: its build was interrupted",
                hint=f"rerun the same geofast db build SOURCE --out {root} to resume it",
            )
        raise DatabaseError(f"database {root} does not exist", hint=f"build it: geofast db build SOURCE --out {root}")
    if not root.is_dir():
        raise DatabaseError(f"{root} is not a database folder", hint="pass the folder given to geofast db build --out")
    mpath = root / MANIFEST
    if not mpath.is_file():
        hint = (
            f"its build was interrupted: rerun geofast db build SOURCE --out {root} to resume it"
            if partial.exists()
            else f"build it: geofast db build SOURCE --out {root}"
        )
        raise DatabaseError(f"{root} is not a geofast database (no {MANIFEST})", hint=hint)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatabaseError(f"database {root}: {MANIFEST} is unreadable ({e})", hint=_rebuild_hint(root, None)) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatabaseError(f"{mpath} is not a geofast database manifest", hint=_rebuild_hint(root, None))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatabaseError(
            f"database {root} has format version {version}; this geofast ({__version__}) reads version {FORMAT_VERSION}",
            hint=f"rebuild it with this geofast: geofast db build SOURCE --out {root}",
        )
    hint = _rebuild_hint(root, manifest)
    try:
        count, dim = int(manifest["count"]), int(manifest["dim"])
        dtype, files, index = manifest["dtype"], manifest["files"], manifest["index"]["factory"]
    except (KeyError, TypeError, ValueError) as e:
        raise DatabaseError(f"database {root}: {MANIFEST} lacks a field ({e})", hint=hint) from e
    if count < 0 or dim < 1 or dtype not in _DTYPES or not isinstance(files, dict):
        raise DatabaseError(f"database {root}: {MANIFEST} is inconsistent (count {count}, dim {dim}, dtype {dtype!r})", hint=hint)
    required = {EMBEDDINGS, COORDS, META} | (set() if _is_flat(str(index)) else {INDEX})
    missing = sorted(required - set(files))
    if missing:
        raise DatabaseError(f"database {root}: {MANIFEST} does not list {', '.join(missing)}", hint=hint)
    return manifest


def _check_checksums(root: Path, files: dict[str, Any], *, full: bool, hint: str) -> None:
    for name, rec in files.items():
        path = root / name
        if full:
            got, want, what = file_sha256(path), rec.get("sha256"), "sha256"
        else:
            got, want, what = _sample_sha256(path), rec.get("sample_sha256"), "sampled sha256"
        if got != want:
            raise DatabaseError(
                f"database {root}: {name} does not match its {what} in {MANIFEST} (file changed or corrupt)", hint=hint
            )
