"""``geofast eval``: score a method on a benchmark the way papers report it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from geofast import _console
from geofast.cli import _options as o
from geofast.cli._app import app


def _parse_radii(text: str) -> list[float]:
    import geofast as gf

    try:
        radii = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        radii = []
    if not radii or any(r <= 0 for r in radii):
        raise gf.InputError(
            f"--radii {text!r} must be positive numbers separated by commas", hint="e.g. --radii 1,25,200,750,2500"
        )
    return radii


@app.command("eval")
@o.with_options(o.METHOD + o.LLM + o.RAY)
def evaluate(
    dataset: Path | None = typer.Argument(
        None, metavar="DATASET", help="Benchmark CSV: image,lat,lon or IMG_ID,LAT,LON (Im2GPS3k, YFCC4k)."
    ),
    images: Path | None = typer.Option(None, "--images", metavar="DIR", help="Folder holding the dataset's images."),
    predictions: Path | None = typer.Option(
        None, "--predictions", metavar="FILE", help="Score an existing CSV (lat,lon,pred_lat,pred_lon); no model needed."
    ),
    out: Path = typer.Option(
        Path("predictions.csv"),
        "--out",
        metavar="FILE",
        help="Predictions are appended here (and what produced them to FILE.settings.json); a rerun with the same settings skips images already done, other settings are refused.",
    ),
    shared: o.Shared = o.GROUP,
    top_k: o.TopK = 5,
    batch_size: o.BatchSize = 16,
    radii: str = typer.Option("1,25,200,750,2500", "--radii", metavar="KM,...", help="Accuracy radii in km."),
    distance: str = typer.Option(
        "geodesic",
        "--distance",
        metavar="geodesic|haversine",
        help="geodesic (WGS-84; GeoCLIP/Img2Loc/G3) or haversine (R = 6371 km; visloc/OSV-5M).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Count error < r instead of ≤ r."),
    as_json: bool = typer.Option(False, "--json", help="Print only the metrics as JSON."),
    plot: Path | None = typer.Option(None, "--plot", metavar="FILE.png", help="Draw the error CDF with the radii marked."),
) -> None:
    """Evaluate geolocation accuracy: accuracy at radii, median/mean error, GeoScore, PD split.

    GeoCLIP's top-1 is the best place after merging gallery points listed more than once
    (probabilities summed), which can differ from the reference's argmax; --raw-candidates scores
    the reference's raw argmax (the published numbers). Use a fresh --out when switching."""
    import numpy as np

    import geofast as gf
    from geofast import evaluate as ev

    o.check_method_options(shared)
    radii_km = _parse_radii(radii)
    ray_opts = o.ray_options_from(shared)
    method, model = shared["method"], shared["model"]
    if distance not in ("geodesic", "haversine"):
        raise gf.InputError(f"--distance {distance!r} is not geodesic or haversine")
    if predictions is not None:
        if dataset is not None or images is not None or ray_opts is not None:
            raise gf.InputError(
                "--predictions scores a file on its own", hint="drop DATASET/--images/--ray, or drop --predictions"
            )
        scored = ev.read_predictions(predictions)
        title = str(predictions)
    else:
        if dataset is None or images is None:
            raise gf.InputError(
                "give DATASET and --images DIR, or --predictions FILE", hint="geofast eval im2gps3k.csv --images im2gps3k/"
            )
        from geofast.predict.factory import make_predictor

        opts = o.method_options_from(shared)
        database = opts.check()
        if not images.is_dir():
            raise gf.InputError(f"--images {images} is not a folder")
        data = ev.read_dataset(dataset)
        created = not out.exists()
        log = ev.PredictionLog.open(out, opts.answer_settings(database, top_k))
        todo = int(np.count_nonzero(~log.done.contains_many(data.images)))
        if todo:
            with _console.err.status(f"loading {escape(model)} ...", spinner="dots"):
                predictor = make_predictor(opts, database)
            with _on_ray(predictor, ray_opts, out if created else None):
                _predict_all(data, images, predictor, log, batch_size, method, top_k)
        scored = ev.read_predictions(out).subset(data.images)
        title = f"{dataset.name} ({method}, {model})"

    metrics = ev.score(scored.truth, scored.pred, radii=radii_km, distance=distance, strict=strict, confidence=scored.confidence)
    metrics["failed"] = len(scored.failed)
    metrics["failed_images"] = [{"image": i, "error": e} for i, e in scored.failed]
    if plot is not None:
        d = ev.distances_km(scored.truth, scored.pred, distance)
        ev.plot_cdf(plot, d, radii_km, f"{title}: n = {metrics['n']}, {distance}{', strict' if strict else ''}")
        _console.err.print(f"wrote {plot}")
    if as_json:
        _console.print_json(metrics)
        return
    _render(metrics, title)
    for image, error in scored.failed[:10]:
        _console.err.print(f"[yellow]skipped[/] {escape(image)}: {escape(error)}", markup=True)
    if len(scored.failed) > 10:
        _console.err.print(f"... and {len(scored.failed) - 10} more (see --json)")


