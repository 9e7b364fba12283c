"""The Ray executor: a database build's encoding on a Ray cluster (Ray Data), and the CLIP forward
of an evaluation on Ray actors.

**Build** (:class:`RayExecutor`, an :class:`~geofast.db.executor.Executor`). The builder keeps
everything that makes the database what it is — plan, digest, batch boundaries, chunks, resume,
assembly, install — and hands this executor the same :class:`~geofast.db.executor.BatchJob` s the
local executor gets. One Ray Data pipeline runs them:

1. *decode* — CPU tasks (one per batch): :func:`~geofast.db.executor.prepare_batch` with the
   backbone's own preprocessing (:func:`geofast.models.clip.load_preprocess`, no weights loaded),
   exactly what the local loader threads run;
2. *encode* — an actor pool (``actors`` actors, ``gpus_per_actor`` GPUs each) whose actors load
   the backbone once and run its forward pass on each batch as it is (same batch, same rows);
3. results stream back **in order** (``DataContext.execution_options.preserve_order``) into the
   builder, which normalises them and commits chunk after chunk as on one machine.

So a ``--ray`` build writes the same bytes as the single-machine build of the same source with
the same backbone on the same kind of device, and a driver killed mid-build resumes from its
committed chunks like any other build. Ray retries what dies: decode tasks are retried, a killed
encoder actor is restarted and the batch it held is run again (Ray Data's actor pools use
``max_restarts=-1``, ``max_task_retries=-1``); the driver checks that batch ``i`` arrives exactly
once and in place, so nothing is doubled or lost.

**Checks before anything is written** (:meth:`RayExecutor.start`): Ray importable, the cluster
reachable, enough GPUs for ``actors × gpus_per_actor``, and one worker with the actors' resources
runs the same geofast version and computes the backbone's probe embedding, compared with the
driver's (:data:`~geofast.db.encode.PROBE_MIN_COSINE`). Every encoder actor repeats the check
when it starts (a node with another backbone under the same path is refused, not mixed in).

**Cluster.** ``address=None`` starts a local Ray instance on this machine (every CPU and GPU it
has; bound to 127.0.0.1, no dashboard) and stops it afterwards; ``address="HOST:PORT"`` connects
to a running cluster (``ray start --head`` prints the address). When Ray is already initialised in
this process (a notebook, a test), that connection is used and left open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast._geofast import __version__
from geofast.errors import ClusterError, GeofastError

if TYPE_CHECKING:
    from geofast.db.executor import BatchJob, EncodedBatch
    from geofast.models.clip import Backbone

#: How to install Ray (the ``scale`` extra pins ``ray[data]``).
INSTALL_HINT = "pip install 'geofast[scale]'"
#: Seconds to wait for the first worker of the cluster to answer the preflight check.
PREFLIGHT_TIMEOUT_S = 600.0
#: Seconds to wait for a TCP connection to the cluster's address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0
#: Actor restarts (and retries of the batch a dead actor held) of an evaluation's encoder actors.
MAX_ACTOR_RESTARTS = 4
#: Input blocks of a build's pipeline: one batch per block (and per decode task) up to this many
#: batches, then several consecutive batches per block (MP-16 at batch 32: ~72 per block).
MAX_INPUT_BLOCKS = 2048
#: Memory a decode task reserves: its worker holds torch and transformers (~0.7 GB resident)
#: plus a batch of decoded photos and its pixel tensor.
DECODE_TASK_MEMORY_BYTES = 1 << 30


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    ``address``: ``None`` for a local cluster on this machine, else ``HOST:PORT`` of a running
    cluster (or ``auto``). ``actors``: encoder actors (default: one per GPU of the cluster, else 1).
    ``gpus_per_actor``: GPUs each actor holds (default: 1 when the cluster has GPUs, else 0).
    ``cpus_per_actor``: CPUs each actor holds (its torch threads when it encodes on CPU).
    ``decode_tasks``: most decode tasks at once (default: as many as the cluster's CPUs allow).
    ``num_cpus`` and ``object_store_bytes`` size a local cluster (ignored with an address).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    decode_tasks: int | None = None
    num_cpus: int | None = None
    object_store_bytes: int | None = None


def import_ray(*, local: bool = False) -> Any:
    """The ``ray`` module with Ray Data, or a :class:`ClusterError` saying how to install it.
    ``local``: a local cluster will be started, bound to 127.0.0.1 (Ray reads that setting when
    it is imported; a driver of a real cluster must advertise its own address instead)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ClusterError(f"Ray is not installed ({e}); distributed encoding needs ray[data]", hint=INSTALL_HINT) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast (one line) when ``HOST:PORT`` does not accept TCP connections."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(
            f"Ray address {address!r} is not HOST:PORT", hint="pass the address ray start --head printed, e.g. 10.0.0.5:6379"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or type(e).__name__})",
            hint="start it with ray start --head on the head node and pass the address it prints (HOST:6379)",
        ) from None


