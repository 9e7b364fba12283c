"""In-place append (``add``): the cost in proportion to the rows added, crash-safe by a journal."""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geofast._geofast import __version__
from geofast._io import atomic_write_text
from geofast.db.format import (
    _DTYPES,
    COORDS,
    EMBEDDINGS,
    FAILED,
    INDEX,
    INDEX_BACKUP,
    JOURNAL,
    MANIFEST,
    META,
    META_KEYS,
    META_OFFSETS,
    NORMS,
    BaseDatabase,
    Event,
    _file_record,
    _fsync_dir,
    _now,
    _npy_header,
    _sample_sha256,
    appendable_files,
    npy_layout,
)
from geofast.db.index import DEFAULT_TRAIN_SIZE, _faiss, _train_and_fill
from geofast.db.writer import _csv_text, _image_key
from geofast.errors import DatabaseError, ShapeError

# In-place append (``add``): cost in proportion to the rows added
# ----------------------------------------------------------------------------------------------
#
# Protocol: (1) write JOURNAL (the old count and byte size of every appendable file) and
# hard-link index.faiss to INDEX_BACKUP; (2) append the new rows' bytes to every file, fsync;
# (3) rewrite the .npy headers in place (same 128 bytes: numpy pads the growth axis to 21
# digits); (4) write a new index.faiss by rename (non-flat); (5) commit the new manifest by
# rename; (6) remove JOURNAL and the backup. Crash before (5): the journal rolls every file back
# (truncate, old headers, old index) the next time the database is opened or grown; after (5):
# the journal is just removed.


def _appendable(base: BaseDatabase, factory: str, dtype: str, n_new: int) -> bool:
    """Can ``base`` grow in place (files with per-segment checksums, room in the npy headers)?"""
    files = base.manifest["files"]
    if base.dtype != dtype or base.index_factory != factory:
        return False
    if any(name not in files or "segments" not in files[name] for name in appendable_files(base.manifest)):
        return False
    grown = npy_layout({**base.manifest, "count": len(base) + n_new})
    for name, (shape, dt) in grown.items():
        segs = files[name]["segments"]
        if not segs or len(_npy_header(shape, dt)) != int(segs[0][0]):
            return False
    return True


def _append_bytes(path: Path, start: int, chunks: Iterable[bytes | memoryview]) -> list[Any] | None:
    """Write ``chunks`` at byte ``start`` of ``path`` (dropping anything after it), fsync;
    the new segment ``[start, bytes, sha256]`` or None when nothing was written."""
    h = hashlib.sha256()
    n = 0
    with open(path, "r+b") as f:
        f.seek(start)
        f.truncate()
        for c in chunks:
            f.write(c)
            h.update(c)
            n += len(c) if isinstance(c, bytes) else c.nbytes
        f.flush()
        os.fsync(f.fileno())
    return [start, n, h.hexdigest()] if n else None


def _write_npy_header(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], length: int) -> None:
    head = _npy_header(shape, dtype)
    if len(head) != length:  # pragma: no cover - checked by _appendable
        raise DatabaseError(f"internal error: the .npy header of {path.name} would change size")
    with open(path, "r+b") as f:
        f.write(head)
        f.flush()
        os.fsync(f.fileno())


