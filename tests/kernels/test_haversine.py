"""gf.haversine and gf.haversine_matrix against numpy, scikit-learn and an mpmath reference."""

from __future__ import annotations

import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest
from benches.reference import numpy_haversine
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics.pairwise import haversine_distances

import geofast as gf
from conftest import random_latlon

R = 6371.0088


def mp_haversine(p, q, radius_km: float = R) -> float:
    """50-digit reference: the haversine in atan2 form, evaluated with mpmath on the exact
    binary values of the inputs."""
    with mpmath.workdps(50):
        lat1, lon1, lat2, lon2 = (mpmath.radians(mpmath.mpf(float(x))) for x in (p[0], p[1], q[0], q[1]))
        h = mpmath.sin((lat2 - lat1) / 2) ** 2 + mpmath.cos(lat1) * mpmath.cos(lat2) * mpmath.sin((lon2 - lon1) / 2) ** 2
        return float(2 * mpmath.mpf(radius_km) * mpmath.atan2(mpmath.sqrt(h), mpmath.sqrt(1 - h)))


def well_conditioned(d: np.ndarray, radius_km: float = R) -> np.ndarray:
    """Where the float64 asin formula keeps ~1e-13: not metres, not near antipodes."""
    return (d > 1.0) & (d < 0.99 * np.pi * radius_km)


# ---------------------------------------------------------------------------------------------
# parity


def test_matches_numpy_formula():
    a, b = random_latlon(200_000, 1), random_latlon(200_000, 2)
    ours = gf.haversine(a, b)
    ref = numpy_haversine(a, b)
    assert ours.dtype == np.float64 and ours.shape == (200_000,)
    m = well_conditioned(ref)
    assert m.mean() > 0.95
    np.testing.assert_allclose(ours[m], ref[m], rtol=1e-12)
    # Elsewhere still close in absolute terms (the anchor loses digits, not us).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_matches_sklearn_pairwise_diagonal():
    a, b = random_latlon(2_000, 3), random_latlon(2_000, 4)
    ref = np.diag(haversine_distances(np.radians(a), np.radians(b))) * R
    ours = gf.haversine(a, b)
    m = well_conditioned(ref)
    np.testing.assert_allclose(ours[m], ref[m], rtol=1e-12)


def test_matches_high_precision_reference_everywhere():
    """Random pairs, metre-scale pairs and near-antipodal pairs against 50-digit mpmath:
    ~2e-16 relative where numpy's asin form loses up to ~1e-9."""
    rng = np.random.default_rng(5)
    a = random_latlon(300, 6)
    b = random_latlon(300, 7)
    # Metres apart.
    a_close = random_latlon(300, 8)
    b_close = a_close + rng.normal(0, 1e-5, a_close.shape)
    b_close[:, 0] = np.clip(b_close[:, 0], -90, 90)
    b_close[:, 1] = np.clip(b_close[:, 1], -180, 180)
    # Nearly antipodal: the antipode moved by up to ~100 m.
    a_far = random_latlon(300, 9)
    b_far = np.column_stack([-a_far[:, 0], np.where(a_far[:, 1] > 0, a_far[:, 1] - 180, a_far[:, 1] + 180)])
    b_far += rng.normal(0, 1e-3, b_far.shape)
    b_far[:, 0] = np.clip(b_far[:, 0], -90, 90)
    b_far[:, 1] = np.clip(b_far[:, 1], -180, 180)
    a_all, b_all = np.vstack([a, a_close, a_far]), np.vstack([b, b_close, b_far])
    ours = gf.haversine(a_all, b_all)
    ref = np.array([mp_haversine(p, q) for p, q in zip(a_all, b_all)])
    np.testing.assert_allclose(ours, ref, rtol=2e-15, atol=1e-15)
    # The textbook float64 formula is measurably worse on the degenerate groups.
    naive = numpy_haversine(a_all, b_all)
    assert np.max(np.abs(naive - ref) / ref) > 10 * np.max(np.abs(ours - ref) / ref)


