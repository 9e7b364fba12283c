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
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofast.constants import (
    GEOSCORE_SCALE_KM,
    HAVERSINE_RADIUS_KM,
    IMAGE_COLUMNS,
    LAT_COLUMNS,
    LOCALIZABLE_THRESHOLD,
    LON_COLUMNS,
)
from geofast.coords import find_column
from geofast.errors import InputError

DEFAULT_RADII_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)

_PRED_LAT = ("pred_lat", "predicted_lat", "lat_pred")
_PRED_LON = ("pred_lon", "predicted_lon", "lon_pred")


def distances_km(truth: np.ndarray, pred: np.ndarray, distance: str = "geodesic") -> np.ndarray:
    """Error of each prediction in km: WGS-84 geodesic, or haversine with R = 6371 km."""
    from geofast._geofast import geodesic, haversine

    if distance == "geodesic":
        return geodesic(truth, pred)
    if distance == "haversine":
        return haversine(truth, pred, radius_km=HAVERSINE_RADIUS_KM)
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


def _read_text_table(p: Path, what: str, hint: str | None = None) -> Any:
    """Every column of the CSV ``p`` as strings (a ``pyarrow.Table``): one multithreaded C++ pass,
    no Python object per cell. Missing cells are empty strings, never nulls."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {what} CSV {p}: {e}") from e
    if not header:
        raise InputError(f"{what} CSV {p} is empty", hint=hint)
    try:
        return pacsv.read_csv(
            p,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read {what} CSV {p}: {detail}", hint=hint) from e


def _strings(table: Any, column: str) -> Any:
    """One column as a single (unchunked) pyarrow string array."""
    return table.column(column).combine_chunks()


def _floats(col: Any, where: str, *, blank_is_nan: bool = False, rows: np.ndarray | None = None) -> np.ndarray:
    """A pyarrow string array as float64 (vectorised). Blank cells are NaN with ``blank_is_nan``;
    a non-numeric cell is a one-line InputError naming its data row (``rows[i]`` when the
    column was filtered: the row number in the file, counting from 0 after the header)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def blanks_to_null(c: Any) -> Any:
        return pc.if_else(pc.equal(c, ""), pa.scalar(None, pa.string()), c) if blank_is_nan else c

    try:
        out = pc.cast(blanks_to_null(col), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = None
    if out is None:  # surrounding spaces (" 1.5") are accepted, as float() accepts them
        try:
            out = pc.cast(blanks_to_null(pc.utf8_trim_whitespace(col)), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out = None
    if out is None:
        i, value = _first_non_numeric(col.to_pylist(), blank_ok=blank_is_nan)
        row = int(rows[i]) if rows is not None and i >= 0 else i
        raise InputError(
            f"{where}: non-numeric value {value!r} in row {row}", hint="coordinates must be decimal degrees"
        ) from None
    return out.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _first_non_numeric(values: list[str | None], *, blank_ok: bool) -> tuple[int, str]:
    for i, v in enumerate(values):
        if v is None or (blank_ok and v == ""):
            continue
        try:
            float(v)
        except ValueError:
            return i, v
    return -1, ""


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a benchmark CSV: ``image,lat,lon`` or the Im2GPS3k / YFCC4k layout ``IMG_ID,...,LAT,LON``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"dataset {p} does not exist", hint="pass the metadata CSV (e.g. im2gps3k_places365.csv)")
    table = _read_text_table(p, "dataset")
    cols = list(table.column_names)
    img, lat, lon = find_column(cols, IMAGE_COLUMNS), find_column(cols, LAT_COLUMNS), find_column(cols, LON_COLUMNS)
    if img is None or lat is None or lon is None:
        raise InputError(
            f"dataset {p} needs an image column and latitude/longitude columns, found {cols[:8]}",
            hint="use image,lat,lon or IMG_ID,LAT,LON",
        )
    from geofast.gallery import check_latlon_array

    where = f"dataset {p.name}"
    latlon = np.column_stack([_floats(_strings(table, lat), where), _floats(_strings(table, lon), where)])
    latlon = check_latlon_array(latlon.reshape(-1, 2), where)
    return Dataset(images=table.column(img).to_pylist(), latlon=latlon, source=p)


def _parse_coords(lats: Sequence[str], lons: Sequence[str], where: str) -> np.ndarray:
    try:
        arr = np.column_stack([np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64)])
    except ValueError as e:
        raise InputError(f"{where}: non-numeric coordinates ({e})") from e
    from geofast.gallery import check_latlon_array

    return check_latlon_array(arr.reshape(-1, 2), where)


