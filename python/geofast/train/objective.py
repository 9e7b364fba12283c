"""GeoCLIP's training objective: image → GPS cross-entropy against the batch's GPS and a queue.

As released (``geoclip`` 1.3.0, ``geoclip/train/train.py`` and ``GeoCLIP.dequeue_and_enqueue``):

* the queue holds ``Q`` earlier GPS coordinates (lat, lon degrees), initialised with ``Q``
  random unit 2-vectors (normalised standard normals, seeded here);
* a step scores each image of the batch against ``[batch GPS; queue]`` (the queue as it was
  before this step), target = its own GPS (index ``i``), loss = mean cross-entropy;
* the batch GPS then replace the oldest queue entries (ring buffer; a batch at least as long as
  the queue replaces it with its last ``Q`` rows; any batch size).

Logits are ``exp(t) · cos(image, location)`` with the scale ``t`` clamped to ``ln 100`` (as
CLIP) and computed in float32 (also under bf16 autocast), the cross-entropy by log-sum-exp.

Under data parallelism (DDP, one process per device) each rank trains on a contiguous slice of
the global batch. The batch GPS of every rank are all-gathered *before* they enter the queue, so
every rank holds the same queue with every rank's samples (DDP broadcasts module buffers from
rank 0, which is why the queue is not a module buffer here: a rank-local queue would silently
become rank 0's). Each rank scores its images against the whole gathered batch plus the queue and
its loss is scaled by ``world / global batch``, so DDP's gradient average equals the gradient of
the single-process mean over the global batch.

Fourier features of the batch and queue GPS come from geofast's Rust kernels on the CPU (float64
argument reduction; the released float32 torch code loses ~2e-3 rad at σ = 256); on a GPU they
are computed on the device in float64 the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geofast._geofast import equal_earth, fourier_features

#: CLIP's bound on the logit scale: exp(t) ≤ 100.
LOGIT_SCALE_MAX = math.log(100.0)


class GPSQueue:
    """The dynamic queue of earlier GPS coordinates, ``(Q, 2)`` float64 degrees, on the CPU."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        gen = torch.Generator().manual_seed(int(seed))
        init = F.normalize(torch.randn(2, self.size, generator=gen), dim=0)  # the released init
        self.gps = init.t().to(torch.float64).contiguous()
        self.ptr = 0

    def push(self, gps: torch.Tensor) -> None:
        """Enqueue ``(n, 2)`` coordinates in order, overwriting the oldest entries."""
        n, q = int(gps.shape[0]), self.size
        if q == 0 or n == 0:
            return
        gps = gps.to(torch.float64)
        if n >= q:
            self.gps.copy_(gps[n - q :])
            self.ptr = 0
            return
        end = self.ptr + n
        if end <= q:
            self.gps[self.ptr : end] = gps
        else:
            first = q - self.ptr
            self.gps[self.ptr :] = gps[:first]
            self.gps[: end - q] = gps[first:]
        self.ptr = end % q

    def state_dict(self) -> dict[str, object]:
        return {"gps": self.gps.clone(), "ptr": int(self.ptr), "size": self.size}

    def load_state_dict(self, state: dict[str, object]) -> None:
        gps = state["gps"]
        assert isinstance(gps, torch.Tensor)
        if tuple(gps.shape) != (self.size, 2):
            raise ValueError(f"queue of shape {tuple(gps.shape)}, expected ({self.size}, 2)")
        self.gps = gps.to(torch.float64).clone()
        self.ptr = int(state["ptr"])  # type: ignore[call-overload]

    def digest(self) -> str:
        h = hashlib.sha256(self.gps.numpy().tobytes())
        h.update(str(self.ptr).encode())
        return h.hexdigest()


