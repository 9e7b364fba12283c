"""The FastAPI application of ``geofast serve``.

Routes (``/v1/`` ones need the API key when one is configured):

* ``GET /healthz`` — the process lives; ``GET /readyz`` — the models are loaded (503 until then).
* ``POST /v1/locate`` — multipart ``images`` (one or more files), form ``top_k``, ``method``;
  answers ``{"results": [...same objects as geofast locate --json...], "timings_ms": {...}}``.
* ``POST /v1/locations/embed`` — ``{"latlon": [[lat, lon], ...]}`` → GeoCLIP location embeddings
  (counted before anything is validated; parsed, computed and serialised off the event loop,
  one at a time, with the request deadline).
* ``GET /v1/models`` — what is loaded, the limits and the batcher's counters.
* ``GET /openapi.json`` and ``GET /docs`` (a page of this project that renders the schema
  offline; FastAPI's own docs pages load from a CDN and are switched off); ``GET /`` the web page.

Models load once, in a background thread started by the lifespan, so ``/healthz`` answers at
once and ``/readyz`` says when inference can start. Images are decoded in a thread pool with
geofast's own loader, under one budget of decoded pixels across requests
(:class:`~geofast.serve.guard.PixelBudget`); each decoded image is at once reduced to the
224 × 224 crop CLIP sees (:meth:`~geofast.models.clip.Backbone.reduce`, bit-identical answers)
and the full-size pixels dropped. The model runs in the one inference worker of
:mod:`geofast.serve.batcher`.
Every error is JSON ``{"error": "one line", "hint": ...}``; tracebacks go to the server log only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from geofast import __version__
from geofast.errors import GeofastError, ImageError, InputError, TooLargeError
from geofast.images import PixelLimitError, fetch_url_bytes, load_image_bytes, open_image_bytes
from geofast.output import prediction_json
from geofast.predict.types import Prediction, Predictor
from geofast.serve._http import error_body, error_response, one_line
from geofast.serve.batcher import Batcher, DeadlineExceeded, NotRunning, QueueFull
from geofast.serve.config import ServeConfig
from geofast.serve.guard import (
    HostOriginMiddleware,
    PixelBudget,
    SecurityHeadersMiddleware,
    allowed_hosts,
    release_memory,
)
from geofast.serve.security import AuthMiddleware, BodyLimitMiddleware, required_key

log = logging.getLogger("geofast.serve")


class UnsupportedFormat(InputError):
    """An upload is an image format the server does not accept (→ 415)."""


class NotReady(GeofastError):
    """The models are still loading, or failed to load (→ 503)."""


class Unsupported(GeofastError):
    """The server's models cannot do what was asked (text queries without a tokenizer, → 501)."""


class Busy(GeofastError):
    """Too much is being decoded or computed right now (→ 503 + Retry-After)."""


#: Pixels from which a decoded image's memory is handed back to the system once it is dropped.
_TRIM_PIXELS = 2_000_000


# -- response models (for the OpenAPI schema) ---------------------------------------------------
class Timings(BaseModel):
    queue: float = Field(description="ms waiting for the inference worker")
    decode: float = Field(description="ms decoding the uploads")
    inference: float = Field(description="ms of the forward pass and search this request shared")
    total: float = Field(description="ms from arrival to answer")


class LocateResponse(BaseModel):
    results: list[dict[str, Any]] = Field(
        description="One object per image, in order: exactly the objects of `geofast locate --json` "
        "({image, predictions: [{lat, lon, prob, place}], confidence, localizable, ...} or {image, error})."
    )
    timings_ms: Timings


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, on one line")
    hint: str | None = Field(default=None, description="How to fix it")


class LocationsRequest(BaseModel):
    latlon: list[tuple[float, float]] = Field(description="Coordinates as [lat, lon] pairs in degrees, latitude first")


class LocationsResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="L2-normalised GeoCLIP location embeddings, one per pair")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "bad input (too many images or pixels, bad top_k, bad coordinates)"),
        (401, "missing or wrong API key"),
        (403, "cross-origin request refused (see --cors)"),
        (413, "request body too large"),
        (415, "image format not accepted"),
        (422, "malformed request"),
        (501, "the server's models cannot answer this (e.g. text queries without a tokenizer)"),
        (503, "queue full (see Retry-After) or models not loaded yet"),
        (504, "the request passed its deadline"),
    )
}


# -- server state -------------------------------------------------------------------------------
class ServerState:
    """The loaded predictor, the batcher and the decode pool of one app."""

    def __init__(self, config: ServeConfig, predictor: Predictor | None) -> None:
        self.config = config
        self.predictor = predictor
        self.batcher: Batcher | None = None
        self.load_error: GeofastError | None = None
        self.loaded_at: float | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.fetch_pool: ThreadPoolExecutor | None = None
        self.budget = PixelBudget(config.max_decoded_pixels)
        #: Reduces decoded images to what the backbone sees (``None``: keep them, e.g. for RAG,
        #: whose LLM sees the photo itself).
        self.reducer: Callable[[list[Any]], list[Any]] | None = None
        #: Why text queries cannot be answered (``None``: they can, or the method has none).
        self.text_unsupported: str | None = None
        self.embed_lock: asyncio.Lock | None = None
        self.embed_waiting = 0
        self.ready = threading.Event()
        self.closed = False
        self._lock = threading.Lock()
        #: Called (from the loading thread) when the models cannot be loaded; ``run`` stops the server.
        self.on_fatal: Callable[[GeofastError], None] | None = None

    def start(self) -> None:
        self.decode_pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="geofast-decode")
        if self.config.allow_urls:  # fetches wait on the network: their own threads, not the decoders'
            self.fetch_pool = ThreadPoolExecutor(max(4, self.config.workers), thread_name_prefix="geofast-fetch")
        if self.predictor is not None:
            self._ready(self.predictor)
        else:
            threading.Thread(target=self._load, name="geofast-load", daemon=True).start()

    def _load(self) -> None:
        from geofast.predict.factory import make_predictor

        try:
            database = self.config.method.check()
            predictor = make_predictor(self.config.method, database, progress=False)
        except GeofastError as e:
            self._fail(e)
            return
        except Exception as e:  # a bug or an environment problem: still one line, no traceback
            log.debug("model load failed", exc_info=True)
            self._fail(GeofastError(f"loading the models failed: {type(e).__name__}: {e}"))
            return
        self._ready(predictor)

    def _fail(self, error: GeofastError) -> None:
        self.load_error = error
        if self.on_fatal is not None:
            self.on_fatal(error)  # ``run`` stops the server and reports the error itself
        else:
            log.error("error: %s%s", one_line(error), f" (hint: {error.hint})" if error.hint else "")

    def _ready(self, predictor: Predictor) -> None:
        cfg = self.config
        batcher = Batcher(
            predictor, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, queue_size=cfg.queue_size, places=cfg.places
        )
        backbone = getattr(_geolocator(predictor), "backbone", None) or getattr(predictor, "backbone", None)
        if backbone is not None and predictor.method != "rag" and callable(getattr(backbone, "reduce", None)):
            self.reducer = backbone.reduce
        check_text = getattr(backbone, "text_unsupported", None)
        if callable(getattr(predictor, "predict_text", None)) and callable(check_text):
            self.text_unsupported = check_text()
        with self._lock:
            if self.closed:  # the server stopped while the models were loading
                return
            self.predictor = predictor
            batcher.start()
            self.batcher = batcher
        self.loaded_at = time.time()
        self.ready.set()
        log.info("geofast: %s ready (max batch %d, queue %d)", predictor.method, cfg.max_batch, cfg.queue_size)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        if self.batcher is not None:
            self.batcher.stop()
        for pool in (self.decode_pool, self.fetch_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> tuple[Predictor, Batcher]:
        if self.load_error is not None:
            raise NotReady(f"the models failed to load: {one_line(self.load_error)}", hint=self.load_error.hint)
        if not self.ready.is_set() or self.predictor is None or self.batcher is None:
            raise NotReady("the models are still loading", hint="retry when /readyz answers 200")
        return self.predictor, self.batcher


def _geolocator(predictor: Predictor) -> Any:
    """The Geolocator behind a predictor (``None`` when the method loaded none)."""
    return getattr(predictor, "geolocator", None)


# -- decoding ---------------------------------------------------------------------------------
def _pixel_limit(name: str, width: int, height: int, config: ServeConfig) -> PixelLimitError:
    pixels = width * height
    return PixelLimitError(
        f"{name}: {width}×{height} = {pixels:,} pixels exceeds the server's limit of {config.max_pixels:,} "
        "(possible decompression bomb)",
        hint="downscale the image before sending it (the server's limit is set with --max-pixels)",
    )


def probe_upload(data: bytes, name: str, config: ServeConfig, *, entry_errors: bool = False) -> tuple[Any, str | None]:
    """``(not-yet-decoded image, None)`` read from the header only, or ``(None, message)`` for
    bytes that are no image (that image's own entry in the answer). Raises
    :class:`UnsupportedFormat` (415) for a format not accepted and :class:`PixelLimitError` (400)
    for too many pixels; with ``entry_errors`` (fetched URLs) those become entries too."""
    try:
        try:
            im = open_image_bytes(data, name)  # header only
        except PixelLimitError:
            raise PixelLimitError(
                f"{name}: too many pixels for the server's limit of {config.max_pixels:,} (possible decompression bomb)",
                hint="downscale the image before sending it (the server's limit is set with --max-pixels)",
            ) from None
        except ImageError as e:
            return None, str(e)
        if im.format not in config.accepted_formats:
            raise UnsupportedFormat(
                f"{name}: {im.format} is not an image in an accepted format ({', '.join(config.accepted_formats)})",
                hint=f"send one of: {', '.join(config.accepted_formats)}",
            )
        if im.width * im.height > config.max_pixels:
            raise _pixel_limit(name, im.width, im.height, config)
    except (UnsupportedFormat, PixelLimitError) as e:
        if entry_errors:
            return None, str(e)
        raise
    return im, None


def finish_decode(
    im: Any, name: str, config: ServeConfig, reducer: Callable[[list[Any]], list[Any]] | None
) -> tuple[Any, str | None]:
    """Decode a probed image and, with ``reducer``, keep only what the backbone sees; the
    full-size pixels are dropped here (and their memory handed back after a large image)."""
    pixels = im.width * im.height
    try:
        rgb = load_image_bytes(im, name, limit_pixels=config.max_pixels)
    except PixelLimitError:
        im.close()
        return None, f"{name}: too many pixels for the server's limit of {config.max_pixels:,}"
    except ImageError as e:
        im.close()
        return None, str(e)
    if reducer is not None:
        small = reducer([rgb])[0]
        # Drop the full-size pixels now (other references to these objects may live a little longer).
        rgb.close()
        im.close()
        rgb = small
        if pixels >= _TRIM_PIXELS:
            release_memory()
    return rgb, None


def decode_upload(data: bytes, name: str, config: ServeConfig) -> tuple[Any, str | None]:
    """:func:`probe_upload` then :func:`finish_decode` (no reduction) in one call."""
    im, error = probe_upload(data, name, config)
    if im is None:
        return None, error
    return finish_decode(im, name, config, None)


def fetch_url(url: str, config: ServeConfig) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` or ``(None, message)`` for one image URL: size, time and address limits
    as configured (one deadline for the whole fetch); every failure is that URL's own entry."""
    try:
        data = fetch_url_bytes(
            url, max_bytes=config.url_max_bytes, timeout_s=config.url_timeout_s, allow_private=config.allow_private_urls
        )
    except ImageError as e:
        return None, str(e)
    return data, None


async def _decode_one(
    state: ServerState, source: bytes | str, name: str, deadline: float, held: list[int]
) -> tuple[Any, str | None]:
    """One upload (bytes) or URL (str): fetch, probe, wait for the pixel budget, decode, reduce.
    Pixels still held after the call (images kept full size) are appended to ``held``."""
    config = state.config
    loop = asyncio.get_running_loop()
    if isinstance(source, str):
        data, error = await loop.run_in_executor(state.fetch_pool, fetch_url, source, config)
        if data is None:
            return None, error
        im, error = await loop.run_in_executor(state.decode_pool, partial(probe_upload, entry_errors=True), data, name, config)
    else:
        im, error = await loop.run_in_executor(state.decode_pool, probe_upload, source, name, config)
    if im is None:
        return None, error
    try:
        got = await state.budget.acquire(im.width * im.height, deadline - time.monotonic())
    except TimeoutError:
        raise Busy(
            "the server is decoding too many images right now", hint="retry later, or send fewer or smaller images"
        ) from None
    kept = False
    try:
        out = await loop.run_in_executor(state.decode_pool, finish_decode, im, name, config, state.reducer)
        del im
        kept = out[0] is not None and state.reducer is None
        return out
    finally:
        if kept:
            held.append(got)
        else:
            await state.budget.release(got)


def _check_locate_request(
    config: ServeConfig,
    predictor: Predictor,
    images: list[Any],
    top_k: int,
    method: str | None,
    texts: list[str],
    urls: list[str],
    text_unsupported: str | None = None,
) -> None:
    """Every cheap check of a ``/v1/locate`` request, before anything is read or decoded."""
    if method is not None and method.strip() and method.strip() != predictor.method:
        raise InputError(
            f"this server runs method {predictor.method!r}, not {method.strip()!r}",
            hint=f"omit method, or send method={predictor.method}",
        )
    if not 1 <= top_k <= config.max_top_k:
        raise InputError(f"top_k must be in 1..{config.max_top_k}, got {top_k}")
    if not images and not texts and not urls:
        raise InputError("nothing to locate", hint="send image files in the multipart field 'images' (or 'text' queries, 'urls')")
    if len(images) + len(urls) > config.max_images:
        raise InputError(
            f"{len(images) + len(urls)} images in one request exceeds the limit of {config.max_images}",
            hint="split the images over several requests",
        )
    if urls and not config.allow_urls:
        raise InputError("this server does not fetch image URLs", hint="upload the image files instead")
    for url in urls:
        if not url.strip().lower().startswith(("http://", "https://")):
            raise InputError(f"not an http(s) URL: {url.strip()[:200]!r}", hint="send http:// or https:// URLs in 'urls'")
    if texts:
        if len(texts) > config.max_texts:
            raise InputError(f"{len(texts)} text queries exceed the limit of {config.max_texts}")
        if any(not t.strip() for t in texts):
            raise InputError("a text query is empty", hint="describe the place, e.g. 'a harbour with red wooden houses'")
        if not callable(getattr(predictor, "predict_text", None)):
            raise Unsupported(
                f"text queries need GeoCLIP's gallery; this server runs method {predictor.method!r} with an image database",
                hint="send photos, or use a server running method geoclip (or swc without a database)",
            )
        if text_unsupported is not None:
            raise Unsupported(
                f"this server cannot answer text queries: {text_unsupported}",
                hint="send photos, or start the server with a full CLIP checkpoint that has its tokenizer",
            )


def _status_of(error: GeofastError) -> int:
    if isinstance(error, (QueueFull, NotReady, NotRunning, Busy)):
        return 503
    if isinstance(error, Unsupported):
        return 501
    if isinstance(error, DeadlineExceeded):
        return 504
    if isinstance(error, UnsupportedFormat):
        return 415
    if isinstance(error, TooLargeError):
        return 413
    if isinstance(error, (InputError, ImageError)):
        return 400
    return 500


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


# -- the app ------------------------------------------------------------------------------------
def create_app(config: ServeConfig, predictor: Predictor | None = None) -> FastAPI:
    """The ASGI app of ``geofast serve``. Without ``predictor`` the models of ``config.method``
    load in the background at start-up (``/readyz`` says when); tests pass a ready one."""
    key = required_key(config)  # refuses an open non-loopback server before anything loads
    state = ServerState(config, predictor)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="geofast",
        version=__version__,
        summary="Predict where on Earth a photo was taken.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.geofast = state

    def openapi() -> dict[str, Any]:
        # /v1/locations/embed reads its body itself (counted before it is parsed): its schema is
        # declared by hand, so the model it refers to is added to the components here.
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["LocationsRequest"] = LocationsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Middlewares, innermost first: body limit, auth, Host and Origin checks, then CORS (so
    # preflights and 401/403 answers carry the CORS headers), and outermost the security headers
    # (on every answer, errors of the other middlewares included).
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if key is not None:
        app.add_middleware(AuthMiddleware, key=key)
    app.add_middleware(
        HostOriginMiddleware, hosts=allowed_hosts(config.host, config.allowed_hosts), cors_origins=config.cors_origins
    )
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)

    _install_error_handlers(app)

    @app.get("/healthz", tags=["health"], summary="The process lives")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The models are loaded", responses={503: _ERRORS[503]})
    async def readyz() -> Response:
        state.require_ready()
        return JSONResponse({"status": "ready"})

    @app.post(
        "/v1/locate",
        tags=["locate"],
        summary="Where were these photos taken?",
        response_model=LocateResponse,
        responses=_ERRORS,
    )
    async def locate(
        images: list[UploadFile] = File(default_factory=list, description="Image files (JPEG, PNG, WebP, GIF, BMP, TIFF)"),
        top_k: int = Form(5, description="Candidates per image"),
        method: str | None = Form(None, description="The server's method (a different one is refused)"),
        text: list[str] = Form(
            default_factory=list, description="Text queries, e.g. 'a harbour with red wooden houses' (answered after the images)"
        ),
        urls: list[str] = Form(default_factory=list, description="Image URLs to fetch (only when the server allows it)"),
    ) -> Response:
        t0 = time.perf_counter()
        predictor, batcher = state.require_ready()
        _check_locate_request(config, predictor, images, top_k, method, text, urls, state.text_unsupported)
        deadline = time.monotonic() + config.deadline_s
        names = [(f.filename or "").strip() or f"<image {i}>" for i, f in enumerate(images)]
        sources: list[bytes | str] = [await f.read() for f in images]
        sources += [u.strip() for u in urls]
        names += [u.strip() for u in urls]
        held: list[int] = []
        try:
            outcomes = await asyncio.gather(
                *(_decode_one(state, src, name, deadline, held) for src, name in zip(sources, names)), return_exceptions=True
            )
            del sources
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            decoded = [o for o in outcomes if not isinstance(o, BaseException)]
            t_decoded = time.perf_counter()
            good = [i for i, (im, _) in enumerate(decoded) if im is not None]
            texts = [t.strip() for t in text]
            jobs = []
            try:
                if good:
                    jobs.append(batcher.submit([decoded[i][0] for i in good], [names[i] for i in good], top_k, deadline))
                if texts:
                    jobs.append(batcher.submit([], [], top_k, deadline, texts=texts))
                answers = await asyncio.wait_for(
                    asyncio.gather(*(job.future for job in jobs)), timeout=max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request took longer than its deadline of {config.deadline_s:g} s",
                    hint="send fewer images per request or retry when the server is less busy",
                ) from None
            finally:
                for job in jobs:  # a job of this request that was queued (or taken) runs for nobody now
                    if not job.future.done():
                        job.future.cancel()
        finally:
            for pixels in held:
                await state.budget.release(pixels)
        predictions: dict[int, Prediction] = {}
        if good:
            for i, p in zip(good, answers[0]):
                p.image = names[i]
                predictions[i] = p
        results = [
            prediction_json(predictions[i])
            if i in predictions
            else prediction_json(Prediction(image=name, method=predictor.method, error=decoded[i][1]))
            for i, name in enumerate(names)
        ]
        if texts:
            results.extend(prediction_json(p) for p in answers[-1])
        if not config.neighbour_paths:
            database = getattr(getattr(predictor, "database", None), "path", None)
            for row in results:
                _hide_paths(row, database)
        queue_s = max(((job.started or job.submitted) - job.submitted for job in jobs), default=0.0)
        inference_s = sum(job.inference_s for job in jobs)
        timings = {
            "queue": _ms(queue_s),
            "decode": _ms(t_decoded - t0),
            "inference": _ms(inference_s),
            "total": _ms(time.perf_counter() - t0),
        }
        return JSONResponse({"results": results, "timings_ms": timings})

    @app.post(
        "/v1/locations/embed",
        tags=["locate"],
        summary="GeoCLIP location embeddings of coordinates",
        response_model=LocationsResponse,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LocationsRequest"}}},
            }
        },
    )
    async def locations_embed(request: Request) -> Response:
        deadline = time.monotonic() + config.deadline_s
        predictor, _ = state.require_ready()
        geo = _geolocator(predictor)
        if geo is None:
            raise InputError(
                f"method {predictor.method!r} was loaded without GeoCLIP's location encoder",
                hint="start the server with a method that loads GeoCLIP's heads",
            )
        # The body is bounded by the number of coordinates before a byte of it is parsed.
        limit = _EMBED_BYTES_PER_POINT * config.max_locations + 1024
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLargeError(
                f"a body of {int(declared):,} bytes holds more than the limit of {config.max_locations} coordinates",
                hint="split them over several requests",
            )
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise TooLargeError(
                    f"the body holds more than the limit of {config.max_locations} coordinates",
                    hint="split them over several requests",
                )
        if state.embed_lock is None:
            state.embed_lock = asyncio.Lock()
        if state.embed_waiting >= config.queue_size:
            raise QueueFull(
                f"the server is busy: {config.queue_size} embedding requests are already waiting",
                retry_after_s=1,
                hint="retry after 1 s",
            )
        state.embed_waiting += 1
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async with state.embed_lock:  # one at a time, like the inference worker
                        answer = await asyncio.to_thread(_embed_answer, bytes(body), geo, config.max_locations)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request took longer than its deadline of {config.deadline_s:g} s",
                    hint="send fewer coordinates or retry when the server is less busy",
                ) from None
        finally:
            state.embed_waiting -= 1
        return Response(answer, media_type="application/json")

    @app.get("/v1/models", tags=["locate"], summary="What this server runs, its limits and counters")
    async def models() -> dict[str, Any]:
        out: dict[str, Any] = {"version": __version__, "ready": state.ready.is_set(), "loading_error": None}
        if state.load_error is not None:
            out["loading_error"] = error_body(state.load_error, state.load_error.hint)
        p = state.predictor
        if p is not None:
            geo = _geolocator(p)
            out["method"] = p.method
            out["methods"] = [p.method]
            if geo is not None:
                out["model"] = geo.name
                out["backbone"] = str(getattr(geo.backbone, "source", ""))
                out["device"] = str(getattr(geo.backbone, "device", ""))
                out["gallery"] = {"label": geo.gallery.label, "points": int(geo.gallery.latlon.shape[0])}
                out["location_embedding_dim"] = 512
            out["text_queries"] = callable(getattr(p, "predict_text", None)) and state.text_unsupported is None
        out["limits"] = {
            "max_batch": config.max_batch,
            "max_wait_ms": config.max_wait_ms,
            "queue": config.queue_size,
            "deadline_s": config.deadline_s,
            "max_body_bytes": config.max_body_bytes,
            "max_images": config.max_images,
            "max_pixels": config.max_pixels,
            "max_top_k": config.max_top_k,
            "max_locations": config.max_locations,
            "max_decoded_pixels": config.max_decoded_pixels,
            "accepted_formats": list(config.accepted_formats),
        }
        out["batcher"] = state.batcher.stats() if state.batcher is not None else None
        return out

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        from geofast.serve.docs import DOCS_CSP, docs_page_html

        return HTMLResponse(docs_page_html(app.title, app.version), headers={"Content-Security-Policy": DOCS_CSP})

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        try:
            from geofast.mapview import app_page_html  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise GeofastError(
                "the web page is not part of this installation", hint="use the API under /v1/ (see /docs)"
            ) from None
        page = app_page_html()
        return HTMLResponse(page, headers={"Content-Security-Policy": _page_csp(page)})

    return app


#: Bytes one coordinate pair may take in a ``/v1/locations/embed`` body ("[-89.123456789012345,
#: -179.12345678901234]," is 40; spaces and more digits allowed).
_EMBED_BYTES_PER_POINT = 96


def _embed_answer(body: bytes, geo: Any, max_locations: int) -> bytes:
    """The JSON answer of ``/v1/locations/embed`` (run off the event loop): count, then
    validate, then encode, then serialise row by row."""
    import json

    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestValidationError([{"loc": ("body",), "msg": f"not JSON: {e}", "type": "json_invalid"}]) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("latlon"), list):
        raise RequestValidationError([{"loc": ("body", "latlon"), "msg": "expected a list of [lat, lon] pairs", "type": "list"}])
    pairs = raw["latlon"]
    if len(pairs) > max_locations:
        raise TooLargeError(
            f"{len(pairs)} coordinates exceed the limit of {max_locations}", hint="split them over several requests"
        )
    try:
        LocationsRequest.model_validate({"latlon": pairs})
    except Exception as e:  # pydantic's ValidationError
        errors: list[Any] = getattr(e, "errors", lambda: [])()
        raise RequestValidationError(errors or [{"loc": ("body", "latlon"), "msg": str(e), "type": "value"}]) from None
    if not pairs:
        raise InputError("latlon is empty", hint='send {"latlon": [[lat, lon], ...]}')
    latlon = np.asarray(pairs, dtype=np.float64)
    emb = geo.encode_locations(latlon)
    head = json.dumps({"model": geo.name, "dim": int(emb.shape[1])})[:-1]
    rows = ",".join(json.dumps(row) for row in emb.tolist())  # one call per row: other threads get the GIL between rows
    return f'{head}, "embeddings": [{rows}]}}'.encode()


def _hide_paths(row: dict[str, Any], database: Any) -> None:
    """Neighbours' photo paths relative to the database's folder when below it, else the bare
    file name: an answer never shows where the server keeps its files."""
    from pathlib import PurePath

    for nb in row.get("neighbours") or []:
        image = nb.get("image")
        if not isinstance(image, str) or not image or "://" in image:
            continue
        path = PurePath(image)
        if not path.is_absolute():
            continue
        try:
            nb["image"] = str(path.relative_to(database)) if database is not None else path.name
        except ValueError:
            nb["image"] = path.name


def _page_csp(page: str) -> str:
    """The page's own Content-Security-Policy (its ``<meta>``) as a header, with
    ``frame-ancestors 'none'``, which a ``<meta>`` policy cannot carry."""
    import html
    import re

    found = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    policy = html.unescape(found.group(1)) if found else "default-src 'none'"
    return policy + "; frame-ancestors 'none'"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GeofastError)
    async def geofast_error(_request: Request, exc: GeofastError) -> Response:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
        if isinstance(exc, (NotReady, Busy)):
            headers = {"Retry-After": "1"}
        status = _status_of(exc)
        if status == 500:  # a model or server problem: its message (paths...) goes to the log only
            log.error("error: %s%s", one_line(exc), f" (hint: {exc.hint})" if exc.hint else "")
            return error_response(500, f"internal error ({type(exc).__name__})", "see the server log")
        return error_response(status, exc, exc.hint, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400:  # raised only by the body parsers: a malformed multipart form or JSON body
            return error_response(422, f"malformed request body: {detail}", "see /docs for the expected fields")
        if exc.status_code == 404:
            detail = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, detail, "see /docs for the API", headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, "; ".join(problems) or "invalid request", "see /docs for the expected fields")

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> Response:
        log.error("internal error: %s: %s", type(exc).__name__, one_line(exc), exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__})", "see the server log")
