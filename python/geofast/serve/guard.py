"""What a browser page, a hostile client or a slow connection can do to a server on loopback,
and the limits against it (see ``docs/serve-security.md`` for the threat model).

* :class:`HostOriginMiddleware` — DNS rebinding: only the hosts the server is bound to (and
  ``--allowed-host``) are answered in ``Host``; CSRF: a state-changing request (POST, PUT,
  PATCH, DELETE) that a browser marks as coming from another origin (``Origin``, or
  ``Sec-Fetch-Site: cross-site`` without one) is refused unless ``--cors`` names that origin.
  Clients that are not browsers send no ``Origin`` and are unaffected.
* :class:`SecurityHeadersMiddleware` — ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``,
  ``X-Frame-Options`` and a ``Content-Security-Policy`` *header* with ``frame-ancestors 'none'``
  on every response (pages that set their own policy keep it, plus ``frame-ancestors``).
* :class:`PixelBudget` — one budget of decoded pixels in flight across all requests.
* :class:`HeaderTimeoutH11Protocol` — a connection that has not sent a complete request head
  within the header timeout is closed (slowloris); uvicorn's keep-alive timeout only covers a
  connection that sends nothing at all.
* :func:`release_memory` — give freed heap memory back to the system after a spike (glibc).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import ipaddress
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from geofast.serve._http import error_response

#: Methods that change state (a browser sends them cross-origin without asking first for forms).
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The CSP header of responses that set none (JSON, errors): nothing may load, nothing may frame it.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _host_name(host: str) -> str:
    """``host`` (a Host header or a bind address) without port and brackets, lower case."""
    h = host.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h[1:]
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def allowed_hosts(bind_host: str, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """Host names a request may carry in ``Host``: the bound address (with ``localhost``,
    127.0.0.1 and ::1 for a loopback one) and ``extra``; ``None`` (any) for a wildcard bind
    (0.0.0.0, ::) without ``extra``, where the names clients use cannot be known."""
    bound = _host_name(bind_host)
    names = {_host_name(x) for x in extra if x.strip()}
    wildcard = bound in ("", "0.0.0.0", "::")
    if wildcard:
        return frozenset(names | set(_LOOPBACK_NAMES)) if names else None
    names.add(bound)
    try:
        loop = ipaddress.ip_address(bound).is_loopback
    except ValueError:
        loop = bound == "localhost"
    if loop:
        names.update(_LOOPBACK_NAMES)
    return frozenset(names)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class HostOriginMiddleware:
    """400 for a ``Host`` the server does not answer to; 403 for a cross-origin state-changing
    request from an origin ``--cors`` does not name (see the module docstring)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.hosts = hosts
        self.cors = frozenset(o.strip().rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        if self.hosts is not None and host and _host_name(host) not in self.hosts:
            shown = host.strip()[:100]
            response = error_response(
                400,
                f"this server does not answer to the host {shown!r}",
                "use the address the server listens on, or start it with --allowed-host NAME",
            )
            await response(scope, receive, send)
            return
        if scope.get("method") in STATE_CHANGING:
            origin = headers.get("origin")
            cross = False
            if origin is not None:
                # Same origin: the page was loaded from the host this request is sent to (the
                # scheme may differ behind a TLS-terminating proxy; the Host check above already
                # refused names that are not this server's).
                o = origin.strip().rstrip("/").lower()
                cross = o.split("://", 1)[-1] != host.strip().lower() and o not in self.cors
            elif headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
                cross = True
            if cross:
                shown = (origin or "another site").strip()[:100]
                response = error_response(
                    403,
                    f"cross-origin request from {shown} refused",
                    "call the API from this server's own page, a non-browser client, or start the server with --cors ORIGIN",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds the security headers to every response (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                if b"content-security-policy" in present:
                    headers = [
                        (k, v + b"; frame-ancestors 'none'")
                        if k.lower() == b"content-security-policy" and b"frame-ancestors" not in v
                        else (k, v)
                        for k, v in headers
                    ]
                else:
                    headers.append((b"content-security-policy", DEFAULT_CSP.encode()))
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class PixelBudget:
    """Decoded pixels in flight, across all requests: :meth:`acquire` waits (on the event loop)
    until the pixels fit, :meth:`release` gives them back. One image larger than the whole
    budget is admitted alone (the per-image limit bounds it)."""

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.used = 0
        self.peak = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self, pixels: int, timeout_s: float) -> int:
        """Take ``pixels`` (capped at the budget); ``TimeoutError`` after ``timeout_s``."""
        n = min(max(0, int(pixels)), self.total)
        cond = self._condition()
        async with cond:
            await asyncio.wait_for(cond.wait_for(lambda: self.used + n <= self.total), timeout=max(0.0, timeout_s))
            self.used += n
            self.peak = max(self.peak, self.used)
        return n

    async def release(self, pixels: int) -> None:
        cond = self._condition()
        async with cond:
            self.used = max(0, self.used - pixels)
            cond.notify_all()


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to call
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``); ``False`` where the
    C library has no such call. Large decoded images are freed to malloc's arenas, which keep
    them mapped otherwise."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head (request line and
    headers) is not complete within :attr:`header_timeout_s` of the connection opening or of the
    previous response ending."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """:class:`HeaderTimeoutH11Protocol` with its timeout set to ``seconds``."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(seconds)})
