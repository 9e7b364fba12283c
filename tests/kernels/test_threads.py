"""Thread-count control: gf.set_num_threads and GEOFAST_NUM_THREADS."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("n", [0, -1])
def test_invalid_thread_count(n):
    with pytest.raises(gf.ParameterError, match="num_threads must be >= 1"):
        gf.set_num_threads(n)


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
