"""Aggregate millions of photo positions into a bounded number of grid cells for a coverage map.

Cells are ``cell_deg × cell_deg`` boxes of a latitude/longitude grid anchored at (-90, -180).
The grid starts at :data:`FINEST_CELL_DEG`; whenever more than ``max_cells`` cells are
occupied, the cell size doubles. Grids are nested (cell ``i`` of size ``2d`` holds cells
``2i`` and ``2i+1`` of size ``d``), so coarsening merges the accumulated cells exactly: the
result equals binning every position directly on the final grid. Each cell keeps its count and
the mean position of its photos (so a cell's marker sits where its photos are). Memory is
``O(chunk_rows + max_cells)``; the input is read in chunks (a memory map is never loaded whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geofast.errors import CoordinateError, ParameterError, ShapeError

#: The finest coverage grid, in degrees (about 11 km of latitude).
FINEST_CELL_DEG = 0.1


@dataclass(frozen=True)
class CoverageCells:
    """Occupied grid cells: mean position (degrees), photo count, the grid's cell size and the
    number of input rows."""

    lat: np.ndarray
    lon: np.ndarray
    count: np.ndarray
    cell_deg: float
    rows: int


def _merge(key: np.ndarray, n: np.ndarray, slat: np.ndarray, slon: np.ndarray) -> tuple[np.ndarray, ...]:
    uniq, inv = np.unique(key, return_inverse=True)
    m = uniq.shape[0]
    return (
        uniq,
        np.bincount(inv, weights=n, minlength=m),
        np.bincount(inv, weights=slat, minlength=m),
        np.bincount(inv, weights=slon, minlength=m),
    )


def coverage_cells(latlon: Any, *, max_cells: int = 20_000, chunk_rows: int = 1 << 20) -> CoverageCells:
    """Bin ``(N, 2)`` positions (degrees, latitude first) onto the finest grid of cells
    ``FINEST_CELL_DEG · 2^j`` that leaves at most ``max_cells`` cells occupied."""
    if max_cells < 1:
        raise ParameterError(f"max_cells must be >= 1, got {max_cells}")
    if chunk_rows < 1:
        raise ParameterError(f"chunk_rows must be >= 1, got {chunk_rows}")
    shape = getattr(latlon, "shape", None)
    if shape is None:
        latlon = np.asarray(latlon, dtype=np.float64)
        shape = latlon.shape
    if len(shape) != 2 or shape[1] != 2:
        raise ShapeError(f"positions must have shape (N, 2) (latitude, longitude in degrees), got {tuple(shape)}")
    rows = int(shape[0])
    level = 0  # cell size FINEST_CELL_DEG * 2**level
    # Accumulated cells at the finest grid's integer indices shifted right by `level`.
    keys = np.zeros(0, np.int64)
    n = np.zeros(0)
    slat = np.zeros(0)
    slon = np.zeros(0)
    n_lon_finest = int(round(360 / FINEST_CELL_DEG))
    for start in range(0, rows, chunk_rows):
        block = np.asarray(latlon[start : start + chunk_rows], dtype=np.float64)
        lat, lon = block[:, 0], block[:, 1]
        bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
        if bad.any():
            i = start + int(np.argmax(bad))
            raise CoordinateError(
                f"position {i} ({block[i - start, 0]}, {block[i - start, 1]}) is not a valid latitude, longitude"
            )
        # Finest-grid indices (latitude 90 and longitude 180 fall into the last cell).
        iy = np.minimum(np.floor((lat + 90) / FINEST_CELL_DEG).astype(np.int64), int(round(180 / FINEST_CELL_DEG)) - 1)
        ix = np.minimum(np.floor((lon + 180) / FINEST_CELL_DEG).astype(np.int64), n_lon_finest - 1)
        k = ((iy >> level) * n_lon_finest) + (ix >> level)
        ck, cn, clat, clon = _merge(k, np.ones_like(lat), lat, lon)
        keys, n, slat, slon = _merge(
            np.concatenate([keys, ck]), np.concatenate([n, cn]), np.concatenate([slat, clat]), np.concatenate([slon, clon])
        )
        while keys.shape[0] > max_cells:
            level += 1
            iy_c, ix_c = keys // n_lon_finest, keys % n_lon_finest
            keys, n, slat, slon = _merge(((iy_c >> 1) * n_lon_finest) + (ix_c >> 1), n, slat, slon)
    count = n.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return CoverageCells(
            lat=slat / np.maximum(n, 1),
            lon=slon / np.maximum(n, 1),
            count=count,
            cell_deg=FINEST_CELL_DEG * 2**level,
            rows=rows,
        )
