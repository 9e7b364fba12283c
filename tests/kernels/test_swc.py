"""gf.swc / gf.swc_batch against a reference written here with sklearn DBSCAN + numpy.

Reference rule (Search-within-Cell, visloc-estimation): DBSCAN over the k neighbours (haversine,
R = 6371 km) → largest cluster (noise is no cluster; all noise → every point its own cluster) →
ties to the cluster holding the most similar neighbour → re-normalised weighted mean of the
members' unit vectors (weights s**a; a = 0: equal); one member → its own coordinates; a vanishing
mean → the most similar member.
"""

from __future__ import annotations

import numpy as np
import pytest
from benches.reference import ref_swc
from hypothesis import given, settings
from hypothesis import strategies as st

import geofast as gf
from conftest import random_latlon

R = 6371.0


def assert_same_place(lat, lon, rlat, rlon, tol=1e-9):
    assert abs(lat - rlat) < tol
    if abs(rlat) < 90 - 1e-6:
        dlon = (lon - rlon + 180.0) % 360.0 - 180.0
        assert abs(dlon) < tol, (lon, rlon)


def neighbours(k, seed, *, groups=3, spread_km=0.4):
    """k retrieved neighbours: a few tight groups (within ~eps) plus scattered points."""
    rng = np.random.default_rng(seed)
    centres = random_latlon(groups, seed)
    out = random_latlon(k, seed + 1)
    which = rng.integers(-1, groups, k)  # -1: scattered
    for i, g in enumerate(which):
        if g >= 0:
            dlat = rng.normal() * spread_km / 111.2
            dlon = rng.normal() * spread_km / (111.2 * max(np.cos(np.radians(centres[g, 0])), 0.05))
            out[i] = [np.clip(centres[g, 0] + dlat, -90, 90), (centres[g, 1] + dlon + 180) % 360 - 180]
    sim = rng.uniform(0.1, 0.9, k)
    return out, sim


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference(seed):
    k = [10, 5, 16, 30][seed % 4]
    ll, sim = neighbours(k, seed)
    for eps, m, a in [(1.0, 1, 0.0), (0.5, 2, 1.0), (2.0, 3, 3.0), (1.0, 1, 0.5)]:
        lat, lon, members = gf.swc(ll, sim, eps_km=eps, min_samples=m, weight_exponent=a)
        rlat, rlon, rmembers = ref_swc(ll, sim, eps, m, a)
        assert members.dtype == np.int64
        np.testing.assert_array_equal(members, rmembers)
        assert_same_place(lat, lon, rlat, rlon)


@pytest.mark.parametrize("k", [65, 300, 2000])
def test_many_neighbours_match_reference(k):
    # Beyond 64 neighbours DBSCAN runs through gf.dbscan's engines instead of the O(k^2) one.
    ll, sim = neighbours(k, k, groups=6, spread_km=0.8)
    for eps, m, a in [(1.0, 1, 0.0), (0.5, 4, 1.0)]:
        lat, lon, members = gf.swc(ll, sim, eps_km=eps, min_samples=m, weight_exponent=a)
        rlat, rlon, rmembers = ref_swc(ll, sim, eps, m, a)
        np.testing.assert_array_equal(members, rmembers)
        assert_same_place(lat, lon, rlat, rlon)
        blat, blon, bmembers = gf.swc_batch(ll[None], sim[None], eps_km=eps, min_samples=m, weight_exponent=a)
        assert (blat[0], blon[0]) == (lat, lon) and np.flatnonzero(bmembers[0]).tolist() == members.tolist()


def test_visloc_example_largest_cluster_wins():
    # 4 neighbours around the Eiffel tower (within a few hundred metres), 3 in Rome, 3 scattered.
    ll = np.array(
        [
            [41.9028, 12.4964],
            [48.8584, 2.2945],
            [48.8600, 2.2950],
            [-33.86, 151.21],
            [41.9030, 12.4970],
            [48.8570, 2.2930],
            [40.71, -74.0],
            [48.8590, 2.2960],
            [41.9020, 12.4950],
            [35.68, 139.69],
        ]
    )
    sim = np.array([0.95, 0.9, 0.6, 0.99, 0.8, 0.7, 0.5, 0.4, 0.85, 0.3])
    lat, lon, members = gf.swc(ll, sim)
    assert members.tolist() == [1, 2, 5, 7]
    assert 48.85 < lat < 48.87 and 2.29 < lon < 2.30
    rlat, rlon, _ = ref_swc(ll, sim)
    assert_same_place(lat, lon, rlat, rlon)


