"""Retrieval-augmented LLM geolocation: Img2Loc (SIGIR 2024) and G3 (NeurIPS 2024).

For each image:

1. **References.** The ``nearest`` most similar photos of an image database and the
   ``farthest`` least similar ones (nearest to the negated query, as Img2Loc does), or, with no
   database, GeoCLIP's top-k candidates with their probabilities.
2. **Generation.** One prompt per reference count in ``config.references`` (G3: 0, 5, 10, 15;
   Img2Loc: 16), each sampled ``config.samples`` times, sent with the image (JPEG data URL,
   longest side ``config.image_max_side``) to an OpenAI-compatible endpoint; requests of all
   images run concurrently up to ``config.concurrency``, answers are cached on disk.
3. **Parsing.** Each reply gives at most one candidate (:func:`geofast.llm.parse.parse_latlon`),
   named by its prompt and sample (``"llm:p5s1"``: prompt with 5 references, sample 1, counting
   from 0); replies without a valid coordinate are dropped and counted.
4. **Geo-verification** (G3). The LLM candidates and the retrieval candidates (database
   neighbours ``"db"``, GeoCLIP candidates ``"geoclip"``) are scored by the cosine similarity
   between their location embedding (``encoder.encode_locations``) and the image embedding; the
   best wins. Without an encoder the LLM answers are ranked by agreement (the medoid under
   haversine distance first) and have no score.
5. **Fallback.** ``Prediction.fallback`` is true when the winner is not an LLM answer:
   ``Prediction.fallback_reason`` says whether the LLM gave nothing usable or a retrieval
   candidate verified better.

Each :class:`~geofast.predict.types.Prediction` has ``method="rag"``, its ranked candidates,
and ``llm`` = :class:`~geofast.predict.types.LLMTrace` (model, usage: tokens, requests, retries,
cached, failed; answers, unparsed, errors); :meth:`Usage.total` sums usages.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geofast.coords import valid_latlon
from geofast.errors import ImageError, LLMError, ParameterError, ShapeError
from geofast.llm.client import LLMClient, LLMConfig, Usage, run_sync
from geofast.llm.image import EncodedImage, ImageLike, encode_image, image_name
from geofast.llm.parse import parse_latlon
from geofast.llm.prompts import PromptSpec, Reference, ReferenceKind, plan_prompts
from geofast.predict.types import Candidate, LLMTrace, Neighbour, Prediction

__all__ = [
    "LocationEncoder",
    "NeighbourSource",
    "RagPredictor",
    "RagInput",
    "apredict_rag",
    "arun_rag",
    "build_inputs",
    "geo_verify",
    "predict_rag",
    "total_usage",
    "verify_scores",
]

#: Called after each image's LLM stage with (images done, images in total).
Progress = Callable[[int, int], None]


@runtime_checkable
class LocationEncoder(Protocol):
    """What geo-verification needs from GeoCLIP's ``Geolocator``."""

    def encode_locations(self, latlon: np.ndarray) -> np.ndarray:
        """(N, 2) degrees, latitude first → (N, D) float32, L2-normalised."""
        ...


