"""Type stubs for the Rust extension ``geofast._geofast`` (checked by mypy.stubtest)."""

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "set_num_threads",
    "get_num_threads",
    "equal_earth",
]

__version__: str

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def equal_earth(latlon: npt.ArrayLike, /) -> npt.NDArray[np.float64]: ...
