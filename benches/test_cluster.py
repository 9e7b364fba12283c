"""pytest-benchmark suite of the clustering kernels (dbscan incl. the 1M-point peak-memory run, swc_batch, PointIndex, fibonacci_lattice): the workloads of ``benches/workloads/cluster.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("cluster")