def fourier_inputs(latlon: np.ndarray, b_matrices: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Each capsule's ``[cos 2πxyBᵀ | sin 2πxyBᵀ]`` (float32, on ``device``) of Equal Earth ``xy``:
    the Rust kernel on the CPU, :func:`fourier_on_device` elsewhere."""
    xy = equal_earth(latlon)
    if device.type == "cpu":
        return [torch.from_numpy(fourier_features(xy, b)) for b in b_matrices]
    return fourier_on_device(xy, b_matrices, device)


def fourier_on_device(xy: np.ndarray, b_matrices: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The Fourier features in torch on ``device``, reduced in turns in float64 like the Rust kernel."""
    xy_t = torch.from_numpy(np.ascontiguousarray(xy, dtype=np.float64)).to(device, non_blocking=True)
    out = []
    for b in b_matrices:
        turns = xy_t @ torch.from_numpy(np.asarray(b, dtype=np.float64)).to(device).t()
        angle = (2.0 * math.pi) * (turns - torch.round(turns))
        out.append(torch.cat([torch.cos(angle), torch.sin(angle)], dim=1).to(torch.float32))
    return out


def adamw(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """GeoCLIP's optimizer (AdamW), with torch's fused kernel: one pass over the ~10M parameters
    instead of a dozen (≈ 1 s of a 5 s CPU step otherwise). Same update rule as the default."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, fused=True)


def loss_sum(image: torch.Tensor, location: torch.Tensor, raw_scale: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the images of the cross-entropy of ``exp(t)·cos(image_i, location_j)`` at ``targets``."""
    img = F.normalize(image.float(), dim=1)
    loc = F.normalize(location.float(), dim=1)
    scale = raw_scale.float().clamp(max=LOGIT_SCALE_MAX).exp()
    logits = scale * (img @ loc.t())
    return F.cross_entropy(logits, targets, reduction="sum")


#: ``gather(local_gps, sizes)`` → the global batch's GPS in rank order (``sizes`` = rows per rank).
Gather = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]


class GeoCLIPStep:
    """The loss of one step on one rank, updating the queue (call once per optimizer step).
    ``model(features, fourier, index)`` returns (image, location, raw logit scale) embeddings,
    the location rows gathered by ``index`` when it is not None."""

    def __init__(
        self,
        model: torch.nn.Module,
        b_matrices: Sequence[np.ndarray],
        queue: GPSQueue,
        device: torch.device,
        *,
        world: int = 1,
        rank: int = 0,
        gather: Gather | None = None,
    ) -> None:
        self.model = model
        self.b_matrices = list(b_matrices)
        self.queue = queue
        self.device = device
        self.world = world
        self.rank = rank
        self.gather = gather

    def __call__(self, features: np.ndarray, gps: np.ndarray, sizes: Sequence[int]) -> torch.Tensor:
        """``features`` (n, 768) and ``gps`` (n, 2) of this rank's slice; ``sizes``: every rank's n."""
        local = torch.from_numpy(np.ascontiguousarray(gps, dtype=np.float64))
        batch = local if self.gather is None else self.gather(local, sizes)
        n_global = int(batch.shape[0])
        all_gps = torch.cat([batch, self.queue.gps]).numpy()  # the queue as it was before this step
        self.queue.push(batch)
        # Repeated coordinates (many photos share a place) are encoded once and gathered back:
        # the same logits and gradients, less location-encoder work.
        distinct, inverse = np.unique(all_gps, axis=0, return_inverse=True)
        index = None if distinct.shape[0] == all_gps.shape[0] else torch.from_numpy(inverse.reshape(-1)).to(self.device)
        fourier = fourier_inputs(distinct if index is not None else all_gps, self.b_matrices, self.device)
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device, non_blocking=True)
        image, location, raw_scale = self.model(x, fourier, index)
        offset = sum(sizes[: self.rank])
        targets = torch.arange(offset, offset + x.shape[0], device=image.device)
        return loss_sum(image, location, raw_scale, targets) * (self.world / n_global)


__all__ = ["LOGIT_SCALE_MAX", "GPSQueue", "GeoCLIPStep", "adamw", "fourier_inputs", "fourier_on_device", "loss_sum"]
