"""pytest-benchmark suite of end to end: locate vs geoclip.GeoCLIP.predict with the same backbone, the gallery cache build, evaluation: the workloads of ``benches/workloads/e2e.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("e2e")
