"""``geofast train``: train or fine-tune GeoCLIP on an image database, on one or many devices."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from geofast import _console
from geofast.cli._app import app

_FT = "Fine-tuning"
#: Exit code after Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130
_RUN = "Devices and run folder"


def _numbers(text: str | None, what: str, kind: type[int] | type[float]) -> tuple[Any, ...]:
    from geofast.errors import InputError

    if not text:
        return ()
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        noun = "whole numbers" if kind is int else "numbers"
        raise InputError(f"{what} {text!r} must be {noun} separated by commas") from None


@app.command("train")
def train(
    db: Path = typer.Option(..., "--db", metavar="TRAIN_DB", help="Image database to train on (geofast db build)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="RUN_DIR", help="Run folder: checkpoints, metrics and the model."),
    val: Path | None = typer.Option(
        None, "--val", metavar="VAL_DB", help="Validation database (default: hold out --val-fraction)."
    ),
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        min=0.0,
        max=0.99,
        metavar="F",
        help="Share of TRAIN_DB held out for validation (default 0.05; 0: none).",
    ),
    init: str = typer.Option(
        "geoclip", "--init", metavar="MODEL", help="Start from geoclip, geomapclip, scratch, or a model/run folder."
    ),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Epochs to train (a resumed run may be given more)."),
    batch_size: int = typer.Option(512, "--batch-size", "-b", min=1, help="Global batch size (split over all devices)."),
    queue_size: int = typer.Option(4096, "--queue-size", min=0, help="Earlier GPS kept as extra negatives (GeoCLIP's queue)."),
    lr: float = typer.Option(3e-5, "--lr", min=0.0, help="AdamW learning rate."),
    weight_decay: float = typer.Option(1e-6, "--weight-decay", min=0.0, help="AdamW weight decay."),
    lr_decay: float = typer.Option(0.87, "--lr-decay", min=0.0, help="Learning-rate factor per epoch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch order, validation split, gallery and new weights."),
    region: str | None = typer.Option(
        None,
        "--region",
        metavar="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX",
        rich_help_panel=_FT,
        help="Train (and validate) only on photos inside this box.",
    ),
    freeze_image: bool = typer.Option(False, "--freeze-image", rich_help_panel=_FT, help="Keep the image MLP fixed."),
    freeze_capsules: str | None = typer.Option(
        None,
        "--freeze-capsules",
        metavar="I,...",
        rich_help_panel=_FT,
        help="Keep these location capsules fixed (0 = σ 1, 1 = σ 16, 2 = σ 256).",
    ),
    add_sigma: str | None = typer.Option(
        None,
        "--add-sigma",
        metavar="SIGMA,...",
        rich_help_panel=_FT,
        help="Add capsules with these σ, e.g. 4096 for street level.",
    ),
    gallery_size: int = typer.Option(
        100_000,
        "--gallery-size",
        min=1,
        rich_help_panel=_FT,
        help="Gallery of the model: up to this many distinct training coordinates.",
    ),
    devices: int = typer.Option(1, "--devices", min=1, rich_help_panel=_RUN, help="Devices (GPUs, or CPU processes) per node."),
    num_nodes: int = typer.Option(
        1, "--num-nodes", min=1, rich_help_panel=_RUN, help="Nodes (launch one command per node, as Lightning)."
    ),
    accelerator: str = typer.Option(
        "auto", "--accelerator", metavar="auto|cpu|cuda", rich_help_panel=_RUN, help="auto (CUDA if available), cpu or cuda."
    ),
    resume: bool = typer.Option(
        False, "--resume", rich_help_panel=_RUN, help="Continue the run in RUN_DIR from its last checkpoint."
    ),
    checkpoint_every: float = typer.Option(
        600.0,
        "--checkpoint-every",
        min=1.0,
        metavar="SECONDS",
        rich_help_panel=_RUN,
        help="Checkpoint at least this often (and at each epoch end).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print only the run summary as JSON."),
) -> None:
    """Train or fine-tune GeoCLIP's heads on cached CLIP embeddings (the backbone is frozen: no image is decoded)."""
    from geofast.gallery import parse_region
    from geofast.train import TrainConfig
    from geofast.train.run import train as run_training

    with contextlib.suppress(ImportError):
        import lightning.fabric  # noqa: F401 - its import sets its logger to INFO; quiet it afterwards

        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    config = TrainConfig(
        db=db,
        out=out,
        val=val,
        val_fraction=val_fraction,
        init=init,
        epochs=epochs,
        batch_size=batch_size,
        queue_size=queue_size,
        lr=lr,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        resume=resume,
        seed=seed,
        region=parse_region(region),
        freeze_image=freeze_image,
        freeze_capsules=_numbers(freeze_capsules, "--freeze-capsules", int),
        add_sigmas=_numbers(add_sigma, "--add-sigma", float),
        gallery_size=gallery_size,
        checkpoint_every_s=checkpoint_every,
    )
    bar = _console.progress("training", unit="batches", transient=True, info=True)
    state: dict[str, Any] = {}

    def on_step(s: Any) -> None:
        if not progress:
            return
        if state.get("epoch") != s.epoch:  # one bar per epoch
            if "task" in state:
                bar.remove_task(state["task"])
            else:
                bar.start()
            state["epoch"] = s.epoch
            state["task"] = bar.add_task("", total=s.batches, completed=s.batch - 1, info="")
        info = f"epoch {s.epoch}/{s.epochs}, loss {s.loss:.4f}, {s.samples_per_s:,.0f} samples/s"
        bar.update(state["task"], completed=s.batch, info=info)

    def on_epoch(row: dict[str, Any]) -> None:
        if as_json:
            return
        val_part = ""
        if row.get("val_n"):
            accs = " / ".join(f"{row[f'acc_{r}km']:.1f}" for r in ("1", "25", "200", "750", "2500"))
            val_part = (
                f"; val acc 1/25/200/750/2500 km {accs} %, median {row['median_km']:.1f} km, GeoScore {row['geoscore']:.0f}"
            )
        mark = " [green](best)[/]" if row.get("best") else ""
        _console.err.print(
            f"epoch {row['epoch']}: loss {row['loss']:.4f}, {row['samples_per_s']:,.0f} samples/s{val_part}{mark}",
            highlight=False,
            markup=True,
        )

    from geofast.train.run import TrainingInterrupted

    try:
        result = run_training(
            config, on_event=lambda m: _console.err.print(f"[dim]{escape(m)}[/]", markup=True), on_step=on_step, on_epoch=on_epoch
        )
    except TrainingInterrupted as e:
        if "task" in state:
            bar.stop()
            state.pop("task")
        command = shlex.join(["geofast", *sys.argv[1:]] if "--resume" in sys.argv else ["geofast", *sys.argv[1:], "--resume"])
        _console.error_line(str(e), f"continue with: {command}")
        raise typer.Exit(INTERRUPTED) from None
    finally:
        if "task" in state:
            bar.stop()
    if result.global_rank != 0:  # the other processes of a multi-device run stay quiet
        return
    if as_json:
        _console.print_json(result.as_dict())
        return
    best = f"best epoch {result.best_epoch}" if result.best_epoch else "no epoch"
    _console.out.print(
        f"trained {result.epochs} epochs ({result.global_step:,} steps on {result.world_size} device(s)); {best}; "
        f"model in {result.model_dir} (use --model {result.run_dir})"
    )
