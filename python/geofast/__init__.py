"""geofast: predict where on Earth a photo was taken, fast.

Numeric kernels (distances, Fourier features, DBSCAN, top-k search) run in Rust on whole
batches; models (GeoCLIP, GeoMapCLIP) run in torch and are imported lazily, so
``import geofast`` stays fast.
"""

from __future__ import annotations

from geofast._geofast import (
    Gallery,
    __version__,
    equal_earth,
    get_num_threads,
    set_num_threads,
    topk,
)
from geofast.errors import (
    CacheError,
    CoordinateError,
    DatabaseError,
    EmptyInputError,
    GeofastError,
    ImageError,
    InputError,
    LLMError,
    ModelError,
    ParameterError,
    ShapeError,
    TooLargeError,
)

__all__ = [
    "__version__",
    # kernels
    "equal_earth",
    # search
    "topk",
    "Gallery",
    # threads
    "get_num_threads",
    "set_num_threads",
    # errors
    "GeofastError",
    "InputError",
    "ShapeError",
    "CoordinateError",
    "EmptyInputError",
    "ParameterError",
    "TooLargeError",
    "ImageError",
    "ModelError",
    "CacheError",
    "DatabaseError",
    "LLMError",
]
