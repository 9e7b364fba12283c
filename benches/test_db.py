"""pytest-benchmark suite of the image database (the workloads of ``geofast.bench.db``).

Off in the normal test run. ``pytest benches/test_db.py --benchmark-enable`` runs the quick
workloads; ``GEOFAST_BENCH_FULL=1`` adds the 1M × 768 flat and IVF searches (generates 1.5 GB
under a temporary folder, needs ~6 GB RAM for the faiss anchor).
"""

from __future__ import annotations

import os

import pytest

from geofast.bench import Skip
from geofast.bench import db as bench_db

FULL = os.environ.get("GEOFAST_BENCH_FULL", "").strip() not in ("", "0")
WORKLOADS = {w.name: w for w in bench_db.workloads(quick=not FULL)}


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def prepared(request):
    w = WORKLOADS[request.param]
    try:
        state = w.setup()
    except Skip as e:
        pytest.skip(str(e))
    return w, state


def test_geofast(benchmark, prepared):
    w, state = prepared
    benchmark.group = w.name
    benchmark.extra_info["kernel"] = w.kernel
    result = benchmark.pedantic(w.run_geofast, args=(state,), rounds=w.repeat, warmup_rounds=1)
    if w.check is not None and w.run_anchor is not None:
        w.check(state, result, w.run_anchor(state))


def test_anchor(benchmark, prepared):
    w, state = prepared
    if w.run_anchor is None:
        pytest.skip("no anchor")
    benchmark.group = w.name
    benchmark.extra_info["anchor"] = w.anchor
    benchmark.extra_info["anchor_scale"] = w.anchor_scale
    benchmark.pedantic(w.run_anchor, args=(state,), rounds=max(1, min(w.repeat, 3)), warmup_rounds=0)
