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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from geofast._geofast import __version__
from geofast._io import file_sha256
from geofast.errors import DatabaseError

if TYPE_CHECKING:
    from geofast.models.clip import Backbone

FORMAT = "geofast-image-db"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
COORDS = "coords.npy"
#: (N,) float32: the L2 norm of each photo's CLIP feature before normalisation (row × norm is the
#: raw feature GeoCLIP's image MLP takes: what training needs). Absent for rows stored as given.
NORMS = "norms.npy"
META = "meta.jsonl"
FAILED = "failed.csv"
INDEX = "index.faiss"
STATE = "state.json"
#: (N + 1,) uint64: byte offset of each line of meta.jsonl, then its size (row i = [o[i], o[i+1])).
META_OFFSETS = "meta.offsets.npy"
#: (N,) uint64: 64-bit BLAKE2b key of each row's image path (duplicate checks of ``add``).
META_KEYS = "meta.keys.npy"
#: Written before an in-place append touches any file, removed after the manifest commit.
JOURNAL = "append.journal.json"
INDEX_BACKUP = "index.faiss.bak"
#: Files an ``add`` extends in place (each with one checksum per appended segment).
APPENDABLE = ("embeddings.npy", "coords.npy", "meta.jsonl", "meta.offsets.npy", "meta.keys.npy", "failed.csv")


def appendable_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """:data:`APPENDABLE` plus the optional per-row files this database has (:data:`NORMS`)."""
    return APPENDABLE + ((NORMS,) if NORMS in manifest.get("files", {}) else ())


#: Databases up to this size are fully checksummed on every open; larger ones get a sampled check.
FULL_VERIFY_BYTES = 256 << 20
_SAMPLE_BLOCKS = 64
_SAMPLE_BLOCK_BYTES = 64 << 10
_DTYPES = {"f16": np.float16, "f32": np.float32}

#: ``on_progress(done, total)``: source entries processed so far (committed chunks included).
Progress = Callable[[int, int], None]
#: ``on_event(message)``: one-line notices (resuming, starting over, indexing).
Event = Callable[[str], None]


class BaseDatabase(Protocol):
    """What the writers (:mod:`geofast.db.builder`, :mod:`geofast.db.append`, ...) read of an
    opened database that an ``add`` grows: :class:`geofast.db.Database` satisfies it. The writers
    depend on this, not on ``Database``, so the data flows one way (``database`` → builder →
    format)."""

    path: Path
    manifest: dict[str, Any]
    embeddings: np.ndarray
    latlon: np.ndarray
    norms: np.ndarray | None

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    @property
    def index_factory(self) -> str: ...

    @property
    def is_flat(self) -> bool: ...

    @property
    def precision(self) -> str | None: ...

    def check_backbone(self, backbone: Backbone, *, probe: np.ndarray | None = None, adding: bool = False) -> None: ...

    def missing_images(self, images: Sequence[str]) -> np.ndarray: ...

    def failures(self) -> list[tuple[str, str]]: ...

    def release(self) -> None:
        """Drop the search structures over the files (before they are replaced or grown)."""
        ...


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


def _file_record(path: Path, sha256: str | None = None, segments: list[list[Any]] | None = None) -> dict[str, Any]:
    """A manifest record: size, whole-file sha256, sampled sha256 and, for a file an ``add`` may
    extend, ``segments`` ``[[offset, bytes, sha256], ...]`` tiling its data (after a ``.npy``
    header, whose bytes follow from count/dim/dtype). After an append the whole-file sha256 is
    dropped: the segments (one per build or add) are the checksums."""
    rec: dict[str, Any] = {
        "bytes": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else file_sha256(path),
        "sample_sha256": _sample_sha256(path),
    }
    if segments is not None:
        rec["segments"] = segments
    return rec