class ScoredFile:
    """The scorable rows of a predictions file and the failed ones as ``(image, error)``.

    ``names`` holds the scored rows' image names as a pyarrow string array (no Python object per
    row); :attr:`images` gives them as a numpy array when asked."""

    def __init__(
        self,
        truth: np.ndarray,
        pred: np.ndarray,
        confidence: np.ndarray | None,
        names: Any,
        failed: list[tuple[str, str]],
    ) -> None:
        import pyarrow as pa

        self.truth, self.pred, self.confidence, self.failed = truth, pred, confidence, failed
        if isinstance(names, pa.ChunkedArray):
            names = names.combine_chunks()
        self.names = names if isinstance(names, pa.Array) else pa.array([str(x) for x in names], pa.string())

    @property
    def images(self) -> np.ndarray:
        """The scored rows' image names (numpy object array)."""
        return np.asarray(self.names.to_pylist(), dtype=object)

    def subset(self, names: Sequence[str] | np.ndarray) -> ScoredFile:
        """The rows (scored and failed) whose image is one of ``names``: a hash join (pyarrow
        ``is_in``), linear in both sizes."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = pa.array([str(x) for x in names], pa.string())
        keep = np.asarray(pc.is_in(self.names, value_set=wanted).to_numpy(zero_copy_only=False), dtype=bool)
        conf = self.confidence[keep] if self.confidence is not None else None
        failed: list[tuple[str, str]] = []
        if self.failed:
            fnames = pa.array([f[0] for f in self.failed], pa.string())
            fkeep = pc.is_in(fnames, value_set=wanted).to_pylist()
            failed = [f for f, k in zip(self.failed, fkeep) if k]
        return ScoredFile(self.truth[keep], self.pred[keep], conf, self.names.filter(pa.array(keep)), failed)


def read_predictions(path: str | os.PathLike[str]) -> ScoredFile:
    """Read a predictions CSV with truth ``lat,lon`` and ``pred_lat,pred_lon`` (and optionally
    ``confidence``, ``image``, ``error``). Rows with an error or no prediction are listed as failed.

    Linear and vectorised: the CSV is parsed by pyarrow into string columns, converted to float64
    column by column, and rows are selected with boolean masks (1M rows in about a second)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"predictions file {p} does not exist")
    hint = "write it with `geofast eval DATASET --images DIR --out FILE`"
    table = _read_text_table(p, "predictions", hint)
    cols = list(table.column_names)
    lat, lon = find_column(cols, LAT_COLUMNS), find_column(cols, LON_COLUMNS)
    plat, plon = find_column(cols, _PRED_LAT), find_column(cols, _PRED_LON)
    if lat is None or lon is None or plat is None or plon is None:
        raise InputError(f"predictions file {p} needs lat,lon and pred_lat,pred_lon columns, found {cols[:8]}", hint=hint)
    img = find_column(cols, IMAGE_COLUMNS)
    conf_col = find_column(cols, ("confidence", "pd25", "pd_25"))
    err_col = find_column(cols, ("error",))
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    names = _strings(table, img) if img else pc.cast(pa.array(np.arange(n)), pa.string())
    errors = _strings(table, err_col) if err_col else None
    plat_s, plon_s = _strings(table, plat), _strings(table, plon)
    pred_missing = _is_blank(plat_s) | _is_blank(plon_s)
    has_error = ~_is_blank(errors) if errors is not None else np.zeros(n, dtype=bool)
    ok = ~(has_error | pred_missing)
    bad_rows = np.flatnonzero(~ok)
    bad_names = names.take(pa.array(bad_rows)).to_pylist()
    bad_errors = errors.take(pa.array(bad_rows)).to_pylist() if errors is not None else [""] * len(bad_rows)
    failed = [(str(a), str(e) if e else "no prediction") for a, e in zip(bad_names, bad_errors)]

    sel = pa.array(ok)
    where_t, where_p = f"{p.name} (truth)", f"{p.name} (predictions)"
    from geofast.gallery import check_latlon_array

    rows = np.flatnonzero(ok)

    def floats(col: Any, where: str) -> np.ndarray:
        return _floats(col.filter(sel), where, rows=rows)

    truth = np.column_stack([floats(_strings(table, lat), where_t), floats(_strings(table, lon), where_t)])
    pred = np.column_stack([floats(plat_s, where_p), floats(plon_s, where_p)])
    truth = check_latlon_array(truth.reshape(-1, 2), where_t)
    pred = check_latlon_array(pred.reshape(-1, 2), where_p)
    conf = None
    if conf_col:
        conf = _floats(_strings(table, conf_col).filter(sel), f"{p.name} (confidence)", blank_is_nan=True, rows=rows)
    return ScoredFile(truth, pred, conf, names.filter(sel), failed)


