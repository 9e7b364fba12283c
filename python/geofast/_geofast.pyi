"""Type stubs for the Rust extension ``geofast._geofast`` (checked by mypy.stubtest)."""

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "set_num_threads",
    "get_num_threads",
    "equal_earth",
    "haversine",
    "haversine_matrix",
    "geodesic",
    "fourier_features",
]

__version__: str

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def equal_earth(latlon: npt.ArrayLike, /) -> npt.NDArray[np.float64]: ...
def haversine(
    a: npt.ArrayLike, b: npt.ArrayLike, *, radius_km: float = 6371.0088
) -> npt.NDArray[np.float64]: ...
def haversine_matrix(
    a: npt.ArrayLike, b: npt.ArrayLike, *, radius_km: float = 6371.0088
) -> npt.NDArray[np.float64]: ...
def geodesic(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
def fourier_features(xy: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
