"""GPS galleries: the candidate locations a GeoCLIP-style model ranks, and their cached embeddings.

A gallery is an ``(N, 2)`` array of latitude/longitude degrees: a model's default (GeoCLIP's 100K
MP-16 points, GeoMapCLIP's 288,686-point land lattice), a user's CSV or ``.npy`` file, a
``gf.fibonacci_lattice`` grid, optionally restricted to a region.

GeoCLIP's reference code re-encodes its whole gallery on every ``predict()`` (~1.9 TFLOP; about
92% of the call). geofast encodes each (location weights, gallery) pair once and keeps the
L2-normalised embeddings under ``$GEOFAST_CACHE/galleries/`` as ``.npy`` + a JSON sidecar with
the file's sha256. The cache key is a hash of the location-encoder weights, the gallery's float32
coordinates, the storage dtype and :data:`ENCODER_VERSION`; files are written atomically (temp
file + rename). A load checks the size, the ``.npy`` header (shape, dtype) and a *sampled* sha256
(:func:`sample_sha256`: the first and last 64 KiB and 16 evenly spaced 64 KiB blocks, about 1 MiB
whatever the file size); ``verify=True`` also checks the full-file sha256. A missing or corrupt
entry is rebuilt with a progress bar. A flipped byte outside the sampled blocks is caught only
by the full check (``EmbeddingCache.load(..., verify=True)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofast._geofast import __version__
from geofast._io import atomic_write, atomic_write_text, file_sha256
from geofast.cache import cache_root
from geofast.errors import CacheError, CoordinateError, InputError, ShapeError

#: Bumped whenever the location-embedding computation changes (invalidates caches).
ENCODER_VERSION = "1"
_LAT_NAMES = ("lat", "latitude", "gps_lat", "lat_deg")
_LON_NAMES = ("lon", "lng", "long", "longitude", "gps_lon", "lon_deg")


def check_latlon_array(latlon: np.ndarray, name: str) -> np.ndarray:
    """``latlon`` as a C-contiguous float64 ``(N, 2)`` array, or a one-line error naming the first bad row."""
    arr = np.asarray(latlon, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ShapeError(f"{name} must have shape (N, 2) (latitude, longitude in degrees), got {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise CoordinateError(f"{name} row {row} is not finite ({arr[row].tolist()})")
    bad = (np.abs(arr[:, 0]) > 90) | (np.abs(arr[:, 1]) > 180)
    if bad.any():
        row = int(np.argmax(bad))
        raise CoordinateError(f"{name} row {row} is out of range ({arr[row].tolist()}); coordinates are degrees, latitude first")
    return np.ascontiguousarray(arr)


def find_column(columns: Sequence[str], names: Iterable[str]) -> str | None:
    """The first of ``columns`` whose stripped, lower-cased name is in ``names`` (in ``names`` order)."""
    lowered = {c.strip().lower(): c for c in columns}
    for n in names:
        if n in lowered:
            return lowered[n]
    return None


def read_gallery_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gallery: a CSV with latitude/longitude columns (``LAT``/``LON``, ``lat``/``lon``,
    ``latitude``/``longitude``, any case) or a ``.npy`` array of shape ``(N, 2)``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"gallery file {p} does not exist", hint="pass a CSV with lat/lon columns or an (N, 2) .npy")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read gallery {p}: {e}") from e
        return check_latlon_array(arr, f"gallery {p.name}")
    import pandas as pd

    try:
        frame = pd.read_csv(p)
    except Exception as e:
        raise InputError(f"cannot read gallery CSV {p}: {e}") from e
    lat_col = find_column(list(frame.columns), _LAT_NAMES)
    lon_col = find_column(list(frame.columns), _LON_NAMES)
    if lat_col is None or lon_col is None:
        raise InputError(
            f"gallery CSV {p} needs latitude and longitude columns, found {list(frame.columns)[:6]}",
            hint="name them lat,lon (or LAT,LON / latitude,longitude)",
        )
    try:
        arr = frame[[lat_col, lon_col]].to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise InputError(f"gallery CSV {p}: non-numeric latitude/longitude ({e})") from e
    if arr.shape[0] == 0:
        raise InputError(f"gallery CSV {p} has no rows")
    return check_latlon_array(arr, f"gallery {p.name}")


def parse_region(text: str | None) -> tuple[float, float, float, float] | None:
    """Parse ``"LAT_MIN,LON_MIN,LAT_MAX,LON_MAX"``; ``LON_MIN > LON_MAX`` crosses the antimeridian."""
    if text is None or not str(text).strip():
        return None
    parts = [s.strip() for s in str(text).split(",")]
    try:
        values = [float(s) for s in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(
            f"region {text!r} is not four numbers",
            hint="use LAT_MIN,LON_MIN,LAT_MAX,LON_MAX, e.g. 35,-10,60,30",
            params=("region",),
        )
    lat_min, lon_min, lat_max, lon_max = values
    if not (-90 <= lat_min <= lat_max <= 90):
        raise InputError(
            f"region latitudes must satisfy -90 <= LAT_MIN <= LAT_MAX <= 90, got {lat_min}, {lat_max}", params=("region",)
        )
    if not (-180 <= lon_min <= 180 and -180 <= lon_max <= 180):
        raise InputError(f"region longitudes must be within [-180, 180], got {lon_min}, {lon_max}", params=("region",))
    return lat_min, lon_min, lat_max, lon_max


def region_mask(latlon: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    """Boolean mask of the points inside ``region`` (inclusive; antimeridian-aware)."""
    lat_min, lon_min, lat_max, lon_max = region
    lat, lon = latlon[:, 0], latlon[:, 1]
    in_lat = (lat >= lat_min) & (lat <= lat_max)
    if lon_min <= lon_max:
        in_lon = (lon >= lon_min) & (lon <= lon_max)
    else:
        in_lon = (lon >= lon_min) | (lon <= lon_max)
    return in_lat & in_lon


#: Block size and number of evenly spaced interior blocks of :func:`sample_sha256`.
SAMPLE_BLOCK_BYTES = 1 << 16
SAMPLE_BLOCKS = 16


def sample_offsets(size: int, block: int = SAMPLE_BLOCK_BYTES, blocks: int = SAMPLE_BLOCKS) -> list[int]:
    """Start offsets of the blocks :func:`sample_sha256` reads: the first block, ``blocks``
    evenly spaced ones and the last; the whole file when it is small."""
    if size <= (blocks + 2) * block:
        return list(range(0, size, block))
    last = size - block
    inner = [int(round(last * (k + 1) / (blocks + 1))) for k in range(blocks)]
    return [0, *inner, last]


def sample_sha256(path: str | os.PathLike[str], block: int = SAMPLE_BLOCK_BYTES, blocks: int = SAMPLE_BLOCKS) -> str:
    """sha256 of the file size and of the blocks at :func:`sample_offsets` (cheap to compute for
    any file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode() + b"\0")
        for off in sample_offsets(size, block, blocks):
            f.seek(off)
            h.update(f.read(block))
    return h.hexdigest()


