"""gf.dbscan against scikit-learn's DBSCAN(metric="haversine", algorithm="ball_tree").

The reference runs on ``np.radians(latlon)`` with ``eps = eps_km / radius_km``. geofast numbers
clusters like sklearn (order of the lowest-index core point) and gives a border point to the
lowest-numbered cluster that reaches it, which is what sklearn's depth-first labelling does, so
labels are compared exactly; :func:`check_dbscan_semantics` additionally checks the contract the
design fixes (noise and core sets, the partition of core points, borders in a reaching cluster)
from sklearn's own neighbourhoods.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.cluster import DBSCAN
from sklearn.neighbors import NearestNeighbors

import geofast as gf
from conftest import random_latlon

R = 6371.0088


# geofast runs small sparse inputs (n <= 4096) through a sort-and-sweep engine and everything else
# through the grid; padding with far-away points forces the grid.
GRID_PAD = 4_200


def pad_far(pts, pad, seed=0):
    """Append `pad` random points in the latitude band |lat| > 82 (away from the test points)."""
    if not pad:
        return pts
    rng = np.random.default_rng(seed)
    extra = np.column_stack([rng.choice([-1, 1], pad) * rng.uniform(82, 90, pad), rng.uniform(-180, 180, pad)])
    return np.vstack([pts, extra])


def sk_dbscan(latlon, eps_km, min_samples, sample_weight=None, radius_km=R):
    x = np.radians(np.asarray(latlon, dtype=np.float64))
    model = DBSCAN(eps=eps_km / radius_km, min_samples=min_samples, metric="haversine", algorithm="ball_tree")
    model.fit(x, sample_weight=sample_weight)
    return model


def check_dbscan_semantics(labels, latlon, eps_km, min_samples, sample_weight=None, radius_km=R):
    """The design's contract, checked against sklearn's neighbourhoods and labels."""
    model = sk_dbscan(latlon, eps_km, min_samples, sample_weight, radius_km)
    ref = model.labels_
    assert labels.dtype == np.int64 and labels.shape == ref.shape
    # Noise sets equal.
    np.testing.assert_array_equal(labels == -1, ref == -1)
    core = np.zeros(len(ref), bool)
    core[model.core_sample_indices_] = True
    # Core points: identical labels (same partition, same numbering).
    np.testing.assert_array_equal(labels[core], ref[core])
    # Border points: a cluster that reaches them (sklearn's neighbourhoods).
    border = np.flatnonzero((ref != -1) & ~core)
    if len(border):
        nn = NearestNeighbors(radius=eps_km / radius_km, metric="haversine", algorithm="ball_tree")
        nn.fit(np.radians(np.asarray(latlon, dtype=np.float64)))
        for i, nbrs in zip(border, nn.radius_neighbors(np.radians(np.asarray(latlon, np.float64)[border]))[1]):
            reaching = {int(ref[j]) for j in nbrs if core[j]}
            assert int(labels[i]) in reaching
    # And, as geofast promises, the same labels as sklearn everywhere.
    np.testing.assert_array_equal(labels, ref)
    return model


def blobs(n, n_blobs, spread_km, seed, *, centres=None, noise=0.1, dup=0.05):
    """Gaussian blobs (spread in km) + uniform noise + exact duplicates."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = random_latlon(n_blobs, seed + 1000)
    centres = np.asarray(centres, dtype=np.float64)
    which = rng.integers(0, len(centres), n)
    c = centres[which]
    north = rng.normal(0, 1, n) * spread_km
    east = rng.normal(0, 1, n) * spread_km
    # Move from each centre along a random bearing on the sphere (exact spherical formulas).
    d = np.hypot(north, east) / R
    brg = np.arctan2(east, north)
    lat1, lon1 = np.radians(c[:, 0]), np.radians(c[:, 1])
    lat2 = np.arcsin(np.clip(np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(brg), -1, 1))
    lon2 = lon1 + np.arctan2(np.sin(brg) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * np.sin(lat2))
    out = np.column_stack([np.degrees(lat2), (np.degrees(lon2) + 180.0) % 360.0 - 180.0])
    k = int(noise * n)
    out[:k] = random_latlon(k, seed + 2000)
    m = int(dup * n)
    if m and n > 1:
        src = rng.integers(0, n, m)
        dst = rng.integers(0, n, m)
        out[dst] = out[src]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("eps_km", "min_samples"), [(0.5, 1), (2.0, 4), (5.0, 10), (25.0, 3)])