def test_one_metre_and_one_millimetre():
    for dist_km in (1e-3, 1e-6):
        dlon = np.degrees(dist_km / R)
        d = gf.haversine([[0.0, 10.0]], [[0.0, 10.0 + dlon]])[0]
        assert d == pytest.approx(mp_haversine((0.0, 10.0), (0.0, 10.0 + dlon)), rel=1e-12)
        # A north–south step at 60°N.
        dlat = np.degrees(dist_km / R)
        d = gf.haversine([[60.0, -5.0]], [[60.0 + dlat, -5.0]])[0]
        assert d == pytest.approx(mp_haversine((60.0, -5.0), (60.0 + dlat, -5.0)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# edges


def test_poles_are_one_point_at_any_longitude():
    lons = np.linspace(-180, 180, 37)
    north = np.column_stack([np.full(37, 90.0), lons])
    assert np.all(gf.haversine(north, [[90.0, 0.0]]) == 0.0)
    south = np.column_stack([np.full(37, -90.0), lons])
    assert np.all(gf.haversine(south, south[::-1]) == 0.0)
    # Distance from the pole to a point does not depend on the pole's longitude.
    d = gf.haversine(north, [[12.5, 33.0]])
    assert np.all(d == d[0])
    assert d[0] == pytest.approx(np.radians(90 - 12.5) * R, rel=1e-14)
    # Pole to pole is exactly half the circumference.
    assert gf.haversine([[90.0, 40.0]], [[-90.0, -140.0]])[0] == pytest.approx(np.pi * R, rel=1e-15)


def test_antimeridian():
    d = gf.haversine([[0.0, 179.9], [45.0, -179.99999]], [[0.0, -179.9], [45.0, 179.99999]])
    ref = [mp_haversine((0.0, 179.9), (0.0, -179.9)), mp_haversine((45.0, -179.99999), (45.0, 179.99999))]
    np.testing.assert_allclose(d, ref, rtol=1e-13)
    assert d[0] == pytest.approx(np.radians(0.2) * R, rel=1e-12)
    # Same as the pair shifted away from the antimeridian.
    shifted = gf.haversine([[0.0, 9.9]], [[0.0, 10.1]])[0]
    assert d[0] == pytest.approx(shifted, rel=1e-12)


def test_duplicates_and_antipodes():
    pts = random_latlon(1_000, 10)
    assert np.all(gf.haversine(pts, pts) == 0.0)
    anti = np.column_stack([-pts[:, 0], np.where(pts[:, 1] > 0, pts[:, 1] - 180, pts[:, 1] + 180)])
    np.testing.assert_allclose(gf.haversine(pts, anti), np.pi * R, rtol=1e-14)
    np.testing.assert_allclose(gf.haversine_matrix(pts[:50], anti[:50]).diagonal(), np.pi * R, rtol=1e-14)


def test_radius_scales_the_result():
    a, b = random_latlon(500, 11), random_latlon(500, 12)
    np.testing.assert_allclose(gf.haversine(a, b, radius_km=6371.0), numpy_haversine(a, b, 6371.0), rtol=1e-9)
    np.testing.assert_allclose(gf.haversine(a, b, radius_km=1.0) * R, gf.haversine(a, b), rtol=1e-15)
    np.testing.assert_allclose(gf.haversine_matrix(a, b, radius_km=2.0), 2 * gf.haversine_matrix(a, b, radius_km=1.0), rtol=1e-15)


def test_float32_fortran_strided_and_list_inputs():
    a, b = random_latlon(3_000, 13), random_latlon(3_000, 14)
    expected = gf.haversine(a, b)
    np.testing.assert_array_equal(gf.haversine(np.asfortranarray(a), b), expected)
    wide = np.zeros((3_000, 5))
    wide[:, 1], wide[:, 3] = a[:, 0], a[:, 1]
    np.testing.assert_array_equal(gf.haversine(wide[:, 1::2], b), expected)
    np.testing.assert_array_equal(gf.haversine(a[::-1], b[::-1]), expected[::-1])
    np.testing.assert_array_equal(gf.haversine(a.tolist(), b.tolist()), expected)
    # float32 is read as float32 values, exactly like their float64 conversion.
    a32 = a.astype(np.float32)
    np.testing.assert_array_equal(gf.haversine(a32, b), gf.haversine(a32.astype(np.float64), b))
    np.testing.assert_allclose(gf.haversine(a32, b), expected, rtol=0, atol=0.05)
    # Integer arrays are converted.
    np.testing.assert_array_equal(
        gf.haversine(np.array([[0, 0]]), np.array([[0, 90]])), gf.haversine([[0.0, 0.0]], [[0.0, 90.0]])
    )
    # Matrix: same for every layout.
    m = gf.haversine_matrix(a[:100], b[:200])
    np.testing.assert_array_equal(gf.haversine_matrix(np.asfortranarray(a[:100]), b[:200].astype(np.float64)), m)
    np.testing.assert_array_equal(gf.haversine_matrix(a[:100].tolist(), wide[:200, 1::2]), gf.haversine_matrix(a[:100], a[:200]))


def test_broadcasting_one_point():
    a = random_latlon(1_000, 15)
    p = np.array([[48.8566, 2.3522]])
    np.testing.assert_array_equal(gf.haversine(a, p), gf.haversine(a, np.repeat(p, 1_000, axis=0)))
    np.testing.assert_array_equal(gf.haversine(p, a), gf.haversine(np.repeat(p, 1_000, axis=0), a))
    assert gf.haversine(p, p).shape == (1,)


def test_empty_inputs_give_empty_outputs():
    e = np.zeros((0, 2))
    assert gf.haversine(e, e).shape == (0,)
    assert gf.haversine(e, [[1.0, 2.0]]).shape == (0,)
    assert gf.haversine([[1.0, 2.0]], e).shape == (0,)
    assert gf.haversine_matrix(e, random_latlon(3)).shape == (0, 3)
    assert gf.haversine_matrix(random_latlon(4), e).shape == (4, 0)
    assert gf.haversine_matrix(e, e).shape == (0, 0)


_LEVEL_SCRIPT = (
    "import sys, numpy as np, geofast as gf\n"
    "from geofast import _geofast\n"
    "a, b = np.load(sys.argv[1]), np.load(sys.argv[2])\n"
    "np.savez(sys.argv[3], level=np.array(_geofast.simd_level()), d=gf.haversine(a, b),\n"
    "         m=gf.haversine_matrix(a[:300], b[:400]), e=gf.equal_earth(a))\n"
)


def _at_every_level(tmp_path, a: np.ndarray, b: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The kernels' results at every level this CPU has, each computed in a child whose
    ``GEOFAST_SIMD`` names the level explicitly (a cap above the CPU's best is reported as the
    best, so an AVX2-only machine yields portable and avx2)."""
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    runs: dict[str, dict[str, np.ndarray]] = {}
    for value in ("portable", "avx2", "avx512"):
        out = tmp_path / f"{value}.npz"
        env = dict(os.environ, GEOFAST_SIMD=value)
        subprocess.run(
            [sys.executable, "-c", _LEVEL_SCRIPT, tmp_path / "a.npy", tmp_path / "b.npy", out], env=env, check=True, timeout=120
        )
        run = dict(np.load(out))
        runs.setdefault(str(run["level"]), run)
    return runs


def test_every_level_agrees(tmp_path):
    """GEOFAST_SIMD=portable runs the baseline (non-FMA) build of the same kernels, avx2 and
    avx512 the fused ones. The fused levels do the same fused operations on narrower or wider
    vectors: the same bits. Portable rounds each multiply-add twice: measured over 4 seeds of
    5,000 pairs, at most 5.8e-16 relative (2.6 eps) elementwise, 7.3e-12 km absolute (8 ulp of the
    radius) in the matrix (whose chord form is absolute-accurate) and 3.3e-16 absolute in Equal
    Earth; the bounds below (45 eps, 110 ulp, 22 ulp) leave >= 13x and still fail on a level
    that computes differently (a constant or an intermediate rounded to float32: ~1e-8). The
    parent's own results equal the run at the level it reports."""
    a, b = random_latlon(5_000, 16), random_latlon(5_000, 17)
    runs = _at_every_level(tmp_path, a, b)
    assert "portable" in runs
    portable = runs["portable"]
    for level, run in runs.items():
        np.testing.assert_allclose(run["d"], portable["d"], rtol=1e-14, atol=0, err_msg=level)
        np.testing.assert_allclose(run["m"], portable["m"], rtol=0, atol=1e-10, err_msg=level)
        np.testing.assert_allclose(run["e"], portable["e"], rtol=0, atol=5e-15, err_msg=level)
    if "avx512" in runs:
        for key in ("d", "m", "e"):
            np.testing.assert_array_equal(runs["avx512"][key], runs["avx2"][key], err_msg=key)
    here = runs[gf._geofast.simd_level()]
    np.testing.assert_array_equal(gf.haversine(a, b), here["d"])
    np.testing.assert_array_equal(gf.haversine_matrix(a[:300], b[:400]), here["m"])
    np.testing.assert_array_equal(gf.equal_earth(a), here["e"])


def test_results_do_not_depend_on_thread_count():
    a, b = random_latlon(300_000, 18), random_latlon(300_000, 19)
    before = gf.get_num_threads()
    try:
        gf.set_num_threads(1)
        one, mone = gf.haversine(a, b), gf.haversine_matrix(a[:700], b[:900])
        gf.set_num_threads(3)
        np.testing.assert_array_equal(gf.haversine(a, b), one)
        np.testing.assert_array_equal(gf.haversine_matrix(a[:700], b[:900]), mone)
    finally:
        gf.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# matrix


def test_matrix_matches_sklearn():
    a, b = random_latlon(400, 20), random_latlon(900, 21)
    ours = gf.haversine_matrix(a, b)
    ref = haversine_distances(np.radians(a), np.radians(b)) * R
    assert ours.shape == (400, 900) and ours.dtype == np.float64
    m = well_conditioned(ref)
    np.testing.assert_allclose(ours[m], ref[m], rtol=1e-12)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_matrix_matches_elementwise_and_is_symmetric():
    a, b = random_latlon(300, 22), random_latlon(500, 23)
    m = gf.haversine_matrix(a, b)
    ai, bj = np.repeat(a, 500, axis=0), np.tile(b, (300, 1))
    np.testing.assert_allclose(m.ravel(), gf.haversine(ai, bj), rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(gf.haversine_matrix(b, a), m.T)
    sq = gf.haversine_matrix(a, a)
    np.testing.assert_array_equal(sq, sq.T)
    assert np.all(np.diag(sq) == 0.0)


def test_matrix_close_pairs_take_the_accurate_path():
    """A city-sized cluster: every pair is under 6 km, where chords of unit vectors would lose
    relative precision; results match the 50-digit reference."""
    rng = np.random.default_rng(24)
    centre = np.array([35.6762, 139.6503])
    pts = centre + rng.normal(0, 0.01, (60, 2))
    m = gf.haversine_matrix(pts, pts)
    ref = np.array([[mp_haversine(p, q) for q in pts] for p in pts])
    np.testing.assert_allclose(m, ref, rtol=1e-13, atol=1e-15)
    # Metre-scale offsets.
    tiny = centre + rng.normal(0, 1e-5, (20, 2))
    m = gf.haversine_matrix(tiny, tiny[::-1])
    ref = np.array([[mp_haversine(p, q) for q in tiny[::-1]] for p in tiny])
    np.testing.assert_allclose(m, ref, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# properties

lat_st = st.floats(-90.0, 90.0, allow_nan=False)
lon_st = st.floats(-180.0, 180.0, allow_nan=False)
point_st = st.tuples(lat_st, lon_st)


@settings(max_examples=300, deadline=None)
@given(point_st, point_st, point_st)
def test_metric_properties(p, q, r):
    pts = np.array([p, q, r])
    d = gf.haversine_matrix(pts, pts)
    # Symmetry and identity.
    np.testing.assert_array_equal(d, d.T)
    assert np.all(np.diag(d) == 0.0)
    # Range.
    assert np.all(d >= 0.0) and np.all(d <= np.pi * R * (1 + 1e-15))
    # Triangle inequality (up to rounding).
    assert d[0, 2] <= d[0, 1] + d[1, 2] + 1e-9
    # Elementwise agrees with the matrix and with the high-precision reference.
    e = gf.haversine(pts, pts[[1, 2, 0]])
    np.testing.assert_allclose(e, [d[0, 1], d[1, 2], d[2, 0]], rtol=1e-12, atol=1e-9)
    ref = mp_haversine(p, q)
    assert abs(e[0] - ref) <= 1e-14 * ref + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(point_st, min_size=1, max_size=40), point_st)
def test_broadcast_equals_explicit_repeat(points, p):
    a = np.array(points)
    rep = np.repeat(np.array([p]), len(points), axis=0)
    np.testing.assert_array_equal(gf.haversine(a, [p]), gf.haversine(a, rep))
    np.testing.assert_array_equal(gf.haversine([p], a), gf.haversine(rep, a))
    np.testing.assert_allclose(gf.haversine_matrix(a, [p])[:, 0], gf.haversine(a, [p]), rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("fn", [gf.haversine, gf.haversine_matrix])
@pytest.mark.parametrize(
    ("a", "b", "error", "text"),
    [
        ([[91.0, 0.0]], [[0.0, 0.0]], gf.CoordinateError, "a[0] has latitude 91"),
        ([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -180.5]], gf.CoordinateError, "b[1] has longitude -180.5"),
        ([[0.0, 0.0], [np.nan, 0.0]], [[0.0, 0.0], [0.0, 0.0]], gf.CoordinateError, "a[1] is not finite"),
        ([[0.0, 0.0]], [[0.0, np.inf]], gf.CoordinateError, "b[0] is not finite"),
        ([[0.0, -np.inf]], [[0.0, 0.0]], gf.CoordinateError, "a[0] is not finite"),
        ([1.0, 2.0], [[0.0, 0.0]], gf.ShapeError, "a must be a 2-D array"),
        (np.zeros((4, 3)), [[0.0, 0.0]], gf.ShapeError, "a must have shape (N, 2), got (4, 3)"),
        ([[0.0, 0.0]], np.zeros((2, 1)), gf.ShapeError, "b must have shape (N, 2), got (2, 1)"),
        ("abc", [[0.0, 0.0]], gf.InputError, "a must be a numeric array"),
        ([[0.0, 0.0]], [["x", "y"]], gf.InputError, "b must be a numeric array"),
    ],
)
def test_bad_coordinates_raise_clear_value_errors(fn, a, b, error, text):
    with pytest.raises(error) as info:
        fn(a, b)
    assert isinstance(info.value, ValueError) and isinstance(info.value, gf.GeofastError)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


def test_first_bad_row_is_reported_a_before_b():
    a = np.zeros((10_000, 2))
    b = np.zeros((10_000, 2))
    a[7_000, 0] = 100.0
    a[9_000, 1] = np.nan
    b[3, 1] = 200.0
    with pytest.raises(gf.CoordinateError, match=r"a\[7000\] has latitude 100"):
        gf.haversine(a, b)
    a[7_000, 0] = 0.0
    with pytest.raises(gf.CoordinateError, match=r"a\[9000\] is not finite"):
        gf.haversine(a, b)
    a[9_000, 1] = 0.0
    with pytest.raises(gf.CoordinateError, match=r"b\[3\] has longitude 200"):
        gf.haversine(a, b)
    # A broadcast point is validated even when there are no pairs.
    with pytest.raises(gf.CoordinateError, match=r"b\[0\] has latitude -95"):
        gf.haversine(np.zeros((0, 2)), [[-95.0, 0.0]])


def test_mismatched_lengths_name_both_shapes():
    with pytest.raises(gf.ShapeError) as info:
        gf.haversine(np.zeros((5, 2)), np.zeros((3, 2)))
    msg = str(info.value)
    assert "(5, 2)" in msg and "(3, 2)" in msg and "(1, 2)" in msg
    with pytest.raises(gf.ShapeError):
        gf.haversine(np.zeros((0, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("fn", [gf.haversine, gf.haversine_matrix])
@pytest.mark.parametrize("radius", [0.0, -6371.0, np.nan, np.inf, -np.inf])
def test_bad_radius(fn, radius):
    with pytest.raises(gf.ParameterError, match="radius_km must be a finite number > 0") as info:
        fn([[0.0, 0.0]], [[1.0, 1.0]], radius_km=radius)
    assert isinstance(info.value, ValueError)


def test_radius_is_keyword_only():
    with pytest.raises(TypeError):
        gf.haversine([[0.0, 0.0]], [[1.0, 1.0]], 6371.0)  # type: ignore[misc]
    assert gf.haversine(a=[[0.0, 0.0]], b=[[0.0, 1.0]], radius_km=1.0)[0] == pytest.approx(np.radians(1.0))


def _overcommit_refuses_huge_requests() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge_requests(), reason="needs Linux heuristic/strict overcommit")
def test_matrix_too_large_is_an_error_not_a_crash():
    z = np.zeros((1_000_000, 2))
    with pytest.raises(gf.TooLargeError, match="distance matrix is too large") as info:
        gf.haversine_matrix(z, z)  # 8 TB
    assert isinstance(info.value, ValueError)
    assert "smaller batches" in str(info.value)
