"""One inference worker that coalesces waiting requests into shared forward passes.

Requests (:class:`Job`: a list of decoded RGB images and a ``top_k``) wait in a bounded queue.
The worker thread takes the oldest job, then keeps taking whole jobs that are already waiting
(or arrive within ``max_wait_ms``) until the batch holds ``max_batch`` images; jobs that ask for
the same ``top_k`` share one ``Predictor.predict`` call, hence one forward pass. A job larger
than ``max_batch`` runs alone (the predictor splits it). Results go back to each request's
event loop through a future.

* Admission: :meth:`Batcher.submit` raises :class:`QueueFull` (→ 503 + Retry-After) when
  ``queue_size`` jobs are already waiting.
* Deadline: a job whose deadline passed while it waited is dropped without running
  (:class:`DeadlineExceeded`); the request answers 504 at its deadline either way.
* Isolation: images are decoded before they are queued, so every job holds only good images;
  if a batched call still fails, each job of the batch is rerun alone, so one request's failure
  never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from geofast.errors import GeofastError
from geofast.predict.types import Prediction, Predictor


class QueueFull(GeofastError):
    """The inference queue is full; the request should be retried later."""

    def __init__(self, message: str, *, retry_after_s: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(GeofastError):
    """A request did not finish before its deadline."""


class NotRunning(GeofastError):
    """The batcher is stopped (server shutting down)."""


@dataclass
class Job:
    """One request's images, waiting for (then holding) its result."""

    images: list[Any]  # decoded RGB PIL images (an image job), or empty
    names: list[str]
    top_k: int
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future[list[Prediction]]
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when the worker took it
    inference_s: float = 0.0  # wall time of the predict call it was part of
    batch_images: int = 0  # images (or texts) in that call
    texts: list[str] = field(default_factory=list)  # text queries (a text job), or empty

    @property
    def kind(self) -> str:
        return "text" if self.texts else "image"

    @property
    def size(self) -> int:
        return len(self.texts) if self.texts else len(self.images)

    def settle(self, result: list[Prediction] | None = None, error: BaseException | None = None) -> None:
        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result or [])

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the request's loop is closed: nobody waits for the answer
            pass


@dataclass
class BatchRecord:
    """One predict call of the worker: how many requests and images it served."""

    requests: int
    images: int
    seconds: float