def test_random_clustered_datasets_match_sklearn(seed, eps_km, min_samples):
    n = [200, 900, 3000, 1500][seed % 4]
    pts = blobs(n, 6 + seed, spread_km=[2.0, 8.0, 30.0][seed % 3], seed=seed)
    labels = gf.dbscan(pts, eps_km, min_samples)
    model = check_dbscan_semantics(labels, pts, eps_km, min_samples)
    if seed == 0 and min_samples > 1:
        assert labels.max() >= 1 and (labels == -1).any() and len(model.core_sample_indices_) < n


def test_larger_dataset_matches_sklearn():
    pts = blobs(20_000, 40, spread_km=15.0, seed=99)
    check_dbscan_semantics(gf.dbscan(pts, 1.5, 6), pts, 1.5, 6)


@pytest.mark.parametrize("lat", [89.999, -89.9995])
def test_clusters_around_the_poles(lat):
    centres = [[lat, lon] for lon in (-170.0, -60.0, 0.0, 45.0, 179.0)]
    pts = blobs(1500, 0, spread_km=0.5, seed=5, centres=centres, noise=0.0)
    # Add points exactly at the pole (any longitude).
    pts[:5] = [[np.sign(lat) * 90.0, lon] for lon in (-180.0, -90.0, 0.0, 90.0, 180.0)]
    for eps, m in [(0.2, 5), (1.0, 20), (0.05, 2)]:
        labels = gf.dbscan(pts, eps, m)
        check_dbscan_semantics(labels, pts, eps, m)
    # The pole points (one place, many longitudes) are one cluster.
    assert len(set(gf.dbscan(pts, 0.2, 5)[:5])) == 1


def test_clusters_spanning_the_antimeridian():
    centres = [[0.0, 180.0], [-45.0, -179.99], [60.0, 179.95]]
    pts = blobs(2000, 0, spread_km=3.0, seed=11, centres=centres, noise=0.02)
    assert (pts[:, 1] > 179).any() and (pts[:, 1] < -179).any()
    labels = gf.dbscan(pts, 2.0, 8)
    check_dbscan_semantics(labels, pts, 2.0, 8)
    # A blob on the antimeridian is one cluster, not two halves.
    near = np.abs(pts[:, 0]) < 0.01
    east, west = near & (pts[:, 1] > 179.99), near & (pts[:, 1] < -179.99)
    assert set(labels[east]) & set(labels[west]) - {-1}


def test_duplicates_only():
    pts = np.repeat([[10.0, 20.0], [10.0, 20.001], [-33.0, 151.0]], [50, 3, 7], axis=0)
    for m in [1, 4, 8, 51, 60, 61]:
        check_dbscan_semantics(gf.dbscan(pts, 0.05, m), pts, 0.05, m)
        check_dbscan_semantics(gf.dbscan(pts, 0.2, m), pts, 0.2, m)


