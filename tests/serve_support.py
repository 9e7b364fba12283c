"""Helpers shared by the serve tests: upload lists, a gate that holds the inference worker,
error-body checks."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(cache_dir, **extra) -> dict[str, str]:
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", **extra}
    env.pop("GEOFAST_CLIP", None)
    if "GEOFAST_API_KEY" not in extra:
        env.pop("GEOFAST_API_KEY", None)
    return env


def start_server(cache_dir, clip_dir, *args: str, env: dict[str, str] | None = None):
    port = free_port()
    cmd = [sys.executable, "-m", "geofast", "serve", "--clip", str(clip_dir), "--device", "cpu", "--port", str(port)]
    cmd += ["--max-batch", "8", "--max-wait-ms", "2", "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, env=env or cli_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    t_end = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"geofast serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return base, port, proc
        except httpx.TransportError:
            pass
        if time.monotonic() > t_end:
            stop(proc)
            raise AssertionError("geofast serve did not become ready in time")
        time.sleep(0.2)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
