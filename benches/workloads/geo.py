"""Benchmark workloads of the geometry kernels against their anchors.

| workload | anchor | target |
|---|---|---|
| haversine, 2M pairs elementwise | numpy float64 formula (1 thread) | 8× |
| haversine_matrix 2000 × 3000 | scikit-learn ``haversine_distances`` × R (1 thread) | 20× |
| geodesic, 200K pairs | geopy ``geodesic`` per pair, timed on a 2K sample and scaled | 50× |
| equal_earth + fourier_features × 3, 100K points | GeoCLIP torch ``equal_earth_projection`` + ``gaussian_encoding`` × 3 | 4× |

Every ``check`` raises when geofast and the anchor (or a float64 reference) disagree.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from benches.harness import Skip, Workload, quiet_libraries
from benches.reference import float64_features, numpy_equal_earth, numpy_haversine

#: IUGG mean Earth radius, the default of gf.haversine.
R_KM = 6371.0088


def _random_latlon(n: int, seed: int) -> np.ndarray:
    """Points uniform on the sphere, (n, 2) degrees latitude first."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.column_stack([lat, lon])


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} is not installed")


def _rel_err_well_conditioned(ours: np.ndarray, ref: np.ndarray, radius_km: float = R_KM) -> float:
    """Max relative difference over pairs where the asin-based anchor is itself well-conditioned
    (between 1 km and 0.99·πR: asin(√h) loses digits near antipodes)."""
    mask = (ref > 1.0) & (ref < 0.99 * np.pi * radius_km)
    return float(np.max(np.abs(ours[mask] - ref[mask]) / ref[mask])) if mask.any() else 0.0


def _haversine(quick: bool) -> Workload:
    import geofast as gf

    n = 200_000 if quick else 2_000_000

    def setup() -> dict[str, Any]:
        return {"a": _random_latlon(n, 1), "b": _random_latlon(n, 2)}

    def check(state: dict[str, Any], ours: np.ndarray, ref: np.ndarray) -> str:
        err = _rel_err_well_conditioned(ours, ref)
        if not err <= 1e-12:
            raise AssertionError(f"haversine disagrees with numpy: max relative error {err:.2e}")
        return f"max rel Δ vs numpy {err:.1e}"

    return Workload(
        name=f"haversine {n // 1000}K pairs",
        kernel="haversine",
        anchor="numpy float64 formula",
        setup=setup,
        run_geofast=lambda s: gf.haversine(s["a"], s["b"]),
        run_anchor=lambda s: numpy_haversine(s["a"], s["b"]),
        check=check,
        target=None if quick else 8.0,  # targets hold at the full size
        note="anchor: numpy ufuncs, 1 thread",
        repeat=3 if quick else 7,
    )


def _haversine_matrix(quick: bool) -> Workload:
    import geofast as gf

    na, nb = (500, 800) if quick else (2000, 3000)

    def setup() -> dict[str, Any]:
        _require("sklearn")
        from sklearn.metrics.pairwise import haversine_distances

        return {"a": _random_latlon(na, 3), "b": _random_latlon(nb, 4), "hd": haversine_distances}

    def anchor(s: dict[str, Any]) -> np.ndarray:
        return s["hd"](np.radians(s["a"]), np.radians(s["b"])) * R_KM

    def check(state: dict[str, Any], ours: np.ndarray, ref: np.ndarray) -> str:
        if ours.shape != ref.shape:
            raise AssertionError(f"haversine_matrix shape {ours.shape} != sklearn {ref.shape}")
        err = _rel_err_well_conditioned(ours.ravel(), ref.ravel())
        if not err <= 1e-12:
            raise AssertionError(f"haversine_matrix disagrees with sklearn: max relative error {err:.2e}")
        return f"max rel Δ vs sklearn {err:.1e}"

    return Workload(
        name=f"haversine_matrix {na} × {nb}",
        kernel="haversine_matrix",
        anchor="sklearn haversine_distances × R",
        setup=setup,
        run_geofast=lambda s: gf.haversine_matrix(s["a"], s["b"]),
        run_anchor=anchor,
        check=check,
        target=None if quick else 20.0,  # targets hold at the full size
        note="anchor: scikit-learn, 1 thread",
        repeat=3 if quick else 7,
    )


def _geodesic(quick: bool) -> Workload:
    import geofast as gf

    n = 20_000 if quick else 200_000
    sample = 200 if quick else 2_000

    def setup() -> dict[str, Any]:
        _require("geopy")
        from geopy.distance import geodesic

        return {"a": _random_latlon(n, 5), "b": _random_latlon(n, 6), "geodesic": geodesic}

    def anchor(s: dict[str, Any]) -> np.ndarray:
        g = s["geodesic"]
        a, b = s["a"][:sample].tolist(), s["b"][:sample].tolist()
        return np.array([g(p, q).km for p, q in zip(a, b)])

    def check(state: dict[str, Any], ours: np.ndarray, ref: np.ndarray) -> str:
        diff = np.abs(ours[:sample] - ref)
        err = float(np.max(diff))
        rel = float(np.max(diff / np.maximum(ref, 1e-300)))
        if not (err <= 1e-9 or rel <= 1e-12):
            raise AssertionError(f"geodesic disagrees with geopy: max |Δ| {err:.2e} km, max rel {rel:.2e}")
        return f"max |Δ| vs geopy {err:.1e} km on {sample} pairs"

    return Workload(
        name=f"geodesic {n // 1000}K pairs",
        kernel="geodesic",
        anchor=f"geopy geodesic per pair ({sample} timed, scaled)",
        setup=setup,
        run_geofast=lambda s: gf.geodesic(s["a"], s["b"]),
        run_anchor=anchor,
        check=check,
        target=None if quick else 50.0,  # targets hold at the full size
        note="anchor: geopy (GeographicLib in Python), 1 thread",
        anchor_scale=sample / n,
        repeat=3 if quick else 5,
    )


