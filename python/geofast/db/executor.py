"""The encoding pipeline: how batches of source entries become embeddings.

The builder (:mod:`geofast.db.builder`) cuts a plan into :class:`BatchJob` s and hands them to an
:class:`Executor`, which yields one :class:`EncodedBatch` per job, in order. :class:`LocalExecutor`
is this machine's image-loading threads + backbone; :func:`prepare_batch` (load, EXIF GPS,
preprocess) and :func:`encode_prepared` (the forward pass) are its two halves, reused by
:class:`~geofast.db.ray_executor.RayExecutor`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geofast.db.sources import Entry, read_exif_gps
from geofast.errors import ImageError, ParameterError

if TYPE_CHECKING:
    from geofast.models.clip import Backbone


@dataclass(frozen=True)
class BatchJob:
    """One batch of source entries to encode. ``rows`` are entry indices of the (deduplicated)
    plan, ascending; ``entries`` the matching :class:`Entry` objects (so a job is self-contained
    and can be shipped to another process); ``last_in_chunk``: the builder commits the chunk
    after this batch."""

    chunk: int
    rows: tuple[int, ...]
    entries: tuple[Entry, ...]
    last_in_chunk: bool


@dataclass
class PreparedBatch:
    """A loaded and preprocessed batch: the rows that loaded, their pixel tensor and positions."""

    job: BatchJob
    rows: list[int]  # entry indices of the rows of ``pixels``
    pixels: Any  # CLIP pixel tensor (B, 3, H, W), or None when no image of the batch loaded
    latlon: list[tuple[float, float]]
    failures: list[tuple[int, str]]  # (row, reason): unreadable images
    no_gps: list[int]  # rows of folder sources without EXIF GPS


@dataclass
class EncodedBatch:
    """An executor's result for one :class:`BatchJob`. ``features`` are the backbone's raw
    outputs ``(len(rows), D)`` float32 (not normalised: the builder normalises and rejects zero or
    non-finite rows, identically for every executor)."""

    job: BatchJob
    rows: list[int]
    features: np.ndarray | None
    latlon: list[tuple[float, float]]
    failures: list[tuple[int, str]]
    no_gps: list[int]
    encoder_seconds: float = 0.0  # time inside the backbone's forward pass
    wait_seconds: float = 0.0  # time the encoder waited for loaded images


class Executor(Protocol):
    """Turns batches of source entries into embeddings. The builder owns everything else (plan,
    digest, chunks, resume, assembly, install), so every executor gives the same database.

    ``encode(jobs)`` must yield exactly one :class:`EncodedBatch` per job, **in the order of**
    ``jobs`` (the builder commits a chunk after its ``last_in_chunk`` batch); it may work ahead.
    A bad image must never raise: it goes to ``failures`` as ``(row, reason)``. The backbone
    must be the one whose probe embedding the builder recorded (the builder checks the driver's
    backbone; remote executors check their workers'). :func:`prepare_batch` and
    :func:`encode_prepared` are the two halves of the local pipeline, for reuse."""

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        """Called once before anything is written, with the driver's backbone and its probe
        embedding: connect, check the workers (version, backbone), or raise."""
        ...

    def encode(self, jobs: Iterable[BatchJob]) -> Iterator[EncodedBatch]: ...


def prepare_batch(job: BatchJob, preprocess: Callable[[list[Any]], Any]) -> PreparedBatch:
    """Load and preprocess a batch (EXIF GPS first for entries without a position), never raising
    for a bad image. ``preprocess`` is the backbone's (PIL images → pixel tensor)."""
    from geofast.images import load_image

    ok_rows: list[int] = []
    images: list[Any] = []
    latlon: list[tuple[float, float]] = []
    failures: list[tuple[int, str]] = []
    no_gps: list[int] = []
    for r, e in zip(job.rows, job.entries):
        try:
            if e.lat is None or e.lon is None:
                gps = read_exif_gps(e.image)
                if gps is None:
                    no_gps.append(r)
                    continue
            else:
                gps = (e.lat, e.lon)
            im = load_image(e.image)
        except ImageError as err:
            failures.append((r, str(err)))
            continue
        except Exception as err:
            failures.append((r, f"{e.image}: {type(err).__name__}: {err}"))
            continue
        ok_rows.append(r)
        images.append(im)
        latlon.append(gps)
    pixels = None
    if images:
        try:
            pixels = preprocess(images)
        except Exception:
            import torch

            by_row = dict(zip(job.rows, job.entries))
            keep, keep_ll, tensors = [], [], []
            for r, im, ll in zip(ok_rows, images, latlon):
                try:
                    tensors.append(preprocess([im]))
                    keep.append(r)
                    keep_ll.append(ll)
                except Exception as err:
                    failures.append((r, f"{by_row[r].image}: cannot preprocess ({type(err).__name__}: {err})"))
            ok_rows, latlon = keep, keep_ll
            pixels = torch.cat(tensors) if tensors else None
    return PreparedBatch(job=job, rows=ok_rows, pixels=pixels, latlon=latlon, failures=failures, no_gps=no_gps)


def encode_prepared(backbone: Backbone, batch: PreparedBatch, wait_seconds: float = 0.0) -> EncodedBatch:
    """Run the backbone on a prepared batch (the encoder half of the pipeline)."""
    feats = None
    enc_s = 0.0
    if batch.pixels is not None:
        t0 = time.perf_counter()
        feats = np.asarray(backbone.encode(batch.pixels).cpu().numpy(), dtype=np.float32)
        enc_s = time.perf_counter() - t0
    return EncodedBatch(
        job=batch.job,
        rows=batch.rows if feats is not None else [],
        features=feats,
        latlon=batch.latlon if feats is not None else [],
        failures=batch.failures,
        no_gps=batch.no_gps,
        encoder_seconds=enc_s,
        wait_seconds=wait_seconds,
    )


class LocalExecutor:
    """This machine: ``workers`` threads load and preprocess the next batches (PIL decoding
    releases the GIL) while the backbone encodes the current one; results in order."""

    def __init__(self, backbone: Backbone, workers: int | None = None) -> None:
        self.backbone = backbone
        self.workers = _loader_workers(workers, backbone)

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        """Nothing to check: this executor encodes with the driver's backbone itself."""

    def encode(self, jobs: Iterable[BatchJob]) -> Iterator[EncodedBatch]:
        from concurrent.futures import Future, ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="geofast-db-load")
        preprocess = self.backbone.preprocess
        try:
            pending: deque[Future[PreparedBatch]] = deque()
            it = iter(jobs)
            for job in it:
                pending.append(pool.submit(prepare_batch, job, preprocess))
                if len(pending) >= self.workers + 1:
                    break
            while pending:
                t_wait = time.perf_counter()
                batch = pending.popleft().result()
                wait_s = time.perf_counter() - t_wait
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(prepare_batch, nxt, preprocess))
                yield encode_prepared(self.backbone, batch, wait_s)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _loader_workers(workers: int | None, backbone: Backbone) -> int:
    if workers is not None:
        if workers < 1:
            raise ParameterError(f"workers must be >= 1, got {workers}")
        return int(workers)
    device = getattr(getattr(backbone, "device", None), "type", "cpu")
    if device == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 1))
