"""One pytest-benchmark suite definition for every benchmark area of ``benches/workloads``.

Each ``benches/test_<area>.py`` calls :func:`define` and gets three tests per workload:

* ``test_geofast``: times geofast under pytest-benchmark and runs the workload's ``check``
  against the anchor's result, so a fast wrong answer fails;
* ``test_anchor``: times the anchor (numpy, scikit-learn, geopy, faiss, GeoCLIP, ...) in the
  same benchmark group, so the table shows both side by side (divide by
  ``extra_info["anchor_scale"]`` when the anchor ran on a sample);
* ``test_target``: times both in one process with ``benches.harness.run_workload`` and fails when
  a workload with a target misses it.

Full sizes by default (as ``geofast bench``); ``GEOFAST_BENCH_QUICK=1`` for the sizes of
``geofast bench --quick``. Run: ``.venv/bin/python -m pytest benches/ --benchmark-enable``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

import geofast as gf
from benches.harness import Skip, run_workload

QUICK = os.environ.get("GEOFAST_BENCH_QUICK", "").strip() not in ("", "0")


def define(area: str) -> tuple[Any, Any, Any, Any]:
    """(fixture, test_geofast, test_anchor, test_target) for the workloads of one area."""
    workloads = importlib.import_module(f"benches.workloads.{area}").workloads(QUICK)
    by_name = {w.name: w for w in workloads}

    @pytest.fixture(scope="module", params=list(by_name), ids=list(by_name))
    def prepared(request: Any) -> Any:
        w = by_name[request.param]
        try:
            return w, w.setup()
        except Skip as e:
            pytest.skip(str(e))

    def test_geofast(benchmark: Any, prepared: Any) -> None:
        w, state = prepared
        benchmark.group = w.name
        benchmark.extra_info.update(side="geofast", kernel=w.kernel, threads=gf.get_num_threads(), target=w.target, note=w.note)
        if w.geofast_seconds is not None:
            benchmark.extra_info["recorded_seconds"] = w.geofast_seconds(state)
            out = benchmark.pedantic(w.run_geofast, args=(state,), rounds=1)
        else:
            out = benchmark.pedantic(w.run_geofast, args=(state,), rounds=w.repeat, warmup_rounds=1)
        if w.check is not None:
            ref = w.run_anchor(state) if w.run_anchor is not None else None
            benchmark.extra_info["agreement"] = w.check(state, out, ref)

    def test_anchor(benchmark: Any, prepared: Any) -> None:
        w, state = prepared
        if w.run_anchor is None:
            pytest.skip("no anchor for this workload")
        benchmark.group = w.name
        benchmark.extra_info.update(side="anchor", anchor=w.anchor, anchor_scale=w.anchor_scale, note=w.note)
        benchmark.pedantic(w.run_anchor, args=(state,), rounds=max(1, min(w.repeat, 3)), warmup_rounds=1)

    @pytest.mark.parametrize("name", [w.name for w in workloads if w.target is not None])
    def test_target(name: str) -> None:
        w = by_name[name]
        result = run_workload(w, gf.get_num_threads())
        if result.skipped:
            pytest.skip(result.skipped)
        assert result.meets_target, (
            f"{w.name}: {result.speedup:.2f}x < target {w.target}x (geofast {result.geofast_s * 1e3:.2f} ms, "
            f"anchor {(result.anchor_s or 0) * 1e3:.1f} ms, {result.threads} threads)"
        )

    return prepared, test_geofast, test_anchor, test_target