def _geoclip_location_encoding() -> tuple[Any, Any, Any, list[Any]]:
    """GeoCLIP's torch functions and its three stored B matrices (float32, (256, 2))."""
    _require("geoclip")
    spec = importlib.util.find_spec("geoclip")
    assert spec is not None and spec.submodule_search_locations is not None
    import os

    import torch

    with quiet_libraries():
        from geoclip.model.location_encoder import equal_earth_projection
        from geoclip.model.rff.functional import gaussian_encoding

    weights = os.path.join(list(spec.submodule_search_locations)[0], "model", "weights", "location_encoder_weights.pth")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    bs = [state[f"LocEnc{i}.capsule.0.b"] for i in range(3)]
    return torch, equal_earth_projection, gaussian_encoding, bs


def _location_features(quick: bool) -> Workload:
    import geofast as gf

    base_note = "3 GeoCLIP B matrices (256 × 2, σ = 1, 16, 256)"
    n = 20_000 if quick else 100_000

    def setup() -> dict[str, Any]:
        torch, ee, enc, bs = _geoclip_location_encoding()
        workload.note = f"{base_note}; anchor: float32 torch, {torch.get_num_threads()} threads (torch default)"
        pts = _random_latlon(n, 7)
        return {
            "pts": pts,
            "t": torch.tensor(pts, dtype=torch.float32),
            "torch": torch,
            "ee": ee,
            "enc": enc,
            "bs_t": bs,
            "bs": [b.numpy() for b in bs],
        }

    def run_geofast(s: dict[str, Any]) -> list[np.ndarray]:
        xy = gf.equal_earth(s["pts"])
        return [gf.fourier_features(xy, b) for b in s["bs"]]

    def anchor(s: dict[str, Any]) -> list[Any]:
        with s["torch"].no_grad():
            loc = s["ee"](s["t"])
            return [s["enc"](loc, b) for b in s["bs_t"]]

    def check(s: dict[str, Any], ours: list[np.ndarray], ref: list[Any]) -> str:
        # float64 reference on an evenly spaced subsample of rows (all rows in the test suite).
        rows = np.arange(0, n, max(1, n // 10_000))
        xy64 = numpy_equal_earth(s["pts"][rows])
        err_ours = err_torch = 0.0
        for b, f, t in zip(s["bs"], ours, ref):
            want = float64_features(xy64, b)
            err_ours = max(err_ours, float(np.max(np.abs(f[rows].astype(np.float64) - want))))
            err_torch = max(err_torch, float(np.max(np.abs(t.numpy()[rows].astype(np.float64) - want))))
        if not err_ours <= 2e-6:
            raise AssertionError(f"fourier_features max abs error vs float64 is {err_ours:.2e} > 2e-6")
        return f"max |Δ| vs float64: geofast {err_ours:.1e}, GeoCLIP float32 {err_torch:.1e}"

    workload = Workload(
        name=f"equal_earth + fourier_features × 3, {n // 1000}K points",
        kernel="fourier_features",
        anchor="GeoCLIP torch equal_earth_projection + gaussian_encoding × 3",
        setup=setup,
        run_geofast=run_geofast,
        run_anchor=anchor,
        check=check,
        target=None if quick else 4.0,  # targets hold at the full size
        note=f"{base_note}; anchor: float32 torch, default threads",
        repeat=3 if quick else 5,
    )
    return workload


def _equal_earth(quick: bool) -> Workload:
    import geofast as gf

    n = 20_000 if quick else 100_000

    def setup() -> dict[str, Any]:
        _require("geoclip")
        import torch

        with quiet_libraries():
            from geoclip.model.location_encoder import equal_earth_projection

        pts = _random_latlon(n, 0)
        return {"pts": pts, "t": torch.tensor(pts, dtype=torch.float32), "ee": equal_earth_projection}

    def check(state: dict[str, Any], ours: np.ndarray, ref: Any) -> str:
        err64 = float(np.max(np.abs(ours - numpy_equal_earth(state["pts"]))))
        if not err64 <= 1e-12:
            raise AssertionError(f"equal_earth disagrees with the float64 formula by {err64}")
        err = float(np.max(np.abs(ours - ref.numpy().astype(np.float64))))
        if err > 1e-5:
            raise AssertionError(f"equal_earth disagrees with GeoCLIP by {err}")
        return f"max |Δ| vs float64 {err64:.0e}, vs float32 torch {err:.1e}"

    return Workload(
        name=f"equal_earth {n // 1000}K points",
        kernel="equal_earth",
        anchor="GeoCLIP torch equal_earth_projection",
        setup=setup,
        run_geofast=lambda s: gf.equal_earth(s["pts"]),
        run_anchor=lambda s: s["ee"](s["t"]),
        check=check,
        note="anchor: float32 torch, its default threads",
        repeat=3 if quick else 5,
    )


def workloads(quick: bool) -> list[Workload]:
    return [
        _haversine(quick),
        _haversine_matrix(quick),
        _geodesic(quick),
        _location_features(quick),
        _equal_earth(quick),
    ]