@runtime_checkable
class NeighbourSource(Protocol):
    """What the RAG stage needs from an image database: exact or approximate max inner product
    search. The farthest neighbours are ``search(-embeddings, k)``."""

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, D) → (similarities (B, k), latlon (B, k, 2) degrees, ids (B, k))."""
        ...


@dataclass
class RagInput:
    """Everything the LLM stage needs about one image; built by :func:`build_inputs`."""

    image: ImageLike | EncodedImage
    name: str
    embedding: np.ndarray | None = None
    nearest: list[Reference] = field(default_factory=list)
    farthest: list[Reference] = field(default_factory=list)
    kind: ReferenceKind = "database"
    #: Candidates of the retrieval stage; they compete in verification, and the first is the
    #: fallback answer when nothing can be verified.
    retrieval: list[Candidate] = field(default_factory=list)
    confidence: float | None = None
    localizable: bool | None = None
    error: str | None = None


def _as_embeddings(image_embeddings: np.ndarray | None, n: int) -> np.ndarray | None:
    if image_embeddings is None:
        return None
    emb = np.asarray(image_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ShapeError(
            f"image_embeddings must have shape ({n}, D) for {n} images, got {emb.shape}",
            hint="pass one embedding row per image, e.g. Geolocator.encode_images(images)",
        )
    if not np.all(np.isfinite(emb)):
        raise ParameterError("image_embeddings contain NaN or inf")
    return emb


def _references(sims: np.ndarray, latlon: np.ndarray, ids: np.ndarray | None) -> list[Reference]:
    refs: list[Reference] = []
    for j in range(latlon.shape[0]):
        lat, lon = float(latlon[j, 0]), float(latlon[j, 1])
        if ids is not None and int(ids[j]) < 0:
            continue  # faiss pads missing neighbours with id -1
        if not valid_latlon(lat, lon):
            continue
        refs.append(Reference(lat, lon, float(sims[j]), None if ids is None else int(ids[j])))
    return refs


def _search(database: NeighbourSource, emb: np.ndarray, k: int) -> list[list[Reference]]:
    if k <= 0:
        return [[] for _ in range(emb.shape[0])]
    size = len(database) if hasattr(database, "__len__") else None  # type: ignore[arg-type]
    if size is not None:
        k = min(k, int(size))
        if k <= 0:
            return [[] for _ in range(emb.shape[0])]
    sims, latlon, ids = database.search(emb, k)
    sims = np.asarray(sims)
    latlon = np.asarray(latlon, dtype=np.float64)
    ids_arr = np.asarray(ids) if ids is not None else None
    if latlon.shape != (emb.shape[0], k, 2) or sims.shape != (emb.shape[0], k):
        raise ShapeError(
            f"database.search returned similarities {sims.shape} and latlon {latlon.shape}; "
            f"expected ({emb.shape[0]}, {k}) and ({emb.shape[0]}, {k}, 2)"
        )
    return [_references(sims[b], latlon[b], None if ids_arr is None else ids_arr[b]) for b in range(emb.shape[0])]


def build_inputs(
    images: Sequence[ImageLike],
    *,
    config: LLMConfig | None = None,
    image_embeddings: np.ndarray | None = None,
    database: NeighbourSource | None = None,
    geoclip: Sequence[Prediction] | None = None,
    names: Sequence[str] | None = None,
    database_embeddings: np.ndarray | None = None,
    retrieval_k: int | None = None,
) -> list[RagInput]:
    """The per-image inputs of the LLM stage.

    ``database_embeddings`` query the database when its embedding space differs from the
    verification space of ``image_embeddings`` (a geofast image database holds 768-d CLIP
    features; GeoCLIP's image embeddings are 512-d); default: ``image_embeddings``.

    References come from ``database`` (``config.nearest`` nearest and ``config.farthest``
    farthest neighbours of ``image_embeddings``) when one is given, else from the GeoCLIP
    predictions' candidates (best first, at most ``config.nearest``). Retrieval candidates are
    the database neighbours (source ``"db"``) and/or GeoCLIP's candidates (``"geoclip"``; the
    first ``retrieval_k`` of them when given, so GeoCLIP may list more candidates as references
    than compete as answers). A GeoCLIP prediction with ``error`` set marks its image as failed.
    """
    cfg = config if config is not None else LLMConfig()
    n = len(images)
    if names is not None and len(names) != n:
        raise ShapeError(f"names has {len(names)} entries for {n} images")
    if geoclip is not None and len(geoclip) != n:
        raise ShapeError(f"geoclip has {len(geoclip)} predictions for {n} images")
    emb = _as_embeddings(image_embeddings, n)
    query = _as_embeddings(database_embeddings, n) if database_embeddings is not None else emb
    if database is not None and query is None:
        raise ParameterError(
            "searching the image database needs image_embeddings (or database_embeddings)",
            hint="pass image_embeddings=Geolocator.encode_images(images)",
        )

    nearest: list[list[Reference]] = [[] for _ in range(n)]
    farthest: list[list[Reference]] = [[] for _ in range(n)]
    if database is not None and query is not None and n > 0:
        nearest = _search(database, query, cfg.nearest)
        farthest = _search(database, -query, cfg.farthest)

    inputs: list[RagInput] = []
    for i, image in enumerate(images):
        g = geoclip[i] if geoclip is not None else None
        name = names[i] if names is not None else (g.image if g is not None and g.image else image_name(image, i))
        inp = RagInput(image=image, name=name, embedding=None if emb is None else emb[i])
        if g is not None:
            inp.confidence, inp.localizable = g.confidence, g.localizable
            if g.error is not None:
                inp.error = g.error
        if database is not None:
            inp.kind = "database"
            inp.nearest, inp.farthest = nearest[i], farthest[i]
            inp.retrieval = [Candidate(r.lat, r.lon, source="db") for r in nearest[i]]
        elif g is not None:
            inp.kind = "geoclip"
            inp.nearest = [Reference(c.lat, c.lon, c.prob) for c in g.candidates[: cfg.nearest]]
        if g is not None:
            inp.retrieval += [Candidate(c.lat, c.lon, prob=c.prob, source="geoclip") for c in g.candidates[:retrieval_k]]
        inputs.append(inp)
    return inputs


# ---------------------------------------------------------------------------------------------
# Verification and ranking
# ---------------------------------------------------------------------------------------------


def geo_verify(image_embedding: np.ndarray, latlon: np.ndarray, encoder: LocationEncoder) -> np.ndarray:
    """G3's geo-verification score of each location for one image: the cosine similarity of
    ``encoder.encode_locations(latlon)`` (N, D) with ``image_embedding`` (D,). Returns (N,) float64."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if latlon.shape[0] == 0:
        return np.zeros(0)
    return _cosines(np.asarray(encoder.encode_locations(latlon), dtype=np.float32), np.asarray(image_embedding, dtype=np.float32))


