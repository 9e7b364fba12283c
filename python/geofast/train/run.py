"""Training runs: :func:`train`, the Python API behind ``geofast train``.

A run folder ``RUN_DIR`` holds::

    run.json                 settings, data description, status ("running" / "completed"), best epoch
    model/                   the best model so far, in ``geoclip``'s release format (config.json,
                             model.safetensors, gallery.csv): a model folder usable everywhere
    checkpoints/last.ckpt    heads (no backbone), optimizer, LR schedule, GPS queue, RNG state, position
    metrics.csv, metrics.json   one row per epoch: loss, LR, logit scale, samples/s, validation metrics
    tensorboard/             the same scalars, when TensorBoard is installed

Every file is written atomically (temp file + rename; the model folder by a folder swap), so a
run killed at any point leaves the previous state; ``resume=True`` continues from the last
checkpoint (written every ``checkpoint_every_s`` seconds, optionally every
``checkpoint_every_steps`` steps, and at each epoch end) and, because batch order, queue,
optimizer and schedule are all restored, reaches the same weights as a run that was never stopped.

Devices and nodes go through Lightning Fabric (DDP; NCCL on GPUs, gloo on CPUs). With more than
one device Fabric starts the other processes by re-running the command (as Lightning does for
scripts): call :func:`train` from a script or the CLI, not from a notebook. Only global rank 0
writes files and calls the callbacks. bf16 autocast is used on CUDA only; the loss is float32.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofast._geofast import __version__
from geofast._io import atomic_write, atomic_write_text
from geofast.errors import DatabaseError, TrainingError
from geofast.train.config import TrainConfig
from geofast.train.data import (
    PROBE_MIN_COSINE,
    TrainingData,
    batches_per_epoch,
    epoch_order,
    global_batch,
    load_data,
    probe_cosine,
    rank_slice,
)
from geofast.train.module import InitialModel, TrainableHeads, initial_model
from geofast.train.objective import LOGIT_SCALE_MAX, GeoCLIPStep, GPSQueue, adamw

RUN_FORMAT = "geofast-train-run"
CKPT_FORMAT = "geofast-train-checkpoint"
CKPT_VERSION = 1
RADII_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
METRIC_FIELDS = (
    "epoch",
    "step",
    "loss",
    "lr",
    "logit_scale",
    "samples_per_s",
    "epoch_s",
    "val_n",
    *(f"acc_{r:g}km" for r in RADII_KM),
    "median_km",
    "mean_km",
    "geoscore",
)
_VIT_L14 = (1024, 24, 14)  # vision hidden size, layers, patch size


@dataclass
class StepInfo:
    """Reported after every optimizer step (rank 0)."""

    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based within the epoch
    batches: int
    global_step: int
    loss: float
    samples_per_s: float


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    epochs: int
    global_step: int
    world_size: int
    global_rank: int
    resumed: bool
    best_epoch: int | None
    best: dict[str, Any] | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"], d["model_dir"] = str(self.run_dir), str(self.model_dir)
        return d


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------


class RunDir:
    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.root = Path(out).expanduser()
        self.run_file = self.root / "run.json"
        self.ckpt = self.root / "checkpoints" / "last.ckpt"
        self.model = self.root / "model"
        self.metrics_csv = self.root / "metrics.csv"
        self.metrics_json = self.root / "metrics.json"

    def prepare(self, resume: bool) -> dict[str, Any] | None:
        """Check the folder (writable; a run only when resuming) and read the checkpoint to resume."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise TrainingError(f"the run folder {root} is a file", hint="choose a folder for the run")
        try:
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise TrainingError(
                f"cannot write to the run folder {root}: {e.strerror or e}", hint="choose a writable folder"
            ) from e
        has_run = self.run_file.is_file()
        others = sorted(
            p.name for p in root.iterdir() if p.name not in ("checkpoints",) and not p.name.startswith(".write-test-")
        )
        if not resume:
            if has_run:
                raise TrainingError(f"{root} already holds a training run", hint="resume it, or choose another output folder")
            if others:
                raise TrainingError(
                    f"{root} is not empty and is not a training run ({', '.join(others[:3])})",
                    hint="choose an empty or new folder",
                )
            return None
        if not self.ckpt.is_file():
            if others and not has_run:
                raise TrainingError(
                    f"{root} is not a training run ({', '.join(others[:3])})", hint="choose the folder of the run to resume"
                )
            return None
        return self.load_checkpoint()

    def load_checkpoint(self) -> dict[str, Any]:
        hint = f"the checkpoint is damaged: delete {self.ckpt} to restart the run from its beginning"
        try:
            ckpt = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainingError(f"cannot read the checkpoint {self.ckpt}: {type(e).__name__}: {e}", hint=hint) from e
        required = (
            "format",
            "version",
            "trajectory",
            "epoch",
            "batch",
            "global_step",
            "model",
            "sigmas",
            "optimizer",
            "scheduler",
            "queue",
        )
        if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or any(k not in ckpt for k in required):
            raise TrainingError(f"{self.ckpt} is not a geofast training checkpoint", hint=hint)
        if ckpt["version"] != CKPT_VERSION:
            raise TrainingError(
                f"{self.ckpt} has checkpoint version {ckpt['version']}; this geofast reads {CKPT_VERSION}", hint=hint
            )
        return ckpt

    def save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        atomic_write(self.ckpt, lambda f: torch.save(ckpt, f))

    def write_run(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.run_file, json.dumps(info, indent=2, allow_nan=False) + "\n")

    def write_metrics(self, rows: Sequence[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRIC_FIELDS})
        atomic_write_text(self.metrics_csv, buf.getvalue())
        atomic_write_text(self.metrics_json, json.dumps(list(rows), indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Checks of the data against the initial model
# ----------------------------------------------------------------------------------------------


def _vision_shape(source: str | None) -> tuple[int, int, int] | None:
    """(hidden size, layers, patch size) of a recorded backbone's vision tower, when its config is at hand."""
    if not source:
        return None
    path = Path(source).expanduser()
    config_path: Path | None = path / "config.json" if path.is_dir() else None
    if config_path is None and source.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "config.json")
            config_path = Path(found) if isinstance(found, str) else None
        except Exception:
            config_path = None
    if config_path is None or not config_path.is_file():
        return None
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    vision = raw.get("vision_config") if raw.get("model_type") == "clip" else raw
    if not isinstance(vision, dict):
        return None
    return int(vision.get("hidden_size", 768)), int(vision.get("num_hidden_layers", 12)), int(vision.get("patch_size", 32))


def check_backbone(data: TrainingData, init: InitialModel) -> None:
    """Refuse a database encoded by another backbone than the one the initial model was trained on."""
    db = data.train.db
    info = db.manifest.get("backbone") or {}
    expected = init.backbone
    hint = "encode the photos with the backbone the model was trained on, or train from scratch"
    probe, want_probe = info.get("probe"), expected.get("backbone_probe")
    if probe is not None and want_probe is not None:
        cos = probe_cosine(probe, np.asarray(want_probe))
        if cos < PROBE_MIN_COSINE:
            raise DatabaseError(
                f"database {db.path} was encoded with {info.get('source')}, not with the backbone {init.source} was trained on "
                f"({expected.get('backbone_source')}; probe cosine {cos:.3f})",
                hint=hint,
            )
        return
    if info.get("config_sha256") and expected.get("backbone_config_sha256"):
        if info["config_sha256"] != expected["backbone_config_sha256"]:
            raise DatabaseError(
                f"database {db.path} was encoded with another backbone than {init.source} was trained on", hint=hint
            )
        return
    if expected.get("kind") == "vit-l14":
        shape = _vision_shape(info.get("source"))
        if shape is not None and shape != _VIT_L14:
            raise DatabaseError(
                f"database {db.path} was encoded with {info.get('source')}, whose vision tower is not CLIP ViT-L/14 "
                f"(hidden {shape[0]}, {shape[1]} layers, patch {shape[2]}); {init.source} takes ViT-L/14 features",
                hint=hint,
            )


# ----------------------------------------------------------------------------------------------
# Lightning Fabric
# ----------------------------------------------------------------------------------------------


_NO_LIGHTNING = ("training needs PyTorch Lightning, which is not installed", "pip install 'geofast[train]'")


def _check_lightning() -> None:
    """Fail at once without Lightning, before its (slow) import and before reading any data."""
    import importlib.util

    try:
        found = importlib.util.find_spec("lightning.fabric") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TrainingError(_NO_LIGHTNING[0], hint=_NO_LIGHTNING[1])


def _fabric(config: TrainConfig) -> Any:
    try:
        from lightning.fabric import Fabric
    except ImportError as e:
        raise TrainingError(_NO_LIGHTNING[0], hint=_NO_LIGHTNING[1]) from e
    acc = "cuda" if config.accelerator == "gpu" else config.accelerator
    if acc == "auto":
        acc = "cuda" if torch.cuda.is_available() else "cpu"
    if acc == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training on CUDA was asked for, but CUDA is not available", hint="train on the CPU")
    world = config.devices * config.num_nodes
    precision = "bf16-mixed" if acc == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    return Fabric(
        accelerator=acc,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=precision,  # type: ignore[arg-type]
    )


def _all_gather(tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor (on the CPU), in rank order."""
    import torch.distributed as dist

    local = tensor.to(device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def _gatherer(device: torch.device) -> Callable[[torch.Tensor, Sequence[int]], torch.Tensor]:
    """All-gather each rank's (n_r, 2) GPS slice into the global batch, in rank order."""

    def gather(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        padded = torch.zeros(max(sizes), 2, dtype=torch.float64)
        padded[: local.shape[0]] = local
        parts = _all_gather(padded, device)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    return gather


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: TrainableHeads, gallery: np.ndarray, features: np.ndarray, truth: np.ndarray, *, batch: int = 4096
) -> dict[str, Any]:
    """Top-1 over ``gallery`` (geofast's scan) for each validation row; geofast's evaluator metrics."""
    from geofast._geofast import Gallery
    from geofast.evaluate import score

    was_training = model.training
    model.eval()
    try:
        loc = model.location.encode(gallery)
        search = Gallery(loc, dtype="f32")
        device = model.logit_scale.device
        idx = np.empty(features.shape[0], dtype=np.int64)
        for s in range(0, features.shape[0], batch):
            x = torch.from_numpy(features[s : s + batch]).to(device)
            emb = torch.nn.functional.normalize(model.image(x).float(), dim=1).cpu().numpy()
            idx[s : s + batch] = search.search(emb, 1)[1][:, 0]
    finally:
        model.train(was_training)
    return score(truth, gallery[idx], radii=RADII_KM)


def _metric_row(val: dict[str, Any] | None) -> dict[str, Any]:
    if val is None:
        return {"val_n": 0}
    row: dict[str, Any] = {
        "val_n": val["n"],
        "median_km": val["median_km"],
        "mean_km": val["mean_km"],
        "geoscore": val["geoscore"],
    }
    for r in RADII_KM:
        row[f"acc_{r:g}km"] = val["accuracy"][f"{r:g}"]
    return row


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class TrainingInterrupted(TrainingError):
    """Ctrl-C (SIGINT) stopped a run after its current step; the checkpoint to resume from was
    written first (``checkpoint`` is its path)."""

    def __init__(self, message: str, *, checkpoint: Path, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.checkpoint = checkpoint


class _InterruptFlag:
    """The first SIGINT asks the run to stop after the current step (a second one stops it at
    once, as usual). Installed only in the main thread of a one-process run: the processes of
    a multi-device run would have to agree on the step to stop at."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator[_InterruptFlag]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # a second Ctrl-C: stop now
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self.requested = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def train(
    config: TrainConfig,
    *,
    on_event: Callable[[str], None] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune) GeoCLIP's heads on cached CLIP embeddings; see the module docstring.

    ``on_event(message)``, ``on_step(StepInfo)`` and ``on_epoch(metrics_row)`` are called on
    global rank 0 only. Returns what the run did; the model is ``result.model_dir``."""
    config.check()
    _check_lightning()
    say = on_event or (lambda _m: None)
    run = RunDir(config.out)
    data = load_data(config)
    init = initial_model(config.init, config.add_sigmas, config.seed)
    check_backbone(data, init)
    fabric = _fabric(config)
    ckpt = run.prepare(config.resume)
    if ckpt is not None:
        _check_trajectory(ckpt, config, run)

    fabric.launch()
    rank, world = int(fabric.global_rank), int(fabric.world_size)
    rank0 = rank == 0
    if not rank0:  # only rank 0 reports
        say, on_step, on_epoch = (lambda _m: None), None, None

    if ckpt is None:
        model = TrainableHeads(init.state, init.sigmas, where=f"initial model {init.source}")
    else:
        model = TrainableHeads(ckpt["model"], ckpt["sigmas"], where=str(run.ckpt))
    model.freeze(image=config.freeze_image, capsules=config.freeze_capsules)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("nothing to train: the image head and every capsule are frozen", hint="freeze fewer parts")
    module = fabric.setup_module(model)  # on its device before the optimizer (and its restored state) sees it
    optimizer = adamw(params, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
    queue = GPSQueue(config.queue_size, seed=config.seed)
    start_epoch, start_batch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    queue_digests: list[str] = []
    carry = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            queue.load_state_dict(ckpt["queue"])
        except (ValueError, KeyError, RuntimeError, AssertionError) as e:
            raise TrainingError(
                f"the checkpoint {run.ckpt} does not fit this run: {e}", hint=f"delete {run.ckpt} to restart"
            ) from e
        start_epoch, start_batch, global_step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["global_step"])
        history = list(ckpt.get("metrics", []))
        best = ckpt.get("best")
        carry.update(ckpt.get("carry", {}))
        _restore_rng(ckpt.get("rng"))
        say(f"resuming {run.root} at epoch {start_epoch + 1}, batch {start_batch + 1} (step {global_step})")

    optimizer = fabric.setup_optimizers(optimizer)
    device = fabric.device
    step = GeoCLIPStep(
        module, model.b_matrices(), queue, device, world=world, rank=rank, gather=_gatherer(fabric.device) if world > 1 else None
    )
    n_train = len(data.train)
    n_batches = batches_per_epoch(n_train, config.batch_size)
    val_feats = data.val.features(np.arange(len(data.val))) if (rank0 and data.val is not None) else None
    described = data.describe()
    writer = _tensorboard(run.root) if rank0 else None

    def run_info(status: str) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "geofast_version": __version__,
            "status": status,
            "config": config.as_dict(),
            "data": described,
            "init": init.source,
            "sigmas": list(init.sigmas),
            "world_size": world,
            "epochs_done": len(history),
            "global_step": global_step,
            "best": best,
            "queue_sha256_per_rank": queue_digests,
            "model": "model" if run.model.is_dir() else None,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def checkpoint(epoch: int, batch: int) -> None:
        run.save_checkpoint(
            {
                "format": CKPT_FORMAT,
                "version": CKPT_VERSION,
                "geofast_version": __version__,
                "trajectory": json.dumps(config.trajectory(), sort_keys=True),
                "data": json.dumps(described, sort_keys=True),
                "epoch": epoch,
                "batch": batch,
                "global_step": global_step,
                "model": model.release_state(),
                "sigmas": list(model.sigmas),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "queue": queue.state_dict(),
                "rng": _rng_state(),
                "metrics": history,
                "best": best,
                "carry": dict(carry),
            }
        )

    if rank0:
        run.write_run(run_info("running"))
    fabric.barrier()

    interrupt = _InterruptFlag()

    def stop(at: str) -> TrainingInterrupted:
        if rank0:
            run.write_run(run_info("interrupted"))
        return TrainingInterrupted(
            f"training interrupted {at} (step {global_step:,}); checkpoint written to {run.ckpt}",
            checkpoint=run.ckpt,
            hint=f"continue it with resume (the same command plus --resume; run folder {run.root})",
        )

    with interrupt.installed(world == 1):
        last_ckpt = time.monotonic()
        for epoch in range(start_epoch, config.epochs):
            order = epoch_order(n_train, config.seed, epoch)
            lr = float(optimizer.param_groups[0]["lr"])
            t_epoch = time.perf_counter()
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                carry = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
            for b in range(first, n_batches):
                t0 = time.perf_counter()
                positions = global_batch(order, b, config.batch_size)
                g = int(positions.shape[0])
                sizes = [rank_slice(g, world, r)[1] - rank_slice(g, world, r)[0] for r in range(world)]
                lo, hi = rank_slice(g, world, rank)
                mine = positions[lo:hi]
                optimizer.zero_grad(set_to_none=True)
                loss = step(data.train.features(mine), data.train.latlon[mine], sizes)
                fabric.backward(loss)
                optimizer.step()
                value = loss.detach()
                if world > 1:
                    value = fabric.all_reduce(value, reduce_op="mean")
                loss_value = float(value)
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the loss became {loss_value} at epoch {epoch + 1}, step {global_step + 1}",
                        hint="lower the learning rate",
                    )
                global_step += 1
                dt = time.perf_counter() - t0
                carry["loss_sum"] += loss_value * g
                carry["samples"] += g
                carry["seconds"] += dt
                if on_step is not None:
                    on_step(StepInfo(epoch + 1, config.epochs, b + 1, n_batches, global_step, loss_value, g / max(dt, 1e-9)))
                due = (config.checkpoint_every_steps is not None and global_step % config.checkpoint_every_steps == 0) or (
                    time.monotonic() - last_ckpt >= config.checkpoint_every_s
                )
                if rank0 and due and b + 1 < n_batches:
                    checkpoint(epoch, b + 1)
                    last_ckpt = time.monotonic()
                if interrupt.requested:
                    if rank0:
                        checkpoint(epoch, b + 1)
                    raise stop(f"in epoch {epoch + 1} after batch {b + 1} of {n_batches}")
            scheduler.step()
            queue_digests = _queue_digests(fabric, queue, world)

            if rank0:
                val = (
                    evaluate(model, data.gallery, val_feats, data.val.latlon)
                    if (data.val is not None and val_feats is not None)
                    else None
                )
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": global_step,
                    "loss": carry["loss_sum"] / max(carry["samples"], 1),
                    "lr": lr,
                    "logit_scale": math.exp(min(float(model.logit_scale.detach()), LOGIT_SCALE_MAX)),
                    "samples_per_s": carry["samples"] / max(carry["seconds"], 1e-9),
                    "epoch_s": time.perf_counter() - t_epoch,
                    **_metric_row(val),
                }
                history.append(row)
                improved = best is None or val is None or (row.get("geoscore") or 0.0) > (best.get("geoscore") or 0.0)
                if improved:
                    best = dict(row)
                    _save_model(run, model, data, init, config, row)
                run.write_metrics(history)
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k != "epoch":
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
                checkpoint(epoch + 1, 0)
                last_ckpt = time.monotonic()
                run.write_run(run_info("running"))
                if on_epoch is not None:
                    on_epoch(dict(row, best=improved))
            fabric.barrier()
            if interrupt.requested:  # the epoch's checkpoint is written: stop here
                raise stop(f"after epoch {epoch + 1}")

    if rank0:
        if not run.model.is_dir():  # resumed after the last epoch's checkpoint but before its model write
            _save_model(run, model, data, init, config, history[-1] if history else {})
        run.write_run(run_info("completed"))
        if writer is not None:
            writer.close()
    fabric.barrier()
    best_epoch = int(best["epoch"]) if best else None
    return TrainResult(
        run_dir=run.root,
        model_dir=run.model,
        epochs=len(history),
        global_step=global_step,
        world_size=world,
        global_rank=rank,
        resumed=ckpt is not None,
        best_epoch=best_epoch,
        best=best,
        metrics=history,
        data=described,
    )


def _check_trajectory(ckpt: dict[str, Any], config: TrainConfig, run: RunDir) -> None:
    try:
        before = json.loads(ckpt["trajectory"])
    except (TypeError, ValueError) as e:
        raise TrainingError(f"{run.ckpt} is not a geofast training checkpoint", hint=f"delete {run.ckpt} to restart") from e
    now = config.trajectory()
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in changed[:4])
        raise TrainingError(
            f"the run in {run.root} was started with other settings ({shown})",
            hint="resume with the run's own settings (see its run.json), or train into a new folder",
        )


