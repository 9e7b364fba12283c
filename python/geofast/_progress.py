"""The progress bar of long library operations (gallery encoding, database builds), on stderr.

Library code shows progress through this module, never through the CLI's consoles; the CLI
passes its own stderr console so its bars and messages share one terminal line discipline.
Nothing in a bar is ever cut short: numbers and times keep their width, the bar shrinks, and a
label too long for the line wraps onto the next one.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def stream_width(stream: object) -> int | None:
    """The console width for ``stream``: None (ask the terminal) for a terminal; for pipes and
    files ``$COLUMNS`` or 160 (rich's default of 80 columns cuts bars and folds tables)."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    env = os.environ.get("COLUMNS", "").strip()
    return int(env) if env.isdigit() else 160


def progress_bar(label: str, *, unit: str | None = None, transient: bool = True, console: Any = None, info: bool = False) -> Any:
    """A rich ``Progress`` on stderr (or ``console``): label, bar, done/total (unit), elapsed, eta;
    with ``info`` a last column showing each task's ``info`` field (add tasks with ``info=""``)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column

    def fixed() -> Column:
        return Column(no_wrap=True)

    columns: list[Any] = [
        TextColumn(f"[bold]{escape(label)}", table_column=Column(overflow="fold")),
        BarColumn(bar_width=30),
        MofNCompleteColumn(table_column=fixed()),
    ]
    if unit:
        columns.append(TextColumn(escape(unit), table_column=fixed()))
    columns += [
        TimeElapsedColumn(table_column=fixed()),
        TextColumn("eta", table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
    ]
    if info:
        columns.append(TextColumn("{task.fields[info]}", table_column=Column(overflow="fold")))
    if console is None:
        console = Console(stderr=True, width=stream_width(sys.stderr))
    return Progress(*columns, console=console, transient=transient)
