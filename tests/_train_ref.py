"""A plain-torch reference of GeoCLIP's released training objective (geoclip 1.3.0's train.py).

Written from the released code's semantics, independently of geofast: the queue is GeoCLIP's
(2, Q) buffer with its pointer, updated by ``geoclip.GeoCLIP.dequeue_and_enqueue`` itself; the
forward pass is GeoCLIP's (Equal Earth → RFF → capsule MLPs summed; image MLP; normalise; logit
scale exp; cross-entropy mean). The one deliberate difference from the released float32 code:
Equal Earth and the Fourier features are evaluated in float64 torch (then cast to float32), so the
reference is exact to float32 rounding instead of carrying the released code's ~2e-3 rad phase
error at σ = 256 (geofast's Rust kernels are accurate; comparing against the float32 phases
would compare rounding noise).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

A1, A2, A3, A4, SF = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336


def equal_earth64(latlon: torch.Tensor) -> torch.Tensor:
    lat, lon = torch.deg2rad(latlon[:, 0].double()), torch.deg2rad(latlon[:, 1].double())
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
    den = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = 2 * math.sqrt(3.0) * lon * torch.cos(theta) / den
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return torch.stack([x, y], dim=1) * SF / 180


class RefModel(nn.Module):
    """GeoCLIP's heads in the layout of geoclip's own modules (``image_encoder.mlp``, ``LocEnc{i}``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 512))
        self.mlp.load_state_dict(
            {k[len("image_encoder.mlp.") :]: v for k, v in state.items() if k.startswith("image_encoder.mlp.")}
        )
        n = sum(1 for k in state if k.endswith("capsule.0.b"))
        self.b = [state[f"location_encoder.LocEnc{i}.capsule.0.b"].double() for i in range(n)]
        self.caps = nn.ModuleList()
        for i in range(n):
            cap = nn.Sequential(
                nn.Linear(512, 1024),
                nn.ReLU(),
                nn.Linear(1024, 1024),
                nn.ReLU(),
                nn.Linear(1024, 1024),
                nn.ReLU(),
                nn.Linear(1024, 512),
            )
            p = f"location_encoder.LocEnc{i}."
            cap.load_state_dict(
                {
                    f"{j}.{w}": state[f"{p}{name}.{w}"]
                    for j, name in zip((0, 2, 4, 6), ("capsule.1", "capsule.3", "capsule.5", "head.0"))
                    for w in ("weight", "bias")
                }
            )
            self.caps.append(cap)
        self.logit_scale = nn.Parameter(state["logit_scale"].clone().float().reshape(()))

    def location(self, latlon: torch.Tensor) -> torch.Tensor:
        xy = equal_earth64(latlon)
        out = torch.zeros(latlon.shape[0], 512)
        for b, cap in zip(self.b, self.caps):
            vp = 2 * np.pi * xy @ b.T
            out = out + cap(torch.cat([torch.cos(vp), torch.sin(vp)], dim=-1).float())
        return out

    def forward(self, feats: torch.Tensor, latlon: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.mlp(feats), dim=1)
        loc = F.normalize(self.location(latlon), dim=1)
        return self.logit_scale.exp() * (img @ loc.t())


def released_queue(initial_gps: torch.Tensor) -> SimpleNamespace:
    """A stand-in for ``GeoCLIP``'s queue attributes, holding ``initial_gps`` (Q, 2)."""
    q = initial_gps.shape[0]
    return SimpleNamespace(
        queue_size=q, gps_queue=initial_gps.t().float().clone(), gps_queue_ptr=torch.zeros(1, dtype=torch.long)
    )


def reference_step(model: RefModel, queue: SimpleNamespace, opt: torch.optim.Optimizer, feats: torch.Tensor, gps: torch.Tensor):
    """One step of geoclip's ``train()`` loop body. Returns (loss, {name: grad}) before ``opt.step``."""
    from geoclip import GeoCLIP

    gps_queue = queue.gps_queue.t()
    targets = torch.arange(feats.shape[0])
    opt.zero_grad()
    gps_all = torch.cat([gps.float(), gps_queue], dim=0).double()
    GeoCLIP.dequeue_and_enqueue(queue, gps.float())  # the released queue update, on our stand-in
    logits = model(feats, gps_all)
    loss = nn.CrossEntropyLoss()(logits, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return float(loss.detach()), grads
