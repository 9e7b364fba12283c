"""Who may call the server and how much they may send.

* Binding: loopback by default. Listening on any other address needs an API key (``$GEOFAST_API_KEY``)
  unless unauthenticated access was asked for explicitly; a configured key is always required,
  on loopback too.
* Authentication: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every ``/v1/`` route,
  compared in constant time (:func:`hmac.compare_digest`). The page, the schema, the docs and the
  health probes stay open (the page asks the user for the key).
* Body limit: a ``Content-Length`` above the limit is answered 413 before anything is read; a
  body without one (chunked) is counted as it streams and cut off at the limit.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geofast.errors import InputError
from geofast.serve._http import error_response
from geofast.serve.config import API_KEY_ENV, ServeConfig

#: Path prefixes that need the API key.
PROTECTED_PREFIXES: tuple[str, ...] = ("/v1/",)


class InsecureBindError(InputError):
    """Listening beyond loopback without an API key and without an explicit opt-out."""


def required_key(config: ServeConfig) -> str | None:
    """The API key every protected request must carry (``None``: no key needed), or
    :class:`InsecureBindError` when the server would be open to the network without one."""
    key = config.resolved_api_key()
    if key is None and not config.loopback and not config.no_auth:
        raise InsecureBindError(
            f"refusing to listen on {config.host} without an API key",
            hint=f"set {API_KEY_ENV} to a secret that clients send, or allow unauthenticated access explicitly",
        )
    return key


def key_matches(sent: str | None, expected: str) -> bool:
    """Constant-time comparison of a client's key with the configured one."""
    if sent is None:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def sent_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key is not None else None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class AuthMiddleware:
    """401 for a ``/v1/`` request without the right key, before its body is read."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        sent = sent_key(_headers(scope))
        if not key_matches(sent, self.key):
            message = "missing API key" if sent is None else "wrong API key"
            hint = "send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            response = error_response(401, message, hint, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a request body above ``max_bytes``: from ``Content-Length`` before reading, or
    counted while it streams (whatever the app did with the partial body, the answer is 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> Any:
        mib = self.max_bytes / (1024 * 1024)
        return error_response(
            413,
            f"request body exceeds the limit of {self.max_bytes:,} bytes ({mib:.1f} MiB)",
            "send fewer or smaller images per request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _headers(scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if declared > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        state = {"received": 0, "exceeded": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                # The app answered something for a body it never fully got: answer 413 instead.
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._too_large()(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not state["started"]:
                state["started"] = True
                await self._too_large()(scope, receive, send)
