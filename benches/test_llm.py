"""pytest-benchmark suite of the RAG/LLM stage (the workloads of ``benches/workloads/llm.py``).

Run: ``pytest benches/test_llm.py --benchmark-enable`` (add ``-k quick`` for the small sizes).
Each test times geofast with pytest-benchmark, checks its answers against the anchor's, and
asserts the target: ≤ 20 ms of geofast overhead per image (wall time of a cached rerun; and the
median CPU time of paired end-to-end runs minus bare ``openai`` runs); 32 images at concurrency 8 at least 6× faster
than sequential (ideal 8×: 4 stub delays instead of 32; the rest is Python's per-request CPU on a
2-core machine, stub server included), and within 1.5 × the ideal number of delays (quick: 16
images, ideal 2 delays).
"""

from __future__ import annotations

import pytest

from benches.workloads import llm as bench_llm

OVERHEAD_MS_PER_IMAGE = 20.0


def _workload(quick: bool, kernel_prefix: str, index: int):
    ws = bench_llm.workloads(quick)
    w = ws[index]
    assert w.kernel.startswith(kernel_prefix)
    return w, int(w.extra["images"])


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_overhead_cached_rerun(benchmark, quick):
    w, n = _workload(quick, "rag", 0)
    state = w.setup()
    preds = benchmark.pedantic(w.run_geofast, args=(state,), rounds=w.repeat, warmup_rounds=1)
    print(w.check(state, preds, None))
    per_image_ms = min(state.times) / n * 1e3  # wall time: everything geofast does, no requests
    assert per_image_ms <= OVERHEAD_MS_PER_IMAGE, f"{per_image_ms:.1f} ms/image"


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_overhead_vs_bare_openai(benchmark, quick):
    w, n = _workload(quick, "rag", 1)
    state = w.setup()
    w.run_anchor(state)  # warm up both sides
    w.run_geofast(state)
    state.cpu.clear()
    state.anchor_cpu.clear()
    out: dict[str, object] = {}

    def pair() -> None:
        # Anchor and geofast back to back, so that the load of a shared machine hits both.
        out["ref"] = w.run_anchor(state)
        out["ours"] = w.run_geofast(state)

    benchmark.pedantic(pair, rounds=5, warmup_rounds=0)
    print(w.check(state, out["ours"], out["ref"]))
    diffs = sorted(g - a for g, a in zip(state.cpu, state.anchor_cpu, strict=True))
    overhead_ms = diffs[len(diffs) // 2] / n * 1e3
    print(f"median paired CPU overhead {overhead_ms:.1f} ms/image")
    assert overhead_ms <= OVERHEAD_MS_PER_IMAGE, f"{overhead_ms:.1f} ms/image of CPU over the bare client"


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_rag_concurrency(benchmark, quick):
    w, n = _workload(quick, "rag concurrency", 2)
    delay_s, ideal = float(w.extra["delay_s"]), n / 8
    state = w.setup()
    ref = w.run_anchor(state)
    preds = benchmark.pedantic(w.run_geofast, args=(state,), rounds=3, warmup_rounds=1)
    print(w.check(state, preds, ref))
    delays = min(state.times) / delay_s
    speedup = min(state.anchor_times) / min(state.times)
    assert delays <= 1.5 * ideal, f"{n} images at concurrency 8 took {delays:.2f} delays (ideal {ideal:g})"
    assert speedup >= 6.0, f"concurrency 8 is only {speedup:.1f}x faster than sequential (ideal 8)"
