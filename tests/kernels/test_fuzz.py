"""Fuzz every binding of geofast._geofast with bad and edge inputs.

Each call either returns or raises one of geofast's own errors (a ``GeofastError``; ``TypeError``
only for an argument of the wrong Python type, e.g. a string where a number is expected, named in
pyo3's note). A Rust panic (pyo3's ``PanicException``, a ``BaseException``), ``OverflowError``,
``SystemError`` or any other exception fails the test, as does a successful call whose result
has the wrong shape or dtype.

Inputs come from a seeded numpy generator. Per call, a corruption rate decides how many
arguments are replaced by bad ones, so both deep code paths (valid input with edge values: the
poles, the antimeridian, duplicates, k = N, one point) and the validation of every argument are
reached: arrays of every shape, dtype, layout and value class (NaN, inf, huge, negative,
subnormal, out of range, empty, zero-size, non-contiguous, negative strides, broadcast,
big-endian, 0-d), scalars at and beyond every limit, and objects of the wrong type. A few
thousand calls in a few seconds.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from geofast import _geofast
from geofast.errors import GeofastError

RNG_SEED = 20261130
ROUNDS = 4000
# Catches a call that runs away on hostile input (a hang, a huge allocation). The 4,000 rounds
# take 6.8 s under `taskset -c 0` at load 28 to 34: 120 s leaves 17x.
TIME_LIMIT_S = 120.0

_SPECIAL = [
    0.0,
    -0.0,
    90.0,
    -90.0,
    180.0,
    -180.0,
    90.0000001,
    -180.5,
    1e-320,
    1e-300,
    1e30,
    -1e30,
    1e308,
    -1e308,
    np.inf,
    -np.inf,
    np.nan,
    3e38,
    7e4,
    1e5,
]
_BAD_DTYPES = ["f2", ">f8", ">f4", "i8", "i4", "u2", "i1", "?", "c16", "O", "U3", "M8[s]", "V8"]
_BAD_SHAPES = [(0,), (3,), (5,), (2, 0), (0, 0), (3, 3), (4, 1), (2, 2, 2), (3, 4, 2), (1, 0, 2), (), (1, 1, 1, 1)]
_BAD_INTS = [0, -1, -7, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**400]
_BAD_FLOATS = [0.0, -0.0, -1.0, -5.0, 1e-320, 1e308, -1e308, np.inf, -np.inf, np.nan, 10**30, 10**400, -(10**400)]
_WRONG = [None, "abc", "", b"xy", [], {}, object(), [[1, 2], [3]], [[1, "a"]], 3 + 4j, (1, 2, 3), {1, 2}]


class Inputs:
    """Random arguments: valid ones (with edge values) or, at the call's rate, bad ones."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.rate = 0.0

    def new_call(self) -> None:
        self.rate = float(self.pick([0.0, 0.0, 0.1, 0.25, 0.5, 1.0]))

    def pick(self, seq: list[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def bad(self) -> bool:
        return self.chance(self.rate)

    def size(self, hi: int) -> int:
        return int(self.pick([0, 1, 1, 2, int(self.rng.integers(1, hi + 1))]))

    # --- arrays ---------------------------------------------------------------------------

    def _layout(self, a: np.ndarray) -> np.ndarray:
        r = self.rng.random()
        if a.ndim >= 1 and r < 0.1:
            return a[::-1]  # negative stride
        if a.ndim == 2 and r < 0.2:
            return np.asfortranarray(a)
        if a.ndim >= 1 and r < 0.3:
            return np.repeat(a, 2, axis=0)[::2]  # non-contiguous view
        if a.ndim == 2 and r < 0.35:
            wide = np.concatenate([a, np.ones_like(a)], axis=1)
            return wide[:, : a.shape[1]]  # row stride larger than the row
        if a.ndim == 2 and a.shape[0] > 0 and r < 0.4:
            return np.broadcast_to(a[:1], (3, a.shape[1]))  # zero stride, read-only
        if r < 0.45:
            a = a.copy()
            a.flags.writeable = False
        return a

    def _dtype(self, a: np.ndarray) -> np.ndarray:
        return a.astype(self.pick(["f8", "f8", "f4"]))

    def _corrupt(self, shape: tuple[int, ...], lo: float, hi: float) -> Any:
        r = self.rng.random()
        if r < 0.15:
            return self.pick(_WRONG)
        if r < 0.35:
            shape = self.pick(_BAD_SHAPES)
        a = self.rng.uniform(lo, hi, shape)
        if r >= 0.35 and a.size:
            flat = a.reshape(-1)
            for _ in range(int(self.rng.integers(1, 4))):
                flat[int(self.rng.integers(flat.size))] = self.pick(_SPECIAL)
        if self.chance(0.35):
            dt = self.pick(_BAD_DTYPES)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = a.astype(dt) if dt not in ("U3", "M8[s]", "V8") else np.zeros(shape, dtype=dt)
            except (TypeError, ValueError):
                pass
        elif self.chance(0.5):
            a = self._dtype(a)
        if self.chance(0.05):
            return a.tolist()
        return self._layout(a)

    def coords(self, n: int) -> Any:
        """(n, 2) lat/lon degrees, with poles, antimeridian and duplicates."""
        if self.bad():
            return self._corrupt((n, 2), -200.0, 200.0)
        lat = np.degrees(np.arcsin(self.rng.uniform(-1, 1, n)))
        lon = self.rng.uniform(-180, 180, n)
        a = np.column_stack([lat, lon])
        for _ in range(int(self.rng.integers(0, 3)) if n else 0):
            i = int(self.rng.integers(n))
            a[i] = self.pick([[90.0, 0.0], [-90.0, 180.0], [0.0, 180.0], [0.0, -180.0], [12.5, 179.9999999]])
            if n > 1 and self.chance(0.5):
                a[int(self.rng.integers(n))] = a[i]  # duplicate
        return self._layout(self._dtype(a))

    def array(self, shape: tuple[int, ...], lo: float, hi: float) -> Any:
        if self.bad():
            return self._corrupt(shape, lo, hi)
        return self._layout(self._dtype(self.rng.uniform(lo, hi, shape)))

    def vectors(self, n: int, d: int) -> Any:
        if self.bad():
            return self._corrupt((n, d), -2.0, 2.0)
        x = self.rng.standard_normal((n, d))
        if n > 1 and self.chance(0.3):
            x[1:] = x[0]  # identical vectors: every score ties
        if self.chance(0.2):
            x *= self.pick([1e-30, 1e4, 1e18])  # tiny or huge norms
        return self._layout(self._dtype(x) if self.chance(0.8) else x.astype("f2"))

    # --- scalars ----------------------------------------------------------------------------

    def int_(self, good: int) -> Any:
        if not self.bad():
            return good
        r = self.rng.random()
        if r < 0.2:
            return self.pick(_WRONG + [1.5, np.float64(2.0)])
        if r < 0.3:
            return self.pick([np.int64(good), np.int8(-1), np.uint64(2**64 - 1), True])
        return self.pick(_BAD_INTS)

    def float_(self, good: float) -> Any:
        if not self.bad():
            return good
        r = self.rng.random()
        if r < 0.2:
            return self.pick(_WRONG)
        if r < 0.3:
            return self.pick([np.float32(np.nan), np.float64(good), 7, np.int64(-3), True])
        return self.pick(_BAD_FLOATS)


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _expect(result: np.ndarray, shape: tuple[int, ...], dtype: str) -> None:
    assert isinstance(result, np.ndarray) and result.shape == shape and result.dtype == dtype, (
        result.shape if isinstance(result, np.ndarray) else type(result),
        shape,
    )


def case_haversine(inp: Inputs) -> None:
    n = inp.size(30)
    a, b = inp.coords(n), inp.coords(inp.pick([n, n, 1]) if not inp.bad() else n + 1)
    kw = {"radius_km": inp.float_(6371.0)} if inp.chance(0.3) else {}
    d = _geofast.haversine(a, b, **kw)
    if _is_array(a) and _is_array(b):
        _expect(d, (len(a) if len(a) == len(b) or len(b) == 1 else len(b),), "float64")


def case_haversine_matrix(inp: Inputs) -> None:
    a, b = inp.coords(inp.size(20)), inp.coords(inp.size(20))
    kw = {"radius_km": inp.float_(1.0)} if inp.chance(0.3) else {}
    m = _geofast.haversine_matrix(a, b, **kw)
    if _is_array(a) and _is_array(b):
        _expect(m, (len(a), len(b)), "float64")


def case_geodesic(inp: Inputs) -> None:
    n = inp.size(10)
    a, b = inp.coords(n), inp.coords(inp.pick([n, 1]))
    d = _geofast.geodesic(a, b)
    assert np.all(d >= 0)


def case_equal_earth(inp: Inputs) -> None:
    a = inp.coords(inp.size(30))
    xy = _geofast.equal_earth(a)
    if _is_array(a):
        _expect(xy, (len(a), 2), "float64")


def case_fourier_features(inp: Inputs) -> None:
    n, m = inp.size(20), inp.size(8)
    xy, b = inp.array((n, 2), -3.0, 3.0), inp.array((m, 2), -300.0, 300.0)
    f = _geofast.fourier_features(xy, b)
    if _is_array(xy) and _is_array(b):
        _expect(f, (len(xy), 2 * len(b)), "float32")
        assert np.all(np.abs(f) <= 1.0)


def case_dbscan(inp: Inputs) -> None:
    n = inp.size(60)
    latlon = inp.coords(n)
    kw: dict[str, Any] = {}
    if inp.chance(0.3):
        kw["sample_weight"] = inp.array((n,), -1.0, 3.0) if inp.chance(0.7) else None
    if inp.chance(0.3):
        kw["radius_km"] = inp.float_(6371.0)
    eps = inp.float_(float(inp.pick([1e-6, 0.5, 50.0, 3000.0, 25_000.0])))
    labels = _geofast.dbscan(latlon, eps, inp.int_(int(inp.pick([1, 2, 3, 50]))), **kw)
    if _is_array(latlon):
        _expect(labels, (len(latlon),), "int64")
        assert labels.min(initial=-1) >= -1


def _swc_kwargs(inp: Inputs) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for name, gen, good in (
        ("eps_km", inp.float_, 25.0),
        ("min_samples", inp.int_, 2),
        ("weight_exponent", inp.float_, 1.0),
        ("radius_km", inp.float_, 6371.0),
    ):
        if inp.chance(0.3):
            kw[name] = gen(good)
    return kw


def case_swc(inp: Inputs) -> None:
    k = inp.size(12)
    sim = inp.array((k if not inp.bad() else k + 1,), -1.0, 1.0)
    lat, lon, members = _geofast.swc(inp.coords(k), sim, **_swc_kwargs(inp))
    assert -90 <= lat <= 90 and -180 <= lon <= 180 and members.dtype == np.int64


def case_swc_batch(inp: Inputs) -> None:
    b, k = inp.size(4), inp.size(8)
    if inp.bad():
        latlon = inp.array((b, k, 2), -95.0, 185.0)
    else:
        lat = np.degrees(np.arcsin(inp.rng.uniform(-1, 1, (b, k))))
        latlon = np.stack([lat, inp.rng.uniform(-180, 180, (b, k))], axis=-1).astype(inp.pick(["f8", "f4"]))
    sim = inp.array((b, k), -1.0, 1.0)
    lat, lon, members = _geofast.swc_batch(latlon, sim, **_swc_kwargs(inp))
    assert lat.shape == lon.shape == (len(latlon),) and members.dtype == np.bool_


def case_fibonacci_lattice(inp: Inputs) -> None:
    spacing = inp.float_(float(inp.pick([500.0, 2000.0, 5000.0])))
    if isinstance(spacing, float) and 0 < spacing < 400:
        spacing = 5000.0  # never build millions of points in a fuzz test
    bbox: Any = None
    if inp.chance(0.6):
        bbox = inp.pick([(10.0, 170.0, 20.0, -170.0), (-90.0, -180.0, 90.0, 180.0), (5.0, 0.0, 5.0, 0.0)])
        if inp.bad():
            bbox = inp.pick(
                [
                    inp.array((4,), -200, 200),
                    [1, 2, 3],
                    "abcd",
                    [0.0, 0.0, np.nan, 1.0],
                    (-91.0, 0, 0, 0),
                    (5.0, 0.0, -5.0, 1.0),
                    [[1, 2], [3, 4]],
                    (0, 0, 0, 10**400),
                ]
            )
    pts = _geofast.fibonacci_lattice(spacing, bbox)
    assert pts.ndim == 2 and pts.shape[1] == 2 and pts.dtype == np.float64


def case_point_index(inp: Inputs) -> None:
    n = inp.size(40)
    kw = {"radius_km": inp.float_(6371.0)} if inp.chance(0.3) else {}
    idx = _geofast.PointIndex(inp.coords(n), **kw)
    assert len(idx) >= 1 and repr(idx).startswith("PointIndex(")
    for _ in range(3):
        q = inp.coords(inp.size(10))
        k = inp.int_(int(inp.pick([1, len(idx)])))
        d, i = idx.query(q, k)
        if _is_array(q) and isinstance(k, int):
            _expect(d, (len(q), k), "float64")
            _expect(i, (len(q), k), "int64")


def case_topk(inp: Inputs) -> None:
    n, d = inp.size(40), inp.size(20)
    q = inp.vectors(inp.size(5), d) if inp.chance(0.8) else inp.array((d,), -1.0, 1.0)
    k = inp.int_(int(inp.pick([1, max(n, 1), min(n, 3) or 1])))
    s, i = _geofast.topk(q, inp.vectors(n, d), k)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape


def case_gallery(inp: Inputs) -> None:
    n, d = inp.size(40), inp.size(20)
    dtype = inp.pick(["f32", "f16", "i8"]) if not inp.bad() else inp.pick(["f64", "", None, 3, "F32"])
    x = inp.vectors(n, d)
    g = _geofast.Gallery(x, dtype=dtype)
    n, d = np.shape(x)
    assert len(g) == n and g.dim == d and g.dtype == dtype and g.nbytes >= 0 and repr(g).startswith("Gallery(")
    for _ in range(3):
        q = inp.vectors(inp.size(5), d) if inp.chance(0.8) else inp.array((d,), -1.0, 1.0)
        k = inp.int_(int(inp.pick([1, n, min(n, 3)])))
        if inp.chance(0.4):
            scale = inp.float_(39.69)
            out = g.search(q, k, lse_scale=scale)
            assert len(out) == (2 if scale is None else 3)
            s, i = out[0], out[1]
            if scale is not None:
                assert out[2].dtype == np.float64 and out[2].shape == (s.shape[0],)
        else:
            s, i = g.search(q, k)
        assert s.shape == i.shape


def case_threads(inp: Inputs) -> None:
    before = _geofast.get_num_threads()
    try:
        _geofast.set_num_threads(inp.int_(int(inp.pick([1, 2, 3]))))
    finally:
        _geofast.set_num_threads(before)


def case_simd_level(inp: Inputs) -> None:
    assert _geofast.simd_level() in ("avx512", "avx2", "portable")


CASES: list[Callable[[Inputs], None]] = [
    case_haversine,
    case_haversine_matrix,
    case_geodesic,
    case_equal_earth,
    case_fourier_features,
    case_dbscan,
    case_swc,
    case_swc_batch,
    case_fibonacci_lattice,
    case_point_index,
    case_topk,
    case_gallery,
    case_threads,
    case_simd_level,
]

_COVERS = {
    "threads": {"set_num_threads", "get_num_threads"},
    "point_index": {"PointIndex"},
    "gallery": {"Gallery"},
}


def test_every_binding_is_covered():
    """The fuzz cases call every public callable of the extension module."""
    covered: set[str] = set()
    for case in CASES:
        name = case.__name__.removeprefix("case_")
        covered |= _COVERS.get(name, {name})
    public = {name for name in dir(_geofast) if not name.startswith("_") and callable(getattr(_geofast, name))}
    assert public <= covered, f"bindings without a fuzz case: {sorted(public - covered)}"


def test_bad_inputs_raise_only_geofast_errors():
    inp = Inputs(RNG_SEED)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        # numpy's own conversion warnings (complex → float, overflow in a cast) are not errors.
        warnings.simplefilter("ignore")
        for i in range(ROUNDS):
            case = CASES[i % len(CASES)]
            inp.new_call()
            try:
                case(inp)
                outcomes["ok"] += 1
            except GeofastError as e:
                if "\n" in str(e) or not str(e):
                    failures.append(f"round {i} {case.__name__}: unclear message {e!r}")
                outcomes[type(e).__name__] += 1
            except TypeError as e:
                outcomes["TypeError"] += 1
                notes = " ".join(getattr(e, "__notes__", []))
                if "while processing" not in notes and "must be" not in str(e):
                    failures.append(f"round {i} {case.__name__}: TypeError naming no argument: {e}")
            except AssertionError as e:
                failures.append(f"round {i} {case.__name__}: wrong result: {e}")
            except BaseException as e:  # a Rust panic is a BaseException (pyo3's PanicException)
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures.append(f"round {i} {case.__name__}: {type(e).__module__}.{type(e).__name__}: {e}")
            if time.perf_counter() - start > TIME_LIMIT_S:
                pytest.fail(f"fuzzing took more than {TIME_LIMIT_S} s after {i + 1} calls")
    assert not failures, "\n".join(failures[:30]) + f"\n({len(failures)} failures)"
    # The generator reaches deep code paths and every validation.
    assert outcomes["ok"] > ROUNDS // 5, outcomes
    for cls in ("ShapeError", "CoordinateError", "ParameterError", "EmptyInputError", "InputError", "TypeError"):
        assert outcomes[cls] > 0, outcomes
