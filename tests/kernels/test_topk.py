"""gf.topk: exact maximum inner product search against numpy float64 and faiss.IndexFlatIP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benches.reference import assert_same_topk, numpy_topk, unit_rows

import geofast as gf


@pytest.mark.parametrize("d", [7, 33, 768])
@pytest.mark.parametrize("b", [1, 3, 257])
def test_matches_numpy_float64(b, d):
    n = 3000 if d == 768 else 5000
    x = unit_rows(n, d, seed=d)
    q = unit_rows(b, d, seed=d + b)
    for k in (1, 5, 50):
        scores, idx = gf.topk(q, x, k)
        _, ref = numpy_topk(q, x, k)
        assert_same_topk(scores, idx, q, x, ref)


def test_matches_faiss_index_flat_ip():
    faiss = pytest.importorskip("faiss")
    x = unit_rows(20_000, 512, seed=1)
    q = unit_rows(64, 512, seed=2)
    index = faiss.IndexFlatIP(512)
    index.add(x)
    _, ref = index.search(q, 10)
    scores, idx = gf.topk(q, x, 10)
    assert_same_topk(scores, idx, q, x, ref.astype(np.int64))


def test_k_equals_n_and_k_one():
    x = unit_rows(300, 16, seed=3)
    q = unit_rows(4, 16, seed=4)
    scores, idx = gf.topk(q, x, 300)
    _, ref = numpy_topk(q, x, 300)
    assert_same_topk(scores, idx, q, x, ref)
    assert all(sorted(row) == list(range(300)) for row in idx.tolist())
    s1, i1 = gf.topk(q, x, 1)
    np.testing.assert_array_equal(i1[:, 0], idx[:, 0])
    # A single gallery vector.
    s, i = gf.topk(q, x[:1], 1)
    assert i.tolist() == [[0]] * 4
    np.testing.assert_allclose(s[:, 0], q @ x[0], rtol=1e-6)


def test_ties_break_by_lower_index():
    # Integer-valued vectors: dot products are exact, and most scores tie.
    rng = np.random.default_rng(5)
    x = rng.integers(-1, 2, size=(4000, 9)).astype(np.float32)
    q = rng.integers(-1, 2, size=(13, 9)).astype(np.float32)
    for k in (1, 7, 500, 4000):
        scores, idx = gf.topk(q, x, k)
        ref_s, ref_i = numpy_topk(q, x, k)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


def test_layouts_and_dtypes_give_identical_results():
    x = unit_rows(2000, 40, seed=6)
    q = unit_rows(9, 40, seed=7)
    s, i = gf.topk(q, x, 8)
    variants = [
        (np.asfortranarray(q), x),
        (q, np.asfortranarray(x)),
        (q.astype(np.float64), x.astype(np.float64)),
        (q.tolist(), x),
        (np.ascontiguousarray(np.hstack([q, q])[:, :40]), np.hstack([x, x])[:, :40]),  # strided rows
        (np.repeat(q, 2, axis=0)[::2], x[::-1][::-1]),  # strided queries
    ]
    for qq, xx in variants:
        s2, i2 = gf.topk(qq, xx, 8)
        np.testing.assert_array_equal(i2, i)
        np.testing.assert_array_equal(s2, s)
    # A single (D,) query returns (1, k).
    s1, i1 = gf.topk(q[3], x, 8)
    assert s1.shape == i1.shape == (1, 8)
    np.testing.assert_array_equal(i1[0], i[3])
    # float16 gallery: converted once to float32, exact on the half values.
    xh = x.astype(np.float16)
    s3, i3 = gf.topk(q, xh, 8)
    _, ref = numpy_topk(q, xh.astype(np.float32), 8)
    assert_same_topk(s3, i3, q, xh.astype(np.float32), ref)


def test_results_do_not_depend_on_threads():
    x = unit_rows(30_000, 64, seed=8)
    q = unit_rows(20, 64, seed=9)
    before = gf.get_num_threads()
    try:
        gf.set_num_threads(1)
        one = gf.topk(q, x, 6)
        gf.set_num_threads(3)
        three = gf.topk(q, x, 6)
    finally:
        gf.set_num_threads(before)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


@pytest.mark.parametrize(
    ("queries", "gallery", "k", "error", "text"),
    [
        (np.ones((2, 8)), np.ones((10, 8)), 0, gf.ParameterError, "k must be between 1 and 10"),
        (np.ones((2, 8)), np.ones((10, 8)), 11, gf.ParameterError, "got 11"),
        (np.ones((2, 8)), np.ones((10, 8)), -3, gf.ParameterError, "k must be between 1 and 10"),
        (np.ones((2, 7)), np.ones((10, 8)), 1, gf.ShapeError, "(B, 8)"),
        (np.ones((2, 7)), np.ones((10, 8)), 1, gf.ShapeError, "got (2, 7)"),
        (np.ones((2, 2, 8)), np.ones((10, 8)), 1, gf.ShapeError, "got shape (2, 2, 8)"),
        (np.ones((2, 8)), np.ones(8), 1, gf.ShapeError, "gallery must be a 2-D"),
        (np.array([[0.0] * 8, [np.nan] * 8]), np.ones((10, 8)), 1, gf.CoordinateError, "queries[1] is not finite"),
        (np.ones((2, 8)), np.vstack([np.ones((3, 8)), [[np.inf] * 8]]), 1, gf.CoordinateError, "gallery[3] is not finite"),
        (np.ones((2, 8)), np.zeros((0, 8)), 1, gf.EmptyInputError, "gallery is empty"),
        ("abc", np.ones((10, 8)), 1, gf.InputError, "numeric array"),
        (np.full((1, 8), 1e30), np.full((4, 8), 1e30), 1, gf.ParameterError, "overflow"),
        (
            np.ones((1, 8)),
            np.vstack([np.ones((2, 8)), np.full((1, 8), 1e300)]),
            1,
            gf.ParameterError,
            "gallery must be within the float32 range, got 1e300 in row 2",
        ),
    ],
)
def test_errors_are_clear_value_errors(queries, gallery, k, error, text):
    with pytest.raises(error) as info:
        gf.topk(queries, gallery, k)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


_SUBPROCESS = """
import sys, numpy as np, geofast as gf
from geofast import _geofast
data = np.load(sys.argv[1])
q, x = data["q"], data["x"]
out = {"level": np.array(_geofast.simd_level())}
out["s"], out["i"] = gf.topk(q, x, 7)
for dt in ("f32", "f16", "i8"):
    s, i, l = gf.Gallery(x, dtype=dt).search(q, 7, lse_scale=39.69)
    out["s_" + dt], out["i_" + dt], out["l_" + dt] = s, i, l
