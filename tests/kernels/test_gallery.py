"""gf.Gallery: stored-once galleries (f32 / f16 / i8) with exact re-rank and same-pass log-sum-exp."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest
from benches.reference import assert_same_topk, logsumexp64, numpy_topk, unit_rows
from scipy.special import logsumexp

import geofast as gf


def test_f32_gallery_equals_topk_and_numpy():
    x = unit_rows(8000, 96, seed=1)
    q = unit_rows(21, 96, seed=2)
    g = gf.Gallery(x)
    assert (len(g), g.dim, g.dtype) == (8000, 96, "f32")
    assert g.nbytes == x.nbytes  # a writeable array is copied once
    s, i = g.search(q, 9)
    s2, i2 = gf.topk(q, x, 9)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(s, s2)
    _, ref = numpy_topk(q, x, 9)
    assert_same_topk(s, i, q, x, ref)
    assert repr(g) == f"Gallery(n=8000, dim=96, dtype='f32', nbytes={x.nbytes})"


def _recall(idx: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(idx.tolist(), ref.tolist())]))


def _check_quantized(n: int, d: int, nq: int, k: int) -> None:
    faiss = pytest.importorskip("faiss")
    x = unit_rows(n, d, seed=3)
    q = unit_rows(nq, d, seed=4)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    _, ref = index.search(q, k)
    exact = gf.Gallery(x).search(q, k)
    for dtype in ("f16", "i8"):
        g = gf.Gallery(x, dtype=dtype)
        s, i = g.search(q, k)
        assert _recall(i, ref) == 1.0 or _recall(i, exact[1]) == 1.0
        # The re-ranked results are exactly the float32 gallery's: same indices, same scores.
        np.testing.assert_array_equal(i, exact[1])
        np.testing.assert_array_equal(s, exact[0])
        assert_same_topk(s, i, q, x, ref.astype(np.int64))


def test_quantized_recall_is_one():
    _check_quantized(20_000, 512, 1000, 5)


@pytest.mark.slow
def test_quantized_recall_is_one_full_size():
    _check_quantized(100_000, 512, 1000, 5)


def test_quantized_handles_clustered_and_duplicate_vectors():
    rng = np.random.default_rng(5)
    centres = unit_rows(7, 64, seed=6)
    x = (centres[rng.integers(0, 7, 20_000)] + 1e-3 * rng.standard_normal((20_000, 64))).astype(np.float32)
    x[5000:6000] = x[5000]  # exact duplicates tie on every query
    q = np.vstack([unit_rows(30, 64, seed=7), x[5000:5001]])
    exact = gf.Gallery(x).search(q, 12, lse_scale=50.0)
    for dtype in ("f16", "i8"):
        s, i, lse = gf.Gallery(x, dtype=dtype).search(q, 12, lse_scale=50.0)
        np.testing.assert_array_equal(i, exact[1])
        np.testing.assert_array_equal(s, exact[0])
        np.testing.assert_allclose(lse, exact[2], rtol=1e-4)
    # The query equal to the duplicated row: the duplicates tie, the lowest indices win.
    _, ref = numpy_topk(q[-1:], x, 12)
    assert exact[1][-1].tolist() == ref[0].tolist()


@pytest.mark.parametrize("scale", [39.69, 78.94, 1.0])
def test_lse_matches_float64_logsumexp(scale):
    x = unit_rows(30_000, 128, seed=8)
    q = unit_rows(7, 128, seed=9)
    ref = logsumexp(scale * (q.astype(np.float64) @ x.astype(np.float64).T), axis=1)
    np.testing.assert_allclose(ref, logsumexp64(q, x, scale), rtol=1e-12)
    s, i, lse = gf.Gallery(x).search(q, 5, lse_scale=scale)
    assert lse.dtype == np.float64 and lse.shape == (7,)
    np.testing.assert_allclose(lse, ref, rtol=1e-6)
    # Same top-k as without lse.
    s2, i2 = gf.Gallery(x).search(q, 5)
    np.testing.assert_array_equal(i, i2)
    # Half-precision data: exact on the half values.
    xh = x.astype(np.float16)
    _, _, lse_h = gf.Gallery(xh, dtype="f16").search(q, 5, lse_scale=scale)
    np.testing.assert_allclose(lse_h, logsumexp64(q, xh, scale), rtol=1e-6)
    # Quantized storage: approximate scan scores, corrected for the re-ranked candidates.
    for dtype, rtol in (("f16", 1e-5), ("i8", 1e-3)):
        _, _, lse_q = gf.Gallery(x, dtype=dtype).search(q, 5, lse_scale=scale)
        np.testing.assert_allclose(lse_q, ref, rtol=rtol)


def test_softmax_probabilities_from_lse_sum_to_one_over_gallery():
    x = unit_rows(5000, 64, seed=10)
    q = unit_rows(3, 64, seed=11)
    s, i, lse = gf.Gallery(x).search(q, 5000, lse_scale=39.69)
    p = np.exp(39.69 * s.astype(np.float64) - lse[:, None])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_read_only_memmap_is_borrowed_zero_copy(tmp_path):
    x = unit_rows(5000, 48, seed=12)
    q = unit_rows(6, 48, seed=13)
    np.save(tmp_path / "x32.npy", x)
    np.save(tmp_path / "x16.npy", x.astype(np.float16))
    m32 = np.load(tmp_path / "x32.npy", mmap_mode="r")
    m16 = np.load(tmp_path / "x16.npy", mmap_mode="r")
    copied = gf.Gallery(x).search(q, 10, lse_scale=20.0)
    g = gf.Gallery(m32)
    assert g.nbytes == 0
    for got, want in zip(g.search(q, 10, lse_scale=20.0), copied):
        np.testing.assert_array_equal(got, want)
    # A read-only in-memory array is copied: its flag can be switched back and it can be
    # written afterwards (or through another view), which must not change the gallery.
    ro = x.copy()
    ro.flags.writeable = False
    g_ro = gf.Gallery(ro)
    assert g_ro.nbytes == x.nbytes
    ro.flags.writeable = True
    ro[:] = -ro
    for got, want in zip(g_ro.search(q, 10, lse_scale=20.0), copied):
        np.testing.assert_array_equal(got, want)
    view = x.copy()
    ro_view = view[:]
    ro_view.flags.writeable = False
    g_view = gf.Gallery(ro_view)
    assert g_view.nbytes == x.nbytes
    view[:] = 0.0
    for got, want in zip(g_view.search(q, 10, lse_scale=20.0), copied):
        np.testing.assert_array_equal(got, want)
    # Immutable bytes are borrowed like a read-only memory map.
    b = gf.Gallery(np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape))
    assert b.nbytes == 0
    for got, want in zip(b.search(q, 10, lse_scale=20.0), copied):
        np.testing.assert_array_equal(got, want)
    # A read-only view of writable memory (bytearray) is not immutable: copied.
    ba = bytearray(x.tobytes())
    c = gf.Gallery(np.frombuffer(memoryview(ba).toreadonly(), dtype=np.float32).reshape(x.shape))
    assert c.nbytes == x.nbytes
    ba[:] = bytes(len(ba))
    for got, want in zip(c.search(q, 10, lse_scale=20.0), copied):
        np.testing.assert_array_equal(got, want)
    # float16 memmap with f16 storage: the halves are the data, borrowed.
    h = gf.Gallery(m16, dtype="f16")
    assert h.nbytes == 0
    h_copy = gf.Gallery(x.astype(np.float16), dtype="f16")
    assert h_copy.nbytes == x.size * 2
    for got, want in zip(h.search(q, 10), h_copy.search(q, 10)):
        np.testing.assert_array_equal(got, want)
    # Quantized storage over a borrowed float32 source holds only its codes.
    assert gf.Gallery(m32, dtype="f16").nbytes == x.size * 2
    assert gf.Gallery(m32, dtype="i8").nbytes == 5000 * 48 + 4 * 5000
    assert gf.Gallery(x, dtype="i8").nbytes == 5000 * 48 + 4 * 5000 + x.nbytes
    # The gallery keeps the borrowed array alive.
    del m32
    gc.collect()
    for got, want in zip(g.search(q, 10), copied[:2]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_search_rows_equals_a_gallery_of_those_rows(tmp_path, dtype):
    """A row subset scores exactly like a gallery built from those rows alone (same kernels, same
    bits), with the full gallery's row ids; numpy's float64 top-k agrees up to rounding."""
    x = unit_rows(6000, 64, seed=21)
    q = unit_rows(5, 64, seed=22)
    np.save(tmp_path / "x16.npy", x.astype(np.float16))
    m16 = np.load(tmp_path / "x16.npy", mmap_mode="r")
    rng = np.random.default_rng(23)
    rows = np.unique(np.concatenate([rng.choice(6000, 900, replace=False), np.arange(3000, 3700)]))
    for full, source in ((gf.Gallery(x, dtype=dtype), x), (gf.Gallery(m16, dtype=dtype), np.asarray(m16, np.float32))):
        s, i, lse = full.search_rows(q, rows, 12, lse_scale=30.0)
        s_sub, i_sub, lse_sub = gf.Gallery(np.ascontiguousarray(source[rows]), dtype="f32").search(q, 12, lse_scale=30.0)
        np.testing.assert_array_equal(i, rows[i_sub])
        np.testing.assert_array_equal(s, s_sub)
        np.testing.assert_array_equal(lse, lse_sub)
        _, ref = numpy_topk(q, source[rows], 12)
        assert_same_topk(s, i, q, source, rows[ref])
    # a list of Python ints works like an array
    s2, i2 = gf.Gallery(x, dtype=dtype).search_rows(q[0], rows.tolist(), 3)
    np.testing.assert_array_equal(i2[0], i[0, :3])


@pytest.mark.parametrize(
    "rows, k, error, text",
    [
        ([4, 2], 1, ValueError, "strictly increasing"),
        ([2, 2], 1, ValueError, "strictly increasing"),
        ([-1, 5], 1, ValueError, "strictly increasing"),
        ([0, 100], 1, ValueError, "strictly increasing"),
        ([0.5, 2.0], 1, ValueError, "integer row ids"),
        ([[1, 2]], 1, ValueError, "1-D"),
        ([1, 2], 3, ValueError, "k must be between 1 and 2"),
        ([], 1, ValueError, "k must be between 1 and 0"),
    ],
)
def test_search_rows_errors(rows, k, error, text):
    g = gf.Gallery(unit_rows(100, 8, seed=24))
    with pytest.raises(error, match=text):
        g.search_rows(unit_rows(1, 8, seed=25), rows, k)


def test_other_inputs_are_converted_once():
    x = unit_rows(500, 20, seed=14)
    q = unit_rows(3, 20, seed=15)
    want = gf.Gallery(x).search(q, 4)
    for vectors in (x.astype(np.float64), x.tolist(), np.asfortranarray(x), x[::-1][::-1]):
        got = gf.Gallery(vectors).search(q, 4)
        np.testing.assert_array_equal(got[1], want[1])
    assert gf.Gallery(x.tolist()).nbytes == x.nbytes  # numpy's private copy is adopted, counted
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.copy())
    g = gf.Gallery(t)
    t.zero_()  # the gallery holds its own copy
    np.testing.assert_array_equal(g.search(q, 4)[1], want[1])
    # f64 queries, one (D,) query, list queries.
    np.testing.assert_array_equal(gf.Gallery(x).search(q.astype(np.float64), 4)[1], want[1])
    s, i = gf.Gallery(x).search(q[1], 4)
    assert i.shape == (1, 4) and i[0].tolist() == want[1][1].tolist()


@pytest.mark.parametrize(
    ("vectors", "kwargs", "error", "text"),
    [
        (np.ones((5, 4)), {"dtype": "f8"}, gf.ParameterError, "dtype must be one of 'f32', 'f16', 'i8'"),
        (np.ones(4), {}, gf.ShapeError, "vectors must be a 2-D (N, D) array, got shape (4,)"),
        (np.zeros((0, 4)), {}, gf.EmptyInputError, "vectors is empty"),
        (np.zeros((3, 0)), {}, gf.ShapeError, "(N, D) with D >= 1"),
        (np.array([[1.0, 2.0], [np.nan, 0.0]]), {"dtype": "i8"}, gf.CoordinateError, "vectors[1] is not finite"),
        (np.array([[1.0, 2.0], [7e4, 0.0]]), {"dtype": "f16"}, gf.ParameterError, "float16 range"),
        ("abc", {}, gf.InputError, "numeric array"),
    ],
)
def test_construction_errors(vectors, kwargs, error, text):
    with pytest.raises(error) as info:
        gf.Gallery(vectors, **kwargs)
    assert isinstance(info.value, ValueError)
    assert text in str(info.value)


def test_search_errors():
    g = gf.Gallery(unit_rows(10, 8, seed=16), dtype="i8")
    q = unit_rows(2, 8, seed=17)
    with pytest.raises(gf.ParameterError, match=r"k must be between 1 and 10 \(the number of gallery vectors\), got 11"):
        g.search(q, 11)
    with pytest.raises(gf.ParameterError, match="got 0"):
        g.search(q, 0)
    with pytest.raises(gf.ShapeError, match=r"\(B, 8\).*got \(2, 9\)"):
        g.search(np.ones((2, 9)), 1)
    with pytest.raises(gf.CoordinateError, match=r"queries\[0\] is not finite"):
        g.search(np.full((1, 8), np.inf), 1)
    with pytest.raises(gf.ParameterError, match="lse_scale must be a finite number"):
        g.search(q, 1, lse_scale=float("nan"))
    with pytest.raises(gf.ParameterError, match="overflow"):
        g.search(np.full((1, 8), 1e38), 1)
    with pytest.raises(gf.ParameterError, match="lse_scale must be small enough"):
        g.search(q, 1, lse_scale=1e38)
    with pytest.raises(gf.ParameterError, match=r"queries must be within the float32 range, got 1e300 in row 1"):
        g.search(np.vstack([q[0], np.full(8, 1e300)]), 1)


def test_many_threads_give_identical_results():
    x = unit_rows(40_000, 64, seed=18)
    q = unit_rows(40, 64, seed=19)
    before = gf.get_num_threads()
    try:
        out = []
        for t in (1, 2, 4):
            gf.set_num_threads(t)
            out.append([gf.Gallery(x, dtype=dt).search(q, 8, lse_scale=30.0) for dt in ("f32", "i8")])
    finally:
        gf.set_num_threads(before)
    for other in out[1:]:
        for a, b in zip(out[0], other):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)


_RSS = """
import sys, numpy as np, geofast as gf
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (ru_maxrss would include the parent's)
    f.write("5")
base = kb("VmRSS")
g = gf.Gallery(np.load(sys.argv[1], mmap_mode="r"), dtype="f16")
q = np.random.default_rng(0).standard_normal((1, g.dim)).astype(np.float32)
g.search(q, 10)
print(g.nbytes, base, kb("VmHWM"))
"""


@pytest.mark.slow
def test_memmap_f16_gallery_peak_rss(tmp_path):
    """A memory-mapped f16 gallery is scanned in place: peak RSS grows by about the file size."""
    n, d = 200_000, 768
    path = tmp_path / "g.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, 20_000):
        mm[s : s + 20_000] = unit_rows(20_000, d, seed=s).astype(np.float16)
    mm.flush()
    del mm
    out = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True, check=True)
    nbytes, base_kb, peak_kb = map(int, out.stdout.split())
    size = os.path.getsize(path)
    assert nbytes == 0
    grown = (peak_kb - base_kb) * 1024
    # The scan maps the whole file (so RSS grows by about its size), and holds nothing more.
    assert 0.5 * size <= grown <= 1.3 * size, (peak_kb, base_kb, size)
