"""Latitude/longitude validation, written once.

Coordinates are degrees, latitude first; valid means finite with |lat| ≤ 90 and |lon| ≤ 180.
The Rust kernels validate their own input; this module serves the Python paths (CSV readers,
galleries, LLM answers, HTTP bodies) so that every one says the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from geofast.errors import CoordinateError, ShapeError


def valid_latlon(lat: float, lon: float) -> bool:
    """True when ``lat``/``lon`` are finite degrees with |lat| ≤ 90 and |lon| ≤ 180."""
    return math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0


def valid_rows(latlon: np.ndarray) -> np.ndarray:
    """Boolean mask of the valid rows of an ``(N, 2)`` array (no exception)."""
    arr = np.asarray(latlon, dtype=np.float64)
    return np.isfinite(arr).all(axis=1) & (np.abs(arr[:, 0]) <= 90.0) & (np.abs(arr[:, 1]) <= 180.0)


def check_latlon(
    latlon: np.ndarray | Sequence[Sequence[float]], name: str = "coordinates", *, allow_empty: bool = True
) -> np.ndarray:
    """``latlon`` as a C-contiguous ``(N, 2)`` float64 array, or a :class:`CoordinateError`
    (:class:`ShapeError` for a wrong shape) naming the first bad row."""
    arr = np.ascontiguousarray(np.asarray(latlon, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ShapeError(f"{name} must have shape (N, 2) (latitude, longitude in degrees), got {arr.shape}")
    if not allow_empty and arr.shape[0] == 0:
        raise ShapeError(f"{name} is empty")
    ok = valid_rows(arr)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise CoordinateError(
            f"{name}: row {i} ({arr[i, 0]!r}, {arr[i, 1]!r}) is not a valid latitude/longitude",
            hint="degrees, latitude first, finite, |lat| <= 90, |lon| <= 180",
        )
    return arr


def find_column(columns: Iterable[str], names: Sequence[str]) -> str | None:
    """The first of ``columns`` whose stripped, lower-cased name is in ``names`` (in ``names`` order)."""
    lowered = {c.strip().lower(): c for c in columns}
    for n in names:
        if n in lowered:
            return lowered[n]
    return None