class Batcher:
    """The single inference worker and its bounded queue (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        queue_size: int = 64,
        places: bool = True,
        history: int = 10_000,
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.places = places
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        #: The most recent predict calls (bounded), for monitoring and tests.
        self.batches: deque[BatchRecord] = deque(maxlen=history)
        self.served_requests = 0
        self.served_images = 0
        self.rejected = 0
        self.expired = 0
        self._mean_image_s = 0.0
        #: Called with the list of jobs of each batch just before it runs (tests use it to gate the worker).
        self.before_batch: Callable[[list[Job]], None] | None = None

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._work, name="geofast-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs, fail the waiting ones, and wait for the running batch to end."""
        with self._cond:
            self._running = False
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.settle(error=NotRunning("the server is shutting down", hint="retry on another instance"))
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pending(self) -> int:
        """Jobs waiting for the worker (not counting the batch it is running)."""
        with self._cond:
            return len(self._queue)

    # -- submission ----------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        with self._cond:
            waiting_images = sum(j.size for j in self._queue)
        return max(1, math.ceil(waiting_images * self._mean_image_s))

    def submit(self, images: list[Any], names: list[str], top_k: int, deadline: float, *, texts: list[str] | None = None) -> Job:
        """Queue one request's decoded images (or, with ``texts``, its text queries, which need a
        predictor with ``predict_text``); ``job.future`` resolves to their predictions, in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Prediction]] = loop.create_future()
        job = Job(images=images, names=names, top_k=top_k, deadline=deadline, future=future, loop=loop, texts=list(texts or []))
        with self._cond:
            if not self._running:
                raise NotRunning("the inference worker is not running", hint="wait until /readyz answers 200")
            if len(self._queue) >= self.queue_size:
                self.rejected += 1
                full = True
            else:
                full = False
                self._queue.append(job)
                self._cond.notify()
        if full:
            retry = self.retry_after_s()
            raise QueueFull(
                f"the server is busy: {self.queue_size} requests are already waiting",
                retry_after_s=retry,
                hint=f"retry after {retry} s",
            )
        return job

    # -- the worker ----------------------------------------------------------------------------
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while self._running and not self._queue:
                self._cond.wait()
            if not self._running:
                return None
            batch = [self._queue.popleft()]
            images = batch[0].size
            wait_until = time.monotonic() + self.max_wait_s
            while images < self.max_batch and self._running:
                if self._queue:
                    nxt = self._queue[0]
                    if images + nxt.size > self.max_batch:
                        break
                    batch.append(self._queue.popleft())
                    images += nxt.size
                    continue
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            now = time.monotonic()
            live: list[Job] = []
            for job in batch:
                job.started = now
                if job.deadline <= now or job.future.done():
                    self.expired += 1
                    job.settle(error=DeadlineExceeded("the request waited past its deadline"))
                else:
                    live.append(job)
            if not live:
                continue
            if self.before_batch is not None:
                self.before_batch(live)
            groups: dict[tuple[str, int], list[Job]] = {}
            for job in live:
                groups.setdefault((job.kind, job.top_k), []).append(job)
            for (kind, top_k), jobs in groups.items():
                # Checked again right before running: a request answered 504 (or gone) while
                # earlier groups ran is not computed for nobody.
                now = time.monotonic()
                still = []
                for job in jobs:
                    if job.deadline <= now or job.future.done():
                        self.expired += 1
                        job.settle(error=DeadlineExceeded("the request passed its deadline"))
                    else:
                        still.append(job)
                if still:
                    self._run(still, top_k, kind)

    def _predict(self, items: list[Any], top_k: int, kind: str, jobs: list[Job] | None = None) -> list[Prediction]:
        if kind == "image" and len(items) > self.max_batch and jobs:
            # A job larger than a batch runs in batches; between them, stop if nobody waits any more.
            out: list[Prediction] = []
            for start in range(0, len(items), self.max_batch):
                if all(j.future.done() or j.deadline <= time.monotonic() for j in jobs):
                    raise DeadlineExceeded("the request passed its deadline")
                out.extend(self._predict(items[start : start + self.max_batch], top_k, kind))
            return out
        batch_size = max(self.max_batch, len(items))
        if kind == "text":
            predict_text = getattr(self.predictor, "predict_text")  # noqa: B009  (checked by the app before submitting)
            return list(predict_text(items, top_k=top_k, batch_size=batch_size, places=self.places))
        return self.predictor.predict(items, top_k=top_k, batch_size=batch_size, places=self.places)

    def _run(self, jobs: list[Job], top_k: int, kind: str = "image") -> None:
        images = [x for job in jobs for x in (job.texts if kind == "text" else job.images)]
        t0 = time.perf_counter()
        try:
            results = self._predict(images, top_k, kind, jobs)
            if len(results) != len(images):
                raise RuntimeError(f"the predictor returned {len(results)} results for {len(images)} images")
        except BaseException:
            if len(jobs) > 1:
                for job in jobs:  # isolate the failure: each request on its own
                    self._run([job], top_k, kind)
                return
            seconds = time.perf_counter() - t0
            self._record(jobs, len(images), seconds)
            import sys

            jobs[0].settle(error=sys.exc_info()[1])
            return
        seconds = time.perf_counter() - t0
        self._record(jobs, len(images), seconds)
        start = 0
        for job in jobs:
            n = job.size
            job.settle(result=results[start : start + n])
            start += n

    def _record(self, jobs: list[Job], images: int, seconds: float) -> None:
        self.batches.append(BatchRecord(requests=len(jobs), images=images, seconds=seconds))
        self.served_requests += len(jobs)
        self.served_images += images
        per_image = seconds / max(1, images)
        self._mean_image_s = per_image if self._mean_image_s == 0 else 0.8 * self._mean_image_s + 0.2 * per_image
        for job in jobs:
            job.inference_s = seconds
            job.batch_images = images

    def stats(self) -> dict[str, Any]:
        """Counters for ``/v1/models`` and monitoring."""
        recent = list(self.batches)[-100:]
        return {
            "served_requests": self.served_requests,
            "served_images": self.served_images,
            "rejected_queue_full": self.rejected,
            "expired": self.expired,
            "pending": self.pending,
            "recent_batch_images_mean": (sum(b.images for b in recent) / len(recent)) if recent else None,
        }
