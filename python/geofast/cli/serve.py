"""``geofast serve``: the HTTP API and the web page, models loaded once."""

from __future__ import annotations

import typer

from geofast.cli import _options as o
from geofast.cli._app import app

_LIMITS = "Limits and batching"
_SECURITY = "Security"


@app.command("serve")
@o.with_options(o.METHOD + o.LLM)
def serve(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        rich_help_panel=_SECURITY,
        help="Address to listen on; any non-loopback one needs GEOFAST_API_KEY (or --no-auth).",
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    shared: o.Shared = o.GROUP,
    places: o.Places = True,
    max_batch: int = typer.Option(
        16, "--max-batch", min=1, rich_help_panel=_LIMITS, help="Images per forward pass (requests are coalesced)."
    ),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", min=0.0, rich_help_panel=_LIMITS, help="How long a batch waits for more requests before it runs."
    ),
    queue: int = typer.Option(
        64,
        "--queue",
        min=1,
        rich_help_panel=_LIMITS,
        help="Requests that may wait; beyond them the answer is 503 with Retry-After.",
    ),
    workers: int = typer.Option(
        2, "--workers", min=1, rich_help_panel=_LIMITS, help="Threads decoding uploads (the model runs in one batching worker)."
    ),
    deadline: float = typer.Option(
        60.0, "--deadline", min=0.001, rich_help_panel=_LIMITS, help="Seconds a request may take (then 504)."
    ),
    max_body_mb: float = typer.Option(
        64.0, "--max-body-mb", min=0.001, rich_help_panel=_LIMITS, help="Largest request body (MiB; 413 beyond)."
    ),
    max_images: int = typer.Option(32, "--max-images", min=1, rich_help_panel=_LIMITS, help="Images per request."),
    max_pixels: int = typer.Option(
        40_000_000, "--max-pixels", min=1, rich_help_panel=_LIMITS, help="Pixels per image, checked before decoding (400 beyond)."
    ),
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        rich_help_panel=_SECURITY,
        help="Serve a non-loopback host without an API key (anyone who can reach it may use it).",
    ),
    cors: list[str] | None = typer.Option(
        None,
        "--cors",
        metavar="ORIGIN",
        rich_help_panel=_SECURITY,
        help="Allow browser calls from this origin (repeatable; default: CORS off).",
    ),
    allow_urls: bool = typer.Option(
        False, "--allow-urls", rich_help_panel=_SECURITY, help="Fetch image URLs sent in the 'urls' field."
    ),
    allow_private_urls: bool = typer.Option(
        False,
        "--allow-private-urls",
        rich_help_panel=_SECURITY,
        help="With --allow-urls: also fetch loopback and private addresses.",
    ),
    url_timeout: float = typer.Option(
        10.0,
        "--url-timeout",
        min=0.001,
        metavar="SECONDS",
        rich_help_panel=_SECURITY,
        help="With --allow-urls: seconds one URL fetch may take in all (DNS, connect, headers, body, redirects).",
    ),
    allowed_host: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        metavar="NAME",
        rich_help_panel=_SECURITY,
        help="Also answer requests whose Host header names NAME (repeatable; default: only the bound address).",
    ),
    max_decoded_mpix: float = typer.Option(
        48.0,
        "--max-decoded-mpix",
        min=0.001,
        metavar="MPIX",
        rich_help_panel=_LIMITS,
        help="Megapixels decoded at once across all requests (others wait; at least --max-pixels).",
    ),
    max_connections: int = typer.Option(
        128, "--max-connections", min=1, metavar="N", rich_help_panel=_LIMITS, help="Simultaneous connections (503 beyond)."
    ),
    header_timeout: float = typer.Option(
        10.0,
        "--header-timeout",
        min=0.1,
        metavar="SECONDS",
        rich_help_panel=_LIMITS,
        help="Seconds a client may take to send a request's headers (then the connection is closed).",
    ),
    neighbour_paths: bool = typer.Option(
        False,
        "--neighbour-paths",
        rich_help_panel=_SECURITY,
        help="Show database neighbours' absolute photo paths (default: relative to the database, else the file name).",
    ),
    log_level: str = typer.Option("info", "--log-level", metavar="LEVEL", help="critical, error, warning, info or debug."),
) -> None:
    """Serve the HTTP API (POST /v1/locate, /v1/locations/embed, GET /v1/models, /docs) and the web page at /."""
    import importlib.util

    from geofast.errors import InputError

    missing = [m for m in ("fastapi", "starlette", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"geofast serve needs the 'serve' extra ({', '.join(missing)} not installed)",
            hint="pip install 'geofast[serve]'",
        )
    from geofast.serve import API_KEY_ENV, ServeConfig, run
    from geofast.serve.security import InsecureBindError

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise InputError(f"unknown --log-level {log_level!r}", hint="choose critical, error, warning, info or debug")
    if allow_private_urls and not allow_urls:
        raise InputError("--allow-private-urls only makes sense with --allow-urls", hint="add --allow-urls")
    opts = o.method_options_from(shared)
    config = ServeConfig(
        host=host,
        port=port,
        method=opts,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue,
        workers=workers,
        deadline_s=deadline,
        max_body_bytes=max(1, int(max_body_mb * 1024 * 1024)),
        max_images=max_images,
        max_pixels=max_pixels,
        no_auth=no_auth,
        cors_origins=tuple(cors or ()),
        allow_urls=allow_urls,
        allow_private_urls=allow_private_urls,
        places=places,
        allowed_hosts=tuple(allowed_host or ()),
        url_timeout_s=url_timeout,
        max_decoded_pixels=max(1, int(max_decoded_mpix * 1_000_000)),
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        neighbour_paths=neighbour_paths,
    )
    try:
        run(config, log_level=log_level)
    except InsecureBindError as e:
        raise InputError(
            str(e),
            hint=f"set {API_KEY_ENV}=<secret> (clients send it as a Bearer token), or pass --no-auth to serve without a key",
        ) from None