def _cosines(loc: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``loc`` with ``img``, computed in float32 and returned as float64;
    -1 for a zero vector."""
    loc = np.asarray(loc, dtype=np.float32)
    img = np.asarray(img, dtype=np.float32).reshape(-1)
    if loc.ndim != 2 or loc.shape[1] != img.shape[0]:
        raise ShapeError(
            f"location embeddings of shape {loc.shape} do not match an image embedding of size {img.shape[0]}",
            hint="the encoder's location and image embeddings must live in the same space",
        )
    denom = np.linalg.norm(loc, axis=1) * np.linalg.norm(img)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (loc @ img) / denom
    return np.where(denom > 0, cos, np.float32(-1.0)).astype(np.float64)


def _haversine_rad(latlon: np.ndarray) -> np.ndarray:
    """Pairwise central angles (radians) of (N, 2) degrees."""
    lat = np.radians(latlon[:, 0])[:, None]
    lon = np.radians(latlon[:, 1])[:, None]
    a = np.sin((lat - lat.T) / 2) ** 2 + np.cos(lat) * np.cos(lat.T) * np.sin((lon - lon.T) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _consensus_order(llm: list[Candidate]) -> list[Candidate]:
    """LLM answers ordered by their summed distance to the other answers (medoid first);
    stable for ties."""
    if len(llm) <= 2:
        return llm
    pts = np.array([[c.lat, c.lon] for c in llm])
    total = _haversine_rad(pts).sum(axis=1)
    return [llm[i] for i in np.argsort(total, kind="stable")]


# ---------------------------------------------------------------------------------------------
# The LLM stage
# ---------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    llm: list[Candidate] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    unparsed: int = 0
    errors: list[str] = field(default_factory=list)
    error: str | None = None


def _plan(inp: RagInput, cfg: LLMConfig) -> list[PromptSpec]:
    return plan_prompts(inp.nearest, inp.farthest, cfg.references, inp.kind)


async def _ask_image(inp: RagInput, llm: LLMClient, cfg: LLMConfig, slots: asyncio.Semaphore) -> _Outcome:
    out = _Outcome()
    if inp.error is not None:
        out.error = inp.error
        return out
    async with slots:
        try:
            enc = (
                inp.image
                if isinstance(inp.image, EncodedImage)
                else await asyncio.to_thread(encode_image, inp.image, cfg.image_max_side)
            )
        except ImageError as e:
            out.error = str(e)
            return out
        jobs: list[tuple[str, asyncio.Task]] = []  # type: ignore[type-arg]
        try:
            async with asyncio.timeout(cfg.deadline_s):
                async with asyncio.TaskGroup() as tg:
                    for spec in _plan(inp, cfg):
                        for s in range(cfg.samples):
                            jobs.append((f"llm:p{spec.n_refs}s{s}", tg.create_task(llm.ask(spec.text, enc, s))))
        except TimeoutError:
            late = sum(1 for _, t in jobs if t.cancelled())
            out.errors.append(f"deadline of {cfg.deadline_s:g} s exceeded ({late} of {len(jobs)} requests unanswered)")
            out.usage = out.usage + Usage(failed=late)
            llm.cancelled(late)
    for source, task in jobs:
        if task.cancelled():
            continue
        answer = task.result()
        out.usage = out.usage + answer.usage
        if answer.content is None:
            if answer.error and answer.error not in out.errors:
                out.errors.append(answer.error)
            continue
        ll = parse_latlon(answer.content)
        if ll is None:
            out.unparsed += 1
        else:
            out.llm.append(Candidate(ll[0], ll[1], source=source))
    return out


def _leaves(eg: BaseExceptionGroup) -> list[BaseException]:  # type: ignore[type-arg]
    out: list[BaseException] = []
    for e in eg.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _first_error(eg: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The exception to show for a failed task group: an LLMError if there is one (it stopped
    the run), else the first real error."""
    leaves = [e for e in _leaves(eg) if not isinstance(e, asyncio.CancelledError)] or [eg]
    return next((e for e in leaves if isinstance(e, LLMError)), leaves[0])


async def _llm_stage(inputs: Sequence[RagInput], llm: LLMClient, cfg: LLMConfig, progress: Progress | None) -> list[_Outcome]:
    # Images being prepared or waiting for answers at once: enough to keep every request slot
    # busy, few enough that 10k images do not all sit in memory as JPEGs.
    # With G3's 8 requests per image, 2 × concurrency requests queued keep every slot busy
    # without making an image's deadline run out while it waits behind the others.
    per_image = max(1, len(cfg.references) * cfg.samples)
    slots = asyncio.Semaphore(max(2, math.ceil(2 * cfg.concurrency / per_image)))
    done = 0

    async def one(inp: RagInput) -> _Outcome:
        nonlocal done
        result = await _ask_image(inp, llm, cfg, slots)
        done += 1
        if progress is not None:
            progress(done, len(inputs))
        return result

    try:
        async with llm:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(one(inp)) for inp in inputs]
    except BaseExceptionGroup as eg:
        first = _first_error(eg)
        if first is eg:
            raise
        raise first from None
    return [t.result() for t in tasks]


