"""``geofast serve``: the HTTP API and the web page, models loaded once."""

from __future__ import annotations

import typer

from geofast.cli import _options as o
from geofast.cli import app

_LIMITS = "Limits and batching"
_SECURITY = "Security"


@app.command("serve")
def serve(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        rich_help_panel=_SECURITY,
        help="Address to listen on; any non-loopback one needs GEOFAST_API_KEY (or --no-auth).",
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    model: o.Model = "geoclip",
    clip: o.Clip = None,
    device: o.Device = None,
    precision: o.Precision = None,
    gallery: o.Gallery = None,
    region: o.Region = None,
    method: o.Method = "geoclip",
    db: o.Db = None,
    swc_k: o.SwcK = 10,
    eps_km: o.EpsKm = 1.0,
    cell_km: o.CellKm = 25.0,
    confidence: o.Confidence = True,
    raw_candidates: o.RawCandidates = False,
    places: bool = typer.Option(True, "--places/--no-places", help="Name the nearest GeoNames place of each candidate."),
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
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug."),
    llm_base_url: o.LlmBaseUrl = None,
    llm_model: o.LlmModel = None,
    llm_recipe: o.LlmRecipe = "g3",
    llm_references: o.LlmReferences = None,
    llm_samples: o.LlmSamples = None,
    llm_temperature: o.LlmTemperature = None,
    llm_nearest: o.LlmNearest = None,
    llm_farthest: o.LlmFarthest = None,
    llm_concurrency: o.LlmConcurrency = 8,
    llm_timeout: o.LlmTimeout = 60.0,
    llm_retries: o.LlmRetries = 3,
    llm_image_size: o.LlmImageSize = 512,
    llm_max_tokens: o.LlmMaxTokens = 256,
    llm_cache: o.LlmCache = True,
) -> None:
    """Serve the HTTP API (POST /v1/locate, /v1/locations/embed, GET /v1/models, /docs) and the web page at /."""
    from geofast.errors import InputError
    from geofast.serve import API_KEY_ENV, ServeConfig, run
    from geofast.serve.security import InsecureBindError

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise InputError(f"unknown --log-level {log_level!r}", hint="choose critical, error, warning, info or debug")
    if allow_private_urls and not allow_urls:
        raise InputError("--allow-private-urls only makes sense with --allow-urls", hint="add --allow-urls")
    opts = o.method_options_from(locals())
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
    )
    try:
        run(config, log_level=log_level)
    except InsecureBindError as e:
        raise InputError(
            str(e),
            hint=f"set {API_KEY_ENV}=<secret> (clients send it as a Bearer token), or pass --no-auth to serve without a key",
        ) from None