@contextlib.contextmanager
def _on_ray(predictor: Any, ray_opts: Any, created: Path | None) -> Iterator[None]:
    """With --ray: the CLIP forward passes on Ray actors; a cluster that cannot run them leaves
    no predictions file behind (``created``: the file this run created)."""
    if ray_opts is None:
        yield
        return
    from geofast.db.ray_executor import ray_forward

    with contextlib.ExitStack() as stack:
        try:
            with _console.err.status("starting the Ray encoder actors ...", spinner="dots"):
                forward = stack.enter_context(ray_forward(predictor, ray_opts))
        except Exception:
            if created is not None:
                created.unlink(missing_ok=True)
            raise
        _console.err.print(f"encoding on Ray: {forward.describe()}")
        yield


def _predict_all(data: Any, images: Path, predictor: Any, log: Any, batch_size: int, method: str, top_k: int) -> None:
    from geofast.cli import _llm
    from geofast.evaluate import run_predictions

    rag = method == "rag"
    with _console.progress("evaluating", unit="images", info=rag) as bar:
        task = bar.add_task("eval", total=len(data.images), info="")
        if rag:
            _llm.attach(predictor, bar, task)
        run_predictions(
            data,
            images,
            lambda paths: predictor.predict(paths, top_k=top_k, batch_size=batch_size, places=False),
            log,
            batch_size=batch_size,
            on_progress=lambda n: bar.advance(task, n),
            method=method,
        )


def _render(m: dict[str, Any], title: str) -> None:
    conv = (
        f"{m['distance']}"
        + (" (R = 6371 km)" if m["distance"] == "haversine" else " (WGS-84)")
        + (", error < r" if m["strict"] else ", error ≤ r")
    )
    table = Table(title=f"{title} — {m['n']} images scored, {m['failed']} failed — {conv}", title_justify="left")
    blocks = [("all", m)] + [(k.replace("_", "-"), m[k]) for k in ("localizable", "non_localizable") if k in m]
    table.add_column("radius", justify="right")
    for name, b in blocks:
        table.add_column(f"{name} (n={b['n']})", justify="right")
    for r in m["radii_km"]:
        key = f"{r:g}"
        table.add_row(f"{key} km", *[("-" if b["accuracy"][key] is None else f"{b['accuracy'][key]:.2f}%") for _, b in blocks])
    for label, key, fmt in (
        ("median", "median_km", "{:.1f} km"),
        ("mean", "mean_km", "{:.1f} km"),
        ("GeoScore", "geoscore", "{:.0f}"),
    ):
        table.add_row(label, *[("-" if b[key] is None else fmt.format(b[key])) for _, b in blocks])
    _console.out.print(table)
