"""Model folders: ``geoclip`` 1.3.0's release format, which geofast also uses for the models it trains.

A release folder (what ``geoclip.GeoCLIP.from_pretrained(DIR)`` loads) holds::

    config.json        {"model_type": "geoclip-geolocation", "format_version": 1,
                        "sigma": [1, 16, 256], "gallery_file": "gallery.csv",
                        "backbone": {"repo_id": "openai/clip-vit-large-patch14", "revision": "main"}}
    model.safetensors  logit_scale (scalar: the log of the scale), image_encoder.mlp.{0,2}.{weight,bias},
                       location_encoder.LocEnc{i}.capsule.0.b (the stored B matrices),
                       location_encoder.LocEnc{i}.capsule.{1,3,5}.*, location_encoder.LocEnc{i}.head.0.*
    gallery.csv        the GPS gallery, columns LAT,LON

A location-encoder-only release (``geoclip.LocationEncoder.from_pretrained``) has ``model_type``
``"geoclip-location-encoder"`` and the encoder's keys without the prefix. geofast adds a
``"geofast"`` block to ``config.json`` (the backbone the training database was encoded with,
provenance); ``geoclip`` ignores it. A training run folder (``geofast train --out RUN_DIR``)
keeps its best model as a release in ``RUN_DIR/model``; wherever a model name is accepted, a
release folder, a run folder or a Hugging Face hub id of a release works too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast._io import atomic_write_text, current_umask, make_staging_dir, replace_dir
from geofast.errors import ModelError

if TYPE_CHECKING:
    import torch

    from geofast.models.heads import Heads

MODEL_TYPE = "geoclip-geolocation"
LOCATION_MODEL_TYPE = "geoclip-location-encoder"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GALLERY = "gallery.csv"
#: The folder inside a training run that holds its model.
RUN_MODEL = "model"
RUN_FILE = "run.json"
DEFAULT_BACKBONE = {"repo_id": "openai/clip-vit-large-patch14", "revision": "main"}
DEFAULT_SIGMAS: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8)


@dataclass
class Release:
    """A release folder's parsed config and tensors."""

    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    name: str

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.config["sigma"])

    @property
    def gallery(self) -> Path | None:
        name = self.config.get("gallery_file")
        return None if not isinstance(name, str) else self.path / name

    @property
    def geofast(self) -> dict[str, Any]:
        block = self.config.get("geofast")
        return dict(block) if isinstance(block, dict) else {}

    @property
    def backbone_source(self) -> str | None:
        """The backbone the model was trained on: geofast's record, else the config's hub id."""
        src = self.geofast.get("backbone_source")
        if isinstance(src, str) and src:
            return src
        repo = (self.config.get("backbone") or {}).get("repo_id")
        return str(repo) if repo else None

    def heads(self) -> Heads:
        from geofast.models.heads import Heads

        if self.config["model_type"] != MODEL_TYPE:
            raise ModelError(
                f"{self.path} holds only a location encoder ({self.config['model_type']})",
                hint="locating photos needs a full model (model_type geoclip-geolocation)",
            )
        return Heads.from_release_state(self.name, self.state, str(self.path / WEIGHTS))


def safe_name(text: str) -> str:
    """A file-name-safe model name (used in gallery-cache file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def find_model_folder(source: str | os.PathLike[str]) -> Path | None:
    """The release folder that ``source`` names: a release folder, a training run folder (its
    ``model/``), or a hub id of a release (cache first, then the network unless offline).
    None when ``source`` is none of these (a registered name like "geoclip")."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / CONFIG).is_file():
            return path
        if (path / RUN_FILE).is_file() or (path / RUN_MODEL).is_dir():
            model = path / RUN_MODEL
            if not (model / CONFIG).is_file():
                raise ModelError(
                    f"training run {path} has no model yet (it is written after the first epoch)",
                    hint="let the run finish an epoch, or resume it",
                )
            return model
        raise ModelError(
            f"{path} is neither a model folder (config.json, model.safetensors) nor a training run",
            hint="pass a folder written by geofast train or geofast export, or a geoclip release",
        )
    if path.exists():
        raise ModelError(f"model {text}: is a file; pass the folder that holds config.json")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.is_absolute():
        return _hub_snapshot(text)
    return None


def _hub_snapshot(repo_id: str) -> Path:
    from geofast.models.hub import snapshot

    return snapshot(
        repo_id,
        [CONFIG, WEIGHTS, "*.csv"],
        what="model release",
        hint="pass a model folder (a geofast train run, a geofast export, a geoclip release) or geoclip / geomapclip",
    )


def read_release(folder: str | os.PathLike[str], *, name: str | None = None) -> Release:
    """Read and check a release folder's ``config.json`` and ``model.safetensors``."""
    path = Path(folder).expanduser()
    cpath = path / CONFIG
    try:
        config = json.loads(cpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {cpath}: {e}", hint="pass a geoclip release or geofast model folder") from e
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in (MODEL_TYPE, LOCATION_MODEL_TYPE) or config.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{cpath} is not a geoclip release (model_type {kind!r}, format_version {config.get('format_version')!r})",
            hint=f"expected model_type {MODEL_TYPE!r} and format_version {FORMAT_VERSION}",
        )
    sigma = config.get("sigma")
    if not isinstance(sigma, list) or not sigma or not all(isinstance(s, (int, float)) and s > 0 for s in sigma):
        raise ModelError(f"{cpath}: 'sigma' must be a non-empty list of positive numbers, got {sigma!r}")
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise ModelError(f"model folder {path} has no {WEIGHTS}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(wpath), device="cpu")
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"cannot read weights {wpath}: {e}", hint="the file is damaged; export or train it again") from e
    if kind == LOCATION_MODEL_TYPE:
        from geofast.models.heads import LOCATION_PREFIX

        state = {LOCATION_PREFIX + k: v for k, v in state.items()}
    n_caps = sum(1 for k in state if k.endswith(".capsule.0.b"))
    if n_caps != len(sigma):
        raise ModelError(f"{path}: config.json lists {len(sigma)} sigmas but the weights hold {n_caps} capsules")
    if kind == MODEL_TYPE:
        gallery = config.get("gallery_file")
        if not isinstance(gallery, str) or Path(gallery).name != gallery or not (path / gallery).is_file():
            raise ModelError(f"{cpath}: gallery_file {gallery!r} must name a CSV file inside {path}")
    label = name or (path.parent.name if path.name == RUN_MODEL else path.name)
    return Release(path=path, config=config, state=state, name=safe_name(label))


