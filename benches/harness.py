"""Benchmarks of geofast against the published/reference implementations, run in one process.

A :class:`Workload` pairs a geofast call with its anchor (numpy, scikit-learn, geopy, GeoCLIP's
torch code, faiss, ``geoclip.GeoCLIP.predict``) on the same prepared data. :func:`run` times both
sides in the same run, so the ratio is meaningful on a noisy machine even when absolute times are
not. ``geofast bench`` renders the results; ``benches/`` runs the same workloads under
pytest-benchmark.

Workloads live in ``benches/workloads``, one module per area; each module
exposes ``workloads(quick: bool) -> list[Workload]``.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Modules that contribute workloads, in report order.
AREAS: tuple[str, ...] = ("geo", "cluster", "search", "e2e", "llm", "db", "serve", "train", "scale")
#: The areas run when none is named: ``scale`` (the growth benchmark, up to 4.7M rows and ~15 GB
#: of temporary data) runs only when asked for with ``--area scale``.
DEFAULT_AREAS: tuple[str, ...] = tuple(a for a in AREAS if a != "scale")


@dataclass
class Workload:
    """One comparison: ``run_geofast(state)`` vs ``run_anchor(state)``.

    ``setup`` builds the shared input once (not timed). ``check`` (optional) receives both
    results and returns a short string describing agreement (e.g. ``"max err 3e-13"``); it
    raises if the results disagree, so a benchmark can never report a fast wrong answer.
    """

    name: str
    kernel: str
    anchor: str
    setup: Callable[[], Any]
    run_geofast: Callable[[Any], Any]
    run_anchor: Callable[[Any], Any] | None
    check: Callable[[Any, Any, Any], str] | None = None
    target: float | None = None
    note: str = ""
    #: Anchor time is measured on ``anchor_scale`` of the work and scaled up (for anchors too
    #: slow to run in full, e.g. geopy per pair); 1.0 means the full workload.
    anchor_scale: float = 1.0
    repeat: int = 5
    #: For work that cannot be repeated (a cold start), setup records the time itself and this
    #: returns it instead of timing ``run_geofast``.
    geofast_seconds: Callable[[Any], float] | None = None
    #: Alternate geofast and anchor runs (best of ``repeat`` each) instead of timing one side
    #: after the other: for comparisons of near-equal times (locate vs the CLIP forward alone)
    #: that load drifting on a shared machine would otherwise decide.
    interleave: bool = False
    #: Like ``geofast_seconds`` for the anchor: a time measured once and shared by several
    #: workloads (one ``GeoCLIP.predict`` timing for every end-to-end row). ``run_anchor`` still
    #: defines what is timed (pytest-benchmark runs it); ``check`` then receives ``None``.
    anchor_seconds: Callable[[Any], float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    kernel: str
    anchor: str
    geofast_s: float
    anchor_s: float | None
    speedup: float | None
    target: float | None
    threads: int
    agreement: str
    note: str
    skipped: str | None = None

    @property
    def meets_target(self) -> bool | None:
        if self.target is None or self.speedup is None:
            return None
        return self.speedup >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel": self.kernel,
            "anchor": self.anchor,
            "geofast_s": None if self.skipped else self.geofast_s,  # a skipped row has no time (NaN is not JSON)
            "anchor_s": self.anchor_s,
            "speedup": self.speedup,
            "target": self.target,
            "meets_target": self.meets_target,
            "threads": self.threads,
            "agreement": self.agreement,
            "note": self.note,
            "skipped": self.skipped,
        }


class Skip(Exception):
    """Raised by a workload's setup when its anchor or data is unavailable."""


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Import, load or save with third-party libraries quietly: geoclip's import warns that
    ``torch.jit.script`` is deprecated, and transformers draws loading and saving bars."""
    from geofast.models.clip import quiet_transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with quiet_transformers():
            yield


def time_call(fn: Callable[[], Any], repeat: int, budget_s: float = 20.0) -> tuple[float, Any]:
    """Best-of-``repeat`` wall time of ``fn()`` after one untimed warm-up call, stopping early
    once ``budget_s`` is spent. Returns (seconds, last result)."""
    result = fn()
    times: list[float] = []
    spent_start = time.perf_counter()
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - spent_start > budget_s:
            break
    return min(times), result


def collect(quick: bool, areas: Iterable[str] = AREAS) -> list[Workload]:
    """All workloads of the given areas."""
    found: list[Workload] = []
    for area in areas:
        module = importlib.import_module(f"benches.workloads.{area}")
        found.extend(module.workloads(quick))
    return found


def run_workload(w: Workload, threads: int) -> Result:
    """Set up and time one workload (geofast, then anchor), checking agreement."""
    try:
        state = w.setup()
    except Skip as e:
        return Result(w.name, w.kernel, w.anchor, float("nan"), None, None, w.target, threads, "", w.note, str(e))
    if w.interleave and w.run_anchor is not None and w.geofast_seconds is None and w.anchor_seconds is None:
        return _run_interleaved(w, state, threads)
    if w.geofast_seconds is not None:
        g_s, g_out = w.geofast_seconds(state), None
    else:
        g_s, g_out = time_call(lambda: w.run_geofast(state), w.repeat)
    a_s: float | None = None
    a_out: Any = None
    anchor = w.run_anchor
    if w.anchor_seconds is not None:
        a_s = w.anchor_seconds(state) / w.anchor_scale
    elif anchor is not None:
        # Anchors are usually far slower: fewer repeats.
        a_s, a_out = time_call(lambda: anchor(state), max(1, min(w.repeat, 3)))
        a_s /= w.anchor_scale
    agreement = w.check(state, g_out, a_out) if w.check is not None else ""
    speedup = (a_s / g_s) if (a_s is not None and g_s > 0) else None
    return Result(w.name, w.kernel, w.anchor, g_s, a_s, speedup, w.target, threads, agreement, w.note)


def _run_interleaved(w: Workload, state: Any, threads: int) -> Result:
    anchor = w.run_anchor
    assert anchor is not None
    g_out, a_out = w.run_geofast(state), anchor(state)  # untimed warm-up of both
    g_times: list[float] = []
    a_times: list[float] = []
    for _ in range(max(1, w.repeat)):
        t0 = time.perf_counter()
        g_out = w.run_geofast(state)
        t1 = time.perf_counter()
        a_out = anchor(state)
        g_times.append(t1 - t0)
        a_times.append((time.perf_counter() - t1) / w.anchor_scale)
    g_s, a_s = min(g_times), min(a_times)
    agreement = w.check(state, g_out, a_out) if w.check is not None else ""
    return Result(w.name, w.kernel, w.anchor, g_s, a_s, a_s / g_s if g_s > 0 else None, w.target, threads, agreement, w.note)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


__all__ = ["AREAS", "DEFAULT_AREAS", "Result", "Skip", "Workload", "collect", "quiet_libraries", "run_workload", "time_call"]