def _database_refs(inp: RagInput) -> tuple[list[Neighbour] | None, list[Neighbour] | None]:
    """The database photos the prompts used (Img2Loc's nearest and farthest maps); the farthest
    were searched with the negated query, so their similarity is the negated score."""
    if inp.kind != "database":
        return None, None

    def one(r: Reference, sign: float) -> Neighbour:
        return Neighbour(id=-1 if r.row is None else r.row, image=None, similarity=sign * (r.score or 0.0), lat=r.lat, lon=r.lon)

    return [one(r, 1.0) for r in inp.nearest], [one(r, -1.0) for r in inp.farthest]


def _finish(inp: RagInput, out: _Outcome, scores: np.ndarray | None, model: str) -> Prediction:
    nearest, farthest = _database_refs(inp)
    trace = LLMTrace(model=model, usage=out.usage.as_dict(), answers=len(out.llm), unparsed=out.unparsed, errors=list(out.errors))
    if out.error is not None:
        return Prediction(
            image=inp.name,
            method="rag",
            error=out.error,
            fallback=True,
            llm=trace,
            neighbours=nearest,
            farthest=farthest,
            confidence=inp.confidence,
            localizable=inp.localizable,
        )
    cands = out.llm + inp.retrieval
    if scores is not None:
        scored = [
            Candidate(c.lat, c.lon, prob=c.prob, score=float(s), source=c.source, place=c.place)
            for c, s in zip(cands, scores, strict=True)
        ]
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        ranked = [scored[i] for i in order]
    else:
        llm = [c for c in cands if c.source.startswith("llm")]
        ranked = _consensus_order(llm) + [c for c in cands if not c.source.startswith("llm")]
    if not ranked:
        return Prediction(
            image=inp.name,
            method="rag",
            fallback=True,
            fallback_reason="no usable LLM answer and no retrieval candidate",
            llm=trace,
            neighbours=nearest,
            farthest=farthest,
            error="no usable LLM answer and no retrieval candidate",
            confidence=inp.confidence,
            localizable=inp.localizable,
        )
    best = ranked[0]
    fallback = not best.source.startswith("llm")
    reason = None
    if fallback:
        if out.llm:
            reason = "a retrieval candidate verified better"
        elif out.errors:
            reason = f"no usable LLM answer ({out.errors[-1]})"
        else:
            reason = "no usable LLM answer"
    return Prediction(
        image=inp.name,
        lat=best.lat,
        lon=best.lon,
        prob=best.prob,
        candidates=ranked,
        confidence=inp.confidence,
        localizable=inp.localizable,
        method="rag",
        fallback=fallback,
        fallback_reason=reason,
        llm=trace,
        neighbours=nearest,
        farthest=farthest,
    )