def test_ties_and_all_noise():
    ll = np.array([[10.0, 10.0], [10.001, 10.0], [20.0, 20.0], [20.001, 20.0], [30.0, 30.0]])
    sim = np.array([0.5, 0.6, 0.7, 0.1, 0.99])
    # Two clusters of two: the one holding the most similar clustered neighbour (0.7).
    assert gf.swc(ll, sim)[2].tolist() == [2, 3]
    # Every point noise: the most similar point, its coordinates unchanged.
    lat, lon, members = gf.swc(ll, sim, min_samples=3)
    assert members.tolist() == [4] and (lat, lon) == (30.0, 30.0)
    # Equal similarities: the first most similar neighbour.
    lat, lon, members = gf.swc(ll, np.ones(5), min_samples=3)
    assert members.tolist() == [0] and (lat, lon) == (10.0, 10.0)


def test_antimeridian_and_pole_centroids():
    ll = np.array([[0.0, 179.9995], [0.0, -179.9995], [0.001, 180.0]])
    lat, lon, members = gf.swc(ll, np.ones(3))
    assert members.tolist() == [0, 1, 2]
    assert abs(abs(lon) - 180.0) < 1e-3 and abs(lat - 0.000333) < 1e-5
    rlat, rlon, _ = ref_swc(ll, np.ones(3))
    assert_same_place(lat, lon, rlat, rlon)
    pole = np.array([[89.9999, 0.0], [89.9999, 120.0], [89.9999, -120.0]])
    lat, lon, members = gf.swc(pole, np.ones(3))
    assert members.tolist() == [0, 1, 2] and lat > 89.99999


def test_vanishing_mean_falls_back_to_most_similar_member():
    # Antipodes with eps beyond half the circumference: one cluster whose mean vector is zero.
    ll = np.array([[0.0, 0.0], [0.0, 180.0]])
    lat, lon, members = gf.swc(ll, np.array([0.2, 0.8]), eps_km=30_000.0)
    assert members.tolist() == [0, 1] and (lat, lon) == (0.0, 180.0)
    # All weights zero (similarity 0 with a > 0): also the most similar member (the first).
    ll = np.array([[0.0, 0.0], [0.0, 0.001]])
    lat, lon, members = gf.swc(ll, np.zeros(2), weight_exponent=2.0)
    assert members.tolist() == [0, 1] and (lat, lon) == (0.0, 0.0)


def test_negative_similarities_with_integer_exponent():
    ll, _ = neighbours(12, 3, groups=2, spread_km=0.2)
    sim = np.random.default_rng(0).uniform(-1, 1, 12)
    for a in (0.0, 1.0, 2.0):
        lat, lon, members = gf.swc(ll, sim, weight_exponent=a)
        rlat, rlon, rmembers = ref_swc(ll, sim, weight_exponent=a)
        np.testing.assert_array_equal(members, rmembers)
        assert_same_place(lat, lon, rlat, rlon)


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 20),
    seed=st.integers(0, 2**31),
    eps=st.sampled_from([0.1, 1.0, 5.0, 50.0]),
    m=st.integers(1, 4),
    a=st.sampled_from([0.0, 1.0, 2.0, 0.5, 4.0]),
    groups=st.integers(1, 4),
)
def test_hypothesis_matches_reference(k, seed, eps, m, a, groups):
    ll, sim = neighbours(k, seed, groups=groups, spread_km=eps / 2)
    lat, lon, members = gf.swc(ll, sim, eps_km=eps, min_samples=m, weight_exponent=a)
    rlat, rlon, rmembers = ref_swc(ll, sim, eps, m, a)
    np.testing.assert_array_equal(members, rmembers)
    assert_same_place(lat, lon, rlat, rlon)


@pytest.mark.parametrize(("eps", "m", "a"), [(1.0, 1, 0.0), (0.3, 2, 1.0), (5.0, 3, 2.0)])
def test_batch_equals_reference_and_single_calls(eps, m, a):
    b, k = 300, 10
    ll = np.empty((b, k, 2))
    sim = np.empty((b, k))
    for q in range(b):
        ll[q], sim[q] = neighbours(k, 1000 + q, groups=1 + q % 4, spread_km=eps / 2)
    lat, lon, members = gf.swc_batch(ll, sim, eps_km=eps, min_samples=m, weight_exponent=a)
    assert lat.shape == lon.shape == (b,) and members.shape == (b, k) and members.dtype == np.bool_
    for q in range(0, b, 7):
        rlat, rlon, rmembers = ref_swc(ll[q], sim[q], eps, m, a)
        np.testing.assert_array_equal(np.flatnonzero(members[q]), rmembers)
        assert_same_place(lat[q], lon[q], rlat, rlon)
    for q in range(b):
        slat, slon, smembers = gf.swc(ll[q], sim[q], eps_km=eps, min_samples=m, weight_exponent=a)
        assert (slat, slon) == (lat[q], lon[q])
        np.testing.assert_array_equal(np.flatnonzero(members[q]), smembers)


