"""geofast's benchmark suite: workloads that time each geofast path against its reference
implementation (numpy, scikit-learn, geopy, faiss, GeoCLIP's own code), and the harness that
runs them.

It lives in the source checkout, not in the installed package: the references it compares
against are test dependencies. ``geofast bench`` finds it (``--suite DIR``,
``$GEOFAST_BENCH_DIR``, the working directory, or the checkout of an editable install);
``pytest benches/ --benchmark-enable`` runs the same workloads under pytest-benchmark.
"""