def _append(
    base: BaseDatabase,
    *,
    n_new: int,
    emb_blocks: Iterable[np.ndarray],
    latlon: np.ndarray,
    norms: np.ndarray,
    meta_lines: Iterable[tuple[str, str]],
    failures: list[tuple[str, str]],
    manifest_extra: dict[str, Any],
    on_event: Event | None,
) -> None:
    """Grow ``base`` in place by ``n_new`` rows (see the protocol above; the caller holds the lock).
    ``norms`` are appended when the database keeps them (:data:`NORMS`)."""
    root = base.path
    old_m = base.manifest
    files = old_m["files"]
    old_count = len(base)
    dim = base.dim
    np_dtype = np.dtype(_DTYPES[base.dtype])
    has_index = not base.is_flat
    grown_files = appendable_files(old_m)
    old_bytes = {name: int(files[name]["bytes"]) for name in grown_files}
    journal = {"count": old_count, "bytes": old_bytes, "index": has_index}
    atomic_write_text(root / JOURNAL, json.dumps(journal))
    if has_index:
        (root / INDEX_BACKUP).unlink(missing_ok=True)
        os.link(root / INDEX, root / INDEX_BACKUP)
    _fsync_dir(root)
    segs: dict[str, list[Any] | None] = {}

    def emb_bytes() -> Iterator[memoryview]:
        written = 0
        for blk in emb_blocks:
            blk = np.ascontiguousarray(blk, dtype=np_dtype)
            if blk.ndim != 2 or blk.shape[1] != dim:
                raise ShapeError(f"embedding block of shape {blk.shape} does not have {dim} columns")
            written += blk.shape[0]
            yield blk.data.cast("B")
        if written != n_new:
            raise DatabaseError(f"internal error: appended {written} embeddings for {n_new} rows")

    segs[EMBEDDINGS] = _append_bytes(root / EMBEDDINGS, old_bytes[EMBEDDINGS], emb_bytes())
    ll = np.ascontiguousarray(latlon, dtype=np.float64).reshape(-1, 2)
    segs[COORDS] = _append_bytes(root / COORDS, old_bytes[COORDS], [ll.data.cast("B")] if ll.shape[0] else [])
    if NORMS in old_bytes:
        nv = np.ascontiguousarray(norms, dtype=np.float32).reshape(-1)
        if nv.shape[0] != n_new:
            raise DatabaseError(f"internal error: {nv.shape[0]} norms for {n_new} rows")
        segs[NORMS] = _append_bytes(root / NORMS, old_bytes[NORMS], [nv.data.cast("B")] if n_new else [])
    meta_start = old_bytes[META]
    ends: array[int] = array("Q")
    keys: array[int] = array("Q")
    pos = meta_start

    def meta_bytes() -> Iterator[bytes]:
        nonlocal pos
        for image, line in meta_lines:
            b = line.encode("utf-8") + b"\n"
            pos += len(b)
            ends.append(pos)
            keys.append(_image_key(image))
            yield b

    segs[META] = _append_bytes(root / META, meta_start, meta_bytes())
    if len(ends) != n_new:
        raise DatabaseError(f"internal error: appended {len(ends)} metadata lines for {n_new} rows")
    segs[META_OFFSETS] = _append_bytes(root / META_OFFSETS, old_bytes[META_OFFSETS], [bytes(ends)] if n_new else [])
    segs[META_KEYS] = _append_bytes(root / META_KEYS, old_bytes[META_KEYS], [bytes(keys)] if n_new else [])
    segs[FAILED] = _append_bytes(
        root / FAILED, old_bytes[FAILED], [_csv_text(failures, header=False).encode("utf-8")] if failures else []
    )
    new_m = {**old_m, "count": old_count + n_new}
    for name, (shape, dt) in npy_layout(new_m).items():
        _write_npy_header(root / name, shape, dt, int(files[name]["segments"][0][0]))
    records = {name: dict(rec) for name, rec in files.items()}
    for name in grown_files:
        rec = records[name]
        rec.pop("sha256", None)
        seg = segs.get(name)
        rec["segments"] = list(rec["segments"]) + ([seg] if seg is not None else [])
        rec["bytes"] = (root / name).stat().st_size
        rec["sample_sha256"] = _sample_sha256(root / name)
    if has_index:
        faiss = _faiss()
        index = faiss.read_index(str(root / INDEX_BACKUP))
        emb = np.memmap(
            root / EMBEDDINGS,
            dtype=np_dtype,
            mode="r",
            offset=int(files[EMBEDDINGS]["segments"][0][0]),
            shape=(old_count + n_new, dim),
        )
        _train_and_fill(index, emb, DEFAULT_TRAIN_SIZE, on_event, start=int(index.ntotal))
        del emb
        tmp = root / (INDEX + ".tmp")
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fi:
            os.fsync(fi.fileno())
        os.replace(tmp, root / INDEX)
        records[INDEX] = _file_record(root / INDEX)
    _fsync_dir(root)
    manifest = {
        **old_m,
        **{k: v for k, v in manifest_extra.items() if k != "created"},
        "geofast_version": __version__,
        "updated": _now(),
        "count": old_count + n_new,
        "files": records,
    }
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _fsync_dir(root)
    (root / JOURNAL).unlink(missing_ok=True)
    (root / INDEX_BACKUP).unlink(missing_ok=True)
    _fsync_dir(root)


def _recover_append(root: Path) -> None:
    """Finish or roll back an interrupted in-place append (the caller holds the lock)."""
    jpath = root / JOURNAL
    if not jpath.is_file():
        return
    try:
        journal = json.loads(jpath.read_text(encoding="utf-8"))
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        old_bytes = {str(k): int(v) for k, v in journal["bytes"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatabaseError(
            f"database {root}: cannot read the journal of an interrupted add ({e})",
            hint=f"rebuild the database: geofast db build SOURCE --out {root}",
        ) from e
    files = manifest.get("files", {})
    committed = any(int(files.get(name, {}).get("bytes", -1)) != size for name, size in old_bytes.items())
    backup = root / INDEX_BACKUP
    if not committed:
        for name, size in old_bytes.items():
            with open(root / name, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        for name, (shape, dt) in npy_layout(manifest).items():
            _write_npy_header(root / name, shape, dt, int(files[name]["segments"][0][0]))
        if backup.exists():
            os.replace(backup, root / INDEX)
    (root / (INDEX + ".tmp")).unlink(missing_ok=True)
    backup.unlink(missing_ok=True)
    _fsync_dir(root)
    jpath.unlink()
    _fsync_dir(root)
