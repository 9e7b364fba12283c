"""The typer app the command modules add themselves to (apart from the package so that the
commands import it without importing the package that imports them)."""

from __future__ import annotations

import typer

from geofast import __version__, _console
from geofast.cli._help import OrderedGroup

app = typer.Typer(
    name="geofast",
    cls=OrderedGroup,
    help="Predict where on Earth a photo was taken: GeoCLIP, GeoMapCLIP, Search-within-Cell and RAG-LLM, with a Rust core.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        _console.out.print(f"geofast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """geofast: fast photo geolocation."""