def _last_line(e: BaseException) -> str:
    """The most useful line of a (possibly remote, multi-line) exception."""
    cause: BaseException = e
    for attr in ("cause", "__cause__"):
        inner = getattr(cause, attr, None)
        if isinstance(inner, BaseException):
            cause = inner
    if isinstance(cause, GeofastError):
        return str(cause)
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(cause).__name__


class RayCluster:
    """A connection to a Ray cluster (see the module docstring); a context manager."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.ray: Any = None
        self._owned = False

    def connect(self) -> Any:
        """Connect (once); returns the ``ray`` module."""
        if self.ray is not None:
            return self.ray
        ray = import_ray(local=self.options.address is None)
        if ray.is_initialized():
            current = str(ray.get_runtime_context().gcs_address)
            wanted = self.options.address
            if wanted not in (None, "auto", current) and "://" not in str(wanted):
                raise ClusterError(
                    f"this process is already connected to the Ray cluster at {current}, not {wanted}",
                    hint=f"use {current}, or call ray.shutdown() first",
                )
        else:
            opts = self.options
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if opts.address is None:
                kwargs.update(
                    address="local",
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    num_cpus=opts.num_cpus,
                    object_store_memory=opts.object_store_bytes,
                )
            else:
                _check_reachable(opts.address)
                kwargs["address"] = opts.address
            try:
                ray.init(**kwargs)
            except Exception as e:
                where = "start a local Ray cluster" if opts.address is None else f"connect to the Ray cluster at {opts.address}"
                raise ClusterError(
                    f"cannot {where}: {_last_line(e)}",
                    hint="check it with ray status (a cluster: ray start --head on the head node)",
                ) from None
            self._owned = True
        # Ray Data's notices (progress bars off, memory advice) are not the user's business:
        # failures reach the driver as exceptions and become one ClusterError line.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        logging.getLogger("ray").setLevel(logging.WARNING)
        self.ray = ray
        return ray

    def resources(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.connect().cluster_resources().items()}

    def close(self) -> None:
        if self.ray is not None and self._owned:
            self.ray.shutdown()
        self.ray = None
        self._owned = False

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(cluster: RayCluster, plan: _Plan | None) -> str:
    where = "a local Ray cluster" if cluster.options.address is None else f"the Ray cluster at {cluster.options.address}"
    if plan is None:
        return where
    per = f"{plan.gpus_per_actor:g} GPU" if plan.gpus_per_actor > 0 else f"{plan.cpus_per_actor:g} CPU"
    return f"{plan.actors} encoder actor{'s' if plan.actors != 1 else ''} × {per} on {where}"


@dataclass(frozen=True)
class _Plan:
    """What every worker needs to know: the backbone, the device, the resources of one actor."""

    source: str
    device: str
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    probe: tuple[float, ...]
    version: str
    #: The driver's encoder precision for CPU actors (GPU actors run their default, fp16).
    precision: str | None = None


def _worker_source(backbone: Backbone) -> str:
    """What workers load: the backbone's folder as an absolute path when ``source`` names a local
    folder (workers do not share the driver's working directory), else the hub id."""
    from pathlib import Path

    src = Path(str(backbone.source)).expanduser()
    return str(src.resolve()) if src.is_dir() else str(backbone.source)


def _sizing(cluster: RayCluster) -> tuple[int, float]:
    """(encoder actors, GPUs per actor) for the cluster, or a :class:`ClusterError` when it
    lacks the GPUs or CPUs they need."""
    opts = cluster.options
    res = cluster.resources()
    gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 0.0)
    gpa = float(opts.gpus_per_actor) if opts.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if gpa < 0:
        raise ClusterError(f"GPUs per actor must be >= 0, got {gpa:g}", hint="e.g. 1 (one GPU per encoder actor)")
    if opts.actors is not None:
        actors = int(opts.actors)
        if actors < 1:
            raise ClusterError(f"the number of encoder actors must be >= 1, got {actors}", hint="e.g. one per GPU")
    else:
        actors = max(1, int(gpus // gpa)) if gpa > 0 else 1
    if gpa > 0 and actors * gpa > gpus + 1e-9:
        raise ClusterError(
            f"the Ray cluster has {gpus:g} GPUs; {actors} encoder actors with {gpa:g} GPUs each need {actors * gpa:g}",
            hint="use fewer actors or fewer GPUs per actor, add GPU nodes, or encode on CPUs (0 GPUs per actor)",
        )
    if actors * opts.cpus_per_actor > cpus + 1e-9:
        raise ClusterError(
            f"the Ray cluster has {cpus:g} CPUs; {actors} encoder actors with {opts.cpus_per_actor:g} CPUs each need "
            f"{actors * opts.cpus_per_actor:g}",
            hint="use fewer encoder actors, or add nodes",
        )
    return actors, gpa


def _resolve_plan(cluster: RayCluster, backbone: Backbone, probe: np.ndarray) -> _Plan:
    actors, gpa = _sizing(cluster)
    return _Plan(
        source=_worker_source(backbone),
        device="cuda" if gpa > 0 else "cpu",
        actors=actors,
        gpus_per_actor=gpa,
        cpus_per_actor=float(cluster.options.cpus_per_actor),
        probe=tuple(float(v) for v in np.asarray(probe, dtype=np.float64)),
        version=__version__,
        precision=None if gpa > 0 else str(getattr(backbone, "precision", "fp32")),
    )


# ----------------------------------------------------------------------------------------------
# Code that runs on the workers
# ----------------------------------------------------------------------------------------------


def _where() -> str:
    return f"on {socket.gethostname()} (pid {os.getpid()})"


def _set_threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _load_checked(plan: _Plan) -> tuple[Backbone | None, str]:
    """A worker's backbone, or the one-line reason it must not encode (version, backbone, load)."""
    from geofast._geofast import __version__ as mine
    from geofast.db.encode import PROBE_MIN_COSINE, probe_cosine, probe_embedding
    from geofast.models.clip import load_backbone

    if mine != plan.version:
        return None, f"a Ray worker {_where()} runs geofast {mine}; this driver runs geofast {plan.version}"
    try:
        _set_threads(plan.cpus_per_actor)
        backbone = load_backbone(plan.source, plan.device, precision=plan.precision)
        probe = probe_embedding(backbone)
    except Exception as e:
        return None, f"a Ray worker {_where()} cannot load the backbone {plan.source}: {_last_line(e)}"
    cos = probe_cosine(list(plan.probe), probe)
    if cos < PROBE_MIN_COSINE:
        return None, (
            f"a Ray worker {_where()} runs another backbone than the driver: {plan.source} there gives other "
            f"embeddings (probe cosine {cos:.3f} < {PROBE_MIN_COSINE})"
        )
    return backbone, ""


def _preflight(plan: _Plan) -> dict[str, Any]:
    """Run on one worker with an actor's resources: its version and backbone check."""
    backbone, error = _load_checked(plan)
    device = str(getattr(backbone, "device", "")) if backbone is not None else ""
    return {"error": error, "device": device, "host": socket.gethostname()}


_PREPROCESS: dict[str, Any] = {}


def _decode(batch: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Decode task: load and preprocess one batch with the backbone's own preprocessing."""
    from geofast.db.executor import BatchJob, prepare_batch
    from geofast.db.sources import Entry
    from geofast.models.clip import load_preprocess

    preprocess = _PREPROCESS.get(source)
    if preprocess is None:
        preprocess = _PREPROCESS[source] = load_preprocess(source)
    out: dict[str, list[Any]] = {"job": [], "pixels": [], "shape": [], "info": []}
    for job_id, spec in zip(batch["job"].tolist(), batch["spec"].tolist()):
        s = json.loads(spec)
        entries = tuple(Entry(image=img, lat=lat, lon=lon) for img, lat, lon in s["entries"])
        prepared = prepare_batch(BatchJob(0, tuple(s["rows"]), entries, False), preprocess)
        pixels = b""
        shape: list[int] = []
        if prepared.pixels is not None:
            arr = np.ascontiguousarray(prepared.pixels.numpy(), dtype=np.float32)
            pixels, shape = arr.tobytes(), list(arr.shape)
        info = {"rows": prepared.rows, "latlon": prepared.latlon, "failures": prepared.failures, "no_gps": prepared.no_gps}
        out["job"].append(job_id)
        out["pixels"].append(pixels)
        out["shape"].append(json.dumps(shape))
        out["info"].append(json.dumps(info))
    return {
        "job": np.asarray(out["job"], dtype=np.int64),
        "pixels": np.asarray(out["pixels"], dtype=object),
        "shape": np.asarray(out["shape"], dtype=object),
        "info": np.asarray(out["info"], dtype=object),
    }


class _Encoder:
    """Encode actor: loads the backbone once (checked against the driver's probe), then runs the
    forward pass on each decoded batch as it is."""

    def __init__(self, plan: _Plan) -> None:
        self.backbone, self.error = _load_checked(plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        feats_out: list[bytes] = []
        secs: list[float] = []
        for raw, shape_s in zip(batch["pixels"].tolist(), batch["shape"].tolist()):
            shape = json.loads(shape_s)
            if self.error or not shape or self.backbone is None:
                feats_out.append(b"")
                secs.append(0.0)
                continue
            pixels = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(shape).copy())
            t0 = time.perf_counter()
            feats = np.asarray(self.backbone.encode(pixels).cpu().numpy(), dtype=np.float32)
            secs.append(time.perf_counter() - t0)
            feats_out.append(np.ascontiguousarray(feats).tobytes())
        n = len(feats_out)
        return {
            "job": batch["job"],
            "info": batch["info"],
            "feats": np.asarray(feats_out, dtype=object),
            "seconds": np.asarray(secs, dtype=np.float64),
            "error": np.asarray([self.error] * n, dtype=object),
        }


# ----------------------------------------------------------------------------------------------
# The executor
# ----------------------------------------------------------------------------------------------


class RayExecutor:
    """Encode a build's batches on a Ray cluster (see the module docstring). Use it as a context
    manager (a local cluster it started is stopped on exit)::

        with RayExecutor(RayOptions(actors=4)) as ex:
            Database.build("photos.csv", "photos.db", executor=ex)
    """

    def __init__(self, options: RayOptions | None = None) -> None:
        self.cluster = RayCluster(options)
        self.plan: _Plan | None = None
        self.dim: int | None = None

    # -- before anything is written ---------------------------------------------------------------
    def connect(self) -> None:
        """Connect and check the cluster's resources (no backbone needed: fails fast)."""
        self.cluster.connect()
        _sizing(self.cluster)

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        """Connect and check the cluster (resources, one worker's version and backbone)."""
        ray = self.cluster.connect()
        plan = _resolve_plan(self.cluster, backbone, probe)
        remote = ray.remote(num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor, max_retries=0)(_preflight)
        try:
            answer = ray.get(remote.remote(plan), timeout=PREFLIGHT_TIMEOUT_S)
        except Exception as e:
            timeout = type(e).__name__ == "GetTimeoutError"
            raise ClusterError(
                f"no Ray worker answered within {PREFLIGHT_TIMEOUT_S:.0f} s"
                if timeout
                else f"a Ray worker cannot run geofast: {_last_line(e)}",
                hint=f"install geofast {__version__} with its dependencies on every node ({INSTALL_HINT})",
            ) from None
        if answer["error"]:
            raise ClusterError(answer["error"], hint=_fix_hint(answer["error"], plan))
        self.plan = plan
        self.dim = int(np.asarray(probe).shape[0])

    # -- the pipeline -------------------------------------------------------------------------------
    def encode(self, jobs: Iterable[BatchJob]) -> Iterator[EncodedBatch]:
        """Run ``jobs`` through the pipeline; each result's ``job`` carries the job's chunk, rows
        and ``last_in_chunk`` (not its entries)."""
        from geofast.db.executor import BatchJob, EncodedBatch

        if self.plan is None:
            raise ClusterError("internal error: RayExecutor.encode before start()")
        plan = self.plan
        ray = self.cluster.connect()
        # One JSON spec per batch for the decode tasks; the driver keeps only (chunk, rows, last)
        # of each job, not its Entry objects.
        kept: list[BatchJob] = []
        items: list[dict[str, Any]] = []
        for i, j in enumerate(jobs):
            kept.append(BatchJob(j.chunk, j.rows, (), j.last_in_chunk))
            items.append(
                {"job": i, "spec": json.dumps({"rows": list(j.rows), "entries": [[e.image, e.lat, e.lon] for e in j.entries]})}
            )
        if not items:
            return
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)  # restored when done
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_INPUT_BLOCKS))
        # The decode tasks' memory reservation also keeps them a stage of their own: with the same
        # resources as the encoder actors Ray Data would fuse them into the actors.
        ds = ds.map_batches(
            _decode,
            batch_size=1,
            fn_kwargs={"source": plan.source},
            num_cpus=1,
            memory=DECODE_TASK_MEMORY_BYTES,
            concurrency=self.cluster.options.decode_tasks,
        )
        # Ray Data creates pool actors with max_restarts=-1 and max_task_retries=-1: a dead
        # actor is restarted and the batch it held is run again (once in the output).
        ds = ds.map_batches(
            _Encoder,
            fn_constructor_args=(plan,),
            batch_size=1,
            compute=ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor or None,
        )
        expected = 0
        rows = ds.iter_rows()
        try:
            for row in _remote_errors(rows):
                job_id = int(row["job"])
                if job_id != expected:
                    raise ClusterError(
                        f"internal error: the Ray pipeline returned batch {job_id} where batch {expected} was due"
                        " (a batch doubled or lost)",
                        hint="rerun the same command: the build resumes from its committed chunks",
                    )
                expected += 1
                if row["error"]:
                    raise ClusterError(str(row["error"]), hint=_fix_hint(str(row["error"]), plan))
                info = json.loads(row["info"])
                job = kept[job_id]
                raw = row["feats"]
                feats = np.frombuffer(raw, dtype=np.float32).reshape(-1, self.dim or 1).copy() if raw else None
                yield EncodedBatch(
                    job=job,
                    rows=[int(r) for r in info["rows"]] if feats is not None else [],
                    features=feats,
                    latlon=[(float(a), float(b)) for a, b in info["latlon"]] if feats is not None else [],
                    failures=[(int(r), str(s)) for r, s in info["failures"]],
                    no_gps=[int(r) for r in info["no_gps"]],
                    encoder_seconds=float(row["seconds"]),
                )
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if expected != len(kept):
            raise ClusterError(
                f"internal error: the Ray pipeline returned {expected} of {len(kept)} batches",
                hint="rerun the same command: the build resumes from its committed chunks",
            )

    def describe(self) -> str:
        return _describe(self.cluster, self.plan)

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_errors(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows of a Ray Data iterator; a failure of the pipeline becomes one :class:`ClusterError` line."""
    it = iter(rows)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except GeofastError:
            raise
        except Exception as e:
            raise ClusterError(
                f"the Ray pipeline failed: {_last_line(e)}",
                hint="rerun the same command: the build resumes from its committed chunks",
            ) from None
        yield row


def _fix_hint(error: str, plan: _Plan) -> str:
    if "runs geofast" in error:
        return f"install geofast {plan.version} on every node of the cluster"
    if "another backbone" in error:
        return f"give every node the same backbone at {plan.source} (or a hub id every node can load)"
    return f"make {plan.source} loadable on every node (a shared path or a hub id in each node's cache)"


# ----------------------------------------------------------------------------------------------
# Evaluation: the CLIP forward on Ray actors
# ----------------------------------------------------------------------------------------------


class _ForwardActor:
    """One backbone per actor (checked like the encoder actors); ``encode`` runs the forward."""

    def __init__(self, plan: _Plan) -> None:
        self.backbone, self.error = _load_checked(plan)

    def check(self) -> str:
        return self.error

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        if self.backbone is None:
            raise ClusterError(self.error)
        return np.asarray(self.backbone.encode(torch.from_numpy(pixels)).cpu().numpy(), dtype=np.float32)


class RayForward:
    """The backbone's forward pass on Ray actors, for :meth:`Backbone.encode` (an evaluation's
    encoding); batches go round-robin to ``actors`` actors, one batch at a time per call."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.cluster = RayCluster(options)
        self.plan: _Plan | None = None
        self._actors: list[Any] = []
        self._next = 0

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        ray = self.cluster.connect()
        plan = _resolve_plan(self.cluster, backbone, probe)
        cls = ray.remote(
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,
            max_restarts=MAX_ACTOR_RESTARTS,
            max_task_retries=MAX_ACTOR_RESTARTS,
        )(_ForwardActor)
        actors = [cls.remote(plan) for _ in range(plan.actors)]
        try:
            errors = ray.get([a.check.remote() for a in actors], timeout=PREFLIGHT_TIMEOUT_S)
        except Exception as e:
            for a in actors:
                ray.kill(a)
            raise ClusterError(
                f"the Ray encoder actors did not start: {_last_line(e)}",
                hint=f"install geofast {__version__} with its dependencies on every node ({INSTALL_HINT})",
            ) from None
        bad = [e for e in errors if e]
        if bad:
            for a in actors:
                ray.kill(a)
            raise ClusterError(bad[0], hint=_fix_hint(bad[0], plan))
        self.plan, self._actors = plan, actors

    def encode(self, pixel_values: Any) -> Any:
        """Projected CLIP features ``(B, D)`` float32 torch tensor (like :meth:`Backbone.encode`)."""
        import torch

        if not self._actors:
            raise ClusterError("internal error: RayForward.encode before start()")
        ray = self.cluster.connect()
        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        arr = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        try:
            feats = ray.get(actor.encode.remote(arr))
        except GeofastError:
            raise
        except Exception as e:
            raise ClusterError(f"a Ray encoder actor failed: {_last_line(e)}", hint="rerun: finished images are kept") from None
        return torch.from_numpy(np.array(feats, dtype=np.float32))  # a writable copy of the fetched array

    def describe(self) -> str:
        return _describe(self.cluster, self.plan)

    def close(self) -> None:
        if self.cluster.ray is not None:
            for a in self._actors:
                with contextlib.suppress(Exception):
                    self.cluster.ray.kill(a)
        self._actors = []
        self.cluster.close()

    def __enter__(self) -> RayForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _backbones(obj: Any, depth: int = 3, seen: set[int] | None = None) -> list[Backbone]:
    """The CLIP backbones a predictor holds (its attributes, a few levels deep), each once."""
    from geofast.models.clip import Backbone

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, Backbone):
        return [obj]
    if depth == 0 or not hasattr(obj, "__dict__"):
        return []
    found: list[Backbone] = []
    for value in vars(obj).values():
        found.extend(_backbones(value, depth - 1, seen))
    return found


@contextlib.contextmanager
def ray_forward(predictor: Any, options: RayOptions | None = None) -> Iterator[RayForward]:
    """Run the CLIP forward passes of ``predictor`` (any :class:`~geofast.predict.types.Predictor`)
    on Ray actors while the block runs; everything else (image loading, preprocessing, search,
    clustering, scoring) stays in this process, so predictions are those of a local run."""
    from geofast.db.encode import probe_embedding

    backbones = _backbones(predictor)
    if not backbones:
        raise ClusterError(f"the {type(predictor).__name__} predictor has no CLIP backbone to run on Ray")
    forward = RayForward(options)
    try:
        forward.start(backbones[0], probe_embedding(backbones[0]))
        for b in backbones:
            b.remote = forward
        yield forward
    finally:
        for b in backbones:
            b.remote = None
        forward.close()


__all__: Sequence[str] = [
    "INSTALL_HINT",
    "RayCluster",
    "RayExecutor",
    "RayForward",
    "RayOptions",
    "import_ray",
    "ray_forward",
]