async def arun_rag(
    inputs: Sequence[RagInput],
    *,
    config: LLMConfig | None = None,
    encoder: LocationEncoder | None = None,
    client: LLMClient | None = None,
    progress: Progress | None = None,
) -> list[Prediction]:
    """The LLM stage, parsing, verification and fallback for prepared inputs (async).

    Raises :class:`LLMError` for configuration problems (no key for OpenAI, rejected key,
    unknown model, unreachable endpoint) and when every request of the run failed.
    """
    llm = client if client is not None else LLMClient(config)
    cfg = llm.config if client is not None else (config if config is not None else llm.config)
    if encoder is not None:
        missing = [inp.name for inp in inputs if inp.error is None and inp.embedding is None]
        if missing:
            raise ParameterError(
                f"geo-verification needs the image embedding of {missing[0]}",
                hint="pass image_embeddings=Geolocator.encode_images(images)",
            )
    outcomes = await _llm_stage(inputs, llm, cfg, progress) if inputs else []

    total = Usage.total(o.usage for o in outcomes)
    run = llm.stats  # the whole run's totals: a batch hit by a short outage does not stop a run that worked
    if total.failed > 0 and run.requests == 0 and run.cached == 0:
        last = next((e for o in reversed(outcomes) for e in reversed(o.errors)), "unknown error")
        raise LLMError(
            f"all {total.failed} requests to {llm.base_url} failed; last error: {last}",
            hint="check base_url, and that model accepts images",
            params=("base_url", "model"),
        )

    per_image: list[list[Candidate]] = [
        o.llm + inp.retrieval if o.error is None else [] for inp, o in zip(inputs, outcomes, strict=True)
    ]
    scores: list[np.ndarray | None] = [None] * len(inputs)
    if encoder is not None:
        scores = verify_scores(inputs, per_image, encoder)
    return [_finish(inp, o, s, llm.model) for inp, o, s in zip(inputs, outcomes, scores, strict=True)]


#: Locations encoded per ``encode_locations`` call in verification (bounds its memory).
VERIFY_BLOCK = 4096


def verify_scores(
    inputs: Sequence[RagInput],
    per_image: Sequence[Sequence[Candidate]],
    encoder: LocationEncoder,
    *,
    block: int = VERIFY_BLOCK,
) -> list[np.ndarray | None]:
    """Geo-verification scores of every image's candidates, in float32, encoding the candidates
    of consecutive images together up to ``block`` locations per call (one image's candidates are
    never split), so memory is bounded whatever the number of images. None for an image without
    candidates."""
    scores: list[np.ndarray | None] = [None] * len(inputs)
    i = 0
    while i < len(inputs):
        j, count = i, 0
        while j < len(inputs) and (count == 0 or count + len(per_image[j]) <= block):
            count += len(per_image[j])
            j += 1
        if count:
            flat = np.empty((count, 2), dtype=np.float64)
            pos = 0
            for cands in per_image[i:j]:
                for c in cands:
                    flat[pos] = (c.lat, c.lon)
                    pos += 1
            loc = np.asarray(encoder.encode_locations(flat), dtype=np.float32)
            if loc.ndim != 2 or loc.shape[0] != count:
                raise ShapeError(f"encode_locations returned {loc.shape} for {count} locations")
            start = 0
            for k in range(i, j):
                n = len(per_image[k])
                if n:
                    emb = inputs[k].embedding
                    assert emb is not None
                    scores[k] = _cosines(loc[start : start + n], np.asarray(emb, dtype=np.float32))
                    start += n
            del loc, flat
        i = j
    return scores


def total_usage(predictions: Sequence[Prediction]) -> Usage:
    """Tokens, requests, retries, cache hits and failures of a whole run, summed over its
    predictions' ``llm.usage``."""
    return Usage.total(p.llm.usage for p in predictions if p.llm is not None)


