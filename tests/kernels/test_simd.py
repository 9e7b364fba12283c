"""GEOFAST_SIMD: one setting for every vectorised kernel (haversine and the other geo kernels,
Fourier features, top-k), reported by ``geofast._geofast.simd_level()``.

Each value runs in a fresh interpreter (the variable is read once per process); the child
reports its level and computes haversine distances and top-k results, which are checked here
against numpy references. The levels themselves must agree: top-k bit for bit at every level,
haversine bit for bit between AVX2 and AVX-512 and to 1e-14 relative against portable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benches.reference import assert_same_topk, numpy_haversine, numpy_topk, unit_rows

from conftest import random_latlon

R = 6371.0088

ORDER = {"portable": 0, "avx2": 1, "avx512": 2}

# value -> the highest level it allows
VALUES = {
    None: "avx512",
    "auto": "avx512",
    "avx512": "avx512",
    "avx2": "avx2",
    "portable": "portable",
    "off": "portable",
    "scalar": "portable",
    " AVX2 ": "avx2",
}

_CHILD = """
import sys, numpy as np
from geofast import _geofast
d = np.load(sys.argv[1])
out = {"level": np.array(_geofast.simd_level())}
out["hav"] = _geofast.haversine(d["a"], d["b"])
out["hav32"] = _geofast.haversine(d["a"].astype(np.float32), d["b"][:1])
out["s"], out["i"] = _geofast.topk(d["q"], d["x"], 9)
g = _geofast.Gallery(d["x"], dtype="f16")
out["gs"], out["gi"] = g.search(d["q"], 9)
np.savez(sys.argv[2], **out)
"""


def well_conditioned(d: np.ndarray) -> np.ndarray:
    """Where the textbook float64 formula keeps ~1e-13: not metres, not near antipodes."""
    return (d > 1.0) & (d < 0.99 * np.pi * R)


def _child(tmp_path: Path, value: str | None) -> dict[str, np.ndarray]:
    env = dict(os.environ)
    env.pop("GEOFAST_SIMD", None)
    if value is not None:
        env["GEOFAST_SIMD"] = value
    out = tmp_path / f"out_{abs(hash(value))}.npz"
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "in.npz"), str(out)], env=env, check=True, timeout=120)
    return dict(np.load(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str | None, dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("simd")
    a, b = random_latlon(4_000, 31), random_latlon(4_000, 32)
    q, x = unit_rows(5, 48, seed=33), unit_rows(2_001, 48, seed=34)
    np.savez(tmp / "in.npz", a=a, b=b, q=q, x=x)
    return {value: _child(tmp, value) for value in VALUES}


@pytest.mark.slow  # one interpreter per value: ~1 s each
def test_every_value_reports_its_level(runs):
    best = str(runs[None]["level"])
    assert best in ORDER
    assert str(runs["auto"]["level"]) == best
    for value, cap in VALUES.items():
        want = min(ORDER[cap], ORDER[best])
        assert ORDER[str(runs[value]["level"])] == want, f"GEOFAST_SIMD={value!r}"


@pytest.mark.slow  # one interpreter per value: ~1 s each
def test_haversine_matches_numpy_at_every_level(runs):
    a, b = random_latlon(4_000, 31), random_latlon(4_000, 32)
    want = numpy_haversine(a, b)
    ok = well_conditioned(want)
    want32 = numpy_haversine(a.astype(np.float32).astype(np.float64), np.broadcast_to(b[:1], a.shape))
    best = runs[None]
    for value, run in runs.items():
        np.testing.assert_allclose(run["hav"][ok], want[ok], rtol=1e-12, err_msg=f"GEOFAST_SIMD={value!r}")
        ok32 = well_conditioned(want32)
        np.testing.assert_allclose(run["hav32"][ok32], want32[ok32], rtol=1e-12, err_msg=f"GEOFAST_SIMD={value!r}")
        # Levels agree: bit for bit between the fused (AVX2, AVX-512) versions, to rounding
        # otherwise: portable rounds each multiply-add twice, measured 5.4e-16 relative (2.4 eps)
        # on these points; 1e-14 (45 eps) leaves 18x.
        if str(run["level"]) != "portable" and str(best["level"]) != "portable":
            np.testing.assert_array_equal(run["hav"], best["hav"], err_msg=f"GEOFAST_SIMD={value!r}")
        np.testing.assert_allclose(run["hav"], best["hav"], rtol=1e-14, atol=1e-300)


@pytest.mark.slow  # one interpreter per value: ~1 s each
def test_topk_matches_brute_force_at_every_level(runs):
    q, x = unit_rows(5, 48, seed=33), unit_rows(2_001, 48, seed=34)
    _, ref = numpy_topk(q, x, 9)
    best = runs[None]
    for value, run in runs.items():
        assert_same_topk(run["s"], run["i"], q, x, ref)
        # One canonical arithmetic: the same bits at every level, for topk and a quantized Gallery.
        for key in ("s", "i", "gs", "gi"):
            np.testing.assert_array_equal(run[key], best[key], err_msg=f"{key}, GEOFAST_SIMD={value!r}")


def test_invalid_value_is_a_clear_error_in_every_simd_kernel():
    script = (
        "import numpy as np\n"
        "import geofast as gf\n"
        "from geofast import _geofast\n"
        "p = np.array([[10.0, 20.0], [30.0, 40.0]])\n"
        "calls = {\n"
        "    'simd_level': lambda: _geofast.simd_level(),\n"
        "    'haversine': lambda: gf.haversine(p, p),\n"
        "    'haversine_matrix': lambda: gf.haversine_matrix(p, p),\n"
        "    'geodesic': lambda: gf.geodesic(p, p),\n"
        "    'equal_earth': lambda: gf.equal_earth(p),\n"
        "    'fourier_features': lambda: gf.fourier_features(p, p),\n"
        "    'topk': lambda: gf.topk(p, p, 1),\n"
        "    'Gallery.search': lambda: gf.Gallery(p).search(p, 1),\n"
        "}\n"
        "for name, call in calls.items():\n"
        "    try:\n"
        "        call()\n"
        "    except gf.ParameterError as e:\n"
        "        print(name, '|', e)\n"
        "    else:\n"
        "        print(name, '| no error')\n"
        "print('dbscan', '|', gf.dbscan(p, 1.0).tolist())\n"
    )
    env = dict(os.environ, GEOFAST_SIMD="avx3")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" | ", 1) for line in out.stdout.strip().splitlines())
    message = 'GEOFAST_SIMD must be one of auto, avx512, avx2, portable (off and scalar mean portable), got "avx3"'
    for name in (
        "simd_level",
        "haversine",
        "haversine_matrix",
        "geodesic",
        "equal_earth",
        "fourier_features",
        "topk",
        "Gallery.search",
    ):
        assert lines[name] == message, (name, lines[name])
    # Kernels without SIMD versions keep working.
    assert lines["dbscan"] == "[0, 1]"


def test_ci_runs_every_level_of_this_cpu():
    """.ci/simd-levels (which .ci/test and `make rust-test simd-test` loop over) names every level
    the CPU has, lowest first: portable, then up to the best an unrestricted process picks."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env.pop("GEOFAST_SIMD", None)
    best = subprocess.run(
        [sys.executable, "-c", "from geofast import _geofast; print(_geofast.simd_level())"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    out = subprocess.run(
        ["bash", str(root / ".ci" / "simd-levels")], env=dict(env, PY=sys.executable), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [level for level in ORDER if ORDER[level] <= ORDER[best]]
