"""The LLM stage's progress display, shared by ``locate`` and ``eval``."""

from __future__ import annotations

from typing import Any


def llm_status(client: Any) -> str:
    """One line of run totals: requests, requests/s, tokens, failures (read from ``client.stats``)."""
    st = client.stats
    parts = [f"LLM {st.requests:,} req", f"{client.requests_per_second():.1f} req/s", f"{st.total_tokens:,} tokens"]
    if st.cached:
        parts.append(f"{st.cached:,} cached")
    if st.failed:
        parts.append(f"[yellow]{st.failed:,} failed[/]")
    return ", ".join(parts)


def attach(predictor: Any, bar: Any, task: Any) -> None:
    """Show the run's LLM totals (requests, requests/s, tokens, failures) in ``task``'s info field
    of ``bar`` as each image's LLM stage finishes (``predictor`` is a ``rag`` predictor)."""
    client = getattr(predictor, "client", None)
    if client is None or not hasattr(predictor, "llm_progress"):
        return

    def on_llm(done: int, total: int) -> None:
        bar.update(task, info=llm_status(client))

    predictor.llm_progress = on_llm
