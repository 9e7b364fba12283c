"""gf.fibonacci_lattice against the lattice formula evaluated independently here.

Point i of N: z = 1 - (2i + 1)/N, lat = asin(z), lon = i * golden angle wrapped to [-180, 180),
golden angle = 360 * (3 - sqrt(5))/2 degrees; N = round(4 pi R^2 / (1.1 d^2)) (area 1.1 d^2 per point).
Longitudes are checked exactly against Python's decimal arithmetic (float64 i * 137.5 loses ~1e-6
degrees by i = 1e10); nearest-neighbour spacing against scikit-learn's BallTree.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
from sklearn.neighbors import BallTree

import geofast as gf

R = 6371.0088
getcontext().prec = 60
GOLD = (3 - Decimal(5).sqrt()) / 2  # turns per index


def ref_n(spacing_km: float) -> int:
    return max(1, round(4 * math.pi * R * R / (1.1 * spacing_km * spacing_km)))


def exact_lon(i: int) -> float:
    lon = float(((Decimal(int(i)) * GOLD) % 1) * 360)
    return lon - 360.0 if lon >= 180.0 else lon


def approx_lon(i: np.ndarray) -> np.ndarray:
    """i * golden angle in uint64 fixed point (wrapping multiply): error < 1e-6 degrees for i < 2**40."""
    g64 = np.uint64(int(GOLD * 2**64))
    t = (i.astype(np.uint64) * g64).astype(np.float64) / 2.0**64
    lon = t * 360.0
    return np.where(lon >= 180.0, lon - 360.0, lon)


def lat_of(i: np.ndarray, n: int) -> np.ndarray:
    return np.degrees(np.arcsin((n - 1 - 2 * i).astype(np.float64) / n))


def in_window(lon, lon_min, lon_max):
    if lon_min > lon_max:
        return (lon >= lon_min) | (lon <= lon_max)
    return (lon >= lon_min) & (lon <= lon_max)


def ref_points(spacing_km, bbox=None):
    """(indices, lat) of the lattice points inside bbox, computed independently."""
    n = ref_n(spacing_km)
    if bbox is None:
        i = np.arange(n, dtype=np.int64)
        return i, lat_of(i, n)
    lat_min, lon_min, lat_max, lon_max = bbox
    z_hi, z_lo = math.sin(math.radians(lat_max)), math.sin(math.radians(lat_min))
    i0 = max(0, math.floor((n * (1 - z_hi) - 1) / 2) - 2)
    i1 = min(n, math.ceil((n * (1 - z_lo) - 1) / 2) + 3)
    i = np.arange(i0, i1, dtype=np.int64)
    lat = lat_of(i, n)
    keep = (lat >= lat_min) & (lat <= lat_max)
    i, lat = i[keep], lat[keep]
    lon = approx_lon(i)
    inside = in_window(lon, lon_min, lon_max)
    # Points within 1e-5 degrees of a window edge: decide with the exact longitude.
    edge = np.minimum(np.abs((lon - lon_min + 180) % 360 - 180), np.abs((lon - lon_max + 180) % 360 - 180)) < 1e-5
    for j in np.flatnonzero(edge):
        inside[j] = bool(in_window(np.array([exact_lon(i[j])]), lon_min, lon_max)[0])
    return i[inside], lat[inside]


def assert_lon_equal(got, want, tol=1e-9):
    d = (np.asarray(got) - np.asarray(want) + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(d), initial=0.0) < tol


@pytest.mark.parametrize("spacing", [50_000.0, 3000.0, 500.0, 100.0, 25.0])
def test_global_lattice_matches_formula(spacing):
    pts = gf.fibonacci_lattice(spacing)
    i, lat = ref_points(spacing)
    assert pts.shape == (ref_n(spacing), 2) and pts.dtype == np.float64
    np.testing.assert_allclose(pts[:, 0], lat, rtol=0, atol=1e-12)
    assert ((pts[:, 1] >= -180.0) & (pts[:, 1] < 180.0)).all()
    assert_lon_equal(pts[:, 1], approx_lon(i), tol=1e-6)
    for j in np.unique(np.linspace(0, len(i) - 1, 50).astype(int)):
        assert_lon_equal(pts[j, 1], exact_lon(i[j]), tol=1e-12)


@pytest.mark.parametrize(
    ("spacing", "bbox"),
    [
        (0.2, (48.85, 2.30, 48.88, 2.40)),  # narrow window (residue path), deep indices
        (1.0, (-10.0, 170.0, -9.7, -170.0)),  # crosses the antimeridian
        (2.0, (20.0, -100.0, 20.4, 50.0)),  # wide window (scan path)
        (0.5, (89.95, -180.0, 90.0, 180.0)),  # polar cap
        (5.0, (-90.0, 0.0, -85.0, 90.0)),
        (0.1, (0.0, 10.0, 0.005, 10.0)),  # one meridian
        (30.0, (10.0, 20.0, 10.0, 30.0)),  # one latitude: no point exactly on it
    ],
)
def test_regional_lattice_matches_formula(spacing, bbox):
    pts = gf.fibonacci_lattice(spacing, bbox)
    i, lat = ref_points(spacing, bbox)
    assert pts.shape == (len(i), 2)
    np.testing.assert_allclose(pts[:, 0], lat, rtol=0, atol=1e-12)
    want = np.array([exact_lon(j) for j in i])
    assert_lon_equal(pts[:, 1], want, tol=1e-12)
    lat_min, lon_min, lat_max, lon_max = bbox
    assert ((pts[:, 0] >= lat_min) & (pts[:, 0] <= lat_max)).all()
    assert in_window(pts[:, 1], lon_min, lon_max).all()
    if bbox[1] != bbox[3] and bbox[0] != bbox[2]:
        assert len(pts) > 100


def test_bbox_is_an_inclusive_filter_of_the_global_lattice():
    spacing = 40.0
    full = gf.fibonacci_lattice(spacing)
    boxes = [
        (-90.0, -180.0, 90.0, 180.0),
        (30.0, -10.0, 60.0, 40.0),
        (-50.0, 150.0, -20.0, -160.0),
        (80.0, -180.0, 90.0, 180.0),
        tuple(np.array([full[1000, 0], -30.0, full[500, 0], full[777, 1]])),  # edges on points
    ]
    for bbox in boxes:
        lat_min, lon_min, lat_max, lon_max = bbox
        sub = gf.fibonacci_lattice(spacing, bbox)
        keep = (full[:, 0] >= lat_min) & (full[:, 0] <= lat_max) & in_window(full[:, 1], lon_min, lon_max)
        np.testing.assert_array_equal(sub, full[keep])
    # Inclusive edges: a box whose corners are a point's own coordinates holds exactly it.
    p = full[12345]
    np.testing.assert_array_equal(gf.fibonacci_lattice(spacing, (p[0], p[1], p[0], p[1])), p[None, :])
    above = np.nextafter(p[0], 91.0)
    assert len(gf.fibonacci_lattice(spacing, (above, p[1], above, p[1]))) == 0
    # bbox may be any sequence of 4 numbers.
    np.testing.assert_array_equal(
        gf.fibonacci_lattice(spacing, [30, -10, 60, 40]), gf.fibonacci_lattice(spacing, np.array(boxes[1]))
    )


@pytest.mark.parametrize(
    ("spacing", "bbox"),
    [
        (800.0, None),
        (150.0, None),
        (30.0, (35.0, -10.0, 45.0, 5.0)),
        (0.5, (-34.0, 18.3, -33.8, 18.6)),
        (4.0, (89.0, -180.0, 90.0, 180.0)),
    ],
)
def test_median_nearest_neighbour_spacing_within_10_percent(spacing, bbox):
    pts = gf.fibonacci_lattice(spacing, bbox)
    tree = BallTree(np.radians(pts), metric="haversine")
    dist, _ = tree.query(np.radians(pts), k=2)
    nn = dist[:, 1] * R
    if bbox is not None:
        # Points on the box edge have their neighbours cut off; use the inner ones.
        lat_min, lon_min, lat_max, lon_max = bbox
        margin = 3 * spacing / 111.0
        inner = (pts[:, 0] > lat_min + margin) & (pts[:, 0] < lat_max - margin)
        if lon_min < lon_max and lon_max - lon_min < 360:
            inner &= (pts[:, 1] > lon_min + margin / max(np.cos(np.radians(lat_max)), 0.01)) & (
                pts[:, 1] < lon_max - margin / max(np.cos(np.radians(lat_max)), 0.01)
            )
        nn = nn[inner]
        assert len(nn) > 50
    assert abs(np.median(nn) / spacing - 1.0) < 0.10
    # And the PointIndex agrees with sklearn on the same nearest-neighbour distances.
    d2, _ = gf.PointIndex(pts).query(pts, k=2)
    np.testing.assert_allclose(d2[:, 1], dist[:, 1] * R, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((0.0,), gf.ParameterError, "spacing_km must be a finite distance > 0"),
        ((-5.0,), gf.ParameterError, "spacing_km"),
        ((float("nan"),), gf.ParameterError, "spacing_km"),
        ((float("inf"),), gf.ParameterError, "spacing_km"),
        ((10.0, (50.0, 0.0, 40.0, 10.0)), gf.ParameterError, "lat_min <= lat_max"),
        ((10.0, (50.0, 0.0, 95.0, 10.0)), gf.CoordinateError, "bbox[2] has latitude 95"),
        ((10.0, (-91.0, 0.0, 5.0, 10.0)), gf.CoordinateError, "bbox[0] has latitude -91"),
        ((10.0, (0.0, -181.0, 5.0, 10.0)), gf.CoordinateError, "bbox[1] has longitude -181"),
        ((10.0, (0.0, 0.0, 5.0, 180.5)), gf.CoordinateError, "bbox[3] has longitude 180.5"),
        ((10.0, (0.0, float("nan"), 5.0, 1.0)), gf.CoordinateError, "bbox[1] is not finite"),
        ((10.0, (0.0, 0.0, 5.0)), gf.ShapeError, "bbox must have 4 values"),
        ((10.0, "abcd"), gf.InputError, "bbox must be a sequence of 4 numbers"),
        ((1.0,), gf.TooLargeError, "pass a smaller bbox=(lat_min, lon_min, lat_max, lon_max) or a larger spacing_km"),
        ((0.01, (-60.0, -180.0, 60.0, 180.0)), gf.TooLargeError, "more than 50000000"),
        ((1e-4,), gf.TooLargeError, "use a spacing of at least"),
    ],
)
def test_errors(args, error, text):
    with pytest.raises(error) as info:
        gf.fibonacci_lattice(*args)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