def write_release(
    out: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor],
    sigmas: Sequence[float],
    gallery_latlon: np.ndarray,
    *,
    backbone: Mapping[str, str] | None = None,
    geofast: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete release folder: built beside ``out`` and swapped in by renames, so a
    reader finds the old folder or the new one, never a half-written one."""
    from safetensors.torch import save_file

    target = Path(out).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = make_staging_dir(target)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(staged / WEIGHTS), metadata={"format": "pt"})
        os.chmod(staged / WEIGHTS, 0o666 & ~current_umask())  # safetensors creates it 0600
        write_gallery_csv(staged / GALLERY, gallery_latlon)
        config: dict[str, Any] = {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "sigma": [_number(s) for s in sigmas],
            "gallery_file": GALLERY,
            "backbone": dict(backbone or DEFAULT_BACKBONE),
        }
        if geofast:
            config["geofast"] = dict(geofast)
        atomic_write_text(staged / CONFIG, json.dumps(config, indent=2) + "\n")
        replace_dir(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target


def write_gallery_csv(path: Path, latlon: np.ndarray) -> None:
    """``LAT,LON`` rows (geoclip's gallery layout), shortest round-trip float64 decimals."""
    from geofast._io import atomic_write

    ll = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)

    def write(f: Any) -> None:
        f.write(b"LAT,LON\n")
        for start in range(0, ll.shape[0], 65536):
            blk = ll[start : start + 65536]
            f.write("".join(f"{a!r},{b!r}\n" for a, b in blk.tolist()).encode())

    atomic_write(path, write)


def backbone_record(source: str | None) -> dict[str, str]:
    """The ``backbone`` entry of a release for a database's recorded backbone source: a hub id
    as itself, a Hugging Face cache snapshot as its repo and commit, anything else (a local
    folder, unknown) as ViT-L/14 at ``main``."""
    if not source:
        return dict(DEFAULT_BACKBONE)
    m = re.search(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})", source)
    if m:
        return {"repo_id": f"{m.group(1)}/{m.group(2)}", "revision": m.group(3)}
    if source.count("/") == 1 and not Path(source).expanduser().exists() and not source.startswith((".", "/", "~")):
        return {"repo_id": source, "revision": "main"}
    return dict(DEFAULT_BACKBONE)


@dataclass
class ModelState:
    """A model's tensors in the release layout, wherever they came from."""

    name: str
    state: dict[str, torch.Tensor]
    sigmas: tuple[float, ...]
    #: the model's default gallery file (CSV)
    gallery: Path
    #: the release ``backbone`` record ({repo_id, revision})
    backbone: dict[str, str]
    #: geofast's provenance block of a model it trained (empty otherwise)
    geofast: dict[str, Any]


def load_model_state(source: str | os.PathLike[str]) -> ModelState:
    """The tensors of a registered model ("geoclip", "geomapclip"), a model or run folder, or a
    hub id, converted to the release layout (what training starts from and export writes)."""
    import torch

    from geofast.models.heads import IMAGE_PREFIX, LOCATION_PREFIX, LOGIT_SCALE
    from geofast.models.registry import MODELS, resolve

    if isinstance(source, str) and source.strip().lower() in MODELS:
        files = resolve(source)
        parts = {}
        for key, path in (("image", files.image_mlp), ("location", files.location_encoder), ("scale", files.logit_scale)):
            try:
                parts[key] = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ModelError(f"cannot read weights {path}: {e}") from e
        state = {LOGIT_SCALE: torch.as_tensor(parts["scale"]).detach().to(torch.float32).reshape(())}
        state.update({IMAGE_PREFIX + k: v for k, v in parts["image"].items()})
        state.update({LOCATION_PREFIX + k: v for k, v in parts["location"].items()})
        return ModelState(files.spec.name, state, files.spec.sigmas, files.default_gallery, dict(DEFAULT_BACKBONE), {})
    folder = find_model_folder(source)
    if folder is None:
        resolve(str(source))  # "unknown model" with the registered names
    assert folder is not None
    release = read_release(folder)
    if release.config["model_type"] != MODEL_TYPE or release.gallery is None:
        raise ModelError(f"{folder} holds only a location encoder", hint="use a full model (model_type geoclip-geolocation)")
    backbone = release.config.get("backbone")
    record = dict(backbone) if isinstance(backbone, dict) else dict(DEFAULT_BACKBONE)
    return ModelState(release.name, release.state, release.sigmas, release.gallery, record, release.geofast)


def _number(x: float) -> int | float:
    f = float(x)
    return int(f) if math.isfinite(f) and f.is_integer() else f


__all__ = [
    "DEFAULT_SIGMAS",
    "LOCATION_MODEL_TYPE",
    "MODEL_TYPE",
    "ModelState",
    "Release",
    "backbone_record",
    "find_model_folder",
    "load_model_state",
    "read_release",
    "safe_name",
    "write_gallery_csv",
    "write_release",
]
