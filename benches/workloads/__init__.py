"""One module per benchmark area; each exposes ``workloads(quick: bool) -> list[Workload]``."""
