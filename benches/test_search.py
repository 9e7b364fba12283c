"""pytest-benchmark suite of the search kernels: the workloads of ``geofast.bench.search``
(``gf.topk`` at batch 1 / 16 / 256, ``gf.Gallery`` f16 and i8 with exact re-rank, search + lse
over 288,686 vectors, and — full mode only — a 1M × 768 float16 memory-mapped gallery), each
timed on both sides, geofast and its anchor (faiss ``IndexFlatIP`` / GeoCLIP's torch path), in
one benchmark group.

    PYTHONPATH=python .venv/bin/python -m pytest benches/test_search.py --benchmark-enable
    GEOFAST_BENCH_QUICK=1 ...   # the workloads of ``geofast bench --quick``

The geofast side also runs the workload's ``check`` against the anchor's result (indices equal
to faiss's up to equal-score swaps, recall@5 = 1.0 after re-rank), so a fast wrong answer fails.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import geofast as gf
from geofast.bench import Skip, search

QUICK = os.environ.get("GEOFAST_BENCH_QUICK", "") not in ("", "0")
WORKLOADS = {w.name: w for w in search.workloads(QUICK)}


@pytest.fixture(scope="module")
def states() -> dict[str, Any]:
    return {}


def _state(states: dict[str, Any], name: str) -> Any:
    if name not in states:
        try:
            states[name] = WORKLOADS[name].setup()
        except Skip as e:
            pytest.skip(str(e))
    return states[name]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_geofast(benchmark, states, name):
    w = WORKLOADS[name]
    s = _state(states, name)
    benchmark.group = w.name
    benchmark.extra_info.update(side="geofast", threads=gf.get_num_threads(), target=w.target, note=w.note)
    out = benchmark.pedantic(w.run_geofast, args=(s,), rounds=w.repeat, warmup_rounds=1)
    if w.check is not None and w.run_anchor is not None:
        benchmark.extra_info["agreement"] = w.check(s, out, w.run_anchor(s))


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_anchor(benchmark, states, name):
    w = WORKLOADS[name]
    if w.run_anchor is None:
        pytest.skip("no anchor")
    s = _state(states, name)
    benchmark.group = w.name
    benchmark.extra_info.update(side="anchor", anchor=w.anchor, threads=gf.get_num_threads(), note=w.note)
    benchmark.pedantic(w.run_anchor, args=(s,), rounds=max(1, min(w.repeat, 5)), warmup_rounds=1)
