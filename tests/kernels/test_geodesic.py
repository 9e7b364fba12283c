"""gf.geodesic against geopy.distance.geodesic (GeographicLib for Python, WGS-84)."""

from __future__ import annotations

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from geopy.distance import geodesic as geopy_geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

import geofast as gf
from conftest import random_latlon


def geopy_km(a, b) -> np.ndarray:
    return np.array([geopy_geodesic(tuple(p), tuple(q)).km for p, q in zip(np.asarray(a).tolist(), np.asarray(b).tolist())])


def assert_matches_geopy(ours: np.ndarray, ref: np.ndarray) -> None:
    """~1e-9 km absolute or 1e-12 relative, per pair."""
    err = np.abs(ours - ref)
    ok = (err <= 1e-9) | (err <= 1e-12 * ref)
    assert ok.all(), f"worst |Δ| {err.max():.3e} km at {np.argmax(err)}"


def test_matches_geopy_on_random_pairs():
    a, b = random_latlon(3_000, 1), random_latlon(3_000, 2)
    ours = gf.geodesic(a, b)
    assert ours.dtype == np.float64 and ours.shape == (3_000,)
    assert_matches_geopy(ours, geopy_km(a, b))


def test_matches_geopy_on_hard_pairs():
    """Antipodal and nearly antipodal (where Vincenty's method fails to converge), polar,
    antimeridian, duplicate and metre-scale pairs."""
    a = np.array(
        [
            [0.0, 0.0],
            [0.0, 0.0],
            [0.0, 0.0],
            [0.5, 0.0],
            [-30.0, 10.0],
            [10.0, -170.0],
            [90.0, 0.0],
            [90.0, 45.0],
            [-90.0, 0.0],
            [89.9999, 0.0],
            [0.0, 179.9],
            [45.0, -179.99999],
            [12.3456, 65.4321],
            [51.5, -0.12],
            [0.0, 0.0],
            [-0.0, 0.0],
            [41.0, 12.0],
            [0.0, 90.0],
        ]
    )
    b = np.array(
        [
            [0.0, 180.0],
            [0.0, 179.5],
            [0.5, 179.7],
            [-0.5, 179.7],
            [30.0, -170.0],
            [-10.0, 10.0000001],
            [-90.0, 0.0],
            [90.0, -135.0],
            [-89.0, 123.0],
            [-89.9999, 180.0],
            [0.0, -179.9],
            [45.0, 179.99999],
            [12.3456, 65.4321],
            [51.5000001, -0.1200001],
            [1e-9, 1e-9],
            [0.0, -0.0],
            [-41.0, -168.0],
            [0.0, -90.0],
        ]
    )
    assert_matches_geopy(gf.geodesic(a, b), geopy_km(a, b))


def test_known_values():
    # Meridian quadrant of WGS-84 (equator to pole), 10001.965729 km.
    q = gf.geodesic([[0.0, 0.0]], [[90.0, 0.0]])[0]
    assert q == pytest.approx(10_001.965_729, abs=1e-6)
    # Equatorial antipodes: the shortest path runs over a pole, twice the quadrant.
    assert gf.geodesic([[0.0, 0.0]], [[0.0, 180.0]])[0] == pytest.approx(2 * q, abs=1e-6)
    # Karney's own library, in metres, for a transcontinental pair.
    ref = Geodesic.WGS84.Inverse(40.6, -73.8, 49.01666667, 2.55)["s12"] / 1000
    assert gf.geodesic([[40.6, -73.8]], [[49.01666667, 2.55]])[0] == pytest.approx(ref, abs=1e-9)