def _is_blank(col: Any) -> np.ndarray:
    import pyarrow.compute as pc

    return np.asarray(pc.equal(col, "").to_numpy(zero_copy_only=False), dtype=bool)


PREDICTION_FIELDS = ("image", "lat", "lon", "pred_lat", "pred_lon", "prob", "confidence", "method", "fallback", "error", "run")

#: The file beside a predictions log that says, readably, what produced it (``PredictionLog``).
SETTINGS_SUFFIX = ".settings.json"


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable id of the settings that produced a prediction (method, model, backbone,
    gallery, database, options that change answers): the ``run`` column of a predictions log."""
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class NameSet:
    """A compact set of image names: their 64-bit hashes (pandas' vectorised SipHash) in a sorted
    numpy array, 8 bytes per name (1M names: 8 MB, instead of ~0.76 GB as one dict per row).

    Membership is by hash alone: two different names collide with probability about
    n² / 2⁶⁵ (3·10⁻⁸ for a million names), in which case the second image would be taken for done."""

    _MERGE_EVERY = 1 << 16

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    @staticmethod
    def hashes(names: Sequence[str] | np.ndarray) -> np.ndarray:
        import pandas as pd

        arr = np.asarray(names, dtype=object)
        if arr.size == 0:
            return np.zeros(0, dtype=np.uint64)
        return np.asarray(pd.util.hash_array(arr), dtype=np.uint64)

    def add_many(self, names: Sequence[str] | np.ndarray) -> None:
        h = self.hashes(names)
        if h.size:
            self._pending.append(h)
            self._n_pending += h.size
            if self._n_pending >= self._MERGE_EVERY:
                self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._sorted = np.union1d(self._sorted, np.concatenate(self._pending))
            self._pending, self._n_pending = [], 0

    def contains_many(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``names`` are in the set (vectorised)."""
        self._merge()
        h = self.hashes(names)
        if self._sorted.size == 0 or h.size == 0:
            return np.zeros(h.size, dtype=bool)
        pos = np.searchsorted(self._sorted, h)
        pos[pos == self._sorted.size] = 0
        return np.asarray(self._sorted[pos] == h)

    def __contains__(self, name: object) -> bool:
        return bool(self.contains_many([str(name)])[0])

    def __len__(self) -> int:
        self._merge()
        return int(self._sorted.size)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes) + sum(int(a.nbytes) for a in self._pending)


