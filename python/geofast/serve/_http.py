"""JSON error bodies shared by the app and its middlewares: ``{"error": "one line", "hint": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs collapsed), never empty."""
    line = " ".join(str(text).split())
    return line or "error"


def error_body(message: object, hint: str | None = None) -> dict[str, Any]:
    return {"error": one_line(message), "hint": None if hint is None else one_line(hint)}


def error_response(
    status: int, message: object, hint: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, hint), status_code=status, headers=dict(headers or {}))
