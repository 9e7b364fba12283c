"""``geofast locate``: where was this photo taken?"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from geofast import _console
from geofast.cli import app

_METHODS = ("geoclip", "swc", "geoclip+swc", "rag")
_LLM = "LLM (--method rag)"


@app.command("locate")
def locate(
    images: list[str] = typer.Argument(..., metavar="IMAGE...", help="Image files, folders (searched recursively) or glob patterns."),
    model: str = typer.Option("geoclip", "--model", "-m", help="geoclip (photos) or geomapclip (map images)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Candidates per image."),
    clip: str | None = typer.Option(None, "--clip", metavar="ID|DIR", help="CLIP ViT-L/14 backbone: hub id or local folder (default $GEOFAST_CLIP, then openai/clip-vit-large-patch14)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: best available)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    gallery: Path | None = typer.Option(None, "--gallery", metavar="FILE", help="Custom gallery: CSV with lat/lon columns or an (N, 2) .npy."),
    region: str | None = typer.Option(None, "--region", metavar="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX", help="Only consider gallery points inside this box."),
    method: str = typer.Option("geoclip", "--method", help="geoclip; swc (Search-within-Cell: over the --db image database, else over GeoCLIP's top-k); geoclip+swc (SwC among --db photos inside GeoCLIP's top-1 cell)."),
    db: Path | None = typer.Option(None, "--db", metavar="DIR", help="Image database (geofast db build) for --method swc / geoclip+swc."),
    swc_k: int = typer.Option(10, "--swc-k", min=1, help="Database neighbours clustered by --method swc / geoclip+swc."),
    eps_km: float = typer.Option(1.0, "--eps-km", min=0.0, help="DBSCAN radius for --method swc."),
    cell_km: float = typer.Option(25.0, "--cell-km", min=0.0, help="Cell radius around GeoCLIP's top-1 for --method geoclip+swc."),
    confidence: bool = typer.Option(True, "--confidence/--no-confidence", help="With --db: load GeoCLIP's heads to give a PD confidence (--no-confidence loads only the CLIP backbone)."),
    places: bool = typer.Option(True, "--places/--no-places", help="Name the nearest GeoNames place of each candidate."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON array to stdout."),
    geojson: Path | None = typer.Option(None, "--geojson", metavar="FILE", help="Also write the top-1 points as GeoJSON."),
    map_file: Path | None = typer.Option(None, "--map", metavar="FILE.html", help="Also write an interactive map (folium)."),
    llm_base_url: str | None = typer.Option(None, "--llm-base-url", metavar="URL", rich_help_panel=_LLM, help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM); default $GEOFAST_LLM_BASE_URL, $OPENAI_BASE_URL, OpenAI. The key comes from $GEOFAST_LLM_API_KEY or $OPENAI_API_KEY."),
    llm_model: str | None = typer.Option(None, "--llm-model", metavar="NAME", rich_help_panel=_LLM, help="Model name (default $GEOFAST_LLM_MODEL, else gpt-4o-mini)."),
    llm_recipe: str = typer.Option("g3", "--llm-recipe", rich_help_panel=_LLM, help="g3 (prompts with 0/5/10/15 references, 2 samples each) or img2loc (16 nearest + 16 farthest, 1 sample); the options below override it."),
    llm_references: str | None = typer.Option(None, "--llm-references", metavar="N,...", rich_help_panel=_LLM, help="Reference counts of the prompts, e.g. 0,5,10,15."),
    llm_samples: int | None = typer.Option(None, "--llm-samples", min=1, rich_help_panel=_LLM, help="Samples per prompt."),
    llm_temperature: float | None = typer.Option(None, "--llm-temperature", min=0.0, max=2.0, rich_help_panel=_LLM),
    llm_nearest: int | None = typer.Option(None, "--llm-nearest", min=0, rich_help_panel=_LLM, help="Nearest database neighbours (or GeoCLIP candidates) offered as references."),
    llm_farthest: int | None = typer.Option(None, "--llm-farthest", min=0, rich_help_panel=_LLM, help="Farthest database neighbours offered as negative references (--db only)."),
    llm_concurrency: int = typer.Option(8, "--llm-concurrency", min=1, rich_help_panel=_LLM, help="Requests in flight at once."),
    llm_timeout: float = typer.Option(60.0, "--llm-timeout", min=0.1, rich_help_panel=_LLM, help="Seconds per request."),
    llm_retries: int = typer.Option(3, "--llm-retries", min=0, rich_help_panel=_LLM, help="Retries on 429/5xx/connection errors (exponential backoff)."),
    llm_image_size: int = typer.Option(512, "--llm-image-size", min=16, rich_help_panel=_LLM, help="Longest side (px) of the image sent to the model."),
    llm_max_tokens: int = typer.Option(256, "--llm-max-tokens", min=1, rich_help_panel=_LLM),
    llm_cache: bool = typer.Option(True, "--llm-cache/--no-llm-cache", rich_help_panel=_LLM, help="Reuse cached answers for the same image, prompt and model."),
) -> None:
    """Predict where each photo was taken: ranked coordinates with probabilities, place names and a confidence."""
    import geofast as gf
    from geofast.images import expand_images
    from geofast.output import prediction_json, write_geojson, write_map
    from geofast.predict import Prediction
    from geofast.predict.geoclip import Geolocator

    if method not in _METHODS:
        raise gf.InputError(f"unknown --method {method!r}", hint=f"choose one of: {', '.join(_METHODS)}")
    if eps_km <= 0:
        raise gf.ParameterError(f"--eps-km must be > 0, got {eps_km}")
    if cell_km <= 0:
        raise gf.ParameterError(f"--cell-km must be > 0, got {cell_km}")
    if db is None and method == "geoclip+swc":
        raise gf.InputError("--method geoclip+swc needs an image database", hint="pass --db DIR (build one with geofast db build)")
    if db is not None and method == "geoclip":
        raise gf.InputError("--db is used by --method swc, geoclip+swc or rag", hint="add --method swc (or geoclip+swc, rag)")
    llm_config = None
    if method == "rag":
        llm_config = _llm_config(
            llm_recipe, llm_base_url, llm_model, llm_references, llm_samples, llm_temperature, llm_nearest,
            llm_farthest, llm_concurrency, llm_timeout, llm_retries, llm_image_size, llm_max_tokens, llm_cache,
        )
    if method == "geoclip+swc" and not confidence:
        raise gf.InputError("--method geoclip+swc needs GeoCLIP's heads", hint="drop --no-confidence")
    database = None
    if db is not None:
        from geofast.database import Database

        database = Database.open(db)  # check the database before the (slow) model load
    from geofast.gallery import parse_region

    parse_region(region)  # validate before the (slow) model load

    # Expand inputs in the order given; a path that does not exist is that image's error, not the run's.
    entries: list[str | Prediction] = []
    for src in images:
        try:
            entries.extend(expand_images([src]))
        except gf.ImageError as e:
            entries.append(Prediction(image=src, method=method, error=str(e)))
    if not entries:
        raise gf.InputError("no images found in the given folders", hint="pass image files, folders or glob patterns")

    paths = [e for e in entries if isinstance(e, str)]
    run: Callable[[list[str], Callable[[int], None]], list[Prediction]]
    if method == "rag":
        from geofast.predict.rag import RagPredictor

        with _console.err.status(f"loading {model}{' and the database' if database is not None else ''} ...", spinner="dots"):
            locator = Geolocator.from_pretrained(model, clip=clip or (_db_clip(database) if database is not None else None),
                                                 device=device, gallery=gallery, region=region, progress=True)
            if database is not None:
                database.check_backbone(locator.backbone)
        rag = RagPredictor(locator, database=database, config=llm_config)
        run = lambda items, advance: rag.predict(items, top_k=top_k, batch_size=batch_size, places=places,  # noqa: E731
                                                 on_progress=advance)
    elif database is None:
        with _console.err.status(f"loading {model} ...", spinner="dots"):
            locator = Geolocator.from_pretrained(model, clip=clip, device=device, gallery=gallery, region=region, progress=True)
        run = lambda items, advance: locator.predict(items, top_k=top_k, batch_size=batch_size, method=method,  # noqa: E731
                                                     swc_eps_km=eps_km, places=places, on_progress=advance)
    else:
        from geofast.predict.swc import SwcPredictor

        with _console.err.status(f"loading {model if confidence else 'the CLIP backbone'} and the database ...", spinner="dots"):
            swc_loc = None
            if confidence:
                swc_loc = Geolocator.from_pretrained(model, clip=clip or _db_clip(database), device=device, gallery=gallery,
                                                     region=region, progress=True)
                backbone = swc_loc.backbone
            else:
                from geofast.models.clip import load_backbone

                backbone = load_backbone(clip or _db_clip(database), device)
            predictor = SwcPredictor(database, backbone, geolocator=swc_loc, k=swc_k, eps_km=eps_km, cell_km=cell_km)
        run = lambda items, advance: predictor.predict(items, method=method, top_k=top_k, batch_size=batch_size,  # noqa: E731
                                                       places=places, on_progress=advance)
    located = iter(_with_progress(paths, batch_size, run) if paths else [])
    results = [e if isinstance(e, Prediction) else next(located) for e in entries]

    failed = [p for p in results if p.error is not None]
    for p in failed:
        _console.error_line(p.error or "failed")
    if as_json:
        _console.print_json([prediction_json(p) for p in results])
    else:
        for p in results:
            if p.error is None:
                _render(p)
        if len(results) > 1:
            _console.err.print(f"{len(results) - len(failed)} of {len(results)} images located")
    if method == "rag":
        _console.err.print(_usage_line(results))
    if geojson is not None:
        write_geojson(geojson, results)
        _console.err.print(f"wrote {geojson}")
    if map_file is not None:
        write_map(map_file, results)
        _console.err.print(f"wrote {map_file}")
    if failed:
        raise typer.Exit(1)


def _with_progress(items: list[str], batch_size: int, run: Callable[[list[str], Callable[[int], None]], list[Any]]) -> list[Any]:
    """``run(items, advance)`` under a progress bar with ETA when there is more than one batch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if len(items) <= batch_size:
        return run(items, lambda _n: None)
    columns = (TextColumn("locating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=_console.err, transient=True) as bar:
        task = bar.add_task("locate", total=len(items))
        return run(items, lambda n: bar.advance(task, n))


def _llm_config(recipe, base_url, model, references, samples, temperature, nearest, farthest,  # type: ignore[no-untyped-def]
                concurrency, timeout, retries, image_size, max_tokens, cache):
    import geofast as gf
    from geofast.llm import LLMConfig

    if recipe not in ("g3", "img2loc"):
        raise gf.InputError(f"unknown --llm-recipe {recipe!r}", hint="choose g3 or img2loc")
    overrides: dict[str, Any] = dict(base_url=base_url, model=model, concurrency=concurrency, timeout_s=timeout,
                                     max_retries=retries, image_max_side=image_size, max_tokens=max_tokens, cache=cache)
    if references is not None:
        try:
            overrides["references"] = tuple(int(x) for x in references.split(",") if x.strip())
        except ValueError:
            raise gf.InputError(f"--llm-references {references!r} must be whole numbers separated by commas",
                                hint="e.g. --llm-references 0,5,10,15") from None
    for key, value in (("samples", samples), ("temperature", temperature), ("nearest", nearest), ("farthest", farthest)):
        if value is not None:
            overrides[key] = value
    config = LLMConfig.g3(**overrides) if recipe == "g3" else LLMConfig.img2loc(**overrides)
    from geofast.llm.client import resolve_api_key

    resolve_api_key(config.resolved_base_url())  # a missing key fails before the (slow) model load
    return config


def _usage_line(results: list[Any]) -> str:
    from geofast.predict.rag import total_usage

    parts = [f"{k.replace('_', ' ')} {v}" for k, v in total_usage(results).as_dict().items()]
    fallbacks = sum(1 for p in results if p.error is None and p.fallback)
    return "LLM usage: " + ", ".join(parts) + f"; fallback answers {fallbacks}"


def _db_clip(database) -> str | None:  # type: ignore[no-untyped-def]
    """The backbone a database was built with, when --clip and $GEOFAST_CLIP are not given."""
    import os

    if os.environ.get("GEOFAST_CLIP", "").strip():
        return None
    recorded = database.backbone_source
    if recorded and (Path(recorded).expanduser().is_dir() or not Path(recorded).expanduser().is_absolute()):
        return str(recorded)
    return None


def _render(p) -> None:  # type: ignore[no-untyped-def]
    conf = "n/a" if p.confidence is None else f"{p.confidence:.3f}"
    loc = "" if p.localizable is None else (" (localizable)" if p.localizable else " (hard to localize)")
    title = f"{p.image}  —  PD25 confidence {conf}{loc}"
    table = Table(title=title, title_justify="left")
    from_db = bool(p.candidates) and p.candidates[0].source == "db"
    table.add_column("rank", justify="right")
    table.add_column("lat", justify="right")
    table.add_column("lon", justify="right")
    table.add_column("similarity" if from_db else "probability", justify="right")
    table.add_column("place")
    if from_db:
        table.add_column("database photo")
    if p.method in ("swc", "geoclip+swc"):
        what = "cluster centroid" if not p.fallback else f"GeoCLIP top-1 ({p.extra.get('fallback_reason', 'fallback')})"
        place = p.extra.get("place")
        row = [p.method, f"{p.lat:.5f}", f"{p.lon:.5f}", f"{p.prob:.4f}" if p.prob is not None else "-",
               f"{what}: {place}" if place else what]
        table.add_row(*row, *([""] if from_db else []))
    images = [n.get("image") or "" for n in p.extra.get("neighbours", [])] if from_db else []
    for rank, c in enumerate(p.candidates, start=1):
        value = f"{c.prob:.4f}" if c.prob is not None else (f"{c.score:.4f}" if c.score is not None else "-")
        row = [str(rank), f"{c.lat:.5f}", f"{c.lon:.5f}", value, c.place or ""]
        if from_db:
            row.append(Path(images[rank - 1]).name if rank - 1 < len(images) else "")
        table.add_row(*row)
    _console.out.print(table)
