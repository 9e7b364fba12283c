"""How ``--help`` and usage errors read: command order, clean value names, no markup surprises.

typer prints a type for every option (``<bool>``, ``<int range> [x>=1]``, ``<list[str]>``) and
reads help texts and panel titles as Rich markup, so ``pip install 'geofast[scale]'`` loses its
``[scale]``. :func:`tidy` walks the click command tree once, before it runs, and gives each
parameter a plain value name (none for a flag), its range in words, and help text that Rich
prints as written.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from typer.core import TyperArgument, TyperGroup, TyperOption

#: ``geofast --help`` lists the commands in this order (the first one a newcomer runs first).
COMMAND_ORDER = ("locate", "eval", "db", "check", "train", "export", "serve", "bench")


class OrderedGroup(TyperGroup):
    """A command group listing its commands in :data:`COMMAND_ORDER` (others after, as added)."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


_VALUE_NAMES = {int: "N", float: "NUMBER", str: "TEXT"}


def _number(x: float) -> str:
    return f"{x:g}"


def _range(param: Any) -> str | None:
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None and hi is not None:
        return f"{_number(lo)}…{_number(hi)}"
    if lo is not None:
        return f"≥ {_number(lo)}"
    if hi is not None:
        return f"≤ {_number(hi)}"
    return None


def _value_name(param: Any) -> str:
    if param.metavar:
        return str(param.metavar)
    annotation = param.type_descriptor.annotation
    if param.type_descriptor.is_path:
        return "PATH"
    return _VALUE_NAMES.get(annotation, param.name.upper())


class _Option(TyperOption):
    """A typer option shown as ``--top-k N ≥ 1``: its value name and range, no type."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        rng = _range(self)
        name = _value_name(self)
        return f"{name} {rng}" if rng and rng not in name else name

    def _get_number_range_help_str(self) -> str | None:
        return None


class _Argument(TyperArgument):
    """A typer argument: its name says what it is; no type column."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _get_number_range_help_str(self) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        # click's convention: NAME when required, [NAME] when optional (typer writes {NAME})
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def tidy(command: Any) -> Any:
    """Make ``command`` (and its subcommands) print clean help; returns it."""
    if getattr(command, "help", None):
        command.help = escape(command.help)
    if getattr(command, "short_help", None):
        command.short_help = escape(command.short_help)
    for param in getattr(command, "params", []):
        if isinstance(param, TyperOption) and not isinstance(param, _Option):
            param.__class__ = _Option
        elif isinstance(param, TyperArgument) and not isinstance(param, _Argument):
            param.__class__ = _Argument
        if getattr(param, "help", None):
            param.help = escape(param.help)
        panel = getattr(param, "rich_help_panel", None)
        if panel:
            param.rich_help_panel = escape(panel)
    _tidy_help_option(command)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command


def _tidy_help_option(command: Any) -> None:
    """click makes ``--help`` when it is first asked for: tidy it then."""
    make = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make(ctx)
        if isinstance(option, TyperOption) and not isinstance(option, _Option):
            option.__class__ = _Option
        return option

    command.get_help_option = get_help_option


def usage_hint(error: Any) -> str:
    """The hint under a usage error: where to read the options of the command that refused."""
    ctx = getattr(error, "ctx", None)
    path = ctx.command_path if ctx is not None else "geofast"
    return f"see '{path} --help'"
