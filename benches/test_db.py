"""pytest-benchmark suite of the image database (1M x 768 flat search + SwC vs faiss with peak RSS, IVF latency and recall, build overhead): the workloads of ``benches/workloads/db.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("db")