@pytest.mark.parametrize("seed", range(4))
def test_sample_weight_with_zeros_and_negatives(seed):
    pts = blobs(1500, 8, spread_km=5.0, seed=40 + seed)
    rng = np.random.default_rng(seed)
    # Dyadic weights so sums are exact whatever the summation order.
    w = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0], size=len(pts))
    for eps, m in [(1.0, 3), (3.0, 6), (0.3, 1)]:
        labels = gf.dbscan(pts, eps, m, sample_weight=w)
        check_dbscan_semantics(labels, pts, eps, m, sample_weight=w)
    nonneg = np.abs(w)
    check_dbscan_semantics(gf.dbscan(pts, 2.0, 5, sample_weight=nonneg), pts, 2.0, 5, sample_weight=nonneg)
    zeros = np.zeros(len(pts))
    assert (gf.dbscan(pts, 2.0, 1, sample_weight=zeros) == -1).all()
    # A heavy point is core on its own (min_samples counts weight, not points).
    heavy = np.ones(len(pts))
    heavy[0] = 100.0
    labels = gf.dbscan(pts, 0.001, 50, sample_weight=heavy)
    check_dbscan_semantics(labels, pts, 0.001, 50, sample_weight=heavy)
    assert labels[0] == 0


def test_radius_keyword():
    pts = blobs(800, 5, spread_km=4.0, seed=3)
    for radius in (6371.0, 1737.4):
        labels = gf.dbscan(pts, 2.0, 4, radius_km=radius)
        check_dbscan_semantics(labels, pts, 2.0, 4, radius_km=radius)


def _pairs_at(dist_km, n, seed):
    """n point pairs at great-circle distance dist_km in random places and directions."""
    return _pairs_from(random_latlon(n, seed), dist_km, seed)


def _pairs_from(a, dist_km, seed):
    """For each point of a, a partner at great-circle distance dist_km in a random direction."""
    rng = np.random.default_rng(seed)
    n = len(a)
    brg = rng.uniform(0, 2 * np.pi, n)
    lat1, lon1 = np.radians(a[:, 0]), np.radians(a[:, 1])
    d = dist_km / R
    lat2 = np.arcsin(np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(brg))
    lon2 = lon1 + np.arctan2(np.sin(brg) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * np.sin(lat2))
    b = np.column_stack([np.degrees(lat2), (np.degrees(lon2) + 180) % 360 - 180])
    return a, b


def haversine_km(a, b):
    a, b = np.radians(a), np.radians(b)
    h = (
        np.sin((b[..., 0] - a[..., 0]) / 2) ** 2
        + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2) ** 2
    )
    return 2 * R * np.arcsin(np.sqrt(h))


@pytest.mark.parametrize("pad", [0, GRID_PAD])
@pytest.mark.parametrize("eps_km", [0.001, 1.0, 7.5, 300.0])
def test_boundary_pairs_at_eps_plus_minus_1e9_km(eps_km, pad):
    for delta, inside in [(-1e-9, True), (1e-9, False)]:
        seed = int(eps_km * 1000) + (delta > 0)
        a = random_latlon(300, seed) * [75 / 90, 1.0]  # clear of the padding band
        a, b = _pairs_from(a, eps_km + delta, seed)
        pts = np.empty((600, 2))
        pts[0::2], pts[1::2] = a, b
        padded = pad_far(pts, pad if eps_km < 100 else 0)
        labels = gf.dbscan(padded, eps_km, 2)
        np.testing.assert_array_equal(labels, sk_dbscan(padded, eps_km, 2).labels_)
        labels = labels[:600]
        # Independent check on pairs that have no other point nearby: clustered iff inside.
        d = haversine_km(pts[:, None, :], pts[None, :, :])
        np.fill_diagonal(d, np.inf)
        d[np.arange(0, 600, 2), np.arange(1, 600, 2)] = np.inf
        d[np.arange(1, 600, 2), np.arange(0, 600, 2)] = np.inf
        lonely = (d.min(axis=1) > 2 * eps_km).reshape(300, 2).all(axis=1)
        assert lonely.sum() > 50
        first, second = labels[0::2][lonely], labels[1::2][lonely]
        if inside:
            assert (first >= 0).all() and (first == second).all()
        else:
            assert (first == -1).all() and (second == -1).all()


