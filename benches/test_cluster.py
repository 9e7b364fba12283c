"""pytest-benchmark suite for the clustering kernels (dbscan, swc_batch, PointIndex, lattice).

Runs the workloads of ``geofast.bench.cluster`` (quick sizes by default; ``GEOFAST_BENCH_FULL=1``
for the full ones, including the 1M-point peak-memory run):

    pytest benches/test_cluster.py --benchmark-enable

``test_geofast`` / ``test_anchor`` time each side under pytest-benchmark (same group, so the
table shows them side by side); ``test_speedup_target`` times both in one process with
``geofast.bench.run_workload`` and fails when a workload with a target misses it or when the
results disagree with the anchor.
"""

from __future__ import annotations

import os

import pytest

from geofast.bench import Skip, run_workload
from geofast.bench.cluster import workloads

FULL = os.environ.get("GEOFAST_BENCH_FULL") == "1"
WORKLOADS = workloads(quick=not FULL)


@pytest.fixture(scope="module", params=WORKLOADS, ids=[w.name for w in WORKLOADS])
def prepared(request):
    w = request.param
    try:
        state = w.setup()
    except Skip as e:
        pytest.skip(str(e))
    return w, state


def test_geofast(benchmark, prepared):
    w, state = prepared
    benchmark.group = w.name
    benchmark.extra_info["kernel"] = w.kernel
    out = benchmark(w.run_geofast, state)
    if w.check is not None:
        ref = w.run_anchor(state) if w.run_anchor is not None else None
        benchmark.extra_info["agreement"] = w.check(state, out, ref)


def test_anchor(benchmark, prepared):
    w, state = prepared
    if w.run_anchor is None:
        pytest.skip("no anchor for this workload")
    benchmark.group = w.name
    benchmark.extra_info["anchor"] = w.anchor
    benchmark.pedantic(w.run_anchor, args=(state,), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("w", [w for w in WORKLOADS if w.target is not None], ids=lambda w: w.name)
def test_speedup_target(w):
    import geofast as gf

    result = run_workload(w, gf.get_num_threads())
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.meets_target, (
        f"{w.name}: {result.speedup:.1f}x < target {w.target}x "
        f"(geofast {result.geofast_s * 1e3:.2f} ms, anchor {result.anchor_s * 1e3:.1f} ms, "
        f"{result.threads} threads)"
    )
