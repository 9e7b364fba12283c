"""Benchmark workloads: e2e (filled in by the issue that builds these kernels)."""

from __future__ import annotations

from geofast.bench import Workload


def workloads(quick: bool) -> list[Workload]:
    return []
