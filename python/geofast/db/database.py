"""``Database``: open, check, search and read an image database (see :mod:`geofast.db`)."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from geofast.db import format as _format
from geofast.db.append import _recover_append
from geofast.db.builder import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DTYPE,
    DEFAULT_INDEX,
    BuildReport,
    Executor,
    _Builder,
    _check_build_args,
    _recover_append_locked,
)
from geofast.db.encode import PRECISION_MIN_COSINE, PROBE_MIN_COSINE, normalize_rows, probe_cosine, probe_embedding
from geofast.db.format import (
    _DTYPES,
    COORDS,
    EMBEDDINGS,
    FAILED,
    INDEX,
    JOURNAL,
    META,
    META_KEYS,
    META_OFFSETS,
    NORMS,
    STATE,
    Event,
    Progress,
    _check_checksums,
    _is_flat,
    _now,
    _read_manifest,
    _read_npy_header,
    _rebuild_hint,
    _sibling,
    image_keys,
    npy_layout,
)
from geofast.db.index import DEFAULT_TRAIN_SIZE, _apply_search_params, _faiss, check_index_rows
from geofast.db.sources import PlanProgress, SourcePlan, plan_source
from geofast.db.writer import _recover_swap, check_replaceable
from geofast.errors import DatabaseError, InputError, ParameterError, ShapeError

if TYPE_CHECKING:
    from geofast.models.clip import Backbone

#: Shortlist factor for non-flat indexes: ``rerank · k`` candidates re-scored exactly.
DEFAULT_RERANK = 4
#: Great-circle radius of :meth:`Database.within` (the haversine kernel's default).
EARTH_RADIUS_KM = 6371.0088
#: Cell size of the spatial grid behind :meth:`Database.within` (degrees of latitude and longitude).
GRID_DEG = 0.25
_GRID_ROWS = int(round(180 / GRID_DEG))
_GRID_COLS = int(round(360 / GRID_DEG))
#: Rows gathered per block by :meth:`Database.search_rows` (65,536 × 768 f16 = 96 MiB).
_GATHER_ROWS = 65_536


def _grid_cell(deg: np.ndarray, cells: int, half: float) -> np.ndarray:
    return np.clip(np.floor((np.asarray(deg, dtype=np.float64) + half) / GRID_DEG), 0, cells - 1).astype(np.int64)


def _grid_keys(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return _grid_cell(lat, _GRID_ROWS, 90.0) * _GRID_COLS + _grid_cell(lon, _GRID_COLS, 180.0)


# ----------------------------------------------------------------------------------------------
# The database
# ----------------------------------------------------------------------------------------------


class Neighbours(NamedTuple):
    """Search results: ``sims (B, k) float32`` (descending), ``latlon (B, k, 2) float64`` degrees,
    ``ids (B, k) int64`` row ids (for :meth:`Database.meta`)."""

    sims: np.ndarray
    latlon: np.ndarray
    ids: np.ndarray


class Database:
    """An opened image database (see the module docstring for the layout and guarantees).

    >>> db = Database.open("photos.db")                      # doctest: +SKIP
    >>> sims, latlon, ids = db.search(query_embeddings, k=10)  # doctest: +SKIP
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], embeddings: np.ndarray, latlon: np.ndarray, norms: np.ndarray | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.embeddings = embeddings  # read-only memmap (N, D) float16/float32
        self.latlon = latlon  # (N, 2) float64
        #: (N,) float32 norms of the raw CLIP features (None: rows stored as given, unnormalised)
        self.norms = norms
        self._gallery: Any = None
        self._faiss_index: Any = None
        self._meta_offsets: np.ndarray | None = None
        self._search_params: str | None = None
        self._grid_index: tuple[np.ndarray, np.ndarray] | None = None

    # -- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return (
            f"Database({str(self.path)!r}, rows={len(self)}, dim={self.dim}, dtype={self.dtype!r}, index={self.index_factory!r})"
        )

    @property
    def count(self) -> int:
        return len(self)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def index_factory(self) -> str:
        return str(self.manifest["index"]["factory"])

    @property
    def is_flat(self) -> bool:
        return _is_flat(self.index_factory)

    @property
    def backbone_source(self) -> str | None:
        src = (self.manifest.get("backbone") or {}).get("source")
        return None if src is None else str(src)

    # -- open and verify ----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        backbone: Backbone | None = None,
        verify: bool | None = None,
    ) -> Database:
        """Open a database, checking it (see "Checks on open"); ``verify=None`` checksums fully
        when the data is at most :data:`FULL_VERIFY_BYTES`, ``True`` always, ``False`` never
        (sizes, headers and counts are always checked). With ``backbone``, also check that it is
        the backbone the database was built with."""
        root = Path(path).expanduser()
        if (root / JOURNAL).is_file():
            _recover_append_locked(root)
        manifest = _read_manifest(root)
        hint = _rebuild_hint(root, manifest)
        files = manifest["files"]
        for name in files:
            fp = root / name
            if not fp.is_file():
                raise DatabaseError(f"database {root}: {name} is missing", hint=hint)
            size = fp.stat().st_size
            want = int(files[name]["bytes"])
            if size != want:
                what = "truncated" if size < want else "longer than recorded"
                raise DatabaseError(f"database {root}: {name} is {what} ({size:,} bytes, manifest says {want:,})", hint=hint)
        count, dim = int(manifest["count"]), int(manifest["dim"])
        for name, (shape, dt) in npy_layout(manifest).items():
            try:
                got_shape, got_dtype, fortran, offset = _read_npy_header(root / name)
            except (OSError, ValueError) as e:
                raise DatabaseError(f"database {root}: {name} is not a valid .npy file ({e})", hint=hint) from e
            if got_shape != shape or got_dtype != dt or fortran:
                raise DatabaseError(
                    f"database {root}: {name} holds {got_dtype} {got_shape} but the manifest says "
                    f"{dt} {shape} (count {count:,}, dim {dim})",
                    hint=hint,
                )
            expected = offset + int(np.prod(shape)) * dt.itemsize
            size = (root / name).stat().st_size
            if size != expected:
                raise DatabaseError(
                    f"database {root}: {name} is {'truncated' if size < expected else 'too long'} "
                    f"({size:,} bytes, a {shape} {dt} array needs {expected:,})",
                    hint=hint,
                )
        total = sum(int(f["bytes"]) for f in files.values())
        full = verify if verify is not None else total <= _format.FULL_VERIFY_BYTES
        _check_checksums(root, files, full=bool(full), hint=hint, manifest=manifest)
        emb = np.load(root / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        latlon = np.load(root / COORDS, mmap_mode="r", allow_pickle=False)
        lat_ok = np.isfinite(latlon).all(axis=1) & (np.abs(latlon[:, 0]) <= 90) & (np.abs(latlon[:, 1]) <= 180)
        if not lat_ok.all():
            row = int(np.argmin(lat_ok))
            raise DatabaseError(f"database {root}: coordinates of row {row} are invalid ({latlon[row].tolist()})", hint=hint)
        norms = np.load(root / NORMS, mmap_mode="r", allow_pickle=False) if NORMS in files else None
        db = cls(root, manifest, emb, latlon, norms)
        if full:
            db._check_meta_lines(hint)
        if backbone is not None:
            db.check_backbone(backbone)
        return db

    def release(self) -> None:
        """Drop the search structures over the files (the next search makes them again): before
        the files are replaced or grown by an ``add``."""
        self._gallery = None
        self._faiss_index = None

    def verify(self) -> None:
        """Full check: every file's sha256 and the metadata line count."""
        hint = _rebuild_hint(self.path, self.manifest)
        _check_checksums(self.path, self.manifest["files"], full=True, hint=hint, manifest=self.manifest)
        self._check_meta_lines(hint)

    def _check_meta_lines(self, hint: str) -> None:
        """Count the lines of meta.jsonl (reads it) and compare with the manifest and the stored offsets."""
        scanned = self._scan_offsets()
        if scanned.shape[0] != len(self):
            raise DatabaseError(
                f"database {self.path}: {META} has {scanned.shape[0]:,} lines but the manifest says {len(self):,} rows",
                hint=hint,
            )
        stored = self._stored_offsets()
        if stored is not None and not np.array_equal(stored[:-1], scanned.astype(np.uint64)):
            raise DatabaseError(f"database {self.path}: {META_OFFSETS} does not match the lines of {META}", hint=hint)

    @property
    def precision(self) -> str | None:
        """The encoder precision the embeddings were made with (fp32, int8, bf16, fp16), or None
        when the database does not record it (built before geofast recorded it, or from
        precomputed embeddings)."""
        value = (self.manifest.get("backbone") or {}).get("precision")
        return str(value) if value else None

    def check_backbone(self, backbone: Backbone, *, probe: np.ndarray | None = None, adding: bool = False) -> None:
        """Raise :class:`DatabaseError` unless ``backbone`` is the one the database was built with.
        With ``adding`` (new rows are about to be written), a backbone running at another precision
        than the database's embeddings is refused unless its probe embedding agrees within
        ``PRECISION_MIN_COSINE``."""
        info = self.manifest.get("backbone") or {}
        stored = info.get("probe")
        if stored is None:
            return  # created from precomputed embeddings: nothing to compare against
        if probe is None:
            probe = probe_embedding(backbone)
        if probe.shape[0] != self.dim:
            raise DatabaseError(
                f"the backbone {backbone.source} gives {probe.shape[0]}-d embeddings; database {self.path} holds {self.dim}-d ones",
                hint=f"use --clip {info.get('source')} (the backbone this database was built with), or rebuild it",
            )
        cos = probe_cosine(stored, probe)
        if cos < PROBE_MIN_COSINE:
            raise DatabaseError(
                f"wrong backbone: database {self.path} was built with {info.get('source')}, whose embeddings "
                f"differ from those of {backbone.source} (probe cosine {cos:.3f} < {PROBE_MIN_COSINE})",
                hint=f"pass --clip {info.get('source')}, or rebuild with --clip {backbone.source}: "
                f"geofast db build SOURCE --out {self.path} --clip {backbone.source}",
            )
        mine = str(getattr(backbone, "precision", "fp32"))
        theirs = self.precision
        if adding and mine != theirs and cos < PRECISION_MIN_COSINE:
            recorded = theirs or "an unrecorded precision"
            raise DatabaseError(
                f"database {self.path} holds embeddings made at {recorded}; this encoder runs at {mine} and its probe "
                f"embedding differs (cosine {cos:.5f} < {PRECISION_MIN_COSINE}): mixing them would rank rows by precision",
                hint=f"add with precision {theirs}" if theirs else "rebuild the database at one precision",
                params=("precision",),
            )

    # -- search ----------------------------------------------------------------------------------
    def _queries(self, embeddings: np.ndarray, normalize: bool) -> np.ndarray:
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ShapeError(f"query embeddings must have shape (B, {self.dim}) or ({self.dim},), got {np.shape(embeddings)}")
        if normalize:
            return normalize_rows(q, "query embeddings")
        if not np.isfinite(q).all():
            raise InputError("query embeddings contain NaN or inf")
        return np.ascontiguousarray(q)

    def gallery(self) -> Any:
        """The ``gf.Gallery`` scanning the memory-mapped embeddings (created on first use, zero-copy)."""
        if self._gallery is None:
            from geofast._geofast import Gallery

            self._gallery = Gallery(self.embeddings, dtype="f16" if self.dtype == "f16" else "f32")
        return self._gallery

    def faiss_index(self) -> Any:
        """The FAISS index: the stored one for non-flat databases; for flat ones an
        ``IndexFlatIP`` over a float32 copy of the embeddings (for interoperability; geofast's own
        flat search does not need it)."""
        if self._faiss_index is None:
            faiss = _faiss()
            if self.is_flat:
                index = faiss.IndexFlatIP(self.dim)
                for s in range(0, len(self), 65536):
                    index.add(np.ascontiguousarray(self.embeddings[s : s + 65536], dtype=np.float32))
            else:
                try:
                    index = faiss.read_index(str(self.path / INDEX))
                except Exception as e:
                    raise DatabaseError(
                        f"cannot read {self.path / INDEX}: {e}", hint=_rebuild_hint(self.path, self.manifest)
                    ) from e
                params = self._search_params if self._search_params is not None else self.manifest["index"].get("search_params")
                if params:
                    _apply_search_params(index, params)
            self._faiss_index = index
        return self._faiss_index

    def set_search_params(self, params: str) -> None:
        """FAISS search parameters for a non-flat index, e.g. ``"nprobe=128"`` (IVF) or
        ``"efSearch=256"`` (HNSW); the default is recorded in the manifest at build time."""
        if self.is_flat:
            raise ParameterError("search parameters apply to FAISS indexes; this database is flat (exact)")
        if self._faiss_index is not None:
            _apply_search_params(self._faiss_index, params)
        self._search_params = params

    def search(
        self,
        embeddings: np.ndarray,
        k: int = 10,
        *,
        normalize: bool = True,
        rerank: int = DEFAULT_RERANK,
    ) -> Neighbours:
        """The ``k`` rows most similar (inner product) to each query embedding ``(B, D)`` or ``(D,)``.

        Queries are L2-normalised first (``normalize=False`` uses them as given). Returns
        :class:`Neighbours` ``(sims, latlon, ids)`` sorted by descending similarity, ties by
        lower row id. Flat databases are exact (``gf.Gallery`` over the memory map); other
        indexes re-score a shortlist of ``rerank · k`` FAISS candidates exactly, falling back
        to the exact scan for a query whose shortlist holds fewer than ``k`` rows.
        """
        n = len(self)
        if not isinstance(k, (int, np.integer)) or k < 1 or k > n:
            raise ParameterError(f"k must be between 1 and the database's {n:,} rows, got {k}")
        q = self._queries(embeddings, normalize)
        if self.is_flat:
            sims, ids = self.gallery().search(q, int(k))
        else:
            sims, ids = self._search_index(q, int(k), max(1, int(rerank)))
        ids = np.asarray(ids, dtype=np.int64)
        return Neighbours(np.asarray(sims, dtype=np.float32), np.asarray(self.latlon[ids.ravel()]).reshape(ids.shape + (2,)), ids)

    def _search_index(self, q: np.ndarray, k: int, rerank: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.faiss_index()
        n = len(self)
        short = min(n, k * rerank)
        _, cand = index.search(q, short)
        sims = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for b in range(q.shape[0]):
            c = np.unique(cand[b][cand[b] >= 0])  # sorted ascending: ties resolve to the lower id
            if c.shape[0] < k:
                s, i = self.gallery().search(q[b : b + 1], k)
                sims[b], ids[b] = s[0], i[0]
                continue
            exact = np.asarray(self.embeddings[c], dtype=np.float32) @ q[b]
            order = np.argsort(-exact, kind="stable")[:k]
            sims[b], ids[b] = exact[order], c[order]
        return sims, ids

    def within(self, center_latlon: Sequence[float] | np.ndarray, radius_km: float) -> np.ndarray:
        """Row ids (ascending) of the photos within ``radius_km`` (great circle, R = 6371.0088 km)
        of ``center_latlon`` = (lat, lon) degrees.

        Uses the database's spatial grid (rows sorted by a ``GRID_DEG`` latitude/longitude cell,
        built once per opened database in O(N log N)): only the rows of the cells that can touch
        the circle are measured, with the same haversine kernel as a full scan."""
        from geofast._geofast import haversine

        if not (radius_km > 0 and math.isfinite(radius_km)):
            raise ParameterError(f"radius_km must be > 0, got {radius_km}")
        center = np.asarray(center_latlon, dtype=np.float64).reshape(1, 2)
        cand = self._grid_candidates(float(center[0, 0]), float(center[0, 1]), float(radius_km))
        if cand.shape[0] == 0:
            return cand
        dist = haversine(np.asarray(self.latlon[cand]), center)
        return cand[dist <= radius_km]

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(row ids sorted by grid cell, their sorted cell keys), built on first use."""
        if self._grid_index is None:
            ll = np.asarray(self.latlon)
            keys = _grid_keys(ll[:, 0], ll[:, 1])
            order = np.argsort(keys, kind="stable")
            self._grid_index = (order.astype(np.int64), keys[order])
        return self._grid_index

    def _grid_candidates(self, lat: float, lon: float, radius_km: float) -> np.ndarray:
        """Sorted row ids of every grid cell that may hold a point within ``radius_km``."""
        order, keys = self._grid()
        r_rad = radius_km / EARTH_RADIUS_KM * (1.0 + 1e-9) + 1e-12
        dlat = math.degrees(r_rad)
        lat_lo, lat_hi = max(-90.0, lat - dlat), min(90.0, lat + dlat)
        if lat_hi >= 90.0 or lat_lo <= -90.0 or r_rad >= math.pi / 2:
            lon_ranges = [(-180.0, 180.0)]  # the cap holds a pole: every longitude
        else:
            dlon = math.degrees(math.asin(min(1.0, math.sin(r_rad) / math.cos(math.radians(lat)))))
            lo, hi = lon - dlon, lon + dlon
            if hi - lo >= 360.0:
                lon_ranges = [(-180.0, 180.0)]
            elif lo < -180.0:
                lon_ranges = [(-180.0, hi), (lo + 360.0, 180.0)]
            elif hi > 180.0:
                lon_ranges = [(lo, 180.0), (-180.0, hi - 360.0)]
            else:
                lon_ranges = [(lo, hi)]
        b_lo, b_hi = (int(v) for v in _grid_cell(np.array([lat_lo, lat_hi]), _GRID_ROWS, 90.0))
        starts, stops = [], []
        for lo, hi in lon_ranges:
            c_lo, c_hi = (int(v) for v in _grid_cell(np.array([lo, hi]), _GRID_COLS, 180.0))
            band = np.arange(b_lo, b_hi + 1, dtype=np.int64) * _GRID_COLS
            starts.append(np.searchsorted(keys, band + c_lo, side="left"))
            stops.append(np.searchsorted(keys, band + c_hi, side="right"))
        st, sp = np.concatenate(starts), np.concatenate(stops)
        parts = [order[a:b] for a, b in zip(st.tolist(), sp.tolist()) if b > a]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        # Each row lies in exactly one grid cell and the cell ranges are disjoint: sorting is
        # enough (np.unique's hash pass cost ~4× a sort at 100K rows); a duplicate is dropped
        # all the same should two ranges ever meet.
        rows = np.sort(np.concatenate(parts))
        if rows.shape[0] > 1 and not bool(np.all(rows[1:] != rows[:-1])):
            rows = rows[np.concatenate([[True], rows[1:] != rows[:-1]])]
        return rows

    def search_rows(self, embedding: np.ndarray, rows: np.ndarray, k: int, *, normalize: bool = True) -> Neighbours:
        """Exact search of one query ``(D,)`` among the given row ids only (Search-within-Cell);
        returns up to ``k`` neighbours as a batch of one (``(1, min(k, len(rows)))``), sorted by
        descending similarity, ties by lower row id. The rows are scored in place in the
        memory-mapped embeddings by the Rust top-k kernel (``gf.Gallery.search_rows``: each
        cache-sized tile of rows is gathered and scanned), so nothing the size of the cell is
        copied and memory stays bounded whatever the count."""
        q = self._queries(embedding, normalize)
        if q.shape[0] != 1:
            raise ShapeError(f"search_rows takes one query, got {q.shape[0]}")
        if k < 1:
            raise ParameterError(f"k must be >= 1, got {k}")
        ids = np.asarray(rows, dtype=np.int64).ravel()
        if ids.shape[0] > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)
        if ids.shape[0] and (ids[0] < 0 or ids[-1] >= len(self)):
            raise ParameterError(f"row ids must be within the database's {len(self):,} rows")
        kk = min(int(k), ids.shape[0])
        if kk == 0:
            return Neighbours(np.zeros((1, 0), np.float32), np.zeros((1, 0, 2)), np.zeros((1, 0), np.int64))
        sims, top = self.gallery().search_rows(q, ids, kk)
        top = np.asarray(top, dtype=np.int64)
        return Neighbours(np.asarray(sims, dtype=np.float32), np.asarray(self.latlon[top[0]]).reshape(1, -1, 2), top)

    def farthest(self, embeddings: np.ndarray, k: int = 16, *, normalize: bool = True) -> Neighbours:
        """The ``k`` rows *least* similar to each query (nearest to the negated query, as Img2Loc
        picks its negative references). ``sims`` are similarities to the original query,
        ascending (most dissimilar first)."""
        q = self._queries(embeddings, normalize)
        res = self.search(-q, k, normalize=False)
        return Neighbours(-res.sims, res.latlon, res.ids)

    # -- metadata and info -----------------------------------------------------------------------
    def _scan_offsets(self) -> np.ndarray:
        """Start offsets of the lines of meta.jsonl, by reading it (databases without an offset index)."""
        path = self.path / META
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.int64)
        data = np.fromfile(path, dtype=np.uint8)
        ends = np.flatnonzero(data == 10)
        if ends.shape[0] == 0 or ends[-1] != data.shape[0] - 1:
            ends = np.append(ends, data.shape[0])
        return np.concatenate([[0], ends + 1]).astype(np.int64)[:-1]

    def _stored_offsets(self) -> np.ndarray | None:
        """The memory-mapped row-offset index ``(N + 1,)`` uint64, or None for older databases."""
        if META_OFFSETS not in self.manifest["files"]:
            return None
        return np.load(self.path / META_OFFSETS, mmap_mode="r", allow_pickle=False)

    def _offsets(self) -> np.ndarray:
        """Line start offsets ``(N,)``: the stored index (memory-mapped) when present."""
        if self._meta_offsets is None:
            stored = self._stored_offsets()
            self._meta_offsets = stored[:-1] if stored is not None else self._scan_offsets()
        return self._meta_offsets

    def meta(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        """The metadata objects (``{"image": path, ...extra columns}``) of the given row ids
        (reads only those lines, located by the row-offset index)."""
        offsets = self._offsets()
        out = []
        with open(self.path / META, "rb") as f:
            for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel():
                if not 0 <= i < offsets.shape[0]:
                    raise ParameterError(f"row id {int(i)} is outside the database's {len(self):,} rows")
                f.seek(int(offsets[i]))
                out.append(json.loads(f.readline()))
        return out

    def missing_images(self, images: Sequence[str]) -> np.ndarray:
        """Indices (ascending) of the ``images`` paths that are not in the database yet. With the
        key index (meta.keys.npy) only the rows whose 64-bit key matches are read to confirm."""
        if META_KEYS not in self.manifest["files"]:
            known = set(self.images())
            return np.asarray([i for i, x in enumerate(images) if x not in known], dtype=np.int64)
        keys = np.load(self.path / META_KEYS, mmap_mode="r", allow_pickle=False)
        new_keys = image_keys(images)
        if new_keys.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        probe = np.unique(new_keys)  # sorted; one pass over the stored keys: O(N log k), not a sort of N
        rows_hit: list[np.ndarray] = []
        for s0 in range(0, keys.shape[0], 1 << 20):
            blk = np.asarray(keys[s0 : s0 + (1 << 20)])
            pos = np.minimum(np.searchsorted(probe, blk), probe.shape[0] - 1)
            rows_hit.append(s0 + np.flatnonzero(probe[pos] == blk))
        rows = np.concatenate(rows_hit) if rows_hit else np.zeros(0, dtype=np.int64)
        if rows.shape[0] == 0:
            return np.arange(len(images), dtype=np.int64)
        known = {m["image"] for m in self.meta(rows)}  # confirm the 64-bit key matches by path
        return np.asarray([i for i, x in enumerate(images) if x not in known], dtype=np.int64)

    def images(self) -> list[str]:
        """The image path of every row, in row order."""
        with open(self.path / META, encoding="utf-8") as f:
            return [json.loads(line)["image"] for line in f if line.strip()]

    def failures(self) -> list[tuple[str, str]]:
        """``(image, reason)`` for every photo that did not make it into the database."""
        path = self.path / FAILED
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]

    def info(self) -> dict[str, Any]:
        """Counts, sizes, backbone, index and coverage, as plain JSON-able values."""
        m = self.manifest
        files = {name: int(rec["bytes"]) for name, rec in m["files"].items()}
        ll = np.asarray(self.latlon)
        coverage: dict[str, Any] = {}
        if ll.shape[0]:
            cells = np.unique(np.floor(ll[:, 0]).astype(np.int64) * 360 + np.floor(ll[:, 1]).astype(np.int64))
            coverage = {
                "lat_min": float(ll[:, 0].min()),
                "lat_max": float(ll[:, 0].max()),
                "lon_min": float(ll[:, 1].min()),
                "lon_max": float(ll[:, 1].max()),
                "cells_1deg": int(cells.shape[0]),
            }
        backbone = {k: v for k, v in (m.get("backbone") or {}).items() if k != "probe"}
        return {
            "path": str(self.path),
            "format_version": m["format_version"],
            "geofast_version": m["geofast_version"],
            "created": m.get("created"),
            "updated": m.get("updated"),
            "rows": len(self),
            "dim": self.dim,
            "dtype": self.dtype,
            "index": dict(m["index"]),
            "backbone": backbone,
            "failed": int(m.get("failed", 0)),
            "no_gps": int(m.get("no_gps", 0)),
            "sources": list(m.get("sources", [])),
            "files": files,
            "bytes": int(sum(files.values())),
            "coverage": coverage,
        }

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        source: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        clip: str | os.PathLike[str] | None = None,
        backbone: Backbone | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: str = DEFAULT_DTYPE,
        index: str = DEFAULT_INDEX,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        train_size: int = DEFAULT_TRAIN_SIZE,
        workers: int | None = None,
        on_progress: Progress | None = None,
        on_event: Event | None = None,
        executor: Executor | None = None,
        on_plan: PlanProgress | None = None,
    ) -> BuildReport:
        """Build (or rebuild, or resume building) the database ``out`` from ``source`` (a CSV or
        a folder of photos with EXIF GPS). ``out`` is replaced only once the new database is
        complete. The CLIP backbone is ``backbone`` or loaded from ``clip``/``device``.
        ``workers`` image-loading threads (default: 1 on CPU, where the encoder uses every core;
        up to 8 with a GPU) keep the encoder fed. ``executor`` replaces the local
        loader threads + backbone (see :class:`geofast.db.builder.Executor`); ``on_plan(bytes,
        total)`` reports while the CSV is read."""
        _check_build_args(batch_size, chunk_size, dtype, workers)
        plan = _plan(source, on_plan, on_event)
        builder = _Builder(Path(out).expanduser(), mode="build", on_event=on_event)
        with builder.locked():
            _recover_swap(builder.root)
            return builder.run(
                plan,
                clip=clip,
                backbone=backbone,
                device=device,
                precision=precision,
                batch_size=batch_size,
                dtype=dtype,
                index=index,
                chunk_size=chunk_size,
                train_size=train_size,
                on_progress=on_progress,
                workers=workers,
                executor=executor,
            )

    @classmethod
    def add(
        cls,
        path: str | os.PathLike[str],
        source: str | os.PathLike[str],
        *,
        clip: str | os.PathLike[str] | None = None,
        backbone: Backbone | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        workers: int | None = None,
        on_progress: Progress | None = None,
        on_event: Event | None = None,
        executor: Executor | None = None,
        on_plan: PlanProgress | None = None,
    ) -> BuildReport:
        """Add the photos of ``source`` to the existing database ``path`` (photos already in it
        are skipped). Uses the database's backbone when ``clip`` is not given; a different backbone
        is refused. Resumable like :meth:`build`; the old database stays valid until the grown one
        replaces it."""
        _check_build_args(batch_size, chunk_size, DEFAULT_DTYPE, workers)
        root = Path(path).expanduser()
        _check_add_target(root, source)
        plan = _plan(source, on_plan, on_event)
        builder = _Builder(root, mode="add", on_event=on_event)
        with builder.locked():
            _recover_swap(root)
            _recover_append(root)
            base = cls.open(root, verify=False)
            if clip is None and backbone is None and not os.environ.get("GEOFAST_CLIP", "").strip():
                clip = base.backbone_source
            return builder.run(
                plan,
                clip=clip,
                backbone=backbone,
                device=device,
                precision=precision,
                batch_size=batch_size,
                dtype=base.dtype,
                index=base.index_factory,
                chunk_size=chunk_size,
                train_size=DEFAULT_TRAIN_SIZE,
                on_progress=on_progress,
                base=base,
                workers=workers,
                executor=executor,
            )

    @classmethod
    def from_arrays(
        cls,
        out: str | os.PathLike[str],
        embeddings: np.ndarray,
        latlon: np.ndarray,
        *,
        meta: Sequence[dict[str, Any]] | None = None,
        dtype: str = DEFAULT_DTYPE,
        index: str = DEFAULT_INDEX,
        normalize: bool = True,
        backbone_source: str | None = None,
        train_size: int = DEFAULT_TRAIN_SIZE,
        on_event: Event | None = None,
    ) -> Database:
        """Create a database from precomputed embeddings ``(N, D)`` (a memmap is streamed in
        blocks) and coordinates ``(N, 2)``. Without a probe embedding the backbone cannot be
        checked later; ``backbone_source`` is recorded for information."""
        _check_build_args(1, 1, dtype)
        from geofast.gallery import check_latlon_array

        ll = check_latlon_array(latlon, "latlon")
        if embeddings.ndim != 2 or embeddings.shape[0] != ll.shape[0]:
            raise ShapeError(f"embeddings {embeddings.shape} and latlon {ll.shape} must have the same number of rows")
        if meta is not None and len(meta) != ll.shape[0]:
            raise ShapeError(f"meta has {len(meta)} entries for {ll.shape[0]} rows")
        if ll.shape[0] == 0:
            raise InputError("cannot create an empty database")
        root = Path(out).expanduser()
        builder = _Builder(root, mode="build", on_event=on_event)
        with builder.locked():
            _recover_swap(root)
            check_replaceable(root)
            factory = "Flat" if _is_flat(index) else index
            if not _is_flat(factory):
                check_index_rows(factory, int(embeddings.shape[1]), int(ll.shape[0]), train_size=train_size)
            np_dtype = _DTYPES[dtype]

            norms = np.empty(ll.shape[0], dtype=np.float32) if normalize else None

            def blocks() -> Iterator[np.ndarray]:
                for s in range(0, embeddings.shape[0], 65536):
                    blk = np.asarray(embeddings[s : s + 65536], dtype=np.float32)
                    if norms is not None:
                        unit = normalize_rows(blk)
                        norms[s : s + blk.shape[0]] = np.linalg.norm(blk.astype(np.float64), axis=1)
                        blk = unit
                    yield blk.astype(np_dtype)

            metas = meta if meta is not None else [{"image": f"row{i}"} for i in range(ll.shape[0])]
            manifest_extra = {
                "backbone": {"source": backbone_source, "config_sha256": None, "dim": int(embeddings.shape[1]), "probe": None},
                "sources": [
                    {"source": "arrays", "kind": "arrays", "added": int(ll.shape[0]), "failed": 0, "no_gps": 0, "date": _now()}
                ],
                "failed": 0,
                "no_gps": 0,
            }
            builder.assemble_or_clean(
                n_rows=ll.shape[0],
                dim=int(embeddings.shape[1]),
                dtype=dtype,
                factory=factory,
                emb_blocks=blocks(),
                latlon=ll,
                norms=lambda: norms,
                meta_lines=((str(m.get("image", "")), json.dumps(m, ensure_ascii=False)) for m in metas),
                failures=[],
                manifest_extra=manifest_extra,
                train_size=train_size,
                base=None,
            )
            builder.install()
        return cls.open(root, verify=False)


#: Sources at least this large get a one-line planning notice (time, rejected rows).
_PLAN_NOTICE_ROWS = 100_000


def _plan(source: str | os.PathLike[str], on_plan: PlanProgress | None, on_event: Event | None) -> SourcePlan:
    t0 = time.perf_counter()
    plan = plan_source(source, on_plan)
    if on_event is not None and len(plan) + len(plan.rejected) >= _PLAN_NOTICE_ROWS:
        rejected = f", {len(plan.rejected):,} rows rejected" if plan.rejected else ""
        on_event(f"planned {len(plan):,} photos from {plan.source}{rejected} in {time.perf_counter() - t0:.1f} s")
    return plan


def _check_add_target(root: Path, source: str | os.PathLike[str]) -> None:
    """``add`` grows a database: say so when ``root`` is none (and no build of it is under way),
    before the lock makes a work folder beside it."""
    if root.exists() or _sibling(root, ".old").exists() or (_sibling(root, ".partial") / STATE).is_file():
        return  # a database, something else (open() says what), or a build to finish (open() says how)
    raise DatabaseError(
        f"database {root} does not exist: geofast db add grows an existing database",
        hint=f"create it first: geofast db build {source} --out {root}",
    )
