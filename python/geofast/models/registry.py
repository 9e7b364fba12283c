"""Where each pretrained model's head weights and default gallery live.

GeoCLIP (Vivanco Cepeda, Nayak & Shah, NeurIPS 2023) and GeoMapCLIP ship their trained heads —
the image MLP 768→768→512, the location encoder (three random-Fourier-feature capsules at
σ = 2⁰, 2⁴, 2⁸ with their stored B matrices) and the logit scale — plus their GPS galleries inside
the PyPI packages ``geoclip`` and ``geomapclip``. The files are located with
:func:`importlib.util.find_spec`, without importing those packages (which would pull in
torchvision and print warnings).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from geofast.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """A pretrained model's files, relative to its package directory."""

    name: str
    package: str
    pin: str
    description: str
    default_gallery: str
    #: σ of the location encoder's random-Fourier-feature capsules (their B matrices are stored).
    sigmas: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8)
    image_mlp: str = "model/weights/image_encoder_mlp_weights.pth"
    location_encoder: str = "model/weights/location_encoder_weights.pth"
    logit_scale: str = "model/weights/logit_scale_weights.pth"


MODELS: dict[str, ModelSpec] = {
    "geoclip": ModelSpec(
        name="geoclip",
        package="geoclip",
        pin="geoclip==1.3.0",
        description="GeoCLIP: photos; gallery of 100K MP-16 GPS points",
        default_gallery="model/gps_gallery/coordinates_100K.csv",
    ),
    "geomapclip": ModelSpec(
        name="geomapclip",
        package="geomapclip",
        pin="geomapclip==0.0.3",
        description="GeoMapCLIP: map images; Fibonacci-lattice land gallery of 288,686 points",
        default_gallery="model/gps_gallery/fibonacci_lattice_land.csv",
    ),
}


@dataclass(frozen=True)
class ModelFiles:
    """Absolute paths of one model's files."""

    spec: ModelSpec
    root: Path
    image_mlp: Path
    location_encoder: Path
    logit_scale: Path
    default_gallery: Path


def package_dir(package: str, pin: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the package {package!r} that ships these weights is not installed",
            hint=f"pip install '{pin}'",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(name: str) -> ModelFiles:
    """Locate every file of the model called ``name`` ("geoclip" or "geomapclip")."""
    key = name.strip().lower()
    if key not in MODELS:
        raise ModelError(f"unknown model {name!r}", hint=f"choose one of: {', '.join(sorted(MODELS))}")
    spec = MODELS[key]
    root = package_dir(spec.package, spec.pin)
    files = ModelFiles(
        spec=spec,
        root=root,
        image_mlp=root / spec.image_mlp,
        location_encoder=root / spec.location_encoder,
        logit_scale=root / spec.logit_scale,
        default_gallery=root / spec.default_gallery,
    )
    for path in (files.image_mlp, files.location_encoder, files.logit_scale, files.default_gallery):
        if not path.is_file():
            raise ModelError(
                f"{spec.package} is installed but {path} is missing",
                hint=f"reinstall it: pip install --force-reinstall '{spec.pin}'",
            )
    return files
