"""GeoCLIP's trained heads, re-implemented on geofast's kernels.

* Image head: MLP 768 → 768 → ReLU → 512 on the projected CLIP features.
* Location encoder (Vivanco Cepeda et al. 2023, §3.2): latitude/longitude → Equal Earth
  projection scaled by SF/180 (``gf.equal_earth``) → for each of three random-Fourier-feature
  capsules with stored B ∈ R^{256×2} at σ = 2⁰, 2⁴, 2⁸: γ(v) = [cos 2πBv | sin 2πBv]
  (``gf.fourier_features``, argument reduced in turns in float64, so more accurate than the
  float32 original) → MLP 512 → 1024 → 1024 → 1024 (ReLU) → 512; the capsules' outputs are summed.
* Logit scale: ``exp`` of the stored scalar (GeoCLIP e^3.681 ≈ 39.69; GeoMapCLIP ≈ 78.94).

Weights come from the files of :mod:`geofast.models.registry` (state-dict key names as in the
``geoclip`` package: ``LocEnc{i}.capsule.{0,1,3,5}.*``, ``LocEnc{i}.head.0.*``; MLP ``{0,2}.*``)
or from a release folder in ``geoclip`` 1.3.0's format (:mod:`geofast.models.release`: one
``model.safetensors`` with those keys under ``image_encoder.mlp.`` / ``location_encoder.`` plus
``logit_scale``), checked strictly: a missing, extra or mis-shaped tensor is an error, never a
silent random init. :func:`release_state` is the inverse, used to save trained heads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from geofast._geofast import equal_earth, fourier_features
from geofast.errors import ModelError
from geofast.models.registry import ModelFiles


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights {path}: {e}") from e


def _take(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    if key not in state:
        raise ModelError(f"{where}: tensor {key!r} is missing")
    t = state[key]
    if tuple(t.shape) != shape:
        raise ModelError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t.detach().to(torch.float32)


def _linear(state: Mapping[str, torch.Tensor], prefix: str, n_in: int, n_out: int, where: str) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(_take(state, f"{prefix}.weight", (n_out, n_in), where))
        layer.bias.copy_(_take(state, f"{prefix}.bias", (n_out,), where))
    return layer


class ImageHead(nn.Module):
    """GeoCLIP's image MLP: 768 → 768 → ReLU → 512."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str = "image MLP") -> None:
        super().__init__()
        expected = {"0.weight", "0.bias", "2.weight", "2.bias"}
        if set(state) != expected:
            raise ModelError(f"{where}: unexpected tensors {sorted(set(state) ^ expected)}")
        self.mlp = nn.Sequential(_linear(state, "0", 768, 768, where), nn.ReLU(), _linear(state, "2", 768, 512, where))

    def forward(self, clip_features: torch.Tensor) -> torch.Tensor:
        return self.mlp(clip_features)


class _Capsule(nn.Module):
    b: np.ndarray
    mlp: nn.Sequential

    def __init__(self, state: Mapping[str, torch.Tensor], i: int, where: str) -> None:
        super().__init__()
        p = f"LocEnc{i}"
        self.b = _take(state, f"{p}.capsule.0.b", (256, 2), where).numpy().copy()
        self.mlp = nn.Sequential(
            _linear(state, f"{p}.capsule.1", 512, 1024, where),
            nn.ReLU(),
            _linear(state, f"{p}.capsule.3", 1024, 1024, where),
            nn.ReLU(),
            _linear(state, f"{p}.capsule.5", 1024, 1024, where),
            nn.ReLU(),
            _linear(state, f"{p}.head.0", 1024, 512, where),
        )


class LocationEncoder(nn.Module):
    """GeoCLIP's location encoder on ``gf.equal_earth`` + ``gf.fourier_features``."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str = "location encoder") -> None:
        super().__init__()
        n = 0
        while f"LocEnc{n}.capsule.0.b" in state:
            n += 1
        if n == 0:
            raise ModelError(f"{where}: no capsules (LocEnc0.capsule.0.b missing)")
        expected = {
            f"LocEnc{i}.{name}"
            for i in range(n)
            for name in (
                "capsule.0.b",
                *(f"capsule.{j}.{w}" for j in (1, 3, 5) for w in ("weight", "bias")),
                "head.0.weight",
                "head.0.bias",
            )
        }
        if set(state) != expected:
            raise ModelError(f"{where}: unexpected tensors {sorted(set(state) ^ expected)[:4]}")
        self.capsules = nn.ModuleList(_Capsule(state, i, where) for i in range(n))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def forward_numpy(self, latlon: np.ndarray) -> torch.Tensor:
        """Unnormalised 512-d embeddings of ``(N, 2)`` lat/lon degrees (float32 tensor on the
        encoder's device; the Fourier features are computed on the CPU)."""
        xy = equal_earth(latlon)
        device = self.device
        total: torch.Tensor | None = None
        for cap in cast("list[_Capsule]", list(self.capsules)):
            feats = torch.from_numpy(fourier_features(xy, cap.b)).to(device, non_blocking=True)
            out = cap.mlp(feats)
            total = out if total is None else total.add_(out)
        assert total is not None
        return total

    def encode(
        self,
        latlon: np.ndarray,
        *,
        batch_size: int = 8192,
        progress: Callable[[int], None] | None = None,
        normalize: bool = True,
    ) -> np.ndarray:
        """Float32 embeddings ``(N, 512)`` of ``(N, 2)`` lat/lon degrees, in batches; L2-normalised
        unless ``normalize=False`` (the raw sum of the capsules, as ``geoclip.LocationEncoder``)."""
        latlon = np.asarray(latlon)
        n = latlon.shape[0] if latlon.ndim == 2 else 0
        out = np.empty((n, 512), dtype=np.float32)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            emb = self.forward_numpy(latlon[start:stop])
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=1)
            out[start:stop] = emb.float().cpu().numpy()
            if progress is not None:
                progress(stop - start)
        if n == 0:
            equal_earth(latlon)  # validates shape/values with the usual one-line errors
        return out


