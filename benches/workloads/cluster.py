"""Benchmark workloads of the clustering kernels: DBSCAN, Search-within-Cell, the Fibonacci
lattice and the nearest-place index, each against its reference implementation.

Anchors: scikit-learn ``DBSCAN(metric="haversine", algorithm="ball_tree")`` on radians (as
visloc-estimation runs it), per-query sklearn DBSCAN + numpy centroid for Search-within-Cell,
sklearn ``BallTree(metric="haversine")`` for nearest neighbours, and the lattice formula in numpy.
Every ``check`` compares the results and raises on disagreement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from benches.harness import Skip, Workload
from benches.reference import ref_swc

EARTH_KM = 6371.0088
VISLOC_KM = 6371.0


def clustered_latlon(n: int, seed: int = 0, n_blobs: int = 20) -> np.ndarray:
    """n points in ``n_blobs`` Gaussian blobs (standard deviation 5-50 km) around random centres."""
    rng = np.random.default_rng(seed)
    lat0 = np.degrees(np.arcsin(rng.uniform(-0.94, 0.94, n_blobs)))
    lon0 = rng.uniform(-180.0, 180.0, n_blobs)
    sigma_km = rng.uniform(5.0, 50.0, n_blobs)
    which = rng.integers(0, n_blobs, n)
    north = rng.normal(0.0, 1.0, n) * sigma_km[which]
    east = rng.normal(0.0, 1.0, n) * sigma_km[which]
    lat = np.clip(lat0[which] + north / 111.195, -90.0, 90.0)
    lon = lon0[which] + east / (111.195 * np.cos(np.radians(lat0[which])))
    return np.column_stack([lat, (lon + 180.0) % 360.0 - 180.0])


def _sklearn():
    try:
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import BallTree
    except ImportError as e:  # pragma: no cover - sklearn is a test dependency
        raise Skip("scikit-learn is not installed") from e
    return DBSCAN, BallTree


def _dbscan_workload(n: int, eps_km: float, min_samples: int, target: float | None, repeat: int) -> Workload:
    import geofast as gf

    def setup():
        DBSCAN, _ = _sklearn()
        pts = clustered_latlon(n, seed=n)
        model = DBSCAN(eps=eps_km / EARTH_KM, min_samples=min_samples, metric="haversine", algorithm="ball_tree")
        return {"pts": pts, "rad": np.radians(pts), "model": model}

    def check(state, ours, ref):
        if not np.array_equal(ours, ref):
            bad = int(np.sum(ours != ref))
            raise AssertionError(f"dbscan labels differ from sklearn at {bad} of {n} points")
        return f"labels identical to sklearn ({ours.max() + 1} clusters, {int(np.sum(ours == -1))} noise)"

    return Workload(
        name=f"dbscan {n:,} clustered points",
        kernel="dbscan",
        anchor="sklearn DBSCAN haversine ball_tree",
        setup=setup,
        run_geofast=lambda s: gf.dbscan(s["pts"], eps_km, min_samples),
        run_anchor=lambda s: s["model"].fit(s["rad"]).labels_,
        check=check,
        target=target,
        note=f"20 Gaussian blobs, sigma 5-50 km; eps {eps_km} km, min_samples {min_samples}",
        repeat=repeat,
    )


_RSS_SCRIPT = """
import json, resource, sys, time
import numpy as np
import geofast as gf
pts = np.load(sys.argv[1])
eps, m = float(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
labels = gf.dbscan(pts, eps, m)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds,
                  "clusters": int(labels.max() + 1), "noise": int((labels == -1).sum())}))