@pytest.mark.parametrize("pad", [0, GRID_PAD])
def test_pairs_exactly_at_eps_follow_sklearn(pad):
    # Pairs at exactly eps: sklearn's float haversine decides, and geofast decides the same way.
    rng = np.random.default_rng(8)
    pts = []
    eps_km = 2.5
    for _ in range(400):
        lat = rng.uniform(-75, 75)
        lon = rng.uniform(-179, 179)
        if rng.random() < 0.5:
            pts += [[lat, lon], [lat + np.degrees(eps_km / R), lon]]
        else:
            dlon = np.degrees(2 * np.arcsin(np.sin(eps_km / (2 * R)) / np.cos(np.radians(lat))))
            pts += [[lat, lon], [lat, lon + dlon]]
    pts = pad_far(np.array(pts), pad)
    labels = gf.dbscan(pts, eps_km, 2)
    ref = sk_dbscan(pts, eps_km, 2).labels_
    np.testing.assert_array_equal(labels, ref)
    decided_in = (ref[0:800:2] >= 0).mean()
    assert 0.0 < decided_in < 1.0  # genuinely on the boundary: sklearn's rounding goes both ways


@st.composite
def dbscan_cases(draw):
    n_blobs = draw(st.integers(1, 6))
    centres = [[draw(st.floats(-90, 90)), draw(st.floats(-180, 180))] for _ in range(n_blobs)]
    n = draw(st.integers(1, 400))
    spread = draw(st.sampled_from([0.01, 0.3, 2.0, 10.0]))
    seed = draw(st.integers(0, 2**31))
    pts = blobs(n, 0, spread_km=spread, seed=seed, centres=centres, noise=draw(st.sampled_from([0.0, 0.2])))
    pts[:, 0] = np.clip(pts[:, 0], -90, 90)
    eps = draw(st.sampled_from([0.005, 0.1, 0.5, 1.0, 3.0, 20.0, 500.0]))
    m = draw(st.integers(1, 12))
    weighted = draw(st.booleans())
    w = None
    if weighted:
        w = np.random.default_rng(seed).choice([-1.0, 0.0, 0.5, 1.0, 2.0], size=n)
    return pts, eps, m, w


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dbscan_cases())
def test_hypothesis_matches_sklearn(case):
    pts, eps, m, w = case
    labels = gf.dbscan(pts, eps, m, sample_weight=w)
    if w is not None and not w.any():
        # sklearn refuses all-zero weights; with every neighbourhood weighing 0 all is noise.
        assert (labels == -1).all()
        return
    check_dbscan_semantics(labels, pts, eps, m, sample_weight=w)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(dbscan_cases())
def test_hypothesis_matches_sklearn_on_the_grid_engine(case):
    pts, eps, m, w = case
    assume(eps <= 20.0)  # keeps sklearn's neighbourhoods of the padding small
    pts = pad_far(pts, GRID_PAD, seed=len(pts))
    if w is not None:
        w = np.concatenate([w, np.ones(GRID_PAD)])
    check_dbscan_semantics(gf.dbscan(pts, eps, m, sample_weight=w), pts, eps, m, sample_weight=w)


def test_float32_strided_and_list_inputs():
    pts = blobs(2000, 10, spread_km=3.0, seed=21)
    f32 = pts.astype(np.float32)
    labels32 = gf.dbscan(f32, 1.0, 4)
    # float32 coordinates are read exactly (as float64 values).
    check_dbscan_semantics(labels32, f32.astype(np.float64), 1.0, 4)
    expected = gf.dbscan(pts, 1.0, 4)
    np.testing.assert_array_equal(gf.dbscan(np.asfortranarray(pts), 1.0, 4), expected)
    wide = np.zeros((len(pts), 4))
    wide[:, 0], wide[:, 2] = pts[:, 0], pts[:, 1]
    np.testing.assert_array_equal(gf.dbscan(wide[:, ::2], 1.0, 4), expected)
    np.testing.assert_array_equal(gf.dbscan(pts[::-1], 1.0, 4), sk_dbscan(pts[::-1], 1.0, 4).labels_)
    np.testing.assert_array_equal(gf.dbscan(pts.tolist(), 1.0, 4), expected)
    w = np.ones(len(pts), dtype=np.float32)
    np.testing.assert_array_equal(gf.dbscan(pts, 1.0, 4, sample_weight=w[::1]), expected)
    w2 = np.ones(2 * len(pts))
    np.testing.assert_array_equal(gf.dbscan(pts, 1.0, 4, sample_weight=w2[::2]), expected)
    np.testing.assert_array_equal(gf.dbscan(pts, 1.0, np.int64(4)), expected)


