"""``geofast export``: a model in the release format of the ``geoclip`` package."""

from __future__ import annotations

from pathlib import Path

import typer

from geofast import _console
from geofast.cli._app import app


@app.command("export")
def export(
    model: str = typer.Argument(..., metavar="MODEL", help="A training run folder, a model folder, geoclip or geomapclip."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder to write (replaced only once complete)."),
    gallery: Path | None = typer.Option(
        None,
        "--gallery",
        metavar="FILE",
        help="Ship this gallery (CSV with lat/lon columns or an (N, 2) .npy) instead of the model's.",
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        metavar="REPO[@REVISION]",
        help="Backbone recorded in config.json (default: the model's, else openai/clip-vit-large-patch14@main).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only the export report as JSON."),
) -> None:
    """Write MODEL as config.json + model.safetensors + gallery CSV (geoclip 1.3.0: GeoCLIP.from_pretrained(DIR))."""
    from geofast.train.export import export_model

    record = None
    if backbone:
        repo, _, revision = backbone.partition("@")
        record = {"repo_id": repo, "revision": revision or "main"}
    report = export_model(model, out, gallery=gallery, backbone=record)
    if as_json:
        _console.print_json(report.as_dict())
        return
    _console.out.print(
        f"exported {report.source} to {report.path}: capsules σ = {', '.join(f'{s:g}' for s in report.sigmas)}, "
        f"{report.gallery_points:,} gallery points, backbone {report.backbone['repo_id']}@{report.backbone['revision']}"
    )