async def apredict_rag(
    images: Sequence[ImageLike],
    *,
    config: LLMConfig | None = None,
    image_embeddings: np.ndarray | None = None,
    database: NeighbourSource | None = None,
    geoclip: Sequence[Prediction] | None = None,
    encoder: LocationEncoder | None = None,
    names: Sequence[str] | None = None,
    client: LLMClient | None = None,
    progress: Progress | None = None,
    database_embeddings: np.ndarray | None = None,
    retrieval_k: int | None = None,
) -> list[Prediction]:
    """:func:`predict_rag` for callers inside an event loop."""
    cfg = client.config if client is not None else (config if config is not None else LLMConfig())
    inputs = build_inputs(
        images,
        config=cfg,
        image_embeddings=image_embeddings,
        database=database,
        geoclip=geoclip,
        names=names,
        database_embeddings=database_embeddings,
        retrieval_k=retrieval_k,
    )
    return await arun_rag(inputs, config=cfg, encoder=encoder, client=client, progress=progress)


def predict_rag(
    images: Sequence[ImageLike],
    *,
    config: LLMConfig | None = None,
    image_embeddings: np.ndarray | None = None,
    database: NeighbourSource | None = None,
    geoclip: Sequence[Prediction] | None = None,
    encoder: LocationEncoder | None = None,
    names: Sequence[str] | None = None,
    client: LLMClient | None = None,
    progress: Progress | None = None,
    database_embeddings: np.ndarray | None = None,
    retrieval_k: int | None = None,
) -> list[Prediction]:
    """Locate ``images`` (paths or PIL images) with a multimodal LLM, Img2Loc/G3 style.

    ``image_embeddings`` (N, D) are GeoCLIP's image embeddings (``Geolocator.encode_images``);
    they query ``database`` and are compared with ``encoder.encode_locations`` of every
    candidate (geo-verification). ``geoclip`` are GeoCLIP's predictions for the same images
    (``Geolocator.predict(images, top_k)``): references when there is no database, and
    retrieval candidates either way (the first ``retrieval_k`` of them, when given). ``client`` replaces the :class:`LLMClient` built from
    ``config`` (e.g. with a different cache or an ``api_key``). Returns one
    :class:`Prediction` per image, in order, with ``method="rag"``.
    """
    return run_sync(
        apredict_rag(
            images,
            config=config,
            image_embeddings=image_embeddings,
            database=database,
            geoclip=geoclip,
            encoder=encoder,
            names=names,
            client=client,
            progress=progress,
            database_embeddings=database_embeddings,
            retrieval_k=retrieval_k,
        )
    )