@dataclass
class Heads:
    """All trained parts of a GeoCLIP-style model except the CLIP backbone."""

    name: str
    image: ImageHead
    location: LocationEncoder
    logit_scale: float
    #: sha256 of the location-encoder weights file: part of the gallery cache key.
    location_digest: str

    @classmethod
    def load(cls, files: ModelFiles) -> Heads:
        where = str(files.root)
        image = ImageHead(_load(files.image_mlp), f"{files.image_mlp}")
        location = LocationEncoder(_load(files.location_encoder), f"{files.location_encoder}")
        raw_scale = _load(files.logit_scale)
        try:
            scale = math.exp(float(torch.as_tensor(raw_scale).detach().reshape(())))
        except Exception as e:
            raise ModelError(f"{files.logit_scale}: expected a scalar logit scale ({e})") from e
        if not math.isfinite(scale) or scale <= 0:
            raise ModelError(f"{where}: invalid logit scale {scale}")
        digest = hashlib.sha256(files.location_encoder.read_bytes()).hexdigest()
        image.eval()
        location.eval()
        return cls(files.spec.name, image, location, scale, digest)

    @classmethod
    def from_release_state(cls, name: str, state: Mapping[str, torch.Tensor], where: str) -> Heads:
        """Heads from a state dict in the ``geoclip`` release layout (see :func:`release_state`)."""
        image_state, location_state, raw_scale = split_release_state(state, where)
        image = ImageHead(image_state, where)
        location = LocationEncoder(location_state, where)
        scale = math.exp(float(raw_scale))
        if not math.isfinite(scale) or scale <= 0:
            raise ModelError(f"{where}: invalid logit scale {scale}")
        image.eval()
        location.eval()
        return cls(name, image, location, scale, location_digest(location_state))


IMAGE_PREFIX = "image_encoder.mlp."
LOCATION_PREFIX = "location_encoder."
LOGIT_SCALE = "logit_scale"
#: geoclip's state-dict names of a capsule's MLP layers, in the order of ``_Capsule.mlp``'s Linears.
_CAPSULE_LAYERS = ("capsule.1", "capsule.3", "capsule.5", "head.0")


def split_release_state(
    state: Mapping[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """(image-MLP state, location-encoder state, raw logit scale) of a release state dict."""
    extra = sorted(k for k in state if k != LOGIT_SCALE and not k.startswith((IMAGE_PREFIX, LOCATION_PREFIX)))
    if extra or LOGIT_SCALE not in state:
        what = f"unexpected tensors {extra[:4]}" if extra else f"tensor {LOGIT_SCALE!r} is missing"
        raise ModelError(f"{where}: {what}")
    try:
        raw = float(torch.as_tensor(state[LOGIT_SCALE]).detach().reshape(()))
    except Exception as e:
        raise ModelError(f"{where}: expected a scalar logit scale ({e})") from e
    image = {k[len(IMAGE_PREFIX) :]: v for k, v in state.items() if k.startswith(IMAGE_PREFIX)}
    location = {k[len(LOCATION_PREFIX) :]: v for k, v in state.items() if k.startswith(LOCATION_PREFIX)}
    return image, location, raw


def location_digest(location_state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a location encoder's tensors (names, shapes and float32 bytes, sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(location_state):
        t = location_state[key].detach().to(torch.float32).cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def location_state(location: LocationEncoder) -> dict[str, torch.Tensor]:
    """A location encoder's tensors under ``geoclip``'s names (``LocEnc{i}.capsule.0.b`` ...)."""
    out: dict[str, torch.Tensor] = {}
    for i, cap in enumerate(cast("list[_Capsule]", list(location.capsules))):
        out[f"LocEnc{i}.capsule.0.b"] = torch.from_numpy(np.asarray(cap.b, dtype=np.float32).copy())
        linears = [m for m in cap.mlp if isinstance(m, nn.Linear)]
        for name, layer in zip(_CAPSULE_LAYERS, linears):
            out[f"LocEnc{i}.{name}.weight"] = layer.weight.detach().to(torch.float32).cpu().clone()
            out[f"LocEnc{i}.{name}.bias"] = layer.bias.detach().to(torch.float32).cpu().clone()
    return out


def release_state(image: ImageHead, location: LocationEncoder, raw_logit_scale: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """Heads as one state dict in the ``geoclip`` 1.3.0 release layout: ``logit_scale`` (the log
    of the scale, a scalar), ``image_encoder.mlp.{0,2}.*`` and ``location_encoder.LocEnc{i}.*``."""
    out = {LOGIT_SCALE: torch.as_tensor(raw_logit_scale, dtype=torch.float32).detach().cpu().reshape(()).clone()}
    for key, value in image.mlp.state_dict().items():
        out[IMAGE_PREFIX + key] = value.detach().to(torch.float32).cpu().clone()
    for key, value in location_state(location).items():
        out[LOCATION_PREFIX + key] = value
    return out