def test_float32_strided_and_list_inputs():
    b, k = 50, 8
    ll = np.empty((b, k, 2))
    sim = np.empty((b, k))
    for q in range(b):
        ll[q], sim[q] = neighbours(k, q)
    lat, lon, members = gf.swc_batch(ll, sim)
    # float32: same as float64 of the float32 values.
    l32, s32 = ll.astype(np.float32), sim.astype(np.float32)
    r32 = gf.swc_batch(l32, s32)
    r64 = gf.swc_batch(l32.astype(np.float64), s32.astype(np.float64))
    for x, y in zip(r32, r64):
        np.testing.assert_array_equal(x, y)
    # Strided / non-contiguous views and lists.
    big = np.zeros((b, k, 4))
    big[..., 0], big[..., 2] = ll[..., 0], ll[..., 1]
    bigsim = np.zeros((b, 2 * k))
    bigsim[:, ::2] = sim
    for x, y in zip(gf.swc_batch(big[..., ::2], bigsim[:, ::2]), (lat, lon, members)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(gf.swc_batch(ll.tolist(), sim.tolist()), (lat, lon, members)):
        np.testing.assert_array_equal(x, y)
    q = 3
    one = gf.swc(np.asfortranarray(ll[q]), sim[q].astype(np.float32).astype(np.float64))
    assert (one[0], one[1]) == (lat[q], lon[q])
    one32 = gf.swc(ll[q].astype(np.float32), sim[q].astype(np.float32))
    ref = ref_swc(ll[q].astype(np.float32).astype(np.float64), sim[q].astype(np.float32).astype(np.float64))
    assert_same_place(one32[0], one32[1], ref[0], ref[1])
    assert gf.swc(ll[q].tolist(), sim[q].tolist())[:2] == (lat[q], lon[q])


def test_empty_batch():
    lat, lon, members = gf.swc_batch(np.zeros((0, 10, 2)), np.zeros((0, 10)))
    assert lat.shape == (0,) and lon.shape == (0,) and members.shape == (0, 10)


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (
            lambda: gf.swc([[0, 0], [0, 0.001]], [-0.5, 0.5], weight_exponent=0.5),
            gf.ParameterError,
            "weight_exponent must be an integer when similarities are negative",
        ),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [0.0, 0.5], weight_exponent=-1.0), gf.ParameterError, "finite"),
        (
            lambda: gf.swc([[0, 0], [0, 0.001]], [0.1, 0.5], weight_exponent=float("nan")),
            gf.ParameterError,
            "weight_exponent must be finite",
        ),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [np.nan, 0.5]), gf.CoordinateError, "similarity[0] is not finite"),
        (
            lambda: gf.swc([[0, 0], [0, 0.001]], [0.5]),
            gf.ShapeError,
            "len(similarity) must equal the number of neighbours in latlon: 1 != 2",
        ),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [[0.5, 0.5]]), gf.ShapeError, "similarity must have shape (k,)"),
        (lambda: gf.swc(np.zeros((0, 2)), np.zeros(0)), gf.EmptyInputError, "at least one neighbour"),
        (lambda: gf.swc([[95, 0], [0, 0.001]], [0.1, 0.5]), gf.CoordinateError, "latlon[0] has latitude 95"),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [0.1, 0.5], eps_km=0.0), gf.ParameterError, "eps_km"),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [0.1, 0.5], min_samples=0), gf.ParameterError, "min_samples"),
        (lambda: gf.swc([[0, 0], [0, 0.001]], [0.1, 0.5], radius_km=-1.0), gf.ParameterError, "radius_km"),
        (
            lambda: gf.swc_batch(np.zeros((2, 3, 3)), np.zeros((2, 3))),
            gf.ShapeError,
            "latlon must have shape (B, k, 2), got (2, 3, 3)",
        ),
        (lambda: gf.swc_batch(np.zeros((2, 3)), np.zeros((2, 3))), gf.ShapeError, "latlon must have shape (B, k, 2), got (2, 3)"),
        (
            lambda: gf.swc_batch(np.zeros((2, 3, 2)), np.zeros((2, 4))),
            gf.ShapeError,
            "similarity must have shape (B, k) = (2, 3)",
        ),
        (lambda: gf.swc_batch(np.zeros((2, 3, 2)), np.zeros(6)), gf.ShapeError, "similarity must have shape (B, k)"),
        (lambda: gf.swc_batch(np.zeros((2, 0, 2)), np.zeros((2, 0))), gf.EmptyInputError, "k >= 1"),
        (
            lambda: gf.swc_batch(np.full((2, 3, 2), [0.0, 200.0]), np.zeros((2, 3))),
            gf.CoordinateError,
            "latlon.reshape(-1, 2)[0] has longitude 200",
        ),
        (
            lambda: gf.swc_batch(np.zeros((2, 3, 2)), np.array([[0, 0, 0], [0, np.inf, 0]])),
            gf.CoordinateError,
            "similarity.reshape(-1)[4] is not finite",
        ),
        (lambda: gf.swc_batch(np.zeros((2, 3, 2)), -np.ones((2, 3)), weight_exponent=1.5), gf.ParameterError, "weight_exponent"),
        (lambda: gf.swc_batch("abc", np.zeros((2, 3))), gf.InputError, "numeric array"),
    ],
)
def test_errors(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert text in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
