"""Benchmark workloads of the geometry kernels against their anchors."""

from __future__ import annotations

import numpy as np

from geofast.bench import Skip, Workload


def _random_latlon(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.column_stack([lat, lon])


def _geoclip_equal_earth():
    import importlib.util

    if importlib.util.find_spec("geoclip") is None:
        raise Skip("geoclip is not installed")
    import torch
    from geoclip.model.location_encoder import equal_earth_projection

    return torch, equal_earth_projection


def workloads(quick: bool) -> list[Workload]:
    import geofast as gf

    n = 20_000 if quick else 100_000

    def setup():
        torch, ee = _geoclip_equal_earth()
        pts = _random_latlon(n, 0)
        return {"pts": pts, "t": torch.tensor(pts, dtype=torch.float32), "ee": ee}

    def check(state, ours, ref):
        err = float(np.max(np.abs(ours - ref.numpy().astype(np.float64))))
        if err > 1e-5:
            raise AssertionError(f"equal_earth disagrees with GeoCLIP by {err}")
        return f"max |Δ| vs float32 torch {err:.1e}"

    return [
        Workload(
            name=f"equal_earth {n // 1000}K points",
            kernel="equal_earth",
            anchor="GeoCLIP torch equal_earth_projection",
            setup=setup,
            run_geofast=lambda s: gf.equal_earth(s["pts"]),
            run_anchor=lambda s: s["ee"](s["t"]),
            check=check,
            repeat=3 if quick else 5,
        )
    ]
