"""``geofast locate``: where was this photo taken?"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from geofast import _console
from geofast.cli import _options as o
from geofast.cli._app import app


@app.command("locate")
@o.with_options(o.METHOD + o.LLM)
def locate(
    images: list[str] | None = typer.Argument(
        None, metavar="IMAGE|URL", help="Image files, folders (searched recursively), glob patterns or http(s) URLs."
    ),
    texts: list[str] | None = typer.Option(
        None,
        "--text",
        metavar="TEXT",
        help='Locate a description instead of a photo, e.g. --text "a harbour with red wooden houses" (repeatable; --method geoclip or swc without --db).',
    ),
    shared: o.Shared = o.GROUP,
    top_k: o.TopK = 5,
    batch_size: o.BatchSize = 16,
    url_timeout: float = typer.Option(
        15.0, "--url-timeout", min=0.001, metavar="SECONDS", help="Give up fetching an image URL after this long."
    ),
    url_max_mb: float = typer.Option(
        20.0, "--url-max-mb", min=0.000001, metavar="MB", help="Refuse image URLs larger than this."
    ),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls", help="Also fetch URLs on loopback, private and link-local addresses (refused by default)."
    ),
    places: o.Places = True,
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON array to stdout."),
    geojson: Path | None = typer.Option(None, "--geojson", metavar="FILE", help="Also write the top-1 points as GeoJSON."),
    map_file: Path | None = typer.Option(
        None, "--map", metavar="FILE.html", help="Also write an interactive map (self-contained HTML, works offline)."
    ),
) -> None:
    """Predict where each photo was taken: ranked coordinates with probabilities, place names and a confidence.

    Text queries (--text) come after the photos in the output; their "image" is "text: " + the text."""
    import geofast as gf
    from geofast.images import ImageURL, expand_images, is_url
    from geofast.mapview import write_map
    from geofast.output import prediction_json, write_geojson
    from geofast.predict import Prediction
    from geofast.predict.factory import make_predictor
    from geofast.predict.geoclip import TEXT_PREFIX

    opts = o.method_options_from(shared)
    method, model, db = opts.method, opts.model, opts.db
    texts = list(texts or [])
    if not images and not texts:
        raise gf.InputError("nothing to locate", hint="pass image files, folders, globs or URLs, or --text DESCRIPTION")
    if texts and (method not in ("geoclip", "swc") or db is not None):
        raise gf.InputError(
            f"--text works with GeoCLIP's gallery, not --method {method}" + (" with --db" if db is not None else ""),
            hint="use --method geoclip (or swc without --db) for text queries",
        )
    if any(not t.strip() for t in texts):
        raise gf.InputError("--text is empty", hint='describe the place, e.g. --text "a harbour with red wooden houses"')
    database = opts.check()  # every cheap check before the (slow) model load

    # Expand inputs in the order given; a path that does not exist is that image's error, not the run's.
    entries: list[str | ImageURL | Prediction] = []
    for src in images or []:
        if is_url(src):
            entries.append(
                ImageURL(src, max_bytes=int(url_max_mb * 1024 * 1024), timeout_s=url_timeout, allow_private=allow_private_urls)
            )
            continue
        try:
            entries.extend(expand_images([src]))
        except gf.ImageError as e:
            entries.append(Prediction(image=src, method=method, error=str(e)))
    if images and not entries and not texts:
        raise gf.InputError("no images found in the given folders", hint="pass image files, folders or glob patterns")

    paths = [e for e in entries if not isinstance(e, Prediction)]
    what = model + (" and the database" if database is not None else "")
    with _console.err.status(f"loading {escape(what)} ...", spinner="dots"):
        predictor = make_predictor(opts, database)
    located = iter(
        _with_progress(
            paths,
            batch_size,
            lambda items, advance: predictor.predict(
                items, top_k=top_k, batch_size=batch_size, places=places, on_progress=advance
            ),
            predictor if method == "rag" else None,
        )
        if paths
        else []
    )
    results = [e if isinstance(e, Prediction) else next(located) for e in entries]
    text_hint: str | None = None
    if texts:
        from geofast.predict.geoclip import GeoclipPredictor

        assert isinstance(predictor, GeoclipPredictor)  # --text was checked against --method/--db above
        try:
            results.extend(predictor.predict_text(texts, top_k=top_k, batch_size=batch_size, places=places))
        except gf.ModelError as e:  # e.g. a backbone without tokenizer: the text queries fail, the photos stand
            results.extend(Prediction(image=TEXT_PREFIX + t, method=method, error=f"{TEXT_PREFIX}{t}: {e}") for t in texts)
            text_hint = e.hint

    failed = [p for p in results if p.error is not None]
    for p in failed:
        _console.error_line(p.error or "failed", text_hint if p.image.startswith(TEXT_PREFIX) else None)
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


def _with_progress(
    items: list[Any],
    batch_size: int,
    run: Callable[[list[Any], Callable[[int], None]], list[Any]],
    llm_predictor: Any = None,
) -> list[Any]:
    """``run(items, advance)`` under a progress bar with ETA when there is more than one batch
    (always for the LLM stage of ``rag``: requests/s and tokens as they come)."""
    if len(items) <= batch_size and llm_predictor is None:
        return run(items, lambda _n: None)
    from geofast.cli import _llm

    with _console.progress("locating", unit="images", info=llm_predictor is not None) as bar:
        task = bar.add_task("locate", total=len(items), info="")
        if llm_predictor is not None:
            _llm.attach(llm_predictor, bar, task)
        return run(items, lambda n: bar.advance(task, n))


def _usage_line(results: list[Any]) -> str:
    from geofast.predict.rag import total_usage

    parts = [f"{k.replace('_', ' ')} {v}" for k, v in total_usage(results).as_dict().items()]
    fallbacks = sum(1 for p in results if p.error is None and p.fallback)
    return "LLM usage: " + ", ".join(parts) + f"; fallback answers {fallbacks}"


#: How the RAG table names where a candidate came from (``Candidate.source``).
SOURCES = {"geoclip": "GeoCLIP", "db": "database", "swc": "SwC"}


def source_label(source: str) -> str:
    """``"llm:p5s1"`` → ``"LLM (5 refs, sample 1)"``; ``"geoclip"`` → ``"GeoCLIP"``."""
    if source.startswith("llm"):
        _, _, tag = source.partition(":")
        refs, _, sample = tag[1:].partition("s") if tag.startswith("p") else ("", "", "")
        return f"LLM ({refs} refs, sample {sample})" if refs.isdigit() and sample.isdigit() else "LLM"
    return SOURCES.get(source, source)


def _render(p) -> None:  # type: ignore[no-untyped-def]
    # The console prints without markup: file names such as "img[red].jpg" print as they are.
    conf = "n/a" if p.confidence is None else f"{p.confidence:.3f}"
    loc = "" if p.localizable is None else (" (localizable)" if p.localizable else " (hard to localize)")
    title = f"{p.image}  —  PD25 confidence {conf}{loc}"
    if p.method == "rag":
        answer = "GeoCLIP/database fallback" if p.fallback else "LLM answer"
        reason = f": {p.fallback_reason}" if p.fallback and p.fallback_reason else ""
        title += f"  —  {'FALLBACK, ' if p.fallback else ''}{answer}{reason}"
    table = Table(title=title, title_justify="left")
    from_db = bool(p.candidates) and p.candidates[0].source == "db"
    rag = p.method == "rag"
    table.add_column("rank", justify="right")
    table.add_column("lat", justify="right")
    table.add_column("lon", justify="right")
    if rag:
        table.add_column("source")
        table.add_column("probability", justify="right")
        table.add_column("verified similarity", justify="right")
    else:
        table.add_column("similarity" if from_db else "probability", justify="right")
    table.add_column("place")
    if from_db:
        table.add_column("database photo")
    if p.method in ("swc", "geoclip+swc"):
        what = "cluster centroid" if not p.fallback else f"GeoCLIP top-1 ({p.fallback_reason or 'fallback'})"
        place = p.place
        row = [
            p.method,
            f"{p.lat:.5f}",
            f"{p.lon:.5f}",
            f"{p.prob:.4f}" if p.prob is not None else "-",
            f"{what}: {place}" if place else what,
        ]
        table.add_row(*row, *([""] if from_db else []))
    images = [n.image or "" for n in (p.neighbours or [])] if from_db else []
    for rank, c in enumerate(p.candidates, start=1):
        prob = f"{c.prob:.4f}" if c.prob is not None else "-"
        if rag:
            score = f"{c.score:.4f}" if c.score is not None else "-"
            row = [str(rank), f"{c.lat:.5f}", f"{c.lon:.5f}", source_label(c.source), prob, score, c.place or ""]
        else:
            value = prob if c.prob is not None else (f"{c.score:.4f}" if c.score is not None else "-")
            row = [str(rank), f"{c.lat:.5f}", f"{c.lon:.5f}", value, c.place or ""]
        if from_db:
            row.append(Path(images[rank - 1]).name if rank - 1 < len(images) else "")
        table.add_row(*row)
    _console.out.print(table)