"""


def peak_rss_of_dbscan(pts: np.ndarray, eps_km: float, min_samples: int) -> dict:
    """Run gf.dbscan on ``pts`` in a fresh interpreter (which only imports numpy and geofast and
    loads the points from a .npy file) and return its peak RSS
    (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB) before and after the call, plus
    the call's wall time and the number of clusters and noise points."""
    import tempfile

    import geofast as gf

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["GEOFAST_NUM_THREADS"] = str(gf.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "points.npy")
        np.save(path, pts)
        # Through /bin/sh (no exec): Linux folds the spawning process's RSS high-water mark into a
        # directly spawned child's ru_maxrss (vfork + execve), which would report this benchmark
        # process's peak; a grandchild of a small shell starts from the shell's few MiB.
        out = subprocess.run(
            ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", _RSS_SCRIPT, path, str(eps_km), str(min_samples)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dbscan_rss_workload(n: int, eps_km: float, min_samples: int, limit_gib: float) -> Workload:
    import geofast as gf

    def setup():
        pts = clustered_latlon(n, seed=n)
        return {"pts": pts, "rss": peak_rss_of_dbscan(pts, eps_km, min_samples)}

    def check(state, ours, _ref):
        rss = state["rss"]
        peak_mib = rss["peak_kib"] / 1024
        extra_mib = (rss["peak_kib"] - rss["before_kib"]) / 1024
        if peak_mib > limit_gib * 1024:
            raise AssertionError(f"dbscan on {n:,} points peaked at {peak_mib:.0f} MiB > {limit_gib} GiB")
        return (
            f"peak RSS {peak_mib:.0f} MiB (≤ {limit_gib:g} GiB), of which {extra_mib:.0f} MiB during "
            f"dbscan ({rss['seconds']:.2f} s there); {ours.max() + 1} clusters"
        )

    return Workload(
        name=f"dbscan {n:,} points, peak memory",
        kernel="dbscan",
        anchor="-",
        setup=setup,
        run_geofast=lambda s: gf.dbscan(s["pts"], eps_km, min_samples),
        run_anchor=None,
        check=check,
        note=f"peak RSS of a fresh interpreter (numpy + geofast + the points), resource.getrusage ru_maxrss; eps {eps_km} km, min_samples {min_samples}",
        repeat=1,
    )


def swc_neighbours(b: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """B queries × k retrieved neighbours: a few tight groups (within ~1 km) plus scattered points,
    with similarities in [0.2, 0.9]."""
    rng = np.random.default_rng(seed)
    latlon = np.empty((b, k, 2))
    for q in range(b):
        n_groups = rng.integers(1, 4)
        centres = np.column_stack([rng.uniform(-60, 60, n_groups), rng.uniform(-180, 180, n_groups)])
        which = rng.integers(-1, n_groups, k)
        pts = np.column_stack([rng.uniform(-60, 60, k), rng.uniform(-180, 180, k)])
        grouped = which >= 0
        pts[grouped] = centres[which[grouped]] + rng.normal(0, 0.004, (grouped.sum(), 2))
        latlon[q] = pts
    return latlon, rng.uniform(0.2, 0.9, (b, k))


def _swc_workload(b: int, k: int) -> Workload:
    import geofast as gf

    def setup():
        _sklearn()
        latlon, sim = swc_neighbours(b, k, seed=b)
        return {"latlon": latlon, "sim": sim}

    def anchor(s):
        return [ref_swc(s["latlon"][q], s["sim"][q]) for q in range(b)]

    def check(state, ours, ref):
        lat, lon, members = ours
        worst = 0.0
        for q, (rlat, rlon, rmembers) in enumerate(ref):
            if not np.array_equal(np.flatnonzero(members[q]), rmembers):
                raise AssertionError(f"swc query {q}: members differ from the sklearn reference")
            dlon = (lon[q] - rlon + 180.0) % 360.0 - 180.0
            worst = max(worst, abs(lat[q] - rlat), abs(dlon))
        if worst > 1e-9:
            raise AssertionError(f"swc estimates differ from the reference by {worst:.2e} degrees")
        return f"members identical, max |Δ| {worst:.0e}°"

    return Workload(
        name=f"swc {k} neighbours × {b:,} queries",
        kernel="swc_batch",
        anchor="sklearn DBSCAN + numpy centroid per query",
        setup=setup,
        run_geofast=lambda s: gf.swc_batch(s["latlon"], s["sim"]),
        run_anchor=anchor,
        check=check,
        note="visloc settings: eps 1 km, min_samples 1, R 6371 km; one FFI call for the batch",
        repeat=10,
    )


def _point_index_workload(n: int, q: int) -> Workload:
    import geofast as gf

    def setup():
        _, BallTree = _sklearn()
        # Place-name-like index: half clustered (towns around cities), half scattered.
        pts = np.vstack([clustered_latlon(n // 2, seed=7, n_blobs=400), clustered_latlon(n - n // 2, seed=8, n_blobs=5000)])
        queries = clustered_latlon(q, seed=9, n_blobs=400)
        t0 = time.perf_counter()
        index = gf.PointIndex(pts)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        tree = BallTree(np.radians(pts), metric="haversine")
        t_ref = time.perf_counter() - t0
        return {"index": index, "tree": tree, "q": queries, "qrad": np.radians(queries), "build": (t_ours, t_ref)}

    def check(state, ours, ref):
        dist, idx = ours
        rdist, ridx = ref
        err = float(np.max(np.abs(dist - rdist[:, :] * EARTH_KM)))
        if err > 1e-6:
            raise AssertionError(f"PointIndex distances differ from BallTree by {err} km")
        same = float(np.mean(idx == ridx))
        if same < 0.999:
            raise AssertionError(f"PointIndex neighbours agree with BallTree for only {same:.4f}")
        t_ours, t_ref = state["build"]
        return f"same neighbours ({same:.4%}), max |Δd| {err:.0e} km; build {t_ours * 1e3:.0f} ms vs {t_ref * 1e3:.0f} ms"

    return Workload(
        name=f"PointIndex k=1, {q:,} queries over {n:,} places",
        kernel="PointIndex.query",
        anchor="sklearn BallTree haversine",
        setup=setup,
        run_geofast=lambda s: s["index"].query(s["q"], k=1),
        run_anchor=lambda s: s["tree"].query(s["qrad"], k=1),
        check=check,
        note="build excluded from the timing (reported in agreement)",
        repeat=5,
    )


def _lattice_workload(spacing_km: float) -> Workload:
    import geofast as gf

    def numpy_lattice(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        lat = np.degrees(np.arcsin(1.0 - (2.0 * i + 1.0) / n))
        lon = (i * 180.0 * (3.0 - np.sqrt(5.0)) + 180.0) % 360.0 - 180.0
        return np.column_stack([lat, lon])

    def setup():
        n = max(1, round(4 * np.pi * EARTH_KM**2 / (1.1 * spacing_km**2)))
        return {"n": n}

    def check(state, ours, ref):
        dlat = float(np.max(np.abs(ours[:, 0] - ref[:, 0])))
        dlon = float(np.max(np.abs((ours[:, 1] - ref[:, 1] + 180.0) % 360.0 - 180.0)))
        # float64 i·137.5° carries ~1e-16·i·137.5° of rounding in the numpy version.
        if dlat > 1e-9 or dlon > 1e-13 * state["n"] * 137.5 + 1e-9:
            raise AssertionError(f"lattice differs from the numpy formula: {dlat}, {dlon}")
        return f"{len(ours):,} points; max |Δlat| {dlat:.0e}°, |Δlon| {dlon:.0e}° (numpy's float64 i·137.5°)"

    return Workload(
        name=f"fibonacci_lattice {spacing_km:g} km (global)",
        kernel="fibonacci_lattice",
        anchor="numpy formula",
        setup=setup,
        run_geofast=lambda s: gf.fibonacci_lattice(spacing_km),
        run_anchor=lambda s: numpy_lattice(s["n"]),
        check=check,
        repeat=5,
    )


def workloads(quick: bool) -> list[Workload]:
    out = [
        _dbscan_workload(1_000, 3.0, 5, target=20.0, repeat=30 if quick else 60),
        _dbscan_workload(10_000 if quick else 100_000, 2.0, 10, target=None if quick else 10.0, repeat=5 if quick else 3),
    ]
    if not quick:
        out.append(_dbscan_rss_workload(1_000_000, 2.0, 10, limit_gib=2.0))
    out += [
        _swc_workload(100 if quick else 1_000, 10),
        _point_index_workload(150_000, 5_000 if quick else 100_000),
        _lattice_workload(50.0 if quick else 20.0),
    ]
    return out
