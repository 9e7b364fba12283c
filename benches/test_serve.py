"""pytest-benchmark suite of geofast serve: throughput with 8 clients vs batch 1 and vs locate, overhead per request: the workloads of ``benches/workloads/serve.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("serve")