def _hash_region(path: Path, start: int, stop: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = (stop - start) if stop is not None else -1
        while left != 0:
            blk = f.read(1 << 22 if left < 0 else min(left, 1 << 22))
            if not blk:
                break
            h.update(blk)
            left -= len(blk) if left > 0 else 0
    return h.hexdigest()


def _npy_file_record(path: Path) -> dict[str, Any]:
    """:func:`_file_record` of a ``.npy`` file with its data region as the first segment."""
    _, _, _, offset = _read_npy_header(path)
    size = path.stat().st_size
    return _file_record(path, segments=[[offset, size - offset, _hash_region(path, offset)]])


def image_keys(images: Iterable[str]) -> np.ndarray:
    """64-bit BLAKE2b keys of image paths (:data:`META_KEYS`)."""
    out = np.fromiter(
        (int.from_bytes(hashlib.blake2b(x.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little") for x in images),
        dtype=np.uint64,
    )
    return out


def npy_layout(manifest: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """The shape and dtype every ``.npy`` file of a database must have, from its manifest."""
    count, dim = int(manifest["count"]), int(manifest["dim"])
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
        EMBEDDINGS: ((count, dim), np.dtype(_DTYPES[manifest["dtype"]])),
        COORDS: ((count, 2), np.dtype(np.float64)),
    }
    files = manifest.get("files", {})
    if NORMS in files:
        out[NORMS] = ((count,), np.dtype(np.float32))
    if META_OFFSETS in files:
        out[META_OFFSETS] = ((count + 1,), np.dtype(np.uint64))
    if META_KEYS in files:
        out[META_KEYS] = ((count,), np.dtype(np.uint64))
    return out


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


def _interrupted_source(partial: Path) -> str:
    """The SOURCE of the interrupted run whose work folder is ``partial`` (from its state.json)."""
    try:
        source = json.loads((partial / STATE).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    return str(source) if isinstance(source, str) and source else "SOURCE"


def _read_manifest(root: Path) -> dict[str, Any]:
    partial = _sibling(root, ".partial")
    if not root.exists():
        if _sibling(root, ".old").exists() or (partial / "db" / MANIFEST).is_file():
            raise DatabaseError(
                f"database {root} does not exist: a rebuild was interrupted while installing it",
                hint=f"rerun the same geofast db build ... --out {root} (or geofast db add) to finish it",
            )
        if (partial / STATE).is_file():
            raise DatabaseError(
                f"database {root} does not exist yet: its build was interrupted (or is running)",
                hint=f"rerun geofast db build {_interrupted_source(partial)} --out {root} to resume it",
            )
        raise DatabaseError(f"database {root} does not exist", hint=f"build it: geofast db build SOURCE --out {root}")
    if not root.is_dir():
        raise DatabaseError(f"{root} is not a database folder", hint="pass the folder given to geofast db build --out")
    mpath = root / MANIFEST
    if not mpath.is_file():
        hint = (
            f"its build was interrupted: rerun geofast db build {_interrupted_source(partial)} --out {root} to resume it"
            if (partial / STATE).is_file()
            else f"its manifest is gone: delete {root} and rebuild it: geofast db build SOURCE --out {root}"
            if (root / EMBEDDINGS).is_file()
            else "pass the folder given to geofast db build --out (a database folder holds manifest.json)"
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


def _check_checksums(root: Path, files: dict[str, Any], *, full: bool, hint: str, manifest: dict[str, Any] | None = None) -> None:
    layout = npy_layout(manifest) if manifest is not None else {}
    for name, rec in files.items():
        path = root / name
        if not full:
            if _sample_sha256(path) != rec.get("sample_sha256"):
                raise DatabaseError(
                    f"database {root}: {name} does not match its sampled sha256 in {MANIFEST} (file changed or corrupt)",
                    hint=hint,
                )
            continue
        if "sha256" in rec or "segments" not in rec:
            if file_sha256(path) != rec.get("sha256"):
                raise DatabaseError(
                    f"database {root}: {name} does not match its sha256 in {MANIFEST} (file changed or corrupt)", hint=hint
                )
        if "segments" in rec:
            _check_segments(root, name, rec, layout.get(name), hint)


def _check_segments(
    root: Path, name: str, rec: dict[str, Any], npy: tuple[tuple[int, ...], np.dtype[Any]] | None, hint: str
) -> None:
    path = root / name
    segs = rec["segments"]
    pos = int(segs[0][0]) if segs else 0
    if npy is not None:
        head = _npy_header(npy[0], npy[1])
        with open(path, "rb") as f:
            got = f.read(len(head))
        if got != head or pos != len(head):
            raise DatabaseError(f"database {root}: the .npy header of {name} does not match {MANIFEST}", hint=hint)
    for off, length, sha in segs:
        if int(off) != pos or _hash_region(path, int(off), int(off) + int(length)) != sha:
            raise DatabaseError(
                f"database {root}: {name} does not match its sha256 in {MANIFEST} (segment at byte {int(off):,}; file changed or corrupt)",
                hint=hint,
            )
        pos += int(length)
    if pos != int(rec["bytes"]):
        raise DatabaseError(f"database {root}: the checksummed segments of {name} do not cover the file", hint=hint)
