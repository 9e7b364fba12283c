"""The CLI shell: version, help, error handling (one line, exit 1, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import geofast as gf


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geofast", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"geofast {gf.__version__}"
    r = run_cli("--help")
    assert r.returncode == 0 and "bench" in r.stdout


def test_usage_error_is_one_message_without_traceback():
    r = run_cli("bench", "--threads", "0")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_geofast_error_prints_one_line_and_hint():
    r = run_cli("bench", "--area", "nope")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "error: unknown bench area nope"
    assert lines[1].startswith("hint: choose from geo")
    assert "Traceback" not in r.stderr
    r = run_cli("bench", "--area", "nope", env={"GEOFAST_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr


@pytest.mark.slow
def test_bench_writes_json(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    r = run_cli("bench", "--quick", "--only", "equal_earth", "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    payload = json.loads(out.read_text())
    assert payload["threads"] == 1
    names = [x["name"] for x in payload["results"]]
    assert names and all("equal_earth" in n for n in names)
    assert all(x["geofast_s"] > 0 for x in payload["results"])
    assert not list(out.parent.glob(".*.tmp"))


def test_import_and_help_do_not_load_torch():
    code = "import sys, geofast, geofast.cli; geofast.cli.main(['--help']); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_interleaved_workload_alternates_and_keeps_the_best_time(monkeypatch):
    import types

    from benches import harness
    from benches.harness import Workload, run_workload

    # A fake clock that only the runs advance (whole seconds: exact): the result cannot depend on
    # how loaded the machine is.
    now = [0.0]
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    calls: list[str] = []
    g_takes = iter([0.0, 3.0, 1.0, 2.0])  # warm-up first, then the timed runs
    a_takes = iter([0.0, 2.0, 4.0, 5.0])

    def ours(_s: object) -> int:
        calls.append("g")
        now[0] += next(g_takes)
        return 1

    def anchor(_s: object) -> int:
        calls.append("a")
        now[0] += next(a_takes)
        return 1

    w = Workload(
        "w",
        "k",
        "a",
        setup=lambda: {},
        run_geofast=ours,
        run_anchor=anchor,
        check=lambda _s, g, a: f"{g}{a}",
        repeat=3,
        interleave=True,
    )
    r = run_workload(w, threads=1)
    assert calls == ["g", "a"] * 4
    assert (r.geofast_s, r.anchor_s) == (1.0, 2.0)  # the best of each, not the mean or the last
    assert r.speedup == r.anchor_s / r.geofast_s and r.agreement == "11"
