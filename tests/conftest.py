"""Shared fixtures: random coordinates and reference helpers."""

from __future__ import annotations

import numpy as np
import pytest


def random_latlon(n: int, seed: int = 0) -> np.ndarray:
    """Points uniform on the sphere, (n, 2) degrees latitude first."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.column_stack([lat, lon])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
