"""Thread-count control: gf.set_num_threads and GEOFAST_NUM_THREADS."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import geofast as gf


def test_set_and_get_num_threads_and_results_do_not_depend_on_it():
    before = gf.get_num_threads()
    pts = np.random.default_rng(0).uniform(-60, 60, (50_000, 2))
    try:
        gf.set_num_threads(1)
        assert gf.get_num_threads() == 1
        one = gf.equal_earth(pts)
        gf.set_num_threads(3)
        assert gf.get_num_threads() == 3
        np.testing.assert_array_equal(gf.equal_earth(pts), one)
    finally:
        gf.set_num_threads(before)


@pytest.mark.parametrize("n", [0, -1, 10**6, 2**63, 10**30])
def test_invalid_thread_count(n):
    before = gf.get_num_threads()
    threads_before = len(os.listdir("/proc/self/task"))
    with pytest.raises(gf.ParameterError) as info:
        gf.set_num_threads(n)
    assert len(os.listdir("/proc/self/task")) <= threads_before  # refused before any thread is started
    message = str(info.value)
    assert "\n" not in message
    if abs(n) < 2**63:
        assert message.startswith("num_threads must be between 1 and "), message
        assert message.endswith(f", got {n}"), message
    else:
        assert message.startswith("num_threads must be an integer within ±2**63"), message
    assert gf.get_num_threads() == before


def _limit() -> int:
    """The largest accepted count, as the error message states it."""
    with pytest.raises(gf.ParameterError) as info:
        gf.set_num_threads(10**6)
    m = re.match(
        r"num_threads must be between 1 and (\d+) \(4 × the (\d+) CPUs this process may use, at least 64\)", str(info.value)
    )
    assert m, str(info.value)
    limit, cpus = int(m.group(1)), int(m.group(2))
    assert limit == max(64, 4 * cpus)
    assert cpus <= (os.cpu_count() or 1)
    return limit


def test_limit_is_max_of_64_and_four_per_cpu():
    before = gf.get_num_threads()
    limit = _limit()
    try:
        gf.set_num_threads(limit)  # the limit itself is allowed
        assert gf.get_num_threads() == limit
        pts = np.random.default_rng(1).uniform(-60, 60, (1_000, 2))
        np.testing.assert_array_equal(gf.haversine(pts, pts[::-1]), gf.haversine(pts[::-1], pts))
        with pytest.raises(gf.ParameterError):
            gf.set_num_threads(limit + 1)
        assert gf.get_num_threads() == limit
    finally:
        gf.set_num_threads(before)


def _child_threads(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GEOFAST_NUM_THREADS=value)
    script = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import geofast\n"
        "print(geofast.get_num_threads())\n"
        "for x in w:\n"
        "    print(x.category.__name__, '|', x.message)\n"
    )
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60)


@pytest.mark.parametrize("value", ["1000000", "0", "-2", "lots", "1e3"])
def test_invalid_environment_variable_warns_and_uses_every_cpu(value):
    """An unusable GEOFAST_NUM_THREADS is ignored with one RuntimeWarning at import (never a
    million threads, never a hang); the pool then has one thread per CPU, as when it is unset."""
    out = _child_threads(value)
    lines = out.stdout.strip().splitlines()
    unset = subprocess.run(
        [sys.executable, "-c", "import geofast; print(geofast.get_num_threads())"],
        env={k: v for k, v in os.environ.items() if k != "GEOFAST_NUM_THREADS"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert lines[0] == unset.stdout.strip()
    warnings = [line for line in lines[1:] if "GEOFAST_NUM_THREADS" in line]
    assert len(warnings) == 1, lines
    category, message = warnings[0].split(" | ", 1)
    assert category == "RuntimeWarning"
    assert message.startswith("GEOFAST_NUM_THREADS must be between 1 and "), message
    assert f'got "{value}"; using {lines[0]} threads' in message, message


def test_valid_environment_variable_does_not_warn():
    out = _child_threads(" 2 ")
    assert out.stdout.strip().splitlines() == ["2"]


def test_environment_variable_sets_default():
    env = dict(os.environ, GEOFAST_NUM_THREADS="3")
    out = subprocess.run(
        [sys.executable, "-c", "import geofast; print(geofast.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3"
