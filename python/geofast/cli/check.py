"""``geofast check``: does a lower-precision encoder agree with float32 on your photos?"""

from __future__ import annotations

from pathlib import Path

import typer

from geofast import _console
from geofast.cli import _options as o
from geofast.cli._app import app


@app.command("check")
def check(
    images: list[Path] = typer.Argument(
        ..., metavar="PHOTO|DIR...", help="Your photos: files or folders (searched recursively)."
    ),
    precision: str = typer.Option("int8", "--precision", metavar="int8|bf16", help="The precision to compare with float32."),
    model: o.Model = "geoclip",
    clip: o.Clip = None,
    gallery: o.Gallery = None,
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Images per forward pass."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Compare at most this many photos (the first, sorted)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the report as JSON."),
) -> None:
    """Encode your photos at float32 and at --precision with the same weights (CPU): embedding cosine, top-1 agreement and distance over the gallery, and speed."""
    from geofast.images import expand_images
    from geofast.predict.agreement import MIN_COSINE, MIN_SHARE_WITHIN, WITHIN_KM, compare_precisions

    paths = expand_images([str(p) for p in images])
    if limit is not None:
        paths = paths[:limit]
    with _console.progress("encoding at both precisions", unit="photos") as bar:
        task = bar.add_task("encoding", total=len(paths))
        report = compare_precisions(
            paths,
            precision=precision,
            model=model,
            clip=clip,
            gallery=gallery,
            batch_size=batch_size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        _console.print_json(report.as_dict())
        return
    r = report
    verdict = "[green]agrees[/]" if r.agrees else "[red]does not agree[/]"
    _console.out.print(
        f"{r.precision} vs fp32 on {r.photos} photos ({r.skipped} unreadable), gallery of {r.gallery_points:,} points, {r.threads} threads\n"
        f"  embedding cosine   min {r.cosine_min:.5f}   median {r.cosine_median:.5f}\n"
        f"  same top-1         {100 * r.top1_same:.1f}%\n"
        f"  top-1 distance     median {r.top1_km_median:.1f} km   p99 {r.top1_km_p99:.1f} km   max {r.top1_km_max:.1f} km   "
        f"within 1 km {100 * r.within_1km:.1f}%   within {WITHIN_KM:g} km {100 * r.within_25km:.1f}%\n"
        f"  encoder            fp32 {r.fp32_s_per_photo:.3f} s/photo   {r.precision} {r.other_s_per_photo:.3f} s/photo   "
        f"{r.speedup:.2f}x\n"
        f"{r.precision} {verdict} (criteria: cosine >= {MIN_COSINE} for every photo, >= {100 * MIN_SHARE_WITHIN:g}% of top-1s "
        f"within {WITHIN_KM:g} km)",
        markup=True,
    )
