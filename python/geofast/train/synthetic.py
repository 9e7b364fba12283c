"""A synthetic world for tests, benchmarks and demos: CLIP-like embeddings that depend on where.

No real geotagged photos are needed to check that training learns: a "photo" taken at a point
``p`` on the sphere has the 768-d feature ``s · (A·φ(p) + σ_noise·ε)``, where ``φ`` is a fixed
random smooth function of the 3-D unit vector of ``p`` (random Fourier features at a few spatial
scales, wavelengths from ~40,000 km down to ~600 km), ``A`` a fixed random projection, ``ε``
standard normal noise per photo, and ``s`` sets the feature norm (CLIP ViT-L/14's projected
features have norms of the order of 10–30). Nearby photos have similar features; how well a
model can locate them is bounded by the noise and the finest scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from geofast.train.data import Database

DIM = 768


@dataclass(frozen=True)
class World:
    """The fixed function ``p ↦ feature``; ``seed`` selects it."""

    seed: int = 0
    noise: float = 0.5
    scale: float = 20.0
    frequencies: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)
    per_scale: int = 128

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0xC11F])
        w = np.concatenate([rng.standard_normal((self.per_scale, 3)) * f for f in self.frequencies])
        phase = np.asarray(rng.uniform(0, 2 * np.pi, w.shape[0]))
        a = rng.standard_normal((w.shape[0], DIM)) / np.sqrt(w.shape[0] / 2.0)
        return w, phase, a

    def clean(self, latlon: np.ndarray) -> np.ndarray:
        """Noise-free features ``(N, 768)`` float32 of ``(N, 2)`` degrees."""
        w, phase, a = self._params()
        lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
        u = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
        return (np.cos(u @ w.T + phase) @ a).astype(np.float32)

    def photos(self, latlon: np.ndarray, seed: int) -> np.ndarray:
        """Features of photos taken at ``latlon`` (noise drawn from ``seed``)."""
        rng = np.random.default_rng([self.seed, seed, 0x9E0])
        x = self.clean(latlon) + self.noise * rng.standard_normal((latlon.shape[0], DIM)).astype(np.float32)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return (self.scale * x / np.sqrt(np.mean(norm**2))).astype(np.float32)


def sample_points(n: int, seed: int, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """``n`` points uniform on the sphere, or inside ``(lat_min, lon_min, lat_max, lon_max)``."""
    rng = np.random.default_rng([seed, 0x90])
    if region is None:
        lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        lon = rng.uniform(-180.0, 180.0, n)
    else:
        lat_min, lon_min, lat_max, lon_max = region
        s0, s1 = np.sin(np.radians(lat_min)), np.sin(np.radians(lat_max))
        lat = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
        lon = rng.uniform(lon_min, lon_max, n)
    return np.column_stack([lat, lon])


def make_database(
    out: str | os.PathLike[str],
    latlon: np.ndarray,
    *,
    world: World | None = None,
    seed: int = 0,
    dtype: str = "f16",
) -> Database:
    """An image database of synthetic photos at ``latlon`` (embeddings normalised, norms kept,
    like ``geofast db build``)."""
    from geofast.train.data import Database

    w = world or World()
    return Database.from_arrays(out, w.photos(latlon, seed), latlon, dtype=dtype, backbone_source="synthetic world")


__all__ = ["DIM", "World", "make_database", "sample_points"]
