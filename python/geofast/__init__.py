"""geofast: predict where on Earth a photo was taken, fast.

Numeric kernels (distances, Fourier features, DBSCAN, top-k search) run in Rust on whole
batches; models (GeoCLIP, GeoMapCLIP) run in torch and are imported lazily, so
``import geofast`` stays fast.
"""

from __future__ import annotations

import os as _os

# torch's OpenMP workers busy-wait after each parallel region by default; on a machine with few
# cores they then starve geofast's Rust threads (a 20 ms gallery scan after a CLIP forward took
# 200 ms on 2 cores). Passive waiting costs nothing measurable for CLIP-sized work. Only
# effective when geofast is imported before torch; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from geofast._geofast import (
    Gallery,
    PointIndex,
    __version__,
    dbscan,
    equal_earth,
    fibonacci_lattice,
    fourier_features,
    geodesic,
    get_num_threads,
    haversine,
    haversine_matrix,
    set_num_threads,
    swc,
    swc_batch,
    topk,
)
from geofast.db import Database
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
    TrainingError,
)
from geofast.models.location import LocationEncoder
from geofast.predict.geoclip import Geolocator
from geofast.predict.types import Candidate, Prediction

__all__ = [
    "__version__",
    # kernels
    "equal_earth",
    "fourier_features",
    "geodesic",
    "haversine",
    "haversine_matrix",
    # clustering, lattices, nearest places
    "dbscan",
    "swc",
    "swc_batch",
    "fibonacci_lattice",
    "PointIndex",
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
    "TrainingError",
    # image database
    "Database",
    "Geolocator",
    "LocationEncoder",
    "Prediction",
    "Candidate",
]
