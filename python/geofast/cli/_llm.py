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


def attach(predictor: Any, bar: Any, task: Any, *, count_images: bool) -> None:
    """Show the LLM stage of a ``rag`` predictor on ``bar``: the run's totals in ``task``'s info
    field and, with ``count_images``, ``task`` restarted to count the images of the LLM stage
    (for a single call whose first stage has already filled the bar)."""
    client = getattr(predictor, "client", None)
    if client is None or not hasattr(predictor, "llm_progress"):
        return
    started = [False]

    def on_llm(done: int, total: int) -> None:
        if count_images:
            if not started[0]:
                bar.reset(task, total=total, completed=0)
                started[0] = True
            bar.update(task, completed=done)
        bar.update(task, info=llm_status(client))

    predictor.llm_progress = on_llm
