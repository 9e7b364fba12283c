"""pytest-benchmark suite of the geometry kernels: the workloads of ``geofast.bench.geo``
(haversine, haversine_matrix, geodesic, equal_earth + fourier_features, equal_earth), each timed
on both sides — geofast and its anchor — in one benchmark group.

    PYTHONPATH=python .venv/bin/python -m pytest benches/test_geo.py --benchmark-enable
    GEOFAST_BENCH_QUICK=1 ...   # the small sizes of ``geofast bench --quick``

The geofast side also runs the workload's ``check`` against the anchor's result, so a fast wrong
answer fails. The geodesic anchor (geopy, per pair) is timed on a sample: divide its time by
``extra_info["anchor_scale"]`` to compare with the full workload.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import geofast as gf
from geofast.bench import Skip, geo

QUICK = os.environ.get("GEOFAST_BENCH_QUICK", "") not in ("", "0")
WORKLOADS = {w.kernel: w for w in geo.workloads(QUICK)}


@pytest.fixture(scope="module")
def states() -> dict[str, Any]:
    return {}


def _state(states: dict[str, Any], kernel: str) -> Any:
    if kernel not in states:
        try:
            states[kernel] = WORKLOADS[kernel].setup()
        except Skip as e:
            pytest.skip(str(e))
    return states[kernel]


@pytest.mark.parametrize("kernel", list(WORKLOADS))
def test_geofast(benchmark, states, kernel):
    w = WORKLOADS[kernel]
    s = _state(states, kernel)
    benchmark.group = w.name
    benchmark.extra_info.update(side="geofast", threads=gf.get_num_threads(), target=w.target, note=w.note)
    out = benchmark.pedantic(w.run_geofast, args=(s,), rounds=w.repeat, warmup_rounds=1)
    if w.check is not None and w.run_anchor is not None:
        benchmark.extra_info["agreement"] = w.check(s, out, w.run_anchor(s))


@pytest.mark.parametrize("kernel", list(WORKLOADS))
def test_anchor(benchmark, states, kernel):
    w = WORKLOADS[kernel]
    if w.run_anchor is None:
        pytest.skip("no anchor")
    s = _state(states, kernel)
    benchmark.group = w.name
    benchmark.extra_info.update(side="anchor", anchor=w.anchor, anchor_scale=w.anchor_scale, note=w.note)
    benchmark.pedantic(w.run_anchor, args=(s,), rounds=max(1, min(w.repeat, 3)), warmup_rounds=1)
