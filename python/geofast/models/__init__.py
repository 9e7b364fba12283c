"""Model loading: the CLIP backbone, GeoCLIP/GeoMapCLIP heads and their weights registry."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geofast.models.registry import MODELS, ModelFiles, ModelSpec, resolve

if TYPE_CHECKING:
    from geofast.models.clip import Backbone
    from geofast.models.heads import Heads


@dataclass
class LoadedHeads:
    """A model's trained heads with what comes with them."""

    heads: Heads
    default_gallery: Path
    sigmas: tuple[float, ...]
    #: The backbone the model was trained with, when its folder records one (else None).
    backbone_source: str | None = None


def load_heads(name: str | os.PathLike[str]) -> LoadedHeads:
    """Heads of a registered model ("geoclip", "geomapclip") or of a model folder: a ``geoclip``
    release, a ``geofast train`` run, or a hub id of a release (see :mod:`geofast.models.release`)."""
    from geofast.models.heads import Heads
    from geofast.models.release import find_model_folder, read_release

    if isinstance(name, str) and name.strip().lower() in MODELS:
        files = resolve(name)
        return LoadedHeads(Heads.load(files), files.default_gallery, files.spec.sigmas)
    folder = find_model_folder(name)
    if folder is None:
        resolve(str(name))  # raises "unknown model" with the registered names
    assert folder is not None
    release = read_release(folder)
    gallery = release.gallery
    assert gallery is not None  # read_release checks it for full models
    return LoadedHeads(release.heads(), gallery, release.sigmas, release.backbone_source)


def load_model_parts(
    name: str | os.PathLike[str],
    *,
    clip: str | os.PathLike[str] | None = None,
    device: str | None = None,
    precision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Backbone, LoadedHeads]:
    """Backbone + heads of a model. Without ``clip`` or ``$GEOFAST_CLIP``, a model folder's
    recorded backbone is used when it is a local folder that exists."""
    from geofast.models.clip import CLIP_ENV, load_backbone

    loaded = load_heads(name)
    if clip is None and not os.environ.get(CLIP_ENV, "").strip() and loaded.backbone_source:
        if Path(loaded.backbone_source).expanduser().is_dir():
            clip = loaded.backbone_source
    backbone = load_backbone(clip, device, precision=precision, cache_dir=cache_dir)
    return backbone, loaded


__all__ = ["MODELS", "LoadedHeads", "ModelFiles", "ModelSpec", "load_heads", "load_model_parts", "resolve"]
