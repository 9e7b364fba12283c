"""FAISS indexes of non-flat databases: factory strings, default search parameters, training."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from geofast.db.format import INDEX, BaseDatabase, Event
from geofast.errors import DatabaseError, ParameterError

#: Rows used to train a non-flat FAISS index (random sample, seed 0).
DEFAULT_TRAIN_SIZE = 262_144

# ----------------------------------------------------------------------------------------------
# FAISS indexes (non-flat)
# ----------------------------------------------------------------------------------------------


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise DatabaseError("FAISS is not installed; non-flat indexes need it", hint="pip install faiss-cpu") from e
    return faiss


def _new_faiss_index(factory: str, dim: int) -> Any:
    faiss = _faiss()
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ParameterError(
            f"--index {factory!r} is not a FAISS index factory string ({first})",
            hint="use Flat (exact, default), IVF4096,SQ8, IVF1024,Flat or HNSW32",
        ) from e


#: FAISS's guidance: k-means wants at least 39 training points per centroid (it warns below).
POINTS_PER_LIST = 39


def _min_train_rows(index: Any) -> tuple[int, str]:
    """The fewest training rows FAISS accepts for ``index`` (k-means needs at least one point per
    centroid: an IVF list, or each of a product quantizer's ``2^bits`` codes), and why."""
    faiss = _faiss()
    need, why = 1, ""
    try:
        ivf = faiss.extract_index_ivf(index)
    except Exception:
        ivf = None
    if ivf is not None and int(ivf.nlist) > need:
        need, why = int(ivf.nlist), f"one per IVF list: {int(ivf.nlist):,} lists"
    for part in (ivf, index):
        pq = getattr(faiss.downcast_index(part), "pq", None) if part is not None else None
        if pq is not None and int(pq.ksub) > need:
            need, why = int(pq.ksub), f"one per product-quantizer code: {int(pq.ksub):,} codes"
    return need, why


def check_index_rows(factory: str, dim: int, rows: int, *, counted: str = "", train_size: int | None = None) -> None:
    """Refuse (``ParameterError`` naming ``--index``) a factory that cannot be trained on ``rows``
    embeddings (sampled down to ``train_size``), before anything is written; ``counted`` says
    where ``rows`` comes from."""
    need, why = _min_train_rows(_new_faiss_index(factory, dim))
    if train_size is not None and rows >= need > train_size:
        raise ParameterError(
            f"--index {factory} needs at least {need:,} training rows ({why}); the training sample is {train_size:,}",
            hint=f"use fewer IVF lists (at most {train_size // POINTS_PER_LIST:,}) or a larger train_size",
        )
    if rows >= need:
        return
    fit = rows // POINTS_PER_LIST
    smaller = re.sub(r"IVF\d+", f"IVF{fit}", factory) if fit >= 1 and why.startswith("one per IVF") else None
    raise ParameterError(
        f"--index {factory} needs at least {need:,} photos to train ({why}); the database would hold {rows:,}{counted}",
        hint="use --index Flat (exact search, the default)"
        + (f", or at most one IVF list per {POINTS_PER_LIST} photos: --index {smaller}" if smaller else ""),
    )


def _default_search_params(factory: str, index: Any) -> str:
    faiss = _faiss()
    parts = []
    try:
        ivf = faiss.extract_index_ivf(index)
    except Exception:
        ivf = None
    if ivf is not None:
        nlist = int(ivf.nlist)
        parts.append(f"nprobe={min(nlist, max(16, nlist // 32))}")
    if "hnsw" in factory.lower():
        parts.append("efSearch=128")
    return ",".join(parts)


def _apply_search_params(index: Any, params: str) -> None:
    faiss = _faiss()
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except Exception as e:
        raise ParameterError(
            f"invalid FAISS search parameters {params!r}: {str(e).strip().splitlines()[-1]}",
            hint="e.g. nprobe=64 for IVF indexes, efSearch=128 for HNSW",
        ) from e


def _train_and_fill(index: Any, embeddings: np.ndarray, train_size: int, on_event: Event | None, start: int = 0) -> Any:
    n = embeddings.shape[0]
    if not index.is_trained:
        m = min(n, max(1, train_size))
        if on_event:
            on_event(f"training the index on {m:,} of {n:,} embeddings")
        rows = np.sort(np.random.default_rng(0).choice(n, size=m, replace=False)) if m < n else np.arange(n)
        sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
        try:
            index.train(sample)
        except Exception as e:
            raise DatabaseError(
                f"cannot train the FAISS index on {m:,} embeddings: {str(e).strip().splitlines()[-1]}",
                hint=f"use --index Flat, or at most one IVF list per {POINTS_PER_LIST} photos (IVF{max(1, m // POINTS_PER_LIST)},...)",
            ) from e
    if on_event and n - start > 0:
        on_event(f"adding {n - start:,} embeddings to the index")
    for s in range(start, n, 65536):
        index.add(np.ascontiguousarray(embeddings[s : s + 65536], dtype=np.float32))
    return index


def write_index(
    path: Path,
    embeddings: Path,
    factory: str,
    dim: int,
    n_rows: int,
    train_size: int,
    base: BaseDatabase | None,
    on_event: Event | None,
) -> tuple[str, int | None]:
    """Write the FAISS index of the stored ``embeddings`` (a ``.npy`` file) to ``path`` (fsynced):
    ``base``'s trained index with the new rows added when it has the same factory, else a new one
    trained on a sample. Returns (default search parameters, rows it was trained on)."""
    faiss = _faiss()
    emb = np.load(embeddings, mmap_mode="r", allow_pickle=False)
    if base is not None and not base.is_flat and base.index_factory == factory:
        index = faiss.read_index(str(base.path / INDEX))  # trained: only add the new rows
        _train_and_fill(index, emb, train_size, on_event, start=index.ntotal)
        params = base.manifest["index"].get("search_params", "")
        trained_on = base.manifest["index"].get("trained_on")
    else:
        index = _new_faiss_index(factory, dim)
        _train_and_fill(index, emb, train_size, on_event)
        params = _default_search_params(factory, index)
        trained_on = min(n_rows, train_size)
    del emb
    faiss.write_index(index, str(path))
    with open(path, "rb") as fi:
        os.fsync(fi.fileno())
    return params, trained_on