def test_results_do_not_depend_on_thread_count():
    pts = blobs(30_000, 30, spread_km=10.0, seed=4)
    before = gf.get_num_threads()
    try:
        gf.set_num_threads(1)
        one = gf.dbscan(pts, 1.0, 5)
        gf.set_num_threads(4)
        np.testing.assert_array_equal(gf.dbscan(pts, 1.0, 5), one)
    finally:
        gf.set_num_threads(before)


def test_empty_and_tiny_inputs():
    out = gf.dbscan(np.zeros((0, 2)), 1.0, 3)
    assert out.dtype == np.int64 and out.shape == (0,)
    assert gf.dbscan([[0.0, 0.0]], 1.0, 1).tolist() == [0]
    assert gf.dbscan([[0.0, 0.0]], 1.0, 2).tolist() == [-1]


def test_eps_beyond_half_circumference_makes_everything_neighbours():
    pts = random_latlon(50, 3)
    # ε ≥ πR: every pair is within ε (documented; sklearn's sin² conversion folds back there).
    assert (gf.dbscan(pts, 25_000.0, 50) == 0).all()
    assert (gf.dbscan(pts, 25_000.0, 51) == -1).all()
    # Just under πR sklearn agrees.
    check_dbscan_semantics(gf.dbscan(pts, 19_000.0, 40), pts, 19_000.0, 40)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"eps_km": 0.0}, gf.ParameterError, "eps_km must be a finite distance > 0"),
        ({"eps_km": -1.0}, gf.ParameterError, "eps_km"),
        ({"eps_km": float("nan")}, gf.ParameterError, "eps_km"),
        ({"eps_km": float("inf")}, gf.ParameterError, "eps_km"),
        ({"min_samples": 0}, gf.ParameterError, "min_samples must be >= 1"),
        ({"min_samples": -3}, gf.ParameterError, "min_samples"),
        ({"radius_km": 0.0}, gf.ParameterError, "radius_km"),
        ({"radius_km": float("nan")}, gf.ParameterError, "radius_km"),
        ({"sample_weight": np.ones(3)}, gf.ShapeError, "len(sample_weight) must equal the number of points: 3 != 4"),
        ({"sample_weight": [1.0, np.nan, 1.0, 1.0]}, gf.CoordinateError, "sample_weight[1] is not finite"),
        ({"sample_weight": np.ones((4, 1))}, gf.ShapeError, "sample_weight must have shape (N,)"),
        ({"sample_weight": "abc"}, gf.InputError, "sample_weight"),
    ],
)
def test_parameter_errors(kwargs, error, text):
    pts = [[0.0, 0.0], [0.0, 0.001], [1.0, 1.0], [2.0, 2.0]]
    args = {"eps_km": 1.0, "min_samples": 2} | kwargs
    with pytest.raises(error) as info:
        gf.dbscan(pts, **args)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("bad", "error", "text"),
    [
        ([[91.0, 0.0]], gf.CoordinateError, "latlon[0] has latitude 91"),
        ([[0.0, 0.0], [0.0, 181.0]], gf.CoordinateError, "latlon[1] has longitude 181"),
        ([[np.nan, 0.0]], gf.CoordinateError, "not finite"),
        (np.zeros((3, 3)), gf.ShapeError, "(N, 2), got (3, 3)"),
        ([1.0, 2.0], gf.ShapeError, "2-D"),
        ("abc", gf.InputError, "numeric array"),
    ],
)
def test_bad_coordinates(bad, error, text):
    with pytest.raises(error) as info:
        gf.dbscan(bad, 1.0)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value)