def coords_digest(latlon: np.ndarray) -> str:
    """sha256 of the float32 coordinates the encoder sees."""
    return hashlib.sha256(np.ascontiguousarray(latlon, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class EmbeddingCache:
    """Cached gallery embeddings under ``root/galleries``."""

    root: Path

    @classmethod
    def default(cls, override: str | os.PathLike[str] | None = None) -> EmbeddingCache:
        return cls(cache_root(override) / "galleries")

    @staticmethod
    def key(model: str, location_digest: str, latlon: np.ndarray, dtype: str) -> str:
        h = hashlib.sha256()
        for part in (ENCODER_VERSION, model, location_digest, coords_digest(latlon), dtype, str(latlon.shape[0])):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def paths(self, model: str, key: str) -> tuple[Path, Path]:
        stem = f"{model}-{key[:24]}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json"

    def load(self, model: str, key: str, n: int, dim: int, dtype: str, *, verify: bool = False) -> np.ndarray | None:
        """The cached embeddings (read-only memory map), or None when missing or failing verification.

        Checks the size, the header (shape, dtype) and the sampled sha256; ``verify`` also checks
        the full-file sha256 (reads the whole file). Entries written before sampled digests
        existed are always fully checked."""
        data_path, meta_path = self.paths(model, key)
        if not data_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key or meta.get("shape") != [n, dim] or meta.get("dtype") != dtype:
                return None
            if meta.get("bytes") != data_path.stat().st_size:
                return None
            sampled = meta.get("sample_sha256")
            if sampled is not None and sampled != sample_sha256(data_path):
                return None
            if (verify or sampled is None) and meta.get("sha256") != file_sha256(data_path):
                return None
            arr = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError):
            return None
        np_dtype = np.float16 if dtype == "f16" else np.float32
        if arr.shape != (n, dim) or arr.dtype != np_dtype:
            return None
        return arr

    def store(self, model: str, key: str, embeddings: np.ndarray, info: dict[str, object]) -> np.ndarray:
        """Write ``embeddings`` atomically (data first, then the sidecar that makes it valid)."""
        data_path, meta_path = self.paths(model, key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(data_path, lambda f: np.save(f, embeddings, allow_pickle=False))
            meta = {
                "key": key,
                "model": model,
                "shape": list(embeddings.shape),
                "dtype": "f16" if embeddings.dtype == np.float16 else "f32",
                "bytes": data_path.stat().st_size,
                "sha256": file_sha256(data_path),
                "sample_sha256": sample_sha256(data_path),
                "geofast": __version__,
                "encoder_version": ENCODER_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **info,
            }
            atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        except OSError as e:
            raise CacheError(
                f"cannot write the gallery cache in {self.root}: {e.strerror or e}",
                hint="set GEOFAST_CACHE to a writable folder",
            ) from e
        return np.load(data_path, mmap_mode="r", allow_pickle=False)

    def get_or_build(
        self,
        model: str,
        location_digest: str,
        latlon: np.ndarray,
        dtype: str,
        encode: Callable[[np.ndarray, Callable[[int], None]], np.ndarray],
        *,
        label: str,
        progress: bool = True,
        verify: bool = False,
    ) -> tuple[np.ndarray, bool]:
        """Cached embeddings of ``latlon``, building them with ``encode(latlon, advance)`` when needed
        (``verify``: check the full-file sha256 of a cached entry, not only the sampled one).

        Returns (embeddings, built) where ``built`` is True when they were computed now."""
        if dtype not in ("f32", "f16"):
            raise InputError(f"gallery cache dtype must be 'f32' or 'f16', got {dtype!r}")
        key = self.key(model, location_digest, latlon, dtype)
        cached = self.load(model, key, latlon.shape[0], 512, dtype, verify=verify)
        if cached is not None:
            return cached, False
        emb = _encode_with_progress(encode, latlon, label, progress)
        if dtype == "f16":
            emb = emb.astype(np.float16)
        stored = self.store(model, key, emb, {"gallery": label, "count": int(latlon.shape[0])})
        return stored, True


def _encode_with_progress(
    encode: Callable[[np.ndarray, Callable[[int], None]], np.ndarray],
    latlon: np.ndarray,
    label: str,
    show: bool,
) -> np.ndarray:
    if not show:
        return encode(latlon, lambda _n: None)
    from geofast._progress import progress_bar

    with progress_bar(f"encoding gallery {label} (once; cached)", unit="points", transient=False) as bar:
        task = bar.add_task("encode", total=int(latlon.shape[0]))
        return encode(latlon, lambda n: bar.advance(task, n))
