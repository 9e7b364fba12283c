"""Benchmark evaluation the way geolocation papers report it — explicitly and reproducibly.

Metrics for predicted vs true coordinates:

* accuracy at radii r ∈ {1, 25, 200, 750, 2500} km (street, city, region, country, continent):
  the share of images whose error is ≤ r (or < r with ``strict``), in percent;
* median and mean error (km);
* GeoScore: mean of 5000 · exp(−d / 1492.7) (the GeoGuessr-style score of OSV-5M);
* with confidences (PD_25), the same metrics for the localizable (PD > 0.2) and
  non-localizable images separately.

Distance conventions differ between papers and change the numbers at the street level:
GeoCLIP, Img2Loc and G3 measure the WGS-84 geodesic (geopy) with ``≤``; visloc-estimation and
OSV-5M use the haversine distance on a sphere of radius 6371 km with ``<``. Both are offered
(``distance="geodesic" | "haversine"``, ``strict``) and every result says which was used.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofast.errors import InputError
from geofast.gallery import find_column

DEFAULT_RADII_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7
HAVERSINE_RADIUS_KM = 6371.0  # visloc / OSV-5M convention
LOCALIZABLE_THRESHOLD = 0.2

_IMAGE_COLUMNS = ("image", "img_id", "img", "image_id", "filename", "file", "path", "id")
_LAT_COLUMNS = ("lat", "latitude", "gps_lat")
_LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon")
_PRED_LAT = ("pred_lat", "predicted_lat", "lat_pred")
_PRED_LON = ("pred_lon", "predicted_lon", "lon_pred")


def distances_km(truth: np.ndarray, pred: np.ndarray, distance: str = "geodesic") -> np.ndarray:
    """Error of each prediction in km: WGS-84 geodesic, or haversine with R = 6371 km."""
    import geofast as gf

    if distance == "geodesic":
        return gf.geodesic(truth, pred)
    if distance == "haversine":
        return gf.haversine(truth, pred, radius_km=HAVERSINE_RADIUS_KM)
    raise InputError(f"unknown distance {distance!r}", hint="use geodesic or haversine")


def _block(d: np.ndarray, radii: Sequence[float], strict: bool) -> dict[str, Any]:
    n = int(d.shape[0])
    if n == 0:
        return {
            "n": 0,
            "accuracy": {_key(r): None for r in radii},
            "counts": {_key(r): 0 for r in radii},
            "median_km": None,
            "mean_km": None,
            "geoscore": None,
        }
    counts = {_key(r): int(np.count_nonzero(d < r if strict else d <= r)) for r in radii}
    return {
        "n": n,
        "accuracy": {k: 100.0 * c / n for k, c in counts.items()},
        "counts": counts,
        "median_km": float(np.median(d)),
        "mean_km": float(np.mean(d)),
        "geoscore": float(np.mean(5000.0 * np.exp(-d / GEOSCORE_SCALE_KM))),
    }


def _key(r: float) -> str:
    return f"{r:g}"


def score(
    truth: np.ndarray,
    pred: np.ndarray,
    *,
    radii: Sequence[float] = DEFAULT_RADII_KM,
    distance: str = "geodesic",
    strict: bool = False,
    confidence: np.ndarray | None = None,
    threshold: float = LOCALIZABLE_THRESHOLD,
) -> dict[str, Any]:
    """All metrics for ``(N, 2)`` true and predicted coordinates (degrees, latitude first).

    Returns ``{"n", "distance", "strict", "radii_km", "accuracy": {"1": pct, ...}, "counts",
    "median_km", "mean_km", "geoscore"}`` plus ``"localizable"`` / ``"non_localizable"`` blocks
    when ``confidence`` (PD_25 per image; NaN = unknown) is given.
    """
    radii = sorted({float(r) for r in radii})
    if not radii or any(not math.isfinite(r) or r <= 0 for r in radii):
        raise InputError(f"radii must be positive numbers, got {list(radii)}")
    d = distances_km(truth, pred, distance)
    out: dict[str, Any] = {"distance": distance, "strict": strict, "radii_km": radii}
    if distance == "haversine":
        out["radius_km"] = HAVERSINE_RADIUS_KM
    out.update(_block(d, radii, strict))
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float64)
        known = np.isfinite(conf)
        if known.any():
            loc = known & (conf > threshold)
            out["localizable_threshold"] = threshold
            out["localizable"] = _block(d[loc], radii, strict)
            out["non_localizable"] = _block(d[known & ~loc], radii, strict)
    return out


# -- datasets and prediction files ---------------------------------------------------------------


@dataclass
class Dataset:
    """Images of a benchmark with their true coordinates."""

    images: list[str]
    latlon: np.ndarray  # (N, 2)
    source: Path


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a benchmark CSV: ``image,lat,lon`` or the Im2GPS3k / YFCC4k layout ``IMG_ID,...,LAT,LON``."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"dataset {p} does not exist", hint="pass the metadata CSV (e.g. im2gps3k_places365.csv)")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as e:
        raise InputError(f"cannot read dataset CSV {p}: {e}") from e
    cols = list(frame.columns)
    img, lat, lon = find_column(cols, _IMAGE_COLUMNS), find_column(cols, _LAT_COLUMNS), find_column(cols, _LON_COLUMNS)
    if img is None or lat is None or lon is None:
        raise InputError(
            f"dataset {p} needs an image column and latitude/longitude columns, found {cols[:8]}",
            hint="use image,lat,lon or IMG_ID,LAT,LON",
        )
    latlon = _parse_coords(frame[lat].tolist(), frame[lon].tolist(), f"dataset {p.name}")
    return Dataset(images=[str(x) for x in frame[img].tolist()], latlon=latlon, source=p)


def _parse_coords(lats: Sequence[str], lons: Sequence[str], where: str) -> np.ndarray:
    try:
        arr = np.column_stack([np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64)])
    except ValueError as e:
        raise InputError(f"{where}: non-numeric coordinates ({e})") from e
    from geofast.gallery import check_latlon_array

    return check_latlon_array(arr.reshape(-1, 2), where)


@dataclass
class ScoredFile:
    truth: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray | None
    images: list[str]
    failed: list[tuple[str, str]]


def read_predictions(path: str | os.PathLike[str]) -> ScoredFile:
    """Read a predictions CSV with truth ``lat,lon`` and ``pred_lat,pred_lon`` (and optionally
    ``confidence``, ``image``, ``error``). Rows with an error or no prediction are listed as failed."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"predictions file {p} does not exist")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as e:
        raise InputError(f"cannot read predictions CSV {p}: {e}") from e
    cols = list(frame.columns)
    lat, lon = find_column(cols, _LAT_COLUMNS), find_column(cols, _LON_COLUMNS)
    plat, plon = find_column(cols, _PRED_LAT), find_column(cols, _PRED_LON)
    if None in (lat, lon, plat, plon):
        raise InputError(
            f"predictions file {p} needs lat,lon and pred_lat,pred_lon columns, found {cols[:8]}",
            hint="write it with `geofast eval DATASET --images DIR --out FILE`",
        )
    img = find_column(cols, _IMAGE_COLUMNS)
    conf_col = find_column(cols, ("confidence", "pd25", "pd_25"))
    err_col = find_column(cols, ("error",))
    images = frame[img].tolist() if img else [str(i) for i in range(len(frame))]
    errors = frame[err_col].tolist() if err_col else [""] * len(frame)
    ok = [i for i in range(len(frame)) if not errors[i] and frame[plat].iloc[i] != "" and frame[plon].iloc[i] != ""]
    failed = [(images[i], errors[i] or "no prediction") for i in range(len(frame)) if i not in set(ok)]
    sub = frame.iloc[ok]
    truth = _parse_coords(sub[lat].tolist(), sub[lon].tolist(), f"{p.name} (truth)")
    pred = _parse_coords(sub[plat].tolist(), sub[plon].tolist(), f"{p.name} (predictions)")
    conf = None
    if conf_col:
        vals = [float(v) if v.strip() else float("nan") for v in sub[conf_col].tolist()]
        conf = np.asarray(vals, dtype=np.float64)
    return ScoredFile(truth, pred, conf, [images[i] for i in ok], failed)


