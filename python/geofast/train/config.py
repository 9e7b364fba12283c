"""The settings of a training run (plain data: importing this module imports neither torch nor Lightning)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geofast.errors import InputError, ParameterError

#: GeoCLIP's released recipe (Vivanco Cepeda et al. 2023; geoclip's train()).
DEFAULT_BATCH_SIZE = 512
DEFAULT_QUEUE_SIZE = 4096
DEFAULT_LR = 3e-5
DEFAULT_WEIGHT_DECAY = 1e-6
DEFAULT_LR_DECAY = 0.87
DEFAULT_EPOCHS = 10
DEFAULT_GALLERY_SIZE = 100_000
#: Held-out share of the training database when no validation database is given.
DEFAULT_VAL_FRACTION = 0.05
#: Validation rows scored each epoch at most (a fixed random subset beyond that).
DEFAULT_VAL_MAX_ROWS = 10_000
DEFAULT_CHECKPOINT_EVERY_S = 600.0
INITS = ("geoclip", "geomapclip", "scratch")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``batch_size`` is the *global* batch (split over
    every device of every node), so a run gives the same result on any number of devices."""

    db: str | os.PathLike[str]
    out: str | os.PathLike[str]
    val: str | os.PathLike[str] | None = None
    #: share of ``db`` held out for validation (default 0.05 without ``val``; 0 disables validation)
    val_fraction: float | None = None
    #: "geoclip", "geomapclip", "scratch", or a model folder (a previous run, a geoclip release)
    init: str = "geoclip"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    queue_size: int = DEFAULT_QUEUE_SIZE
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    lr_decay: float = DEFAULT_LR_DECAY
    devices: int = 1
    num_nodes: int = 1
    #: "auto" (CUDA when available, else CPU), "cpu" or "cuda"
    accelerator: str = "auto"
    resume: bool = False
    seed: int = 0
    #: only rows inside (lat_min, lon_min, lat_max, lon_max); lon_min > lon_max crosses the antimeridian
    region: tuple[float, float, float, float] | None = None
    freeze_image: bool = False
    #: indices of the initial model's capsules whose MLPs stay fixed
    freeze_capsules: tuple[int, ...] = ()
    #: σ of new capsules added next to the initial model's (e.g. 4096 for street level)
    add_sigmas: tuple[float, ...] = ()
    gallery_size: int = DEFAULT_GALLERY_SIZE
    val_max_rows: int = DEFAULT_VAL_MAX_ROWS
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S
    #: also checkpoint every N optimizer steps (None: by time and at each epoch end only)
    checkpoint_every_steps: int | None = None

    def check(self) -> None:
        """Cheap checks of the numbers and choices (before anything is opened or loaded)."""
        for name, value, low in (
            ("epochs", self.epochs, 1),
            ("batch_size", self.batch_size, 1),
            ("queue_size", self.queue_size, 0),
            ("devices", self.devices, 1),
            ("num_nodes", self.num_nodes, 1),
            ("gallery_size", self.gallery_size, 1),
            ("val_max_rows", self.val_max_rows, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ParameterError(f"{name} must be a whole number >= {low}, got {value!r}")
        for fname, number in (("lr", self.lr), ("weight_decay", self.weight_decay), ("lr_decay", self.lr_decay)):
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
                raise ParameterError(f"{fname} must be a finite number >= 0, got {number!r}")
        if self.lr <= 0 or self.lr_decay <= 0:
            raise ParameterError(f"lr and lr_decay must be > 0, got {self.lr} and {self.lr_decay}")
        if self.val_fraction is not None and not (0.0 <= self.val_fraction < 1.0):
            raise ParameterError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val is not None and self.val_fraction:
            raise InputError("give a validation database or a validation fraction, not both")
        if self.accelerator not in ("auto", "cpu", "cuda", "gpu"):
            raise ParameterError(f"accelerator must be auto, cpu or cuda, got {self.accelerator!r}")
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s > 0):
            raise ParameterError(f"checkpoint_every_s must be > 0, got {self.checkpoint_every_s}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ParameterError(f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        for s in self.add_sigmas:
            if not (math.isfinite(s) and s > 0):
                raise ParameterError(f"a new capsule's sigma must be a positive number, got {s}")
        if any(i < 0 for i in self.freeze_capsules):
            raise ParameterError(f"capsule indices start at 0, got {list(self.freeze_capsules)}")
        if self.region is not None:
            from geofast.gallery import parse_region

            parse_region(",".join(str(v) for v in self.region))
        if not str(self.init).strip():
            raise InputError("init must name a model: geoclip, geomapclip, scratch or a model folder")

    @property
    def effective_val_fraction(self) -> float:
        if self.val is not None:
            return 0.0
        return DEFAULT_VAL_FRACTION if self.val_fraction is None else float(self.val_fraction)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("db", "out", "val"):
            if d[key] is not None:
                d[key] = str(Path(d[key]).expanduser().resolve())
        d["region"] = list(self.region) if self.region is not None else None
        d["freeze_capsules"] = list(self.freeze_capsules)
        d["add_sigmas"] = [float(s) for s in self.add_sigmas]
        return d

    def trajectory(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one (not epochs, devices,
        checkpoint frequency: those may change on resume)."""
        d = self.as_dict()
        for key in (
            "out",
            "epochs",
            "devices",
            "num_nodes",
            "accelerator",
            "resume",
            "checkpoint_every_s",
            "checkpoint_every_steps",
        ):
            d.pop(key, None)
        d["val_fraction"] = self.effective_val_fraction
        return d


__all__ = ["INITS", "TrainConfig"]
