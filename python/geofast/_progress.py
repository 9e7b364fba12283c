"""The progress bar of long library operations (gallery encoding, database builds), on stderr.

Library code shows progress through this module, never through the CLI's consoles; the CLI
passes its own stderr console so its bars and messages share one terminal line discipline.
"""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, *, unit: str | None = None, transient: bool = True, console: Any = None, info: bool = False) -> Any:
    """A rich ``Progress`` on stderr (or ``console``): label, bar, done/total (unit), elapsed, eta;
    with ``info`` a last column showing each task's ``info`` field (add tasks with ``info=""``)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console if console is not None else Console(stderr=True), transient=transient)