class RagPredictor:
    """``geofast locate --method rag``: GeoCLIP (plus an image database when given) feeds an LLM.

    Without a database the references of the prompts are GeoCLIP's candidates: as many are
    retrieved as the largest prompt holds (G3: 15), whatever ``top_k``, so that each reference
    count of the recipe makes its own prompt (G3 at ``top_k=5``: 4 prompts × 2 samples = 8
    requests); the first ``top_k`` of them compete as retrieval answers.

    For each image one CLIP forward gives both the GeoCLIP embedding (candidates, PD confidence,
    geo-verification) and, with a database, the CLIP features its neighbours are searched with;
    then :func:`predict_rag` runs the LLM stage for all images concurrently. GeoCLIP's
    candidates merge gallery points that share coordinates unless ``merge_duplicates=False``.
    """

    method = "rag"

    def __init__(
        self,
        geolocator: Any,
        *,
        database: Any = None,
        config: LLMConfig | None = None,
        client: LLMClient | None = None,
        merge_duplicates: bool = True,
    ) -> None:
        self.geolocator = geolocator
        self.merge_duplicates = merge_duplicates
        self.database = database
        self.config = config if config is not None else LLMConfig()
        #: One client for the whole run (every batch): one circuit breaker, one set of totals.
        self.client = client if client is not None else LLMClient(self.config)
        #: Called with (images done, images in this call) during the LLM stage, when set.
        self.llm_progress: Progress | None = None

    def predict(
        self,
        images: Any,
        *,
        top_k: int = 5,
        batch_size: int = 16,
        places: bool = True,
        on_progress: Callable[[int], None] | None = None,
        llm_progress: Progress | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per image (``method="rag"``); unreadable images carry ``error``.

        Images are handled in chunks of :attr:`chunk` (retrieval, then the LLM stage of the
        chunk's images concurrently), so memory does not grow with the number of images beyond
        the predictions themselves. ``on_progress(n)`` counts images finished (LLM stage done or
        unreadable); ``llm_progress(done, total)`` (default :attr:`llm_progress`) is called per
        image of a chunk's LLM stage."""
        from geofast.images import as_image_items

        items = as_image_items(images)
        results: list[Prediction] = []
        for start in range(0, len(items), max(1, self.chunk)):
            results += self._predict_chunk(
                items[start : start + self.chunk],
                start,
                top_k,
                batch_size,
                places,
                on_progress,
                llm_progress or self.llm_progress,
            )
        return results

    #: Images whose LLM stage runs together (their requests share the concurrency limit).
    chunk = 512

    def _predict_chunk(
        self,
        items: list[Any],
        first_index: int,
        top_k: int,
        batch_size: int,
        places: bool,
        on_progress: Callable[[int], None] | None,
        llm_progress: Progress | None,
    ) -> list[Prediction]:
        from geofast.predict.geoclip import predict_in_batches

        geo_emb: list[np.ndarray] = []
        db_emb: list[np.ndarray] = []
        # Each image is read and decoded once: the LLM's downscaled JPEG is made here from the
        # decode that feeds CLIP (a path is not read again, a URL not fetched again).
        encoded: dict[str, EncodedImage] = {}

        def retrieval(names: list[str], ims: list[Any]) -> list[Prediction]:
            encoded.update((n, encode_image(im, self.config.image_max_side)) for n, im in zip(names, ims))
            g, q = self.geolocator.embed_pil(ims, with_clip=self.database is not None)
            geo_emb.append(g)
            if q is not None:
                db_emb.append(q)
            return self.geolocator.predict_embeddings(g, names, k_geoclip, places=False, merge_duplicates=self.merge_duplicates)

        k_geoclip = top_k
        if self.database is None:  # GeoCLIP's candidates are the references too (see the class docstring)
            wanted = min(self.config.nearest, max(self.config.references))
            gallery = getattr(self.geolocator, "gallery", None)  # None: a stand-in without one
            if gallery is not None:
                wanted = min(wanted, gallery.latlon.shape[0])
            k_geoclip = max(top_k, wanted)

        # Stage 1, batch by batch: one CLIP forward per image, GeoCLIP's candidates.
        results = predict_in_batches(items, batch_size, "rag", retrieval, first_index=first_index)
        keep = [i for i, p in enumerate(results) if p.error is None]
        if on_progress is not None and len(keep) < len(results):
            on_progress(len(results) - len(keep))
        if not keep:
            return results

        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(1)
            if llm_progress is not None:
                llm_progress(done, total)

        # Stage 2, the chunk's images at once: the LLM requests run concurrently up to the limit.
        preds = predict_rag(
            [encoded.get(results[i].image, items[i]) for i in keep],
            config=self.config,
            image_embeddings=np.concatenate(geo_emb),
            database=self.database,
            database_embeddings=np.concatenate(db_emb) if db_emb else None,
            geoclip=[results[i] for i in keep],
            encoder=self.geolocator,
            names=[results[i].image for i in keep],
            client=self.client,
            progress=progress,
            retrieval_k=top_k,
        )
        if places:
            self._name_places(preds)
        if self.database is not None and hasattr(self.database, "meta"):
            self._name_references(preds)
        for i, p in zip(keep, preds):
            results[i] = p
        return results

    def _name_references(self, preds: list[Prediction]) -> None:
        """The image path of every database photo the prompts used, read in one pass."""
        refs = [n for p in preds for n in (p.neighbours or []) + (p.farthest or []) if n.id >= 0]
        if not refs:
            return
        metas = dict(zip([n.id for n in refs], self.database.meta(np.array([n.id for n in refs], dtype=np.int64))))
        for p in preds:
            if p.neighbours is not None:
                p.neighbours = [replace(n, image=metas.get(n.id, {}).get("image")) for n in p.neighbours]
            if p.farthest is not None:
                p.farthest = [replace(n, image=metas.get(n.id, {}).get("image")) for n in p.farthest]

    def _name_places(self, preds: list[Prediction]) -> None:
        located = [p for p in preds if p.error is None and p.lat is not None and p.lon is not None]
        if not located:
            return
        index = self.geolocator.places()
        answers = index.nearest(np.array([[p.lat, p.lon] for p in located]))
        for p, place in zip(located, answers):
            p.place = place.label()
            labels = index.nearest(np.array([[c.lat, c.lon] for c in p.candidates])) if p.candidates else []
            p.candidates = [
                Candidate(c.lat, c.lon, prob=c.prob, score=c.score, source=c.source, place=lab.label())
                for c, lab in zip(p.candidates, labels)
            ]
