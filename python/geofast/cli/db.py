"""``geofast db build|info|add``: image databases for Search-within-Cell and RAG."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from geofast import _console
from geofast.cli import _options as o
from geofast.cli._app import app

db_app = typer.Typer(
    name="db",
    help="Build, grow and inspect image databases (geotagged photo embeddings) for --method swc.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app, name="db")

ChunkSize = Annotated[
    int,
    typer.Option(
        "--chunk-size", min=1, help="Photos per committed chunk (an interrupted build or add resumes from the last chunk)."
    ),
]


@contextlib.contextmanager
def _plan_progress(enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """``on_plan(bytes, total)``: a transient bar while the source CSV is read."""
    bar = _console.progress("reading the source", unit="bytes", transient=True)
    state: dict[str, object] = {}

    def advance(done: int, total: int) -> None:
        if not enabled or "stopped" in state:
            return
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task("reading the source", total=total, completed=done)
        bar.update(state["task"], completed=done, total=total)  # type: ignore[arg-type]
        if done >= total:
            bar.stop()
            state["stopped"] = True

    try:
        yield advance
    finally:
        if "task" in state and "stopped" not in state:
            bar.stop()


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[tuple[Callable[[int, int], None], Callable[[str], None]]]:
    """(on_progress, on_event) callbacks drawing a rich bar with ETA on stderr. The bar appears
    with the first progress report, so argument errors and model loading print no empty bar."""
    bar = _console.progress(label, unit="images", transient=False)
    state: dict[str, object] = {}

    def advance(done: int, total: int) -> None:
        if not enabled:
            return
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(label, total=total, completed=done)
        bar.update(state["task"], completed=done, total=total)  # type: ignore[arg-type]

    def event(msg: str) -> None:
        _console.err.print(f"[dim]{escape(msg)}[/]", markup=True, highlight=False)

    try:
        yield advance, event
    finally:
        if "task" in state:
            bar.stop()


def _report(report, as_json: bool, verb: str) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        _console.print_json(report.as_dict())
        return
    skipped = f", {report.no_gps:,} without GPS" if report.no_gps else ""
    dup = f", {report.duplicates:,} already present" if report.duplicates else ""
    _console.out.print(
        f"{verb} {report.path}: {report.added:,} photos added ({report.rows:,} rows), "
        f"{report.failed:,} failed{skipped}{dup} in {report.seconds:.1f} s"
    )
    if report.failed or report.no_gps:
        _console.err.print(f"skipped photos are listed in {report.failed_file}")


@contextlib.contextmanager
def _executor(shared: o.Shared) -> Iterator[Any]:
    """``--ray [ADDRESS]``: the Ray executor (its local cluster stopped on exit); else None (local)."""
    opts = o.ray_options_from(shared)
    if opts is None:
        yield None
        return
    from geofast.db.ray_executor import RayExecutor

    with RayExecutor(opts) as executor:
        executor.connect()  # an unreachable or too small cluster fails before the model loads
        yield executor


#: The options of the commands that encode photos (db build, db add).
ENCODE = (
    o.OptionGroup(
        (
            ("device", o.Device, None),
            ("precision", o.Precision, None),
            ("batch_size", o.BatchSize, 32),
            ("chunk_size", ChunkSize, 256),
            ("workers", o.Workers, None),
            ("progress", o.Progress, True),
        )
    )
    + o.RAY
)


def _encode(run: Callable[..., Any], shared: o.Shared, *args: Any, **kwargs: Any) -> Any:
    """``run(*args, **kwargs)`` (Database.build or .add) with the :data:`ENCODE` options: on
    Ray with ``--ray``, under progress bars with ``--progress``."""
    progress = shared["progress"]
    with (
        _executor(shared) as executor,
        _plan_progress(progress) as on_plan,
        _progress(progress, "encoding") as (advance, event),
    ):
        return run(
            *args,
            **kwargs,
            device=shared["device"],
            precision=shared["precision"],
            batch_size=shared["batch_size"],
            chunk_size=shared["chunk_size"],
            workers=shared["workers"],
            executor=executor,
            on_progress=advance,
            on_event=event,
            on_plan=on_plan,
        )


@db_app.command("build")
@o.with_options(ENCODE)
def build(
    source: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="CSV with columns image,lat,lon (paths relative to the CSV) or a folder of photos with EXIF GPS.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="DIR", help="Database folder to create (replaced only when the new one is complete)."
    ),
    clip: o.Clip = None,
    dtype: str = typer.Option(
        "f16", "--dtype", metavar="f16|f32", help="Embedding storage: f16 (default, half the size) or f32."
    ),
    index: str = typer.Option(
        "Flat",
        "--index",
        metavar="FACTORY",
        help="Flat (exact, default) or a FAISS factory string for millions of photos, e.g. IVF4096,SQ8 or HNSW32.",
    ),
    shared: o.Shared = o.GROUP,
    as_json: bool = typer.Option(False, "--json", help="Print only the build report as JSON."),
) -> None:
    """Build an image database from geotagged photos (resumes an interrupted build of the same SOURCE)."""
    from geofast.db import Database

    report = _encode(Database.build, shared, source, out, clip=clip, dtype=dtype, index=index)
    _report(report, as_json, "built")


@db_app.command("add")
@o.with_options(ENCODE)
def add(
    directory: Path = typer.Argument(..., metavar="DIR", help="An existing database folder."),
    source: str = typer.Argument(..., metavar="SOURCE", help="CSV (image,lat,lon) or folder of photos with EXIF GPS to add."),
    clip: str | None = typer.Option(
        None, "--clip", metavar="ID|DIR", help="CLIP backbone (default: the one the database was built with)."
    ),
    shared: o.Shared = o.GROUP,
    as_json: bool = typer.Option(False, "--json", help="Print only the report as JSON."),
) -> None:
    """Add photos to a database (photos already in it are skipped; the old database stays valid until the new one is complete)."""
    from geofast.db import Database

    report = _encode(Database.add, shared, directory, source, clip=clip)
    _report(report, as_json, "updated")


@db_app.command("info")
def info(
    directory: Path = typer.Argument(..., metavar="DIR", help="A database folder."),
    verify: bool = typer.Option(False, "--verify", help="Check every file's sha256 (reads the whole database)."),
    map_file: Path | None = typer.Option(
        None,
        "--map",
        metavar="FILE.html",
        help="Also write a coverage map (self-contained HTML, works offline; photos counted per grid cell).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """Counts, sizes, backbone, index and coverage of a database."""
    from rich.table import Table

    from geofast.db import Database

    db = Database.open(directory, verify=True if verify else None)
    data = db.info()
    data["verified"] = bool(verify) or data["bytes"] <= _full_verify_bytes()
    if map_file is not None:
        _write_coverage_map(map_file, db)
        data["map"] = str(map_file)
    if as_json:
        _console.print_json(data)
        return
    table = Table(title=f"geofast database {data['path']}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    cov = data["coverage"]
    rows = [
        ("rows", f"{data['rows']:,}"),
        ("failed / without GPS", f"{data['failed']:,} / {data['no_gps']:,}"),
        ("embeddings", f"{data['dim']}-d {data['dtype']}"),
        (
            "index",
            data["index"]["factory"] + (f" ({data['index']['search_params']})" if data["index"].get("search_params") else ""),
        ),
        ("backbone", str(data["backbone"].get("source"))),
        ("size", _size(data["bytes"])),
        (
            "coverage",
            f"lat {cov['lat_min']:.3f}…{cov['lat_max']:.3f}, lon {cov['lon_min']:.3f}…{cov['lon_max']:.3f}, "
            f"{cov['cells_1deg']:,} 1°×1° cells"
            if cov
            else "-",
        ),
        ("sources", "; ".join(f"{s['source']} (+{s['added']:,})" for s in data["sources"]) or "-"),
        ("geofast", f"{data['geofast_version']} (format {data['format_version']}), updated {data['updated']}"),
        ("checksums", "verified" if data["verified"] else "sampled (use --verify for a full check)"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    _console.out.print(table)
    if map_file is not None:
        _console.err.print(f"wrote {map_file}")


def _full_verify_bytes() -> int:
    from geofast.db import FULL_VERIFY_BYTES

    return FULL_VERIFY_BYTES


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _write_coverage_map(path: Path, db) -> None:  # type: ignore[no-untyped-def]
    """geofast's offline coverage map of the database's photo positions (aggregated to a bounded grid)."""
    from geofast.mapview import write_coverage_map

    write_coverage_map(path, db.latlon, title=f"geofast database {db.path.name}: {len(db):,} photos")