s, i, l = gf.Gallery(x.astype(np.float16), dtype="f16").search(q, 7, lse_scale=39.69)
out["s_h"], out["i_h"], out["l_h"] = s, i, l
np.savez(sys.argv[2], **out)
"""


def _run_level(tmp_path: Path, level: str | None) -> dict[str, np.ndarray]:
    env = dict(os.environ)
    env.pop("GEOFAST_SIMD", None)
    if level is not None:
        env["GEOFAST_SIMD"] = level
    out = tmp_path / f"out_{level}.npz"
    subprocess.run([sys.executable, "-c", _SUBPROCESS, str(tmp_path / "in.npz"), str(out)], env=env, check=True, timeout=300)
    return dict(np.load(out))


def test_simd_and_scalar_fallback_agree_bitwise(tmp_path):
    """Every SIMD level computes the same canonical scores: results are bit-identical."""
    q = unit_rows(5, 33, seed=10)
    x = unit_rows(3001, 33, seed=11)
    np.savez(tmp_path / "in.npz", q=q, x=x)
    runs = {level: _run_level(tmp_path, level) for level in ("off", "avx2", None)}
    assert str(runs["off"]["level"]) == "portable"
    assert str(runs["avx2"]["level"]) in ("avx2", "portable")
    if "GEOFAST_SIMD" not in os.environ:
        assert str(runs[None]["level"]) == gf._geofast.simd_level()
    _, ref = numpy_topk(q, x, 7)
    assert_same_topk(runs["off"]["s"], runs["off"]["i"], q, x, ref)
    for level in ("avx2", None):
        for key, value in runs["off"].items():
            if key == "level":
                continue
            np.testing.assert_array_equal(runs[level][key], value, err_msg=f"{key} differs on {level}")
