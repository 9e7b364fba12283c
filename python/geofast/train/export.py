"""``geofast export``: a model in the release format of the ``geoclip`` package (1.3.0).

The output loads with ``geoclip.GeoCLIP.from_pretrained(DIR)`` (which fetches the CLIP backbone
named in ``config.json``) and with every geofast entry point (``--model DIR``,
``Geolocator.from_pretrained(DIR)``, ``LocationEncoder.from_pretrained(DIR)``). The source may be
a training run, a model folder, or a packaged model ("geoclip", "geomapclip"); the tensors are
read, checked by loading them into geofast's heads, and written afresh (never copied blindly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofast.errors import InputError


@dataclass
class ExportReport:
    path: Path
    source: str
    sigmas: tuple[float, ...]
    gallery_points: int
    backbone: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": self.source,
            "sigma": list(self.sigmas),
            "gallery_points": self.gallery_points,
            "backbone": dict(self.backbone),
        }


def export_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    gallery: str | os.PathLike[str] | np.ndarray | None = None,
    backbone: dict[str, str] | None = None,
) -> ExportReport:
    """Write ``source`` to the folder ``out`` (replaced atomically) as a ``geoclip`` release.
    ``gallery``: another gallery (CSV with lat/lon columns, ``.npy`` or ``(N, 2)`` array) instead
    of the model's own; ``backbone``: the ``{repo_id, revision}`` record to write."""
    from geofast.gallery import check_latlon_array, read_gallery_file
    from geofast.models.heads import Heads
    from geofast.models.release import load_model_state, write_release

    model = load_model_state(source)
    Heads.from_release_state(model.name, model.state, str(source))  # strict shape/key check
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file", hint="choose a folder to export into")
    if target.exists() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise InputError(f"{target} is not empty and is not a model folder", hint="choose an empty or new folder")
    if gallery is None:
        latlon = read_gallery_file(model.gallery)
    elif isinstance(gallery, np.ndarray):
        latlon = check_latlon_array(gallery, "gallery")
    else:
        latlon = read_gallery_file(gallery)
    record = dict(backbone or model.backbone)
    if set(record) != {"repo_id", "revision"} or not all(isinstance(v, str) and v for v in record.values()):
        raise InputError(f"backbone must be {{'repo_id': ..., 'revision': ...}}, got {record}")
    try:
        write_release(target, model.state, model.sigmas, latlon, backbone=record, geofast=model.geofast or None)
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}", hint="choose a writable folder") from e
    return ExportReport(target, str(source), model.sigmas, int(latlon.shape[0]), record)


__all__ = ["ExportReport", "export_model"]
