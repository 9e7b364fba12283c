"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It speaks the chat-completions protocol (``POST /v1/chat/completions``; JSON in, a
``chat.completion`` object with ``choices[0].message.content`` and ``usage`` out), records every
request, and counts requests in flight. A *script* decides each reply: a callable
``script(request) -> StubReply | str`` or a list of replies consumed in order (the last one
repeats). A reply can be an answer, an HTTP error with headers (e.g. 429 + ``Retry-After``), a
body that is not a chat completion, and can be delayed (a stall past the client's timeout).

:class:`StubChatProcess` runs the same server in a child process (``python -m
geofast.testing.openai_stub``) answering :func:`hash_answer`, so that a benchmark's client does not share
its interpreter (and GIL) with the server, as with a real LLM server.

Nothing here leaves loopback; ``geofast bench --area llm`` and the test-suite both use it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StubChatProcess", "StubChatServer", "StubReply", "StubRequest", "hash_answer"]

#: The usage the stub reports when a reply does not set its own.
DEFAULT_USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


@dataclass
class StubReply:
    """What the server answers to one request.

    ``content`` is the assistant's text (status 200). ``status`` ≠ 200 sends an OpenAI-style
    error body with ``content`` as its message. ``raw`` (bytes or a JSON-able object) replaces
    the whole body. ``delay_s`` stalls before answering.
    """

    content: str | None = '{"latitude": 48.8566, "longitude": 2.3522}'
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    usage: dict[str, int] | None = None
    raw: Any = None


@dataclass
class StubRequest:
    """One request as the server received it (header names in lower case)."""

    index: int
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float

    @property
    def texts(self) -> list[str]:
        """The text parts of all messages, in order."""
        out: list[str] = []
        for msg in (self.body or {}).get("messages", []):
            content = msg.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(p.get("text", "") for p in content if p.get("type") == "text")
        return out

    @property
    def prompt(self) -> str:
        return "\n".join(self.texts)

    @property
    def image_urls(self) -> list[str]:
        urls: list[str] = []
        for msg in (self.body or {}).get("messages", []):
            content = msg.get("content")
            if isinstance(content, list):
                urls.extend(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
        return urls

    def image_bytes(self, i: int = 0) -> bytes:
        """The bytes of the ``i``-th image if it is a base64 data URL."""
        url = self.image_urls[i]
        head, _, data = url.partition(",")
        if not head.startswith("data:") or not head.endswith(";base64"):
            raise ValueError(f"not a base64 data URL: {url[:40]}...")
        return base64.b64decode(data, validate=True)


Script = Callable[[StubRequest], "StubReply | str"] | Sequence["StubReply | str"]


class StubChatServer:
    """A chat-completions server in a background thread. Use as a context manager::

    with StubChatServer(lambda req: '{"latitude": 1.5, "longitude": 2.5}') as server:
        client = LLMClient(LLMConfig(base_url=server.base_url, model="stub"))
        ...
    server.requests, server.max_in_flight
    """

    def __init__(self, script: Script | None = None, *, delay_s: float = 0.0) -> None:
        self._script = script
        self.delay_s = delay_s
        self.requests: list[StubRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("StubChatServer is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> StubChatServer:
        handler = _make_handler(self)
        server = _Server(("127.0.0.1", 0), handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="stub-llm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wakes stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:  # end keep-alive connections so their threads finish
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> StubChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget recorded requests and the in-flight maximum."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def set_script(self, script: Script | None) -> None:
        self._script = script

    # -- scripting ---------------------------------------------------------------------------

    def _reply_for(self, req: StubRequest) -> StubReply:
        script = self._script
        if script is None:
            reply: StubReply | str = StubReply()
        elif callable(script):
            reply = script(req)
        else:
            seq = list(script)
            reply = seq[min(req.index, len(seq) - 1)]
        if isinstance(reply, str):
            reply = StubReply(content=reply)
        return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog of 5 drops the SYNs of a burst of connections (the client
    # retransmits after 1 s), which would cap the concurrency a test can observe.
    request_queue_size = 256


def _make_handler(stub: StubChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in one write with TCP_NODELAY: two small writes would meet
        # the client's delayed ACK (Nagle) and add ~40 ms to every request, which real servers
        # (uvicorn, llama.cpp) do not.
        disable_nagle_algorithm = True
        _counted = False

        def setup(self) -> None:
            super().setup()
            with stub._lock:
                stub._sockets.add(self.connection)

        def handle(self) -> None:
            try:
                super().handle()
            except OSError:  # the client reset the connection: nothing to answer
                self.close_connection = True

        def finish(self) -> None:
            with stub._lock:
                stub._sockets.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _leave(self) -> None:
            # Leave the in-flight count *before* the reply goes out: the client cannot start its
            # next request before it has this reply, so the count never exceeds its true number.
            if self._counted:
                self._counted = False
                with stub._lock:
                    stub.in_flight -= 1

        def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self._leave()
            reason = self.responses.get(status, ("",))[0]
            head = [
                f"HTTP/1.1 {status} {reason}",
                "Server: geofast-stub",
                "Content-Type: application/json",
                f"Content-Length: {len(payload)}",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            try:
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
                self.wfile.flush()
            except OSError:  # the client gave up (timeout) and closed the connection
                self.close_connection = True

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                with stub._lock:
                    stats = {"requests": len(stub.requests), "max_in_flight": stub.max_in_flight}
                self._send(200, json.dumps(stats).encode(), {})
            else:
                self._send(404, _error_body(f"no route {self.path}", "not_found"), {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") == "/reset":
                stub.reset()
                self._send(200, b"{}", {})
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            with stub._lock:
                req = StubRequest(
                    len(stub.requests), self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                stub.requests.append(req)
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            self._counted = True
            try:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, _error_body(f"no route {self.path}", "not_found"), {})
                    return
                try:
                    reply = stub._reply_for(req)
                except Exception as e:
                    reply = StubReply(content=f"stub script failed: {e!r}", status=500)
                delay = reply.delay_s or stub.delay_s
                if delay > 0 and stub._stop.wait(delay):
                    self.close_connection = True
                    return
                if reply.raw is not None:
                    payload = reply.raw if isinstance(reply.raw, bytes) else json.dumps(reply.raw).encode()
                    self._send(reply.status, payload, reply.headers)
                elif reply.status != 200:
                    self._send(reply.status, _error_body(reply.content or "error", "stub_error"), reply.headers)
                else:
                    model = (body or {}).get("model", "stub") if isinstance(body, dict) else "stub"
                    completion = {
                        "id": f"chatcmpl-stub-{req.index}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": reply.usage if reply.usage is not None else DEFAULT_USAGE,
                    }
                    self._send(200, json.dumps(completion).encode(), reply.headers)
            finally:
                self._leave()

    return Handler


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


def hash_answer(req: StubRequest) -> str:
    """A valid coordinate that is a deterministic function of the request body (so a client
    can check which answer belongs to which request)."""
    h = hashlib.blake2b(json.dumps(req.body, sort_keys=True).encode(), digest_size=8).digest()
    a, b = int.from_bytes(h[:4], "little"), int.from_bytes(h[4:], "little")
    lat = round(-60.0 + 120.0 * a / 2**32, 4)
    lon = round(-179.0 + 358.0 * b / 2**32, 4)
    return json.dumps({"latitude": lat, "longitude": lon})


class StubChatProcess:
    """:class:`StubChatServer` answering :func:`hash_answer` in a child process. ``stats()``
    gives ``{"requests", "max_in_flight"}``; ``reset()`` clears them; ``close()`` ends the child."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._proc: subprocess.Popen[str] | None = None
        self._port: int | None = None

    def start(self) -> StubChatProcess:
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "geofast.testing.openai_stub", "--delay", repr(self.delay_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"stub server did not start: {line!r}")
        self._port = int(line.split()[1])
        return self

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("StubChatProcess is not running")
        return f"http://127.0.0.1:{self._port}/v1"

    def _call(self, method: str, path: str) -> dict[str, int]:
        url = self.base_url.rsplit("/v1", 1)[0] + path
        req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the child exits when its stdin closes
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> StubChatProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    """Serve :func:`hash_answer` on 127.0.0.1 until stdin closes; print ``PORT n`` first."""
    parser = argparse.ArgumentParser(prog="python -m geofast.testing.openai_stub")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    server = StubChatServer(hash_answer, delay_s=args.delay).start()
    print(f"PORT {server.base_url.rsplit(':', 1)[1].split('/')[0]}", flush=True)
    try:
        sys.stdin.read()  # blocks until the parent closes our stdin (or dies)
    finally:
        server.close()


if __name__ == "__main__":
    main()
