"""Type stubs for the Rust extension ``geofast._geofast`` (checked by mypy.stubtest)."""

from typing import Literal, final, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "set_num_threads",
    "get_num_threads",
    "equal_earth",
    "topk",
    "Gallery",
    "_simd_level",
]

__version__: str

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def equal_earth(latlon: npt.ArrayLike, /) -> npt.NDArray[np.float64]: ...

def topk(
    queries: npt.ArrayLike, gallery: npt.ArrayLike, k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...

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
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> Literal["f32", "f16", "i8"]: ...
    @property
    def nbytes(self) -> int: ...

def _simd_level() -> Literal["scalar", "avx2", "avx512"]: ...
