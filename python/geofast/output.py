"""Serialising predictions: the JSON objects of ``geofast locate --json`` and GeoJSON.

The HTML map renders these JSON objects: :func:`geofast.mapview.write_map` (mapview imports this
module, never the reverse)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from geofast._io import atomic_write_text
from geofast.predict.types import Prediction


def _num(x: float | None, digits: int | None = None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x


def prediction_json(p: Prediction) -> dict[str, Any]:
    """``{"image", "predictions": [{"lat","lon","prob","place"}], "confidence", "localizable"}``,
    or ``{"image", "error"}`` for an image that failed. RAG results add ``method``,
    ``candidates`` and ``fallback``."""
    if p.error is not None:
        return {"image": p.image, "error": p.error}
    preds = [{"lat": c.lat, "lon": c.lon, "prob": _num(c.prob), "place": c.place} for c in p.candidates if c.prob is not None]
    if p.method in ("swc", "geoclip+swc", "rag") or not preds:
        # The answer is not one of the ranked gallery points: put it first.
        preds = [{"lat": p.lat, "lon": p.lon, "prob": _num(p.prob), "place": p.place}] + preds
    out: dict[str, Any] = {
        "image": p.image,
        "predictions": preds,
        "confidence": _num(p.confidence),
        "localizable": p.localizable,
    }
    if p.method != "geoclip":
        out["method"] = p.method
    if p.method == "rag":
        out["candidates"] = [{"lat": c.lat, "lon": c.lon, "source": c.source, "score": _num(c.score)} for c in p.candidates]
        out["fallback"] = p.fallback
    if p.method in ("swc", "geoclip+swc") and p.fallback:
        out["fallback"] = True
    if p.llm is not None:
        out["usage"] = dict(p.llm.usage)
    if p.members is not None:
        out["swc_members"] = list(p.members)
    if p.neighbours is not None:
        out["neighbours"] = [n.as_dict() for n in p.neighbours]
    if p.farthest is not None:
        out["farthest"] = [n.as_dict() for n in p.farthest]
    if p.cell is not None:
        out["cell"] = p.cell.as_dict()
    if p.fallback_reason is not None or p.method == "rag":
        out["fallback_reason"] = p.fallback_reason
    return out


def to_geojson(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """A FeatureCollection with one Point per located image (GeoJSON is longitude first)."""
    features = []
    for p in predictions:
        if p.error is not None or p.lat is None or p.lon is None:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
                "properties": {
                    "image": p.image,
                    "prob": _num(p.prob),
                    "confidence": _num(p.confidence),
                    "localizable": p.localizable,
                    "method": p.method,
                    "place": p.candidates[0].place if p.candidates else None,
                    "candidates": [[c.lon, c.lat, _num(c.prob)] for c in p.candidates],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], predictions: Sequence[Prediction]) -> None:
    atomic_write_text(path, json.dumps(to_geojson(predictions), ensure_ascii=False, indent=1) + "\n")
