"""pytest-benchmark suite of the search kernels (topk batch 1/16/256, Gallery f16/i8 with exact re-rank, search + lse, 1M x 768 memory-mapped f16): the workloads of ``benches/workloads/search.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("search")