PREDICTION_FIELDS = ("image", "lat", "lon", "pred_lat", "pred_lon", "prob", "confidence", "method", "error")


class PredictionLog:
    """An append-only predictions CSV that a rerun resumes from.

    Each batch is appended with one ``write`` + fsync; a crash can leave at most one partial last
    line, which :meth:`open` drops. Images already present are skipped by the next run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, str]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PredictionLog:
        log = cls(Path(path).expanduser())
        if log.path.is_file() and log.path.stat().st_size > 0:
            raw = log.path.read_bytes()
            if not raw.endswith(b"\n"):
                cut = raw.rfind(b"\n") + 1
                with open(log.path, "r+b") as f:
                    f.truncate(cut)
                raw = raw[:cut]
            rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
            if rows and set(PREDICTION_FIELDS) - set(rows[0]):
                raise InputError(
                    f"{log.path} exists but is not a geofast predictions file",
                    hint="choose another --out file or delete it",
                )
            for r in rows:
                log.done[r["image"]] = r
        else:
            log.path.parent.mkdir(parents=True, exist_ok=True)
            with open(log.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(PREDICTION_FIELDS)
                f.flush()
                os.fsync(f.fileno())
        return log

    def append(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in PREDICTION_FIELDS})
            self.done[str(r["image"])] = {k: str(r.get(k, "")) for k in PREDICTION_FIELDS}
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


def resolve_image(images_dir: Path, name: str) -> Path:
    """The file of a dataset image: ``images_dir/name``, or with a common image suffix added."""
    p = images_dir / name
    if p.is_file() or p.suffix:
        return p
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".webp"):
        q = images_dir / f"{name}{suffix}"
        if q.is_file():
            return q
    return p


def run_predictions(
    dataset: Dataset,
    images_dir: str | os.PathLike[str],
    predict: Any,
    log: PredictionLog,
    *,
    batch_size: int = 16,
    on_progress: Any = None,
    method: str = "geoclip",
) -> tuple[int, int]:
    """Predict every dataset image not yet in ``log`` and append the rows. ``predict(paths)`` returns
    one :class:`~geofast.predict.types.Prediction` per path. Returns (newly done, skipped as done)."""
    root = Path(images_dir).expanduser()
    todo = [i for i, name in enumerate(dataset.images) if name not in log.done]
    skipped = len(dataset.images) - len(todo)
    if on_progress is not None and skipped:
        on_progress(skipped)
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + batch_size]
        paths = [resolve_image(root, dataset.images[i]) for i in chunk]
        exists = [p.is_file() for p in paths]
        preds = iter(predict([str(p) for p, e in zip(paths, exists) if e]) if any(exists) else [])
        rows = []
        for i, p, e in zip(chunk, paths, exists):
            lat, lon = dataset.latlon[i]
            row: dict[str, Any] = {"image": dataset.images[i], "lat": repr(float(lat)), "lon": repr(float(lon)), "method": method}
            if not e:
                row["error"] = f"{p}: no such file"
            else:
                pr = next(preds)
                if pr.error is not None or pr.lat is None or pr.lon is None:
                    row["error"] = pr.error or "no prediction"
                else:
                    row.update(pred_lat=repr(pr.lat), pred_lon=repr(pr.lon), prob=_fmt(pr.prob), confidence=_fmt(pr.confidence))
            rows.append(row)
        log.append(rows)
        if on_progress is not None:
            on_progress(len(chunk))
    return len(todo), skipped


def _fmt(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def plot_cdf(path: str | os.PathLike[str], d_km: np.ndarray, radii: Sequence[float], title: str) -> None:
    """Error CDF on a log distance axis, radii marked with their accuracy; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geofast._io import atomic_write

    d = np.sort(np.maximum(np.asarray(d_km, dtype=np.float64), 1e-3))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if d.size:
        ax.step(d, np.arange(1, d.size + 1) / d.size * 100.0, where="post", color="#1f5fa8", lw=1.8)
    for r in radii:
        acc = 100.0 * np.count_nonzero(d <= r) / max(d.size, 1)
        ax.axvline(r, color="#999999", lw=0.8, ls="--")
        ax.annotate(
            f"{r:g} km\n{acc:.1f}%", (r, min(acc + 3, 97)), fontsize=8, ha="left", xytext=(3, 0), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20038)
    ax.set_ylim(0, 100)
    ax.set_xlabel("error (km, log scale)")
    ax.set_ylabel("images within error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=suffix))
    plt.close(fig)
