"""Training data: cached CLIP embeddings and coordinates from image databases.

GeoCLIP's CLIP backbone is frozen, so ``geofast db build`` output is the training set: a batch
is rows of the memory-mapped ``embeddings.npy`` times their stored feature norms (the raw
projected CLIP features GeoCLIP's image MLP takes; a database stored unnormalised, without
norms, is used as stored) and their coordinates.

* **Split.** A validation database, or a fixed random share of the training database (seeded).
  At most ``val_max_rows`` validation rows are scored per epoch (a fixed random subset).
* **Region.** Both sides can be restricted to a latitude/longitude box.
* **Order.** Epoch ``e`` visits the training rows in the permutation drawn from
  ``(seed, e)``: a resumed run, and a run on any number of devices, sees the same global
  batches. Each global batch is split into contiguous per-rank slices (sizes differ by ≤ 1).
* **Gallery.** The candidate locations of the trained model: the distinct training coordinates,
  a fixed random subset of ``gallery_size`` of them when there are more.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofast.db import PROBE_MIN_COSINE, Database
from geofast.db.encode import probe_cosine
from geofast.errors import DatabaseError, EmptyInputError, InputError, ParameterError
from geofast.gallery import region_mask
from geofast.train.config import TrainConfig

#: GeoCLIP's image MLP takes the 768-d projected features of CLIP ViT-L/14.
FEATURE_DIM = 768
_BLOCK = 65536


@dataclass
class Rows:
    """A set of database rows (sorted) with their coordinates."""

    db: Database
    rows: np.ndarray  # (n,) int64, ascending
    latlon: np.ndarray  # (n, 2) float64

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def features(self, index: np.ndarray) -> np.ndarray:
        """Raw CLIP features ``(len(index), 768)`` float32 of positions ``index`` into :attr:`rows`."""
        rows = self.rows[index]
        emb = np.asarray(self.db.embeddings[rows], dtype=np.float32)
        if self.db.norms is not None:
            emb *= np.asarray(self.db.norms[rows], dtype=np.float32)[:, None]
        return emb


@dataclass
class TrainingData:
    train: Rows
    val: Rows | None
    gallery: np.ndarray  # (M, 2) float64

    def describe(self) -> dict[str, Any]:
        return {
            "train_db": str(self.train.db.path),
            "train_rows": len(self.train),
            "val_db": str(self.val.db.path) if self.val is not None else None,
            "val_rows": len(self.val) if self.val is not None else 0,
            "gallery_points": int(self.gallery.shape[0]),
            "train_manifest_sha256": manifest_digest(self.train.db),
            "val_manifest_sha256": manifest_digest(self.val.db) if self.val is not None else None,
        }


def manifest_digest(db: Database) -> str:
    """sha256 of a database's manifest (it records every file's checksum: the data's identity)."""
    return hashlib.sha256((Path(db.path) / "manifest.json").read_bytes()).hexdigest()


def open_database(path: str | os.PathLike[str]) -> Database:
    db = Database.open(path)
    if db.dim != FEATURE_DIM:
        raise DatabaseError(
            f"database {db.path} holds {db.dim}-d embeddings; GeoCLIP's image head takes {FEATURE_DIM}-d CLIP ViT-L/14 features",
            hint="build the database with the ViT-L/14 backbone (openai/clip-vit-large-patch14)",
        )
    if len(db) == 0:
        raise EmptyInputError(f"database {db.path} is empty")
    return db


def check_finite(db: Database) -> None:
    """Every embedding and norm finite (one streaming pass), norms > 0."""
    for start in range(0, len(db), _BLOCK):
        blk = np.asarray(db.embeddings[start : start + _BLOCK])
        ok = np.isfinite(blk).all(axis=1)
        if db.norms is not None:
            n = np.asarray(db.norms[start : start + _BLOCK])
            ok &= np.isfinite(n) & (n > 0)
        if not ok.all():
            row = start + int(np.argmin(ok))
            raise DatabaseError(
                f"database {db.path}: the embedding of row {row} is NaN, infinite or zero",
                hint="rebuild the database from its photos (geofast db build)",
            )


def _rows(db: Database, region: tuple[float, float, float, float] | None) -> np.ndarray:
    latlon = np.asarray(db.latlon)
    if region is None:
        return np.arange(latlon.shape[0], dtype=np.int64)
    return np.flatnonzero(region_mask(latlon, region)).astype(np.int64)