def _queue_digests(fabric: Any, queue: GPSQueue, world: int) -> list[str]:
    """Every rank's queue digest (rank order); they must all be equal: each rank's queue holds
    the gathered batches of every rank."""
    if world == 1:
        return [queue.digest()]
    digest = torch.tensor(np.frombuffer(bytes.fromhex(queue.digest()), dtype=np.uint8).astype(np.int64))
    everyone = [bytes(d.to(torch.uint8).tolist()).hex() for d in _all_gather(digest, fabric.device)]
    if len(set(everyone)) != 1:
        raise TrainingError("the GPS queues of the ranks differ (a bug in geofast: please report it)")
    return everyone


def _save_model(
    run: RunDir, model: TrainableHeads, data: TrainingData, init: InitialModel, config: TrainConfig, row: dict[str, Any]
) -> None:
    from geofast.models.release import backbone_record, write_release

    info = data.train.db.manifest.get("backbone") or {}
    source = info.get("source")
    geofast_block = {
        "trained_by": f"geofast {__version__}",
        "init": init.source,
        "epoch": row.get("epoch"),
        "global_step": row.get("step"),
        "validation": {k: row.get(k) for k in ("val_n", "median_km", "geoscore", *(f"acc_{r:g}km" for r in RADII_KM))},
        "train_rows": len(data.train),
        "database": str(data.train.db.path),
        "backbone_source": source,
        "backbone_config_sha256": info.get("config_sha256"),
        "backbone_probe": info.get("probe"),
    }
    backbone = backbone_record(source) if source else dict(init.release_backbone or {}) or backbone_record(None)
    write_release(run.model, model.release_state(), model.sigmas, data.gallery, backbone=backbone, geofast=geofast_block)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensorboard(root: Path) -> Any:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(root / "tensorboard"))
    except Exception:
        return None


__all__ = ["METRIC_FIELDS", "RunDir", "StepInfo", "TrainResult", "evaluate", "train"]
