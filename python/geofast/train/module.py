"""The trainable part of GeoCLIP: image MLP, location-encoder capsules, logit scale.

The modules are geofast's inference heads (:mod:`geofast.models.heads`) built from a state dict
in the ``geoclip`` release layout, so a trained model is saved, exported and loaded by the same
code that serves the pretrained ones. The capsules' B matrices are fixed (never trained, as in
GeoCLIP). Initial states:

* ``geoclip`` / ``geomapclip`` / a model folder: its tensors;
* ``scratch``: GeoCLIP's untrained model (``GeoCLIP(from_pretrained=False)``): B ~ N(0, σ²) at
  σ = 2⁰, 2⁴, 2⁸, PyTorch's default Linear init, logit scale ln(1/0.07); seeded;
* new capsules (``add_sigmas``) next to pretrained ones: B ~ N(0, σ²), default init, and a zero
  output layer, so the model starts out predicting exactly what the pretrained one predicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from geofast.errors import InputError, ModelError
from geofast.models.heads import (
    IMAGE_PREFIX,
    LOCATION_PREFIX,
    LOGIT_SCALE,
    ImageHead,
    LocationEncoder,
    _Capsule,
    location_state,
    release_state,
    split_release_state,
)
from geofast.models.release import DEFAULT_SIGMAS


class TrainableHeads(nn.Module):
    """``forward(features, fourier, index)`` → (image embeddings, location embeddings, raw logit
    scale), both unnormalised; ``fourier`` holds each capsule's Fourier features of the distinct
    GPS to score, ``index`` (optional) maps every scored GPS to its distinct row."""

    def __init__(self, state: Mapping[str, torch.Tensor], sigmas: Sequence[float], where: str = "model") -> None:
        super().__init__()
        image_state, loc_state, raw = split_release_state(state, where)
        self.image = ImageHead(image_state, where)
        self.location = LocationEncoder(loc_state, where)
        self.logit_scale = nn.Parameter(torch.tensor(raw, dtype=torch.float32))
        self.sigmas = tuple(float(s) for s in sigmas)
        if len(self.sigmas) != len(self.capsules):
            raise ModelError(f"{where}: {len(self.sigmas)} sigmas for {len(self.capsules)} capsules")

    @property
    def capsules(self) -> list[_Capsule]:
        return cast("list[_Capsule]", list(self.location.capsules))

    def b_matrices(self) -> list[np.ndarray]:
        return [np.asarray(c.b, dtype=np.float64) for c in self.capsules]

    def forward(
        self, features: torch.Tensor, fourier: Sequence[torch.Tensor], index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.image(features)
        location: torch.Tensor | None = None
        for cap, f in zip(self.capsules, fourier):
            out = cap.mlp(f)
            location = out if location is None else location + out
        assert location is not None
        if index is not None:
            location = location[index]
        return image, location, self.logit_scale

    def release_state(self) -> dict[str, torch.Tensor]:
        return release_state(self.image, self.location, self.logit_scale)

    def freeze(self, *, image: bool = False, capsules: Sequence[int] = ()) -> None:
        bad = [i for i in capsules if not 0 <= i < len(self.capsules)]
        if bad:
            raise InputError(f"capsule {bad[0]} does not exist: the model has capsules 0..{len(self.capsules) - 1}")
        if image:
            self.image.requires_grad_(False)
        for i in capsules:
            self.capsules[i].requires_grad_(False)


@dataclass
class InitialModel:
    """Where training starts: tensors, sigmas and what they came from."""

    source: str
    state: dict[str, torch.Tensor]
    sigmas: tuple[float, ...]
    #: the backbone the initial model expects: {"kind": "vit-l14"} for the released models,
    #: a model's recorded fingerprint, or {} (scratch: any)
    backbone: dict[str, Any] = field(default_factory=dict)
    #: the release ``backbone`` record to write (hub id, revision)
    release_backbone: dict[str, str] = field(default_factory=dict)


def _seeded_linear(n_in: int, n_out: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) as ``nn.Linear`` initialises them (Kaiming-uniform with a = √5, i.e.
    U(±1/√fan_in), and U(±1/√fan_in) biases), drawn from ``gen``."""
    bound = 1.0 / math.sqrt(n_in)
    weight = torch.empty(n_out, n_in).uniform_(-bound, bound, generator=gen)
    bias = torch.empty(n_out).uniform_(-bound, bound, generator=gen)
    return weight, bias


