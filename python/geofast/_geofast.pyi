"""Type stubs for the Rust extension ``geofast._geofast`` (checked by mypy.stubtest)."""

from typing import Literal, final, overload

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
    "dbscan",
    "swc",
    "swc_batch",
    "fibonacci_lattice",
    "PointIndex",
    "topk",
    "Gallery",
    "simd_level",
]

__version__: str

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def equal_earth(latlon: npt.ArrayLike, /) -> npt.NDArray[np.float64]: ...
def haversine(a: npt.ArrayLike, b: npt.ArrayLike, *, radius_km: float = 6371.0088) -> npt.NDArray[np.float64]: ...
def haversine_matrix(a: npt.ArrayLike, b: npt.ArrayLike, *, radius_km: float = 6371.0088) -> npt.NDArray[np.float64]: ...
def geodesic(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
def fourier_features(xy: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
def dbscan(
    latlon: npt.ArrayLike,
    eps_km: float,
    min_samples: int = 1,
    *,
    sample_weight: npt.ArrayLike | None = None,
    radius_km: float = 6371.0088,
) -> npt.NDArray[np.int64]: ...
def swc(
    latlon: npt.ArrayLike,
    similarity: npt.ArrayLike,
    *,
    eps_km: float = 1.0,
    min_samples: int = 1,
    weight_exponent: float = 0.0,
    radius_km: float = 6371.0,
) -> tuple[float, float, npt.NDArray[np.int64]]: ...
def swc_batch(
    latlon: npt.ArrayLike,
    similarity: npt.ArrayLike,
    *,
    eps_km: float = 1.0,
    min_samples: int = 1,
    weight_exponent: float = 0.0,
    radius_km: float = 6371.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]: ...
def fibonacci_lattice(
    spacing_km: float,
    bbox: tuple[float, float, float, float] | npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]: ...

@final
class PointIndex:
    def __new__(cls, latlon: npt.ArrayLike, *, radius_km: float = 6371.0088) -> PointIndex: ...
    def query(self, latlon: npt.ArrayLike, k: int = 1) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...
    @property
    def radius_km(self) -> float: ...
    def __len__(self) -> int: ...

def topk(queries: npt.ArrayLike, gallery: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...

@final
class Gallery:
    def __new__(cls, vectors: npt.ArrayLike, *, dtype: Literal["f32", "f16", "i8"] = "f32") -> Gallery: ...
    @overload
    def search(
        self, queries: npt.ArrayLike, k: int, *, lse_scale: None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    @overload
    def search(
        self, queries: npt.ArrayLike, k: int, *, lse_scale: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
    @overload
    def search_rows(
        self, queries: npt.ArrayLike, rows: npt.ArrayLike, k: int, *, lse_scale: None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    @overload
    def search_rows(
        self, queries: npt.ArrayLike, rows: npt.ArrayLike, k: int, *, lse_scale: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> Literal["f32", "f16", "i8"]: ...
    @property
    def nbytes(self) -> int: ...

def simd_level() -> Literal["avx512", "avx2", "portable"]: ...
