"""pytest-benchmark suite of training (a step vs the published step, an epoch over 100K cached embeddings vs the published way with the ViT-L/14 forward, the GPU step): the workloads of ``benches/workloads/train.py``, see ``_suite.py``."""

from _suite import define

prepared, test_geofast, test_anchor, test_target = define("train")