_CAPSULE_SHAPES = (("capsule.1", 512, 1024), ("capsule.3", 1024, 1024), ("capsule.5", 1024, 1024), ("head.0", 1024, 512))


def new_capsule_state(i: int, sigma: float, gen: torch.Generator, *, zero_output: bool) -> dict[str, torch.Tensor]:
    """Tensors of a fresh capsule ``LocEnc{i}`` (location-encoder names) with B ~ N(0, σ²)."""
    out = {f"LocEnc{i}.capsule.0.b": torch.randn(256, 2, generator=gen) * float(sigma)}
    for name, n_in, n_out in _CAPSULE_SHAPES:
        weight, bias = _seeded_linear(n_in, n_out, gen)
        if zero_output and name == "head.0":
            weight.zero_()
            bias.zero_()
        out[f"LocEnc{i}.{name}.weight"] = weight
        out[f"LocEnc{i}.{name}.bias"] = bias
    return out


def scratch_state(sigmas: Sequence[float], seed: int) -> dict[str, torch.Tensor]:
    """GeoCLIP's untrained model (see the module docstring), deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor] = {LOGIT_SCALE: torch.tensor(math.log(1 / 0.07), dtype=torch.float32)}
    for key, n_in, n_out in (("0", 768, 768), ("2", 768, 512)):
        state[f"{IMAGE_PREFIX}{key}.weight"], state[f"{IMAGE_PREFIX}{key}.bias"] = _seeded_linear(n_in, n_out, gen)
    for i, s in enumerate(sigmas):
        for k, v in new_capsule_state(i, s, gen, zero_output=False).items():
            state[LOCATION_PREFIX + k] = v
    return state


def initial_model(init: str, add_sigmas: Sequence[float], seed: int) -> InitialModel:
    """The starting tensors for ``init`` ("geoclip", "geomapclip", "scratch" or a model folder),
    with ``add_sigmas`` capsules appended."""
    from geofast.models.release import DEFAULT_BACKBONE, load_model_state

    key = str(init).strip()
    if key.lower() == "scratch":
        sigmas = tuple(DEFAULT_SIGMAS) + tuple(float(s) for s in add_sigmas)
        return InitialModel("scratch", scratch_state(sigmas, seed), sigmas, {}, dict(DEFAULT_BACKBONE))
    loaded = load_model_state(key)
    state = dict(loaded.state)
    sigmas = loaded.sigmas
    if key.lower() in ("geoclip", "geomapclip"):
        expected: dict[str, Any] = {"kind": "vit-l14"}
    else:
        g = loaded.geofast
        expected = {k: g[k] for k in ("backbone_probe", "backbone_config_sha256", "backbone_source") if g.get(k) is not None}
        if not expected:
            expected = {"kind": "vit-l14"}  # a geoclip release: trained on ViT-L/14
    if add_sigmas:
        gen = torch.Generator().manual_seed(int(seed) + 1)
        n = len(sigmas)
        for j, s in enumerate(add_sigmas):
            for k, v in new_capsule_state(n + j, s, gen, zero_output=True).items():
                state[LOCATION_PREFIX + k] = v
        sigmas = tuple(sigmas) + tuple(float(s) for s in add_sigmas)
    return InitialModel(
        loaded.name if key.lower() not in ("geoclip", "geomapclip") else key.lower(), state, sigmas, expected, loaded.backbone
    )


__all__ = ["InitialModel", "TrainableHeads", "initial_model", "location_state", "new_capsule_state", "scratch_state"]
