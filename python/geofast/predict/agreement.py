"""Agreement of a lower-precision image encoder with float32, measured on the user's own photos.

Quantized outputs are never assumed equal to float32's: CLIP's activations are uneven (a few
channels carry large values), which makes 8-bit arithmetic more lossy on some weights and photos
than on others. :func:`compare_precisions` encodes the same photos with the same weights at
float32 and at ``precision`` and reports what a user needs to decide:

* the cosine between the two CLIP embeddings (min and median over the photos);
* over the model's gallery: how often the top-1 gallery point is the same, and how far apart the
  two top-1 points are (median, 99th percentile, max; share within 1 km and 25 km);
* the encoder's seconds per photo at both precisions (measured alternately, batch by batch, so
  machine load drifting during the run affects both alike) and their ratio.

``geofast check --images DIR`` prints it; ``docs/precision.md`` says how to read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geofast.errors import EmptyInputError

#: What the report calls agreement: the targets the int8 encoder is held to (docs/precision.md).
MIN_COSINE = 0.999
WITHIN_KM = 25.0
MIN_SHARE_WITHIN = 0.99


@dataclass
class AgreementReport:
    precision: str
    photos: int
    skipped: int
    cosine_min: float
    cosine_median: float
    top1_same: float  # share of photos whose top-1 gallery point is the same
    top1_km_median: float
    top1_km_p99: float
    top1_km_max: float
    within_1km: float
    within_25km: float
    fp32_s_per_photo: float
    other_s_per_photo: float
    speedup: float
    gallery_points: int
    threads: int

    @property
    def agrees(self) -> bool:
        """Cosine ≥ MIN_COSINE for every photo and ≥ MIN_SHARE_WITHIN of the top-1s within WITHIN_KM."""
        return self.cosine_min >= MIN_COSINE and self.within_25km >= MIN_SHARE_WITHIN

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agrees": self.agrees}


def compare_precisions(
    images: Sequence[str | os.PathLike[str]],
    *,
    precision: str = "int8",
    model: str = "geoclip",
    clip: str | os.PathLike[str] | None = None,
    gallery: str | os.PathLike[str] | np.ndarray | None = None,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AgreementReport:
    """Encode ``images`` at float32 and at ``precision`` with the same CLIP weights (CPU), and
    compare embeddings, top-1 gallery points and speed (see the module docstring)."""
    import torch

    from geofast._geofast import haversine
    from geofast.images import iter_loaded
    from geofast.models.clip import load_backbone
    from geofast.predict.geoclip import Geolocator

    items = [os.fspath(p) for p in images]
    if not items:
        raise EmptyInputError("no photos to compare", hint="pass a folder or files of photos", params=("images",))
    loc = Geolocator.from_pretrained(
        model, clip=clip, device="cpu", gallery=gallery, cache_dir=cache_dir, progress=False, precision="fp32"
    )
    other = load_backbone(loc.backbone.source, "cpu", precision=precision, cache_dir=cache_dir)
    heads_device = next(loc.heads.image.parameters()).device

    feats: dict[str, list[np.ndarray]] = {"fp32": [], "other": []}
    seconds = {"fp32": 0.0, "other": 0.0}
    loaded_count, skipped, batch_no = 0, 0, 0
    pending: list[Any] = []

    def run(batch: list[Any]) -> None:
        nonlocal batch_no
        pixels = loc.backbone.preprocess(batch)
        order = [("fp32", loc.backbone), ("other", other)]
        if batch_no % 2:
            order.reverse()  # alternate which goes first: load drift and warm caches hit both alike
        for name, bb in order:
            t0 = time.perf_counter()
            out = bb.encode(pixels)
            seconds[name] += time.perf_counter() - t0
            feats[name].append(out.float().cpu().numpy())
        batch_no += 1

    # One warm-up forward each (first-call allocations, ONNX Runtime's lazy setup) is not timed.
    for _i, _name, image, _error in iter_loaded(items):
        if image is None:
            skipped += 1
            continue
        if loaded_count == 0:
            warm = loc.backbone.preprocess([image])
            loc.backbone.encode(warm)
            other.encode(warm)
        pending.append(image)
        loaded_count += 1
        if len(pending) >= batch_size:
            run(pending)
            pending = []
            if progress is not None:
                progress(loaded_count + skipped, len(items))
    if pending:
        run(pending)
    if progress is not None:
        progress(len(items), len(items))
    if loaded_count == 0:
        raise EmptyInputError(f"none of the {len(items)} photos could be read", params=("images",))

    a = np.concatenate(feats["fp32"]).astype(np.float64)
    b = np.concatenate(feats["other"]).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    top1 = []
    with torch.inference_mode():
        for f in (a, b):
            emb = loc.heads.image(torch.from_numpy(f.astype(np.float32)).to(heads_device))
            emb = torch.nn.functional.normalize(emb, dim=1).cpu().numpy().astype(np.float32)
            _, idx, _ = loc.gallery.search.search(emb, 1, lse_scale=loc.logit_scale)
            top1.append(idx[:, 0])
    ll = loc.gallery.latlon
    km = np.asarray(haversine(ll[top1[0]], ll[top1[1]]), dtype=np.float64)
    n = int(a.shape[0])
    return AgreementReport(
        precision=other.precision,
        photos=n,
        skipped=skipped,
        cosine_min=float(cos.min()),
        cosine_median=float(np.median(cos)),
        top1_same=float(np.mean(top1[0] == top1[1])),
        top1_km_median=float(np.median(km)),
        top1_km_p99=float(np.percentile(km, 99)),
        top1_km_max=float(km.max()),
        within_1km=float(np.mean(km <= 1.0)),
        within_25km=float(np.mean(km <= WITHIN_KM)),
        fp32_s_per_photo=seconds["fp32"] / n,
        other_s_per_photo=seconds["other"] / n,
        speedup=seconds["fp32"] / max(seconds["other"], 1e-12),
        gallery_points=int(ll.shape[0]),
        threads=int(torch.get_num_threads()),
    )
