"""GPS embeddings without any image backbone: GeoCLIP's location encoder on its own.

GeoCLIP's and GeoMapCLIP's location encoders are useful beyond geolocation (the papers' "pre-trained
location encoder": GPS features for geo-aware classifiers). :class:`LocationEncoder` loads only
the location encoder of a registered model ("geoclip", "geomapclip"), of a model folder (a
``geofast train`` run, a ``geoclip`` release, a location-encoder-only release) or of a hub id,
and needs no CLIP weights::

    enc = LocationEncoder.from_pretrained("geoclip")
    emb = enc.encode([[48.8566, 2.3522], [40.7128, -74.006]])   # (2, 512) float32, L2-normalised

Equal Earth projection and Fourier features run in geofast's Rust kernels (float64 argument
reduction), the MLPs in torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from geofast.errors import ModelError

if TYPE_CHECKING:
    from geofast.models.heads import LocationEncoder as _Module


class LocationEncoder:
    """GeoCLIP's location encoder: ``(N, 2)`` latitude/longitude degrees → ``(N, 512)`` float32."""

    def __init__(self, module: _Module, *, name: str, sigmas: Sequence[float], digest: str) -> None:
        self.module = module.eval()
        self.name = name
        self.sigmas = tuple(float(s) for s in sigmas)
        #: sha256 of the encoder's tensors (what the gallery cache is keyed by)
        self.digest = digest

    dim = 512

    def __repr__(self) -> str:
        return f"LocationEncoder({self.name!r}, sigmas={list(self.sigmas)})"

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike[str] = "geoclip", *, device: str | None = "cpu") -> LocationEncoder:
        """Load the location encoder of ``name``: "geoclip", "geomapclip", a model folder or a run
        folder (``geofast train --out RUN_DIR``), or a hub id of a ``geoclip`` release."""
        import torch

        from geofast.models.clip import pick_device
        from geofast.models.heads import LocationEncoder as Module
        from geofast.models.heads import location_digest
        from geofast.models.registry import MODELS, resolve
        from geofast.models.release import find_model_folder, read_release

        if isinstance(name, str) and name.strip().lower() in MODELS:
            files = resolve(name)
            try:
                state = torch.load(files.location_encoder, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ModelError(f"cannot read weights {files.location_encoder}: {e}") from e
            label, sigmas = files.spec.name, files.spec.sigmas
        else:
            folder = find_model_folder(name)
            if folder is None:
                resolve(str(name))  # "unknown model" with the registered names
            assert folder is not None
            release = read_release(folder)
            from geofast.models.heads import LOCATION_PREFIX

            state = {k[len(LOCATION_PREFIX) :]: v for k, v in release.state.items() if k.startswith(LOCATION_PREFIX)}
            label, sigmas = release.name, release.sigmas
        module = Module(state, f"{label} location encoder").to(pick_device(device))
        return cls(module, name=label, sigmas=sigmas, digest=location_digest(state))

    def encode(
        self, latlon: np.ndarray | Sequence[Sequence[float]], *, normalize: bool = True, batch_size: int = 8192
    ) -> np.ndarray:
        """Embeddings ``(N, 512)`` float32 of ``(N, 2)`` degrees (latitude first); L2-normalised
        unless ``normalize=False`` (then the raw sum of the capsules, as ``geoclip.LocationEncoder``)."""
        arr = np.asarray(latlon, dtype=np.float64)
        if arr.ndim == 1 and arr.shape == (2,):
            arr = arr[None, :]
        return self.module.encode(arr, batch_size=batch_size, normalize=normalize)

    __call__ = encode


__all__ = ["LocationEncoder"]
