"""pytest-benchmark suite of the geometry kernels (haversine, haversine_matrix, geodesic, equal_earth + fourier_features): the workloads of ``benches/workloads/geo.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("geo")
