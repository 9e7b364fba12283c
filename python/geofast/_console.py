"""Consoles and error rendering shared by every command.

Results go to stdout (``out``); progress, warnings and errors go to stderr (``err``), so
``geofast ... --json > result.json`` always holds plain JSON.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console


def _width(stream: object) -> int | None:
    from geofast._progress import stream_width

    return stream_width(stream)


out = Console(highlight=False, soft_wrap=True, markup=False, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, markup=False, width=_width(sys.stderr))

DEBUG_ENV = "GEOFAST_DEBUG"


def debug_enabled() -> bool:
    """True when ``GEOFAST_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def print_json(payload: Any) -> None:
    """Write ``payload`` as plain JSON (no colour, no wrapping) to stdout."""
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, allow_nan=False))
    sys.stdout.write("\n")
    sys.stdout.flush()


def error_line(message: str, hint: str | None = None) -> None:
    """Print ``error: message`` (one line) and an optional ``hint:`` line to stderr."""
    from rich.markup import escape

    first = " ".join(str(message).split())  # escaped: messages hold paths and [extras] that are not markup
    err.print(f"[bold red]error:[/] {escape(first)}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}", markup=True, highlight=False, soft_wrap=True)


def progress(label: str, *, unit: str | None = None, transient: bool = True, info: bool = False) -> Any:
    """A rich progress bar on the CLI's stderr console: label, bar, done/total (unit), elapsed, eta;
    with ``info`` a last column showing each task's ``info`` field (add tasks with ``info=""``)."""
    from geofast._progress import progress_bar

    return progress_bar(label, unit=unit, transient=transient, console=err, info=info)
