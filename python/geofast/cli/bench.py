"""``geofast bench``: every kernel against its anchor, timed in the same process."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from geofast import _console
from geofast.cli._app import app
from geofast.errors import InputError

SUITE_ENV = "GEOFAST_BENCH_DIR"


def _suite_root(explicit: Path | None) -> Path:
    """The checkout whose ``benches/harness.py`` holds the benchmark suite."""
    import geofast

    env = os.environ.get(SUITE_ENV, "").strip()
    candidates = [explicit] if explicit is not None else [Path(env)] if env else []
    if explicit is None:
        candidates += [Path.cwd(), Path(geofast.__file__).resolve().parents[2]]
    for root in candidates:
        if root is not None and (root.expanduser() / "benches" / "harness.py").is_file():
            return root.expanduser().resolve()
    where = f"{explicit}" if explicit is not None else "the working directory or this installation"
    raise InputError(
        f"no benchmark suite (benches/harness.py) in {where}",
        hint=f"the benchmarks compare against test-only references and live in the source checkout: run geofast bench inside a clone of geofast, or pass --suite DIR (or set {SUITE_ENV})",
    )


def _load_harness(explicit: Path | None) -> Any:
    root = str(_suite_root(explicit))
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benches.harness")


def _fmt_time(s: float | None) -> str:
    if s is None or s != s:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


@app.command("bench")
def bench(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Smaller workloads and fewer repeats, in under a minute; targets are shown only where the size is the target's.",
    ),
    only: str | None = typer.Option(
        None, "--only", metavar="TEXT", help="Run only workloads whose name or kernel contains TEXT."
    ),
    area: list[str] | None = typer.Option(
        None,
        "--area",
        metavar="AREA",
        help="Restrict to these areas (geo, cluster, search, e2e, llm, db, serve, train; scale: the growth benchmark, run only when named); repeatable.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Threads for geofast's kernels (default: GEOFAST_NUM_THREADS or all CPUs)."
    ),
    json_file: Path | None = typer.Option(None, "--json", metavar="FILE", help="Also write the results as JSON to FILE."),
    suite: Path | None = typer.Option(
        None,
        "--suite",
        metavar="DIR",
        help="The geofast source checkout holding benches/ (default: $GEOFAST_BENCH_DIR, the working directory, or the editable install's checkout).",
    ),
) -> None:
    """Time each geofast kernel against its reference implementation and print the speed-ups."""
    import geofast as gf

    lib = _load_harness(suite)

    if threads is not None:
        gf.set_num_threads(threads)
    n_threads = gf.get_num_threads()
    areas = tuple(area) if area else lib.DEFAULT_AREAS
    unknown = sorted(set(areas) - set(lib.AREAS))
    if unknown:
        raise gf.ParameterError(f"unknown bench area {', '.join(unknown)}", hint=f"choose from {', '.join(lib.AREAS)}")
    workloads = [w for w in lib.collect(quick, areas) if only is None or only in w.name or only in w.kernel]
    results = []
    with _console.err.status("benchmarking...") as status:
        for w in workloads:
            status.update(f"benchmarking {w.name} ...")
            results.append(lib.run_workload(w, n_threads))

    table = Table(title=f"geofast bench ({'quick' if quick else 'full'}, {n_threads} threads)")
    for col, justify in (
        ("workload", "left"),
        ("geofast", "right"),
        ("anchor", "left"),
        ("anchor time", "right"),
        ("speed-up", "right"),
        ("target", "right"),
        ("threads", "right"),
        ("agreement", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        if r.skipped:
            table.add_row(r.name, "-", r.anchor, "-", "-", "-", str(r.threads), f"skipped: {r.skipped}")
            continue
        speed: str | Text
        if r.speedup is None:
            speed = "-"
        else:
            colour = {True: "green", False: "red", None: "white"}[r.meets_target]
            speed = Text.from_markup(f"[{colour}]{r.speedup:.1f}×[/]")
        table.add_row(
            r.name,
            _fmt_time(r.geofast_s),
            r.anchor,
            _fmt_time(r.anchor_s),
            speed,
            f"≥ {r.target:.3g}×" if r.target is not None else "-",
            str(r.threads),
            r.agreement,
        )
    _console.out.print(table)
    growth = _growth_table() if "scale" in areas else None

    if json_file is not None:
        payload = {
            "geofast_version": gf.__version__,
            "quick": quick,
            "threads": n_threads,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
            },
            "date": time.strftime("%Y-%m-%d"),
            "results": [r.as_dict() for r in results],
            **({"growth": growth} if growth else {}),
        }
        from geofast._io import atomic_write_text

        atomic_write_text(json_file, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
        _console.err.print(f"wrote {json_file}")


def _fmt_bytes(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def _growth_table() -> list[dict[str, object]]:
    """The growth benchmark's per-N table: time and peak RSS per N, and each cost's growth
    divided by the growth of N between consecutive sizes (≤ 1: at most linear)."""
    from benches.workloads import scale

    rows = scale.growth_rows()
    if not rows:
        return rows
    sizes = [c["n"] for c in rows[0]["cells"]]
    table = Table(title="growth with N (time · peak RSS; growth = time ratio ÷ N ratio, ≤ 1 is at most linear)")
    table.add_column("cost")
    for n in sizes:
        table.add_column(f"N = {n:,}", justify="right")
    for a, b in zip(sizes, sizes[1:]):
        table.add_column(f"growth {a // 1000:,}K→{b // 1000:,}K", justify="right")
    for r in rows:
        cells = [
            f"{_fmt_time(c['seconds'])} · {_fmt_bytes(c['peak_rss_bytes'])}" + (f" · {c['extra']}" if c["extra"] else "")
            for c in r["cells"]
        ]
        growth: list[str | Text] = []
        for g in r["growth_vs_n"]:
            if g is None:
                growth.append("-")
            else:
                growth.append(Text.from_markup(f"[{'green' if g <= 1.15 else 'red'}]{g:.2f}[/]"))
        table.add_row(str(r["cost"]), *cells, *growth)
    _console.out.print(table)
    for n in sizes:
        m = scale.MEASURED[n]
        base = m.get("baseline_kb")
        _console.err.print(
            f"N = {n:,}: generated in {m.get('generate_s', 0):.1f} s, from_arrays {m.get('from_arrays_s', 0):.1f} s, "
            f"IVF{m.get('nlist')} build {m.get('ivf_build_s', 0):.1f} s; search process RSS before the searches "
            f"(torch, GeoCLIP, its gallery) {_fmt_bytes(int(base) * 1024 if base else None)}"
        )
    return rows
