"""pytest-benchmark suite of the RAG/LLM stage (the workloads of ``geofast.bench.llm``).

Run: ``pytest benches/test_llm.py --benchmark-enable`` (add ``-k quick`` for the small sizes).
Each test times geofast with pytest-benchmark, checks its answers against the anchor's, and
asserts the target: ≤ 20 ms of geofast overhead per image; 32 images at concurrency 8 in
≈ 4 stub delays (≤ 5.5 allowed for a loaded 2-core machine), i.e. ≥ 6× the sequential run.
"""

from __future__ import annotations

import pytest

from geofast.bench import llm as bench_llm

OVERHEAD_MS_PER_IMAGE = 20.0


def _workload(quick: bool, kernel_prefix: str, index: int):
    ws = bench_llm.workloads(quick)
    w = ws[index]
    assert w.kernel.startswith(kernel_prefix)
    return w, (16 if quick else 32)


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_overhead_cached_rerun(benchmark, quick):
    w, n = _workload(quick, "rag", 0)
    state = w.setup()
    preds = benchmark.pedantic(w.run_geofast, args=(state,), rounds=3 if quick else 5, warmup_rounds=1)
    print(w.check(state, preds, None))
    per_image_ms = min(state.times) / n * 1e3
    assert per_image_ms <= OVERHEAD_MS_PER_IMAGE, f"{per_image_ms:.1f} ms/image"


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_overhead_vs_bare_openai(benchmark, quick):
    w, n = _workload(quick, "rag", 1)
    state = w.setup()
    for _ in range(3):
        ref = w.run_anchor(state)
    preds = benchmark.pedantic(w.run_geofast, args=(state,), rounds=3, warmup_rounds=1)
    print(w.check(state, preds, ref))
    overhead_ms = (min(state.times) - min(state.anchor_times)) / n * 1e3
    assert overhead_ms <= OVERHEAD_MS_PER_IMAGE, f"{overhead_ms:.1f} ms/image over the bare client"


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_concurrency(benchmark, quick):
    w, _ = _workload(quick, "rag concurrency", 2)
    delay_s = 0.2
    state = w.setup()
    ref = w.run_anchor(state)
    preds = benchmark.pedantic(w.run_geofast, args=(state,), rounds=3, warmup_rounds=1)
    print(w.check(state, preds, ref))
    delays = min(state.times) / delay_s
    assert delays <= 5.5, f"32 images at concurrency 8 took {delays:.2f} delays (ideal 4)"
    assert min(state.anchor_times) / min(state.times) >= 6.0