def _take(db: Database, rows: np.ndarray) -> Rows:
    rows = np.sort(rows)
    return Rows(db, rows, np.ascontiguousarray(np.asarray(db.latlon)[rows], dtype=np.float64))


def load_data(config: TrainConfig) -> TrainingData:
    """Open, check and split the databases of ``config``."""
    db = open_database(config.db)
    check_finite(db)
    rows = _rows(db, config.region)
    where = f" inside the region {list(config.region)}" if config.region is not None else ""
    if rows.shape[0] == 0:
        raise EmptyInputError(f"database {db.path} has no rows{where}", hint="widen the region or use another database")
    rng = np.random.default_rng([config.seed, 0x5A11D])
    val: Rows | None = None
    fraction = config.effective_val_fraction
    if config.val is not None:
        vdb = open_database(config.val)
        check_finite(vdb)
        _check_same_backbone(db, vdb)
        vrows = _rows(vdb, config.region)
        if vrows.shape[0] == 0:
            raise EmptyInputError(f"validation database {vdb.path} has no rows{where}")
        if vrows.shape[0] > config.val_max_rows:
            vrows = rng.choice(vrows, config.val_max_rows, replace=False)
        val = _take(vdb, vrows)
        train_rows = rows
    elif fraction > 0:
        n_val = max(1, int(round(fraction * rows.shape[0])))
        if rows.shape[0] - n_val < 2:
            raise EmptyInputError(
                f"database {db.path} has {rows.shape[0]} row(s){where}: too few to hold out {fraction:g} for validation "
                "and train on the rest",
                hint="use a larger database, a separate validation database, or no validation (fraction 0)",
            )
        perm = rng.permutation(rows)
        vrows, train_rows = perm[:n_val], perm[n_val:]
        if vrows.shape[0] > config.val_max_rows:
            vrows = vrows[: config.val_max_rows]
        val = _take(db, vrows)
    else:
        train_rows = rows
    if train_rows.shape[0] < 2:
        raise EmptyInputError(
            f"database {db.path} has {train_rows.shape[0]} training row(s){where}; training needs at least 2",
            hint="add photos to the database (geofast db add)",
        )
    train = _take(db, train_rows)
    if config.batch_size > len(train):
        raise ParameterError(
            f"batch size {config.batch_size} is larger than the {len(train):,} training rows",
            hint=f"use a batch size of at most {len(train):,}",
        )
    return TrainingData(train=train, val=val, gallery=training_gallery(train.latlon, config.gallery_size, config.seed))


def _check_same_backbone(a: Database, b: Database) -> None:
    pa = (a.manifest.get("backbone") or {}).get("probe")
    pb = (b.manifest.get("backbone") or {}).get("probe")
    if pa is None or pb is None:
        return
    if probe_cosine(pa, np.asarray(pb)) < PROBE_MIN_COSINE:
        raise InputError(
            f"the validation database {b.path} was encoded with another backbone than {a.path}",
            hint="encode both databases with the same CLIP backbone",
        )


def training_gallery(latlon: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The distinct coordinates of ``latlon`` (first occurrence order), at most ``size`` of them
    (a fixed random subset, kept in that order)."""
    ll = np.ascontiguousarray(latlon, dtype=np.float64)
    _, first = np.unique(ll, axis=0, return_index=True)
    first.sort()
    if first.shape[0] > size:
        pick = np.random.default_rng([seed, 0x6A11]).choice(first.shape[0], size, replace=False)
        first = first[np.sort(pick)]
    return ll[first]


# -- batch order ---------------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training rows (positions into ``Rows``)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def global_batch(order: np.ndarray, b: int, batch_size: int) -> np.ndarray:
    """Positions of global batch ``b`` (sorted: neighbouring rows are read together)."""
    return np.sort(order[b * batch_size : (b + 1) * batch_size])


def rank_slice(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous part ``[start, stop)`` of an ``n``-row global batch that ``rank`` trains on."""
    return (n * rank) // world, (n * (rank + 1)) // world


__all__ = [
    "FEATURE_DIM",
    "Rows",
    "TrainingData",
    "batches_per_epoch",
    "epoch_order",
    "global_batch",
    "load_data",
    "rank_slice",
    "training_gallery",
]
