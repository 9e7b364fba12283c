"""``python -m geofast`` runs the CLI."""

from geofast.cli import run

run()
