"""Embeddings: L2 normalisation, batched CLIP encoding and the backbone probe (its fingerprint)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast.errors import InputError, ShapeError

if TYPE_CHECKING:
    from PIL import Image

    from geofast.models.clip import Backbone

#: Minimum cosine between the stored and the recomputed probe embedding (same backbone: > 0.999).
PROBE_MIN_COSINE = 0.99
#: Minimum probe cosine for adding embeddings of another precision (int8, bf16, fp16 vs fp32) to
#: a database. Two unit vectors with cosine c are sqrt(2(1 - c)) apart, so by Cauchy-Schwarz
#: every inner-product score of a row made at the other precision moves by at most that:
#: 0.045 at c = 0.999, the embedding agreement the int8 encoder is held to (measured on ViT-L/14
#: shapes: >= 0.9997; docs/precision.md). Below it, rows of the two precisions would rank
#: differently for reasons that have nothing to do with the photos.
PRECISION_MIN_COSINE = 0.999

# ----------------------------------------------------------------------------------------------
# Embeddings: batched CLIP encoding and the backbone probe
# ----------------------------------------------------------------------------------------------


def probe_image() -> Image.Image:
    """A fixed synthetic 256×256 RGB image (smooth gradients and rings, no randomness)."""
    from PIL import Image as PILImage

    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    g = 127.5 + 127.5 * np.cos(np.hypot(xx - 128.0, yy - 96.0) / 9.0)
    b = (xx + 2.0 * yy) % 256.0
    arr = np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)
    return PILImage.fromarray(arr, "RGB")


def normalize_rows(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero or non-finite row is an error."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"{name} must have shape (B, D) or (D,), got {arr.shape}")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    bad = ~np.isfinite(norms) | (norms == 0.0)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{name} row {row} is zero or not finite; cannot normalise it")
    return (arr / norms[:, None].astype(np.float32)).astype(np.float32, copy=False)


def encode_pil(backbone: Backbone, images: Sequence[Image.Image]) -> np.ndarray:
    """L2-normalised CLIP image embeddings ``(B, D)`` float32 of RGB PIL images."""
    feats = backbone.encode(backbone.preprocess(images)).cpu().numpy()
    return normalize_rows(feats, "CLIP features")


def probe_embedding(backbone: Backbone) -> np.ndarray:
    """The backbone's embedding of :func:`probe_image` (its fingerprint)."""
    return encode_pil(backbone, [probe_image()])[0]


def probe_cosine(a: Sequence[float] | np.ndarray, b: np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return -1.0
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / max(denom, 1e-300)


def backbone_info(backbone: Backbone, probe: np.ndarray) -> dict[str, Any]:
    config = Path(backbone.folder) / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {
        "source": str(backbone.source),
        "config_sha256": digest,
        "dim": int(probe.shape[0]),
        "probe": [float(v) for v in probe.astype(np.float32)],
        "precision": str(getattr(backbone, "precision", "fp32")),
    }
