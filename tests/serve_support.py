"""Helpers shared by the serve tests: upload lists, a gate that holds the inference worker,
error-body checks."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from PIL import Image


def uploads(paths: list[Path], field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file entries for ``paths`` (name = the file's base name)."""
    return [(field, (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def encoded(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def with_name(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The library's JSON rows with ``image`` replaced by the uploaded names."""
    return [{**row, "image": name} for row, name in zip(rows, names)]


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    """A JSON error of ``status``: exactly {"error", "hint"}, one line, no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "hint"}, body
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


class Gate:
    """``Batcher.before_batch`` hook that holds the worker until :meth:`open` (bounded wait),
    recording the jobs of every batch."""

    def __init__(self, closed: bool = True, timeout_s: float = 20.0) -> None:
        self._open = threading.Event()
        if not closed:
            self._open.set()
        self.entered = threading.Event()
        self.timeout_s = timeout_s
        self.batches: list[list[int]] = []  # images per job, per batch

    def __call__(self, jobs: list[Any]) -> None:
        self.batches.append([len(j.images) for j in jobs])
        self.entered.set()
        self._open.wait(self.timeout_s)

    def open(self) -> None:
        self._open.set()