class PredictionLog:
    """An append-only predictions CSV that a rerun resumes from.

    Each batch is appended with one ``write`` + fsync; a crash can leave at most one partial last
    line, which :meth:`open` drops. Images already present are skipped by the next run; only
    their names are kept (:class:`NameSet`, 8 bytes per row).

    Every row records what produced it in its ``run`` column (:func:`settings_fingerprint` of
    ``settings``), and ``<file>.settings.json`` beside it holds those settings readably: a log
    written with other settings (another method, model, backbone, gallery, database or an option
    that changes answers) is never resumed, since its rows would be scored as this run's."""

    def __init__(self, path: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.done = NameSet()
        self.settings = dict(settings or {})
        self.run = settings_fingerprint(self.settings)

    @property
    def settings_path(self) -> Path:
        return self.path.with_name(self.path.name + SETTINGS_SUFFIX)

    @classmethod
    def open(cls, path: str | os.PathLike[str], settings: Mapping[str, Any] | None = None) -> PredictionLog:
        log = cls(Path(path).expanduser(), settings)
        if log.path.is_file() and log.path.stat().st_size > 0:
            _drop_partial_last_line(log.path)
        if log.path.is_file() and log.path.stat().st_size > 0:
            with open(log.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if set(PREDICTION_FIELDS) - {"fallback", "run"} - set(header):
                raise InputError(
                    f"{log.path} exists but is not a geofast predictions file",
                    hint="choose another --out file or delete it",
                )
            table = _read_text_table(log.path, "predictions log")
            log._check_same_run(table)
            log.done.add_many(table.column("image").to_numpy(zero_copy_only=False))
        else:
            from geofast._io import atomic_write_text

            log.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(log.settings_path, json.dumps({"run": log.run, **log.settings}, indent=1, default=str) + "\n")
            with open(log.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(PREDICTION_FIELDS)
                f.flush()
                os.fsync(f.fileno())
        return log

    def _check_same_run(self, table: Any) -> None:
        """Refuse to resume rows that other settings produced."""
        if table.num_rows == 0:
            return
        if "run" not in table.column_names:
            raise InputError(
                f"{self.path} does not record what produced its predictions (written by an older geofast), "
                "so it cannot be resumed safely",
                hint="pass a new --out FILE (or delete this one) to predict again",
            )
        import pyarrow.compute as pc

        runs = set(pc.unique(table.column("run")).to_pylist())
        if runs == {self.run}:
            return
        raise InputError(
            f"{self.path} holds predictions made with other settings ({self._differences()}); resuming would score them as this run's",
            hint="pass a new --out FILE for these settings (or delete the old file to start over)",
        )

    def _differences(self) -> str:
        try:
            recorded = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"see the run column; no readable {self.settings_path.name}"
        if not isinstance(recorded, dict):
            return f"{self.settings_path.name} is not a JSON object"
        now = json.loads(json.dumps(self.settings, default=str))
        keys = [k for k in sorted(set(recorded) | set(now)) if k != "run" and recorded.get(k) != now.get(k)]
        if not keys:
            return "rows of several runs"
        return ", ".join(f"{k} {recorded.get(k)!r} then, {now.get(k)!r} now" for k in keys[:4]) + (
            f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        )

    def append(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in PREDICTION_FIELDS} | {"run": self.run})
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        self.done.add_many([str(r["image"]) for r in rows])


def _drop_partial_last_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (reads only the tail of the file)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                f.truncate(pos + cut + 1)
                return
        f.truncate(0)


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
    todo = np.flatnonzero(~log.done.contains_many(dataset.images)).tolist()
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
                    row.update(
                        pred_lat=repr(pr.lat),
                        pred_lon=repr(pr.lon),
                        prob=_fmt(pr.prob),
                        confidence=_fmt(pr.confidence),
                        fallback="true" if pr.fallback else "false",
                    )
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