def test_poles_duplicates_broadcasting():
    lons = np.linspace(-180, 180, 13)
    north = np.column_stack([np.full(13, 90.0), lons])
    assert np.all(gf.geodesic(north, north[::-1]) == 0.0)
    d = gf.geodesic(north, [[-20.0, 77.0]])
    assert np.allclose(d, d[0], rtol=0, atol=1e-9)
    pts = random_latlon(500, 3)
    assert np.all(gf.geodesic(pts, pts) == 0.0)
    p = np.array([[-33.87, 151.21]])
    np.testing.assert_array_equal(gf.geodesic(pts, p), gf.geodesic(pts, np.repeat(p, 500, axis=0)))
    np.testing.assert_array_equal(gf.geodesic(p, pts), gf.geodesic(np.repeat(p, 500, axis=0), pts))


def test_layouts_dtypes_lists_and_empty():
    a, b = random_latlon(1_000, 4), random_latlon(1_000, 5)
    expected = gf.geodesic(a, b)
    np.testing.assert_array_equal(gf.geodesic(np.asfortranarray(a), b), expected)
    np.testing.assert_array_equal(gf.geodesic(a.tolist(), b[::-1][::-1]), expected)
    np.testing.assert_array_equal(gf.geodesic(a[::-1], b[::-1]), expected[::-1])
    a32 = a.astype(np.float32)
    np.testing.assert_array_equal(gf.geodesic(a32, b), gf.geodesic(a32.astype(np.float64), b))
    assert_matches_geopy(gf.geodesic(a32[:100], b[:100]), geopy_km(a32[:100].astype(np.float64), b[:100]))
    assert gf.geodesic(np.zeros((0, 2)), np.zeros((0, 2))).shape == (0,)
    assert gf.geodesic(np.zeros((0, 2)), [[0.0, 0.0]]).shape == (0,)


def test_ellipsoid_differs_from_sphere_by_at_most_half_a_percent():
    a, b = random_latlon(20_000, 6), random_latlon(20_000, 7)
    g = gf.geodesic(a, b)
    h = gf.haversine(a, b)
    m = h > 1.0
    assert np.max(np.abs(g[m] - h[m]) / h[m]) < 0.0056


point_st = st.tuples(st.floats(-90.0, 90.0, allow_nan=False), st.floats(-180.0, 180.0, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(point_st, point_st)
def test_properties_and_parity(p, q):
    d = gf.geodesic([p, q], [q, p])
    assert d[0] == pytest.approx(d[1], rel=1e-13, abs=1e-9)
    assert 0.0 <= d[0] <= 20_003.94
    assert gf.geodesic([p], [p])[0] == 0.0
    ref = geopy_geodesic(p, q).km
    assert abs(d[0] - ref) <= max(1e-9, 1e-12 * ref)


@pytest.mark.parametrize(
    ("a", "b", "error", "text"),
    [
        ([[91.0, 0.0]], [[0.0, 0.0]], gf.CoordinateError, "a[0] has latitude 91"),
        ([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 181.0]], gf.CoordinateError, "b[1] has longitude 181"),
        ([[np.nan, 0.0]], [[0.0, 0.0]], gf.CoordinateError, "a[0] is not finite"),
        ([[0.0, 0.0]], [[0.0, np.inf]], gf.CoordinateError, "b[0] is not finite"),
        (np.zeros((5, 2)), np.zeros((3, 2)), gf.ShapeError, "(5, 2)"),
        (np.zeros((5, 3)), np.zeros((5, 2)), gf.ShapeError, "a must have shape (N, 2), got (5, 3)"),
        ([0.0, 0.0], [[0.0, 0.0]], gf.ShapeError, "a must be a 2-D array"),
        ([[0.0, 0.0]], "x", gf.InputError, "b must be a numeric array"),
    ],
)
def test_errors(a, b, error, text):
    with pytest.raises(error) as info:
        gf.geodesic(a, b)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


def test_mismatch_names_both_shapes():
    with pytest.raises(gf.ShapeError) as info:
        gf.geodesic(np.zeros((5, 2)), np.zeros((3, 2)))
    assert "(5, 2)" in str(info.value) and "(3, 2)" in str(info.value)
