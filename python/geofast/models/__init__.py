"""Model loading: the CLIP backbone, GeoCLIP/GeoMapCLIP heads and their weights registry."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from geofast.models.registry import MODELS, ModelFiles, ModelSpec, resolve

if TYPE_CHECKING:
    from geofast.models.clip import Backbone
    from geofast.models.heads import Heads


def load_model_parts(
    name: str, *, clip: str | os.PathLike[str] | None = None, device: str | None = None
) -> tuple[Backbone, Heads, ModelFiles]:
    """Backbone + heads + file locations of a registered model (backbone first: fail fast)."""
    from geofast.models.clip import load_backbone
    from geofast.models.heads import Heads

    files = resolve(name)
    backbone = load_backbone(clip, device)
    heads = Heads.load(files)
    return backbone, heads, files


__all__ = ["MODELS", "ModelFiles", "ModelSpec", "load_model_parts", "resolve"]
