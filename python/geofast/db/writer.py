"""Writing a complete database folder: assembly in the work folder (manifest last) and the
install by renames (see :mod:`geofast.db.builder` for the protocol).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from geofast._geofast import __version__
from geofast._io import atomic_write, atomic_write_text
from geofast.db.format import (
    _DTYPES,
    COORDS,
    EMBEDDINGS,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    META,
    META_KEYS,
    META_OFFSETS,
    NORMS,
    BaseDatabase,
    Event,
    _file_record,
    _fsync_dir,
    _HashingWriter,
    _is_flat,
    _now,
    _npy_file_record,
    _npy_header,
    _sibling,
)
from geofast.db.index import write_index
from geofast.errors import DatabaseError, ShapeError


def _recover_swap(root: Path) -> None:
    """Finish an install cut off between its renames (see the module docstring)."""
    old, partial = _sibling(root, ".old"), _sibling(root, ".partial")
    staged = partial / "db"
    if not root.exists():
        if (staged / MANIFEST).is_file():
            os.replace(staged, root)
            # The chunks of that run are now installed: clear the work folder (keep the lock).
            for child in partial.iterdir():
                if child.name != "lock":
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        elif old.exists():
            os.replace(old, root)
        _fsync_dir(root.parent)
    if root.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(root: Path) -> None:
    """Refuse to build into ``root`` when it is something other than a database or an empty folder:
    the install renames ``root`` away and deletes it (a user's photo folder given as ``--out``)."""
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir():
        raise DatabaseError(
            f"--out {root} is a file, not a database folder", hint=f"choose a new folder, e.g. --out {root.with_suffix('.db')}"
        )
    if (root / MANIFEST).is_file() or not any(root.iterdir()):
        return
    raise DatabaseError(
        f"--out {root} is a folder that holds no geofast database; building would replace everything in it",
        hint=f"choose a new folder, e.g. --out {root.with_name(root.name + '.db')} (or empty {root} first)",
    )


def _image_key(image: str) -> int:
    return int.from_bytes(hashlib.blake2b(image.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def _csv_text(rows: Iterable[tuple[str, str]], *, header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(["image", "reason"])
    writer.writerows(rows)
    return buf.getvalue()


def assemble(
    staged: Path,
    *,
    n_rows: int,
    dim: int,
    dtype: str,
    factory: str,
    emb_blocks: Iterable[np.ndarray],
    latlon: np.ndarray,
    norms: Callable[[], np.ndarray | None],
    meta_lines: Iterable[tuple[str, str]],
    failures: list[tuple[str, str]],
    manifest_extra: dict[str, Any],
    train_size: int,
    base: BaseDatabase | None,
    on_event: Event | None = None,
) -> None:
    """Write the complete new database into ``DIR.partial/db`` (manifest last). ``norms()``
    (called once the embeddings are written) gives the feature norms, or None to keep none."""
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    np_dtype = np.dtype(_DTYPES[dtype])
    records: dict[str, dict[str, Any]] = {}

    # embeddings.npy, streamed
    path = staged / EMBEDDINGS
    written = 0
    header = _npy_header((n_rows, dim), np_dtype)
    data_h = hashlib.sha256()
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        w.write(header)
        for blk in emb_blocks:
            blk = np.ascontiguousarray(blk, dtype=np_dtype)
            if blk.ndim != 2 or blk.shape[1] != dim:
                raise ShapeError(f"embedding block of shape {blk.shape} does not have {dim} columns")
            mv = blk.data.cast("B")
            w.write(mv)
            data_h.update(mv)
            written += blk.shape[0]
        f.flush()
        os.fsync(f.fileno())
    if written != n_rows:
        raise DatabaseError(f"internal error: wrote {written} embeddings for {n_rows} rows")
    records[EMBEDDINGS] = _file_record(path, w.h.hexdigest(), [[len(header), w.size - len(header), data_h.hexdigest()]])

    # coords.npy
    ll = np.ascontiguousarray(latlon, dtype=np.float64)
    if ll.shape != (n_rows, 2):
        raise DatabaseError(f"internal error: {ll.shape} coordinates for {n_rows} rows")
    path = staged / COORDS
    atomic_write(path, lambda f: np.save(f, ll, allow_pickle=False))
    records[COORDS] = _npy_file_record(path)

    # norms.npy
    nv = norms()
    if nv is not None:
        nv = np.ascontiguousarray(nv, dtype=np.float32)
        if nv.shape != (n_rows,):
            raise DatabaseError(f"internal error: {nv.shape} norms for {n_rows} rows")
        path = staged / NORMS
        atomic_write(path, lambda f: np.save(f, nv, allow_pickle=False))
        records[NORMS] = _npy_file_record(path)

    # meta.jsonl, with its row-offset and image-key indexes
    path = staged / META
    ends: array[int] = array("Q")
    keys: array[int] = array("Q")
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        for image, line in meta_lines:
            w.write(line.encode("utf-8") + b"\n")
            ends.append(w.size)
            keys.append(_image_key(image))
        f.flush()
        os.fsync(f.fileno())
    lines = len(ends)
    if lines != n_rows:
        raise DatabaseError(f"internal error: wrote {lines} metadata lines for {n_rows} rows")
    records[META] = _file_record(path, w.h.hexdigest(), [[0, w.size, w.h.hexdigest()]])
    offsets = np.concatenate([np.zeros(1, np.uint64), np.frombuffer(ends, dtype=np.uint64)])
    key_arr = np.frombuffer(keys, dtype=np.uint64) if lines else np.zeros(0, np.uint64)
    for name, arr in ((META_OFFSETS, offsets), (META_KEYS, key_arr)):
        _save_npy(staged / name, arr)
        records[name] = _npy_file_record(staged / name)

    # failed.csv
    path = staged / FAILED
    atomic_write_text(path, _csv_text(failures, header=True))
    records[FAILED] = _file_record(path, segments=[])
    records[FAILED]["segments"] = [[0, records[FAILED]["bytes"], records[FAILED]["sha256"]]]

    # index.faiss (non-flat)
    index_info: dict[str, Any] = {"factory": factory, "metric": "inner_product"}
    if not _is_flat(factory):
        path = staged / INDEX
        params, trained_on = write_index(path, staged / EMBEDDINGS, factory, dim, n_rows, train_size, base, on_event)
        records[INDEX] = _file_record(path)
        index_info.update(search_params=params, trained_on=trained_on)

    now = _now()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geofast_version": __version__,
        "created": manifest_extra.get("created") or now,
        "updated": now,
        "count": int(n_rows),
        "dim": int(dim),
        "dtype": dtype,
        "index": index_info,
        **{k: v for k, v in manifest_extra.items() if k != "created"},
        "files": records,
    }
    _fsync_dir(staged)
    atomic_write_text(staged / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _fsync_dir(staged)


def install(root: Path, staged: Path) -> None:
    """Swap the staged database into place: ``DIR → DIR.old``, ``staged → DIR``, clean up."""
    old = _sibling(root, ".old")
    if old.exists():
        shutil.rmtree(old)
    if root.exists():
        os.replace(root, old)
    os.replace(staged, root)
    _fsync_dir(root.parent)
    shutil.rmtree(old, ignore_errors=True)
