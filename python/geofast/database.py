"""Image databases: geotagged photo embeddings for Search-within-Cell and RAG retrieval.

A database is a folder built from a user's own geotagged photos — a CSV (``image,lat,lon``; paths
relative to the CSV's folder; extra columns kept as metadata) or a folder of photos whose EXIF GPS
gives the location — holding one L2-normalised CLIP image embedding per photo::

    DIR/manifest.json     written last: the commit point. Format, geofast version, backbone
                          (source, config digest, probe embedding), dim, dtype, count, index,
                          sources, and for every file its size, sha256 and sampled sha256.
    DIR/embeddings.npy    (N, D) float16 (default) or float32, C order: memory-mapped on open.
    DIR/coords.npy        (N, 2) float64 latitude, longitude in degrees.
    DIR/norms.npy         (N,) float32 L2 norm of each photo's CLIP feature before normalisation:
                          row × norm is the raw feature GeoCLIP's image MLP takes (training).
    DIR/meta.jsonl        one JSON object per row: {"image": absolute path, <extra CSV columns>}.
    DIR/failed.csv        image,reason — unreadable photos, photos without GPS, bad CSV rows.
    DIR/index.faiss       only for non-flat FAISS indexes (``index="IVF4096,SQ8"``, ``"HNSW32"``).

Row ids are stable: ``add`` appends, so ids of existing rows never change.

**Search.** Flat databases (the default, FAISS ``IndexFlatIP`` semantics: exact maximum inner
product) are scanned by ``gf.Gallery`` directly over the read-only memory map of
``embeddings.npy`` — zero copies; peak memory is the file's pages plus a small constant. Other
indexes are FAISS indexes trained on a sample (:data:`DEFAULT_TRAIN_SIZE` rows, fixed seed) whose
shortlist of ``rerank × k`` candidates is re-scored exactly against the stored embeddings.
:meth:`Database.farthest` is the search of the negated queries (Img2Loc's dissimilar references).

**Build protocol (resumable, never destroys a good database).** A build or add works in
``DIR.partial/`` (beside ``DIR``): ``state.json`` records the plan digest (source entries,
chunk size, dtype, mode, base database) and the backbone's probe embedding; every
``chunk_size`` source entries are encoded and committed as one atomically written chunk file
(``chunks/NNNNNNNN.npz``). An interrupted run (crash, Ctrl-C, SIGKILL) continues on the next
identical command with the first uncommitted chunk; if the source or options changed, the stale
chunks are discarded (with a message). When every chunk is committed the new database is
assembled in ``DIR.partial/db/`` (manifest last), then installed by renames: ``DIR → DIR.old``,
``DIR.partial/db → DIR``, then ``DIR.old`` and ``DIR.partial`` are removed. The next build or add
finishes a swap that was cut off between renames. Unreadable images are listed in
``failed.csv`` and never abort the run. A lock file stops two builds writing the same ``DIR``.

**Checks on open.** Manifest present and parseable, format version known, every file present
with the recorded size, ``.npy`` headers agree with the manifest's count/dim/dtype, coordinates
valid, and checksums: full sha256 of every file when the data is at most
:data:`FULL_VERIFY_BYTES` (or ``verify=True``), otherwise a sha256 of 64 evenly spaced 64 KiB
blocks (catches most damage without reading gigabytes). With a backbone, the embedding of a fixed
synthetic probe image is recomputed and compared with the one stored at build time (cosine ≥
:data:`PROBE_MIN_COSINE`), which catches a wrong ``--clip`` cheaply and robustly. Every failure is
a :class:`~geofast.errors.DatabaseError` whose hint says how to repair.

**EXIF GPS.** :func:`read_exif_gps` reads the GPS IFD (tag 0x8825): latitude/longitude as three
rationals (degrees, minutes, seconds) with ``N``/``S`` and ``E``/``W`` references (``S``/``W``
negative). A GPS IFD with ``GPSStatus = V`` (void) or exactly (0, 0) — what cameras write without
a fix — counts as no GPS.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import numpy as np

from geofast import __version__
from geofast._io import atomic_write, atomic_write_text, file_sha256
from geofast.errors import DatabaseError, ImageError, InputError, ParameterError, ShapeError
from geofast.gallery import find_column

if TYPE_CHECKING:
    from PIL import Image

    from geofast.models.clip import Backbone

FORMAT = "geofast-image-db"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
COORDS = "coords.npy"
NORMS = "norms.npy"
META = "meta.jsonl"
FAILED = "failed.csv"
INDEX = "index.faiss"
STATE = "state.json"

DEFAULT_BATCH_SIZE = 32
DEFAULT_CHUNK_SIZE = 256
DEFAULT_DTYPE = "f16"
DEFAULT_INDEX = "Flat"
#: Rows used to train a non-flat FAISS index (random sample, seed 0).
DEFAULT_TRAIN_SIZE = 262_144
#: Shortlist factor for non-flat indexes: ``rerank · k`` candidates re-scored exactly.
DEFAULT_RERANK = 4
#: Databases up to this size are fully checksummed on every open; larger ones get a sampled check.
FULL_VERIFY_BYTES = 256 << 20
#: Minimum cosine between the stored and the recomputed probe embedding (same backbone: > 0.999).
PROBE_MIN_COSINE = 0.99
_SAMPLE_BLOCKS = 64
_SAMPLE_BLOCK_BYTES = 64 << 10
_DTYPES = {"f16": np.float16, "f32": np.float32}
_IMAGE_COLUMNS = ("image", "path", "file", "filename", "img", "image_path")
_LAT_COLUMNS = ("lat", "latitude", "lat_deg")
_LON_COLUMNS = ("lon", "lng", "long", "longitude", "lon_deg")
_GPS_IFD = 0x8825
NO_GPS_REASON = "no GPS position in EXIF"

#: ``on_progress(done, total)``: source entries processed so far (committed chunks included).
Progress = Callable[[int, int], None]
#: ``on_event(message)``: one-line notices (resuming, starting over, indexing).
Event = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Sources: CSV files and folders of photos with EXIF GPS
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One photo of a source: its absolute path, its position (None: read EXIF GPS) and metadata."""

    image: str
    lat: float | None
    lon: float | None
    meta: tuple[tuple[str, str], ...] = ()


@dataclass
class SourcePlan:
    """Everything a build will encode, in order, plus the rows rejected before encoding."""

    source: str
    kind: str  # "csv" | "folder"
    entries: list[Entry]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    columns: list[str] = field(default_factory=list)  # extra metadata columns (CSV)


def _rational(value: Any) -> float:
    """A float from an EXIF rational (IFDRational, (num, den) pair, int or float)."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
        return float(num) / float(den) if float(den) != 0 else math.nan
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def _ref(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    return str(value or "").strip("\x00 ").upper()[:1]


def gps_to_degrees(dms: Any, ref: Any) -> float | None:
    """Degrees from an EXIF GPS (degrees, minutes, seconds) triple and its N/S/E/W reference.

    ``S`` and ``W`` give negative values. A single number is taken as decimal degrees. Returns
    None when the value is missing, not finite or has minutes/seconds outside [0, 60).
    """
    if dms is None:
        return None
    parts = list(dms) if isinstance(dms, (tuple, list)) else [dms]
    if not 1 <= len(parts) <= 3:
        return None
    values = [_rational(p) for p in parts] + [0.0] * (3 - len(parts))
    deg, minutes, seconds = values
    if not all(math.isfinite(v) for v in values) or minutes < 0 or seconds < 0 or minutes >= 60 or seconds >= 60:
        return None
    out = abs(deg) + minutes / 60.0 + seconds / 3600.0
    sign = -1.0 if (_ref(ref) in ("S", "W") or deg < 0) else 1.0
    return sign * out


def read_exif_gps(image: str | os.PathLike[str] | Image.Image) -> tuple[float, float] | None:
    """``(lat, lon)`` degrees from a photo's EXIF GPS IFD, or None when it has no usable position.

    Raises :class:`~geofast.errors.ImageError` when the file itself cannot be read.
    """
    from PIL import Image as PILImage

    try:
        if isinstance(image, PILImage.Image):
            exif = image.getexif()
        else:
            with PILImage.open(os.fspath(image)) as im:
                exif = im.getexif()
        gps = exif.get_ifd(_GPS_IFD)
    except Exception as e:
        from geofast.images import load_image

        if isinstance(image, PILImage.Image):
            return None
        load_image(image)  # raises the canonical one-line ImageError for a bad file
        del e
        return None  # readable image, unreadable EXIF: no position
    if not gps:
        return None
    if _ref(gps.get(9)) == "V":  # GPSStatus: V = measurement void
        return None
    lat = gps_to_degrees(gps.get(2), gps.get(1))
    lon = gps_to_degrees(gps.get(4), gps.get(3))
    if lat is None or lon is None or abs(lat) > 90.0 or abs(lon) > 180.0:
        return None
    if lat == 0.0 and lon == 0.0:
        return None
    return lat, lon


def read_csv_source(path: str | os.PathLike[str]) -> SourcePlan:
    """Plan a build from a CSV with columns ``image,lat,lon`` (any order and case; ``path``,
    ``latitude``, ``longitude``, ``lng`` accepted too). Relative image paths are relative to the
    CSV's folder; other columns are kept as metadata (strings). Rows with a missing path or an
    invalid coordinate are rejected (listed in ``failed.csv``), never fatal."""
    p = Path(path).expanduser().resolve()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read CSV {p}: {e}", hint="pass a UTF-8 CSV with columns image,lat,lon") from e
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"CSV {p} is empty", hint="add a header line image,lat,lon and one row per photo") from None
    header = [h.strip() for h in header]
    img_col, lat_col, lon_col = (find_column(header, names) for names in (_IMAGE_COLUMNS, _LAT_COLUMNS, _LON_COLUMNS))
    if img_col is None or lat_col is None or lon_col is None:
        raise InputError(
            f"CSV {p} needs columns image, lat and lon; found {', '.join(header[:8]) or 'none'}",
            hint="name the columns image,lat,lon (paths relative to the CSV's folder)",
        )
    i_img, i_lat, i_lon = header.index(img_col), header.index(lat_col), header.index(lon_col)
    extra = [(i, h) for i, h in enumerate(header) if i not in (i_img, i_lat, i_lon) and h]
    base = p.parent
    entries: list[Entry] = []
    rejected: list[tuple[str, str]] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        row = row + [""] * (len(header) - len(row))
        name = row[i_img].strip()
        if not name:
            rejected.append((f"{p.name}:{line_no}", "empty image path"))
            continue
        image = str((base / Path(name).expanduser()).resolve()) if not os.path.isabs(name) else str(Path(name))
        try:
            lat, lon = float(row[i_lat]), float(row[i_lon])
        except ValueError:
            rejected.append((image, f"line {line_no}: latitude/longitude {row[i_lat]!r}, {row[i_lon]!r} are not numbers"))
            continue
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            rejected.append((image, f"line {line_no}: coordinates ({lat}, {lon}) out of range (degrees, latitude first)"))
            continue
        meta = tuple((h, row[i]) for i, h in extra)
        entries.append(Entry(image=image, lat=lat, lon=lon, meta=meta))
    return SourcePlan(source=str(p), kind="csv", entries=entries, rejected=rejected, columns=[h for _, h in extra])


def scan_folder_source(path: str | os.PathLike[str]) -> SourcePlan:
    """Plan a build from a folder (searched recursively, sorted) of photos; positions come from
    each photo's EXIF GPS when it is encoded (photos without GPS are skipped and counted)."""
    from geofast.images import expand_images

    p = Path(path).expanduser().resolve()
    images = expand_images([p])
    return SourcePlan(
        source=str(p), kind="folder", entries=[Entry(image=str(Path(x).resolve()), lat=None, lon=None) for x in images]
    )


def plan_source(source: str | os.PathLike[str]) -> SourcePlan:
    """A CSV file or a folder of photos → :class:`SourcePlan`."""
    p = Path(source).expanduser()
    if p.is_dir():
        return scan_folder_source(p)
    if p.is_file():
        return read_csv_source(p)
    raise InputError(f"source {source} does not exist", hint="pass a CSV (image,lat,lon) or a folder of photos with EXIF GPS")


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


def _probe_cosine(a: Sequence[float] | np.ndarray, b: np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return -1.0
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / max(denom, 1e-300)


def _backbone_info(backbone: Backbone, probe: np.ndarray) -> dict[str, Any]:
    config = Path(backbone.folder) / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {
        "source": str(backbone.source),
        "config_sha256": digest,
        "dim": int(probe.shape[0]),
        "probe": [float(v) for v in probe.astype(np.float32)],
    }


# ----------------------------------------------------------------------------------------------
# Files: hashing writers, checksums, npy headers
# ----------------------------------------------------------------------------------------------


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.f.write(data)
        self.h.update(data)
        n = len(data) if isinstance(data, bytes) else data.nbytes
        self.size += n
        return n


def _sample_sha256(path: Path) -> str:
    """sha256 of the size and of 64 evenly spaced 64 KiB blocks (the whole file when smaller)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLE_BLOCKS * _SAMPLE_BLOCK_BYTES:
            h.update(f.read())
        else:
            span = size - _SAMPLE_BLOCK_BYTES
            for i in range(_SAMPLE_BLOCKS):
                f.seek(span * i // (_SAMPLE_BLOCKS - 1))
                h.update(f.read(_SAMPLE_BLOCK_BYTES))
    return h.hexdigest()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_record(path: Path, sha256: str | None = None) -> dict[str, Any]:
    return {
        "bytes": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else file_sha256(path),
        "sample_sha256": _sample_sha256(path),
    }


# ----------------------------------------------------------------------------------------------
# FAISS indexes (non-flat)
# ----------------------------------------------------------------------------------------------


def _is_flat(factory: str) -> bool:
    return factory.strip().lower() in ("flat", "indexflatip", "flatip")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise DatabaseError("FAISS is not installed; non-flat indexes need it", hint="pip install faiss-cpu") from e
    return faiss


def _new_faiss_index(factory: str, dim: int) -> Any:
    faiss = _faiss()
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ParameterError(
            f"--index {factory!r} is not a FAISS index factory string ({first})",
            hint="use Flat (exact, default), IVF4096,SQ8, IVF1024,Flat or HNSW32",
        ) from e


def _default_search_params(factory: str, index: Any) -> str:
    faiss = _faiss()
    parts = []
    try:
        ivf = faiss.extract_index_ivf(index)
    except Exception:
        ivf = None
    if ivf is not None:
        nlist = int(ivf.nlist)
        parts.append(f"nprobe={min(nlist, max(16, nlist // 32))}")
    if "hnsw" in factory.lower():
        parts.append("efSearch=128")
    return ",".join(parts)


def _apply_search_params(index: Any, params: str) -> None:
    faiss = _faiss()
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except Exception as e:
        raise ParameterError(
            f"invalid FAISS search parameters {params!r}: {str(e).strip().splitlines()[-1]}",
            hint="e.g. nprobe=64 for IVF indexes, efSearch=128 for HNSW",
        ) from e


def _train_and_fill(index: Any, embeddings: np.ndarray, train_size: int, on_event: Event | None, start: int = 0) -> Any:
    n = embeddings.shape[0]
    if not index.is_trained:
        m = min(n, max(1, train_size))
        if on_event:
            on_event(f"training the index on {m:,} of {n:,} embeddings")
        rows = np.sort(np.random.default_rng(0).choice(n, size=m, replace=False)) if m < n else np.arange(n)
        sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
        try:
            index.train(sample)
        except Exception as e:
            raise DatabaseError(
                f"cannot train the FAISS index on {m:,} embeddings: {str(e).strip().splitlines()[-1]}",
                hint="use fewer lists (e.g. IVF256,SQ8 for small databases) or --index Flat",
            ) from e
    if on_event and n - start > 0:
        on_event(f"adding {n - start:,} embeddings to the index")
    for s in range(start, n, 65536):
        index.add(np.ascontiguousarray(embeddings[s : s + 65536], dtype=np.float32))
    return index


# ----------------------------------------------------------------------------------------------
# The database
# ----------------------------------------------------------------------------------------------


class Neighbours(NamedTuple):
    """Search results: ``sims (B, k) float32`` (descending), ``latlon (B, k, 2) float64`` degrees,
    ``ids (B, k) int64`` row ids (for :meth:`Database.meta`)."""

    sims: np.ndarray
    latlon: np.ndarray
    ids: np.ndarray


@dataclass
class BuildReport:
    """What a build or add did."""

    path: str
    rows: int  # rows in the database now
    added: int  # rows added by this run (new source entries encoded, including resumed chunks)
    failed: int  # unreadable images and rejected CSV rows
    no_gps: int  # photos skipped for lack of EXIF GPS
    duplicates: int  # add: photos already in the database (skipped)
    encoded: int  # images encoded by this process (not counting chunks resumed from a previous run)
    resumed_chunks: int
    chunks: int
    seconds: float
    encoder_seconds: float  # time inside the CLIP forward passes (the backbone probe included)
    loader_wait_seconds: float  # time the encoder waited for the image-loading threads
    failed_file: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Database:
    """An opened image database (see the module docstring for the layout and guarantees).

    >>> db = Database.open("photos.db")                      # doctest: +SKIP
    >>> sims, latlon, ids = db.search(query_embeddings, k=10)  # doctest: +SKIP
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], embeddings: np.ndarray, latlon: np.ndarray, norms: np.ndarray | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.embeddings = embeddings  # read-only memmap (N, D) float16/float32
        self.latlon = latlon  # (N, 2) float64
        #: (N,) float32 norms of the raw CLIP features (None for rows stored as given, unnormalised)
        self.norms = norms
        self._gallery: Any = None
        self._faiss_index: Any = None
        self._meta_offsets: np.ndarray | None = None
        self._search_params: str | None = None

    # -- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return (
            f"Database({str(self.path)!r}, rows={len(self)}, dim={self.dim}, dtype={self.dtype!r}, index={self.index_factory!r})"
        )

    @property
    def count(self) -> int:
        return len(self)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def index_factory(self) -> str:
        return str(self.manifest["index"]["factory"])

    @property
    def is_flat(self) -> bool:
        return _is_flat(self.index_factory)

    @property
    def backbone_source(self) -> str | None:
        src = (self.manifest.get("backbone") or {}).get("source")
        return None if src is None else str(src)

    # -- open and verify ----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        backbone: Backbone | None = None,
        verify: bool | None = None,
    ) -> Database:
        """Open a database, checking it (see "Checks on open"); ``verify=None`` checksums fully
        when the data is at most :data:`FULL_VERIFY_BYTES`, ``True`` always, ``False`` never
        (sizes, headers and counts are always checked). With ``backbone``, also check that it is
        the backbone the database was built with."""
        root = Path(path).expanduser()
        manifest = _read_manifest(root)
        hint = _rebuild_hint(root, manifest)
        files = manifest["files"]
        for name in files:
            fp = root / name
            if not fp.is_file():
                raise DatabaseError(f"database {root}: {name} is missing", hint=hint)
            size = fp.stat().st_size
            want = int(files[name]["bytes"])
            if size != want:
                what = "truncated" if size < want else "longer than recorded"
                raise DatabaseError(f"database {root}: {name} is {what} ({size:,} bytes, manifest says {want:,})", hint=hint)
        count, dim = int(manifest["count"]), int(manifest["dim"])
        np_dtype = np.dtype(_DTYPES[manifest["dtype"]])
        arrays: list[tuple[str, tuple[int, ...], np.dtype[Any]]] = [
            (EMBEDDINGS, (count, dim), np_dtype),
            (COORDS, (count, 2), np.dtype(np.float64)),
        ]
        if NORMS in files:
            arrays.append((NORMS, (count,), np.dtype(np.float32)))
        for name, shape, dt in arrays:
            try:
                got_shape, got_dtype, fortran, offset = _read_npy_header(root / name)
            except (OSError, ValueError) as e:
                raise DatabaseError(f"database {root}: {name} is not a valid .npy file ({e})", hint=hint) from e
            if got_shape != shape or got_dtype != dt or fortran:
                raise DatabaseError(
                    f"database {root}: {name} holds {got_dtype} {got_shape} but the manifest says "
                    f"{dt} {shape} (count {count:,}, dim {dim})",
                    hint=hint,
                )
            expected = offset + int(np.prod(shape)) * dt.itemsize
            size = (root / name).stat().st_size
            if size != expected:
                raise DatabaseError(
                    f"database {root}: {name} is {'truncated' if size < expected else 'too long'} "
                    f"({size:,} bytes, a {shape} {dt} array needs {expected:,})",
                    hint=hint,
                )
        total = sum(int(f["bytes"]) for f in files.values())
        full = verify if verify is not None else total <= FULL_VERIFY_BYTES
        _check_checksums(root, files, full=bool(full), hint=hint)
        emb = np.load(root / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        latlon = np.load(root / COORDS, mmap_mode="r", allow_pickle=False)
        lat_ok = np.isfinite(latlon).all(axis=1) & (np.abs(latlon[:, 0]) <= 90) & (np.abs(latlon[:, 1]) <= 180)
        if not lat_ok.all():
            row = int(np.argmin(lat_ok))
            raise DatabaseError(f"database {root}: coordinates of row {row} are invalid ({latlon[row].tolist()})", hint=hint)
        norms = np.load(root / NORMS, mmap_mode="r", allow_pickle=False) if NORMS in files else None
        db = cls(root, manifest, emb, latlon, norms)
        if full:
            db._check_meta_lines(hint)
        if backbone is not None:
            db.check_backbone(backbone)
        return db

    def verify(self) -> None:
        """Full check: every file's sha256 and the metadata line count."""
        hint = _rebuild_hint(self.path, self.manifest)
        _check_checksums(self.path, self.manifest["files"], full=True, hint=hint)
        self._check_meta_lines(hint)

    def _check_meta_lines(self, hint: str) -> None:
        offsets = self._offsets()
        if offsets.shape[0] != len(self):
            raise DatabaseError(
                f"database {self.path}: {META} has {offsets.shape[0]:,} lines but the manifest says {len(self):,} rows",
                hint=hint,
            )

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise :class:`DatabaseError` unless ``backbone`` is the one the database was built with."""
        info = self.manifest.get("backbone") or {}
        stored = info.get("probe")
        if stored is None:
            return  # created from precomputed embeddings: nothing to compare against
        probe = probe_embedding(backbone)
        if probe.shape[0] != self.dim:
            raise DatabaseError(
                f"the backbone {backbone.source} gives {probe.shape[0]}-d embeddings; database {self.path} holds {self.dim}-d ones",
                hint=f"use --clip {info.get('source')} (the backbone this database was built with), or rebuild it",
            )
        cos = _probe_cosine(stored, probe)
        if cos < PROBE_MIN_COSINE:
            raise DatabaseError(
                f"wrong backbone: database {self.path} was built with {info.get('source')}, whose embeddings "
                f"differ from those of {backbone.source} (probe cosine {cos:.3f} < {PROBE_MIN_COSINE})",
                hint=f"pass --clip {info.get('source')}, or rebuild with --clip {backbone.source}: "
                f"geofast db build SOURCE --out {self.path} --clip {backbone.source}",
            )

    # -- search ----------------------------------------------------------------------------------
    def _queries(self, embeddings: np.ndarray, normalize: bool) -> np.ndarray:
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ShapeError(f"query embeddings must have shape (B, {self.dim}) or ({self.dim},), got {np.shape(embeddings)}")
        if normalize:
            return normalize_rows(q, "query embeddings")
        if not np.isfinite(q).all():
            raise InputError("query embeddings contain NaN or inf")
        return np.ascontiguousarray(q)

    def gallery(self) -> Any:
        """The ``gf.Gallery`` scanning the memory-mapped embeddings (created on first use, zero-copy)."""
        if self._gallery is None:
            import geofast as gf

            self._gallery = gf.Gallery(self.embeddings, dtype="f16" if self.dtype == "f16" else "f32")
        return self._gallery

    def faiss_index(self) -> Any:
        """The FAISS index: the stored one for non-flat databases; for flat ones an
        ``IndexFlatIP`` over a float32 copy of the embeddings (for interoperability; geofast's own
        flat search does not need it)."""
        if self._faiss_index is None:
            faiss = _faiss()
            if self.is_flat:
                index = faiss.IndexFlatIP(self.dim)
                for s in range(0, len(self), 65536):
                    index.add(np.ascontiguousarray(self.embeddings[s : s + 65536], dtype=np.float32))
            else:
                try:
                    index = faiss.read_index(str(self.path / INDEX))
                except Exception as e:
                    raise DatabaseError(
                        f"cannot read {self.path / INDEX}: {e}", hint=_rebuild_hint(self.path, self.manifest)
                    ) from e
                params = self._search_params if self._search_params is not None else self.manifest["index"].get("search_params")
                if params:
                    _apply_search_params(index, params)
            self._faiss_index = index
        return self._faiss_index

    def set_search_params(self, params: str) -> None:
        """FAISS search parameters for a non-flat index, e.g. ``"nprobe=128"`` (IVF) or
        ``"efSearch=256"`` (HNSW); the default is recorded in the manifest at build time."""
        if self.is_flat:
            raise ParameterError("search parameters apply to FAISS indexes; this database is flat (exact)")
        if self._faiss_index is not None:
            _apply_search_params(self._faiss_index, params)
        self._search_params = params

    def search(
        self,
        embeddings: np.ndarray,
        k: int = 10,
        *,
        normalize: bool = True,
        rerank: int = DEFAULT_RERANK,
    ) -> Neighbours:
        """The ``k`` rows most similar (inner product) to each query embedding ``(B, D)`` or ``(D,)``.

        Queries are L2-normalised first (``normalize=False`` uses them as given). Returns
        :class:`Neighbours` ``(sims, latlon, ids)`` sorted by descending similarity, ties by
        lower row id. Flat databases are exact (``gf.Gallery`` over the memory map); other
        indexes re-score a shortlist of ``rerank · k`` FAISS candidates exactly, falling back
        to the exact scan for a query whose shortlist holds fewer than ``k`` rows.
        """
        n = len(self)
        if not isinstance(k, (int, np.integer)) or k < 1 or k > n:
            raise ParameterError(f"k must be between 1 and the database's {n:,} rows, got {k}")
        q = self._queries(embeddings, normalize)
        if self.is_flat:
            sims, ids = self.gallery().search(q, int(k))
        else:
            sims, ids = self._search_index(q, int(k), max(1, int(rerank)))
        ids = np.asarray(ids, dtype=np.int64)
        return Neighbours(np.asarray(sims, dtype=np.float32), np.asarray(self.latlon[ids.ravel()]).reshape(ids.shape + (2,)), ids)

    def _search_index(self, q: np.ndarray, k: int, rerank: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.faiss_index()
        n = len(self)
        short = min(n, k * rerank)
        _, cand = index.search(q, short)
        sims = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for b in range(q.shape[0]):
            c = np.unique(cand[b][cand[b] >= 0])  # sorted ascending: ties resolve to the lower id
            if c.shape[0] < k:
                s, i = self.gallery().search(q[b : b + 1], k)
                sims[b], ids[b] = s[0], i[0]
                continue
            exact = np.asarray(self.embeddings[c], dtype=np.float32) @ q[b]
            order = np.argsort(-exact, kind="stable")[:k]
            sims[b], ids[b] = exact[order], c[order]
        return sims, ids

    def within(self, center_latlon: Sequence[float] | np.ndarray, radius_km: float) -> np.ndarray:
        """Row ids (ascending) of the photos within ``radius_km`` (great circle, R = 6371.0088 km)
        of ``center_latlon`` = (lat, lon) degrees."""
        import geofast as gf

        if not (radius_km > 0 and math.isfinite(radius_km)):
            raise ParameterError(f"radius_km must be > 0, got {radius_km}")
        center = np.asarray(center_latlon, dtype=np.float64).reshape(1, 2)
        dist = gf.haversine(np.asarray(self.latlon), center)
        return np.flatnonzero(dist <= radius_km).astype(np.int64)

    def search_rows(self, embedding: np.ndarray, rows: np.ndarray, k: int, *, normalize: bool = True) -> Neighbours:
        """Exact search of one query ``(D,)`` among the given row ids only (Search-within-Cell);
        returns up to ``k`` neighbours as a batch of one (``(1, min(k, len(rows)))``)."""
        q = self._queries(embedding, normalize)
        if q.shape[0] != 1:
            raise ShapeError(f"search_rows takes one query, got {q.shape[0]}")
        if k < 1:
            raise ParameterError(f"k must be >= 1, got {k}")
        ids = np.unique(np.asarray(rows, dtype=np.int64).ravel())
        if ids.shape[0] and (ids[0] < 0 or ids[-1] >= len(self)):
            raise ParameterError(f"row ids must be within the database's {len(self):,} rows")
        sims = np.empty(ids.shape[0], dtype=np.float32)
        for s in range(0, ids.shape[0], 65536):
            blk = ids[s : s + 65536]
            sims[s : s + blk.shape[0]] = np.asarray(self.embeddings[blk], dtype=np.float32) @ q[0]
        order = np.argsort(-sims, kind="stable")[: min(k, ids.shape[0])]
        top = ids[order]
        return Neighbours(sims[order][None, :], np.asarray(self.latlon[top]).reshape(1, -1, 2), top[None, :])

    def farthest(self, embeddings: np.ndarray, k: int = 16, *, normalize: bool = True) -> Neighbours:
        """The ``k`` rows *least* similar to each query (nearest to the negated query, as Img2Loc
        picks its negative references). ``sims`` are similarities to the original query,
        ascending (most dissimilar first)."""
        q = self._queries(embeddings, normalize)
        res = self.search(-q, k, normalize=False)
        return Neighbours(-res.sims, res.latlon, res.ids)

    # -- metadata and info -----------------------------------------------------------------------
    def _offsets(self) -> np.ndarray:
        if self._meta_offsets is None:
            path = self.path / META
            if path.stat().st_size == 0:
                self._meta_offsets = np.zeros(0, dtype=np.int64)
            else:
                data = np.fromfile(path, dtype=np.uint8)
                ends = np.flatnonzero(data == 10)
                if ends.shape[0] == 0 or ends[-1] != data.shape[0] - 1:
                    ends = np.append(ends, data.shape[0])
                self._meta_offsets = np.concatenate([[0], ends + 1]).astype(np.int64)[:-1]
        return self._meta_offsets

    def meta(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        """The metadata objects (``{"image": path, ...extra columns}``) of the given row ids."""
        offsets = self._offsets()
        out = []
        with open(self.path / META, "rb") as f:
            for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel():
                if not 0 <= i < offsets.shape[0]:
                    raise ParameterError(f"row id {int(i)} is outside the database's {len(self):,} rows")
                f.seek(int(offsets[i]))
                out.append(json.loads(f.readline()))
        return out

    def images(self) -> list[str]:
        """The image path of every row, in row order."""
        with open(self.path / META, encoding="utf-8") as f:
            return [json.loads(line)["image"] for line in f if line.strip()]

    def failures(self) -> list[tuple[str, str]]:
        """``(image, reason)`` for every photo that did not make it into the database."""
        path = self.path / FAILED
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]

    def info(self) -> dict[str, Any]:
        """Counts, sizes, backbone, index and coverage, as plain JSON-able values."""
        m = self.manifest
        files = {name: int(rec["bytes"]) for name, rec in m["files"].items()}
        ll = np.asarray(self.latlon)
        coverage: dict[str, Any] = {}
        if ll.shape[0]:
            cells = np.unique(np.floor(ll[:, 0]).astype(np.int64) * 360 + np.floor(ll[:, 1]).astype(np.int64))
            coverage = {
                "lat_min": float(ll[:, 0].min()),
                "lat_max": float(ll[:, 0].max()),
                "lon_min": float(ll[:, 1].min()),
                "lon_max": float(ll[:, 1].max()),
                "cells_1deg": int(cells.shape[0]),
            }
        backbone = {k: v for k, v in (m.get("backbone") or {}).items() if k != "probe"}
        return {
            "path": str(self.path),
            "format_version": m["format_version"],
            "geofast_version": m["geofast_version"],
            "created": m.get("created"),
            "updated": m.get("updated"),
            "rows": len(self),
            "dim": self.dim,
            "dtype": self.dtype,
            "index": dict(m["index"]),
            "backbone": backbone,
            "failed": int(m.get("failed", 0)),
            "no_gps": int(m.get("no_gps", 0)),
            "sources": list(m.get("sources", [])),
            "files": files,
            "bytes": int(sum(files.values())),
            "coverage": coverage,
        }

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        source: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        clip: str | os.PathLike[str] | None = None,
        backbone: Backbone | None = None,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: str = DEFAULT_DTYPE,
        index: str = DEFAULT_INDEX,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        train_size: int = DEFAULT_TRAIN_SIZE,
        workers: int | None = None,
        on_progress: Progress | None = None,
        on_event: Event | None = None,
    ) -> BuildReport:
        """Build (or rebuild, or resume building) the database ``out`` from ``source`` (a CSV or
        a folder of photos with EXIF GPS). ``out`` is replaced only once the new database is
        complete. The CLIP backbone is ``backbone`` or loaded from ``clip``/``device``.
        ``workers`` image-loading threads (default: 1 on CPU, where the encoder uses every core;
        up to 8 with a GPU) keep the encoder fed."""
        _check_build_args(batch_size, chunk_size, dtype, workers)
        plan = plan_source(source)
        builder = _Builder(Path(out).expanduser(), mode="build", on_event=on_event)
        with builder.locked():
            _recover_swap(builder.root)
            return builder.run(
                plan,
                clip=clip,
                backbone=backbone,
                device=device,
                batch_size=batch_size,
                dtype=dtype,
                index=index,
                chunk_size=chunk_size,
                train_size=train_size,
                on_progress=on_progress,
                workers=workers,
            )

    @classmethod
    def add(
        cls,
        path: str | os.PathLike[str],
        source: str | os.PathLike[str],
        *,
        clip: str | os.PathLike[str] | None = None,
        backbone: Backbone | None = None,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        workers: int | None = None,
        on_progress: Progress | None = None,
        on_event: Event | None = None,
    ) -> BuildReport:
        """Add the photos of ``source`` to the existing database ``path`` (photos already in it
        are skipped). Uses the database's backbone when ``clip`` is not given; a different backbone
        is refused. Resumable like :meth:`build`; the old database stays valid until the grown one
        replaces it."""
        _check_build_args(batch_size, chunk_size, DEFAULT_DTYPE, workers)
        root = Path(path).expanduser()
        plan = plan_source(source)
        builder = _Builder(root, mode="add", on_event=on_event)
        with builder.locked():
            _recover_swap(root)
            base = cls.open(root, verify=False)
            if clip is None and backbone is None and not os.environ.get("GEOFAST_CLIP", "").strip():
                clip = base.backbone_source
            return builder.run(
                plan,
                clip=clip,
                backbone=backbone,
                device=device,
                batch_size=batch_size,
                dtype=base.dtype,
                index=base.index_factory,
                chunk_size=chunk_size,
                train_size=DEFAULT_TRAIN_SIZE,
                on_progress=on_progress,
                base=base,
                workers=workers,
            )

    @classmethod
    def from_arrays(
        cls,
        out: str | os.PathLike[str],
        embeddings: np.ndarray,
        latlon: np.ndarray,
        *,
        meta: Sequence[dict[str, Any]] | None = None,
        dtype: str = DEFAULT_DTYPE,
        index: str = DEFAULT_INDEX,
        normalize: bool = True,
        backbone_source: str | None = None,
        train_size: int = DEFAULT_TRAIN_SIZE,
        on_event: Event | None = None,
    ) -> Database:
        """Create a database from precomputed embeddings ``(N, D)`` (a memmap is streamed in
        blocks) and coordinates ``(N, 2)``. Without a probe embedding the backbone cannot be
        checked later; ``backbone_source`` is recorded for information."""
        _check_build_args(1, 1, dtype)
        from geofast.gallery import check_latlon_array

        ll = check_latlon_array(latlon, "latlon")
        if embeddings.ndim != 2 or embeddings.shape[0] != ll.shape[0]:
            raise ShapeError(f"embeddings {embeddings.shape} and latlon {ll.shape} must have the same number of rows")
        if meta is not None and len(meta) != ll.shape[0]:
            raise ShapeError(f"meta has {len(meta)} entries for {ll.shape[0]} rows")
        if ll.shape[0] == 0:
            raise InputError("cannot create an empty database")
        root = Path(out).expanduser()
        builder = _Builder(root, mode="build", on_event=on_event)
        with builder.locked():
            _recover_swap(root)
            factory = "Flat" if _is_flat(index) else index
            if not _is_flat(factory):
                _new_faiss_index(factory, embeddings.shape[1])
            np_dtype = _DTYPES[dtype]

            norms = np.empty(ll.shape[0], dtype=np.float32) if normalize else None

            def blocks() -> Iterator[np.ndarray]:
                for s in range(0, embeddings.shape[0], 65536):
                    blk = np.asarray(embeddings[s : s + 65536], dtype=np.float32)
                    if norms is not None:
                        unit = normalize_rows(blk)
                        norms[s : s + blk.shape[0]] = np.linalg.norm(blk.astype(np.float64), axis=1)
                        blk = unit
                    yield blk.astype(np_dtype)

            metas = meta if meta is not None else [{"image": f"row{i}"} for i in range(ll.shape[0])]
            manifest_extra = {
                "backbone": {"source": backbone_source, "config_sha256": None, "dim": int(embeddings.shape[1]), "probe": None},
                "sources": [
                    {"source": "arrays", "kind": "arrays", "added": int(ll.shape[0]), "failed": 0, "no_gps": 0, "date": _now()}
                ],
                "failed": 0,
                "no_gps": 0,
            }
            builder.assemble(
                n_rows=ll.shape[0],
                dim=int(embeddings.shape[1]),
                dtype=dtype,
                factory=factory,
                emb_blocks=blocks(),
                latlon=ll,
                norms=lambda: norms,
                meta_lines=(json.dumps(m, ensure_ascii=False) for m in metas),
                failures=[],
                manifest_extra=manifest_extra,
                train_size=train_size,
                base=None,
            )
            builder.install()
        return cls.open(root, verify=False)


# ----------------------------------------------------------------------------------------------
# Manifest helpers
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sibling(root: Path, suffix: str) -> Path:
    return root.with_name(root.name + suffix)


def _rebuild_hint(root: Path, manifest: dict[str, Any] | None) -> str:
    sources = [s.get("source") for s in (manifest or {}).get("sources", []) if s.get("kind") in ("csv", "folder")]
    src = sources[0] if len(sources) == 1 else "SOURCE"
    extra = " (then geofast db add for the other sources)" if len(sources) > 1 else ""
    return f"the database is damaged; rebuild it: geofast db build {src} --out {root}{extra}"


def _read_manifest(root: Path) -> dict[str, Any]:
    partial = _sibling(root, ".partial")
    if not root.exists():
        if _sibling(root, ".old").exists() or (partial / "db" / MANIFEST).is_file():
            raise DatabaseError(
                f"database {root} does not exist: a rebuild was interrupted while installing it",
                hint=f"rerun the same geofast db build ... --out {root} (or geofast db add) to finish it",
            )
        if partial.exists():
            raise DatabaseError(
                f"database {root} does not exist yet: its build was interrupted",
                hint=f"rerun the same geofast db build SOURCE --out {root} to resume it",
            )
        raise DatabaseError(f"database {root} does not exist", hint=f"build it: geofast db build SOURCE --out {root}")
    if not root.is_dir():
        raise DatabaseError(f"{root} is not a database folder", hint="pass the folder given to geofast db build --out")
    mpath = root / MANIFEST
    if not mpath.is_file():
        hint = (
            f"its build was interrupted: rerun geofast db build SOURCE --out {root} to resume it"
            if partial.exists()
            else f"build it: geofast db build SOURCE --out {root}"
        )
        raise DatabaseError(f"{root} is not a geofast database (no {MANIFEST})", hint=hint)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatabaseError(f"database {root}: {MANIFEST} is unreadable ({e})", hint=_rebuild_hint(root, None)) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatabaseError(f"{mpath} is not a geofast database manifest", hint=_rebuild_hint(root, None))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatabaseError(
            f"database {root} has format version {version}; this geofast ({__version__}) reads version {FORMAT_VERSION}",
            hint=f"rebuild it with this geofast: geofast db build SOURCE --out {root}",
        )
    hint = _rebuild_hint(root, manifest)
    try:
        count, dim = int(manifest["count"]), int(manifest["dim"])
        dtype, files, index = manifest["dtype"], manifest["files"], manifest["index"]["factory"]
    except (KeyError, TypeError, ValueError) as e:
        raise DatabaseError(f"database {root}: {MANIFEST} lacks a field ({e})", hint=hint) from e
    if count < 0 or dim < 1 or dtype not in _DTYPES or not isinstance(files, dict):
        raise DatabaseError(f"database {root}: {MANIFEST} is inconsistent (count {count}, dim {dim}, dtype {dtype!r})", hint=hint)
    required = {EMBEDDINGS, COORDS, META} | (set() if _is_flat(str(index)) else {INDEX})
    missing = sorted(required - set(files))
    if missing:
        raise DatabaseError(f"database {root}: {MANIFEST} does not list {', '.join(missing)}", hint=hint)
    return manifest


def _check_checksums(root: Path, files: dict[str, Any], *, full: bool, hint: str) -> None:
    for name, rec in files.items():
        path = root / name
        if full:
            got, want, what = file_sha256(path), rec.get("sha256"), "sha256"
        else:
            got, want, what = _sample_sha256(path), rec.get("sample_sha256"), "sampled sha256"
        if got != want:
            raise DatabaseError(
                f"database {root}: {name} does not match its {what} in {MANIFEST} (file changed or corrupt)", hint=hint
            )


def _check_build_args(batch_size: int, chunk_size: int, dtype: str, workers: int | None = None) -> None:
    if workers is not None and workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}", hint="e.g. --workers 4 (image-loading threads)")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}", hint="e.g. --batch-size 32")
    if chunk_size < 1:
        raise ParameterError(f"chunk_size must be >= 1, got {chunk_size}", hint="e.g. --chunk-size 256")
    if dtype not in _DTYPES:
        raise ParameterError(
            f"dtype must be f16 or f32, got {dtype!r}", hint="use --dtype f16 (default, half the size) or --dtype f32"
        )


def _recover_swap(root: Path) -> None:
    """Finish an install cut off between its renames (see the module docstring)."""
    old, partial = _sibling(root, ".old"), _sibling(root, ".partial")
    staged = partial / "db"
    if not root.exists():
        if (staged / MANIFEST).is_file():
            os.replace(staged, root)
            # The chunks of that run are now installed: clear the work folder (keep the lock).
            for child in partial.iterdir():
                if child.name != "lock":
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        elif old.exists():
            os.replace(old, root)
        _fsync_dir(root.parent)
    if root.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The builder: chunks, assembly, install
# ----------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    chunk: int
    rows: list[int]  # entry indices of the rows of ``pixels``
    pixels: Any  # CLIP pixel tensor (B, 3, 224, 224), or None when no image of the batch loaded
    latlon: list[tuple[float, float]]
    failures: list[tuple[int, str]]
    no_gps: list[int]
    last_in_chunk: bool


@dataclass
class _ChunkAccumulator:
    rows: list[int] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)
    latlon: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    no_gps: list[int] = field(default_factory=list)


class _Builder:
    def __init__(self, root: Path, *, mode: str, on_event: Event | None) -> None:
        self.root = root
        self.mode = mode
        self.partial = _sibling(root, ".partial")
        self.chunks = self.partial / "chunks"
        self.staged = self.partial / "db"
        self.on_event = on_event

    def _say(self, msg: str) -> None:
        if self.on_event is not None:
            self.on_event(msg)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.partial.mkdir(parents=True, exist_ok=True)
        lock_path = self.partial / "lock"
        f = open(lock_path, "a+b")
        try:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - not POSIX: no lock
                pass
            except OSError as e:
                raise DatabaseError(
                    f"another geofast process is building {self.root}",
                    hint=f"wait for it to finish (or remove {self.partial} if no build is running)",
                ) from e
            yield
        finally:
            f.close()
            with contextlib.suppress(OSError):
                if self.partial.is_dir() and [c.name for c in self.partial.iterdir()] == ["lock"]:
                    (self.partial / "lock").unlink()
                    self.partial.rmdir()

    # -- the whole run ---------------------------------------------------------------------------
    def run(
        self,
        plan: SourcePlan,
        *,
        clip: str | os.PathLike[str] | None,
        backbone: Backbone | None,
        device: str | None,
        batch_size: int,
        dtype: str,
        index: str,
        chunk_size: int,
        train_size: int,
        on_progress: Progress | None,
        base: Database | None = None,
        workers: int | None = None,
    ) -> BuildReport:
        """Encode, assemble and install (the caller holds :meth:`locked`)."""
        t_start = time.perf_counter()
        factory = "Flat" if _is_flat(index) else index
        if backbone is None:
            from geofast.models.clip import load_backbone

            backbone = load_backbone(clip, device)
        t_probe = time.perf_counter()
        probe = probe_embedding(backbone)
        probe_s = time.perf_counter() - t_probe
        dim = int(probe.shape[0])
        if not _is_flat(factory):
            _new_faiss_index(factory, dim)  # fail on a bad factory string before encoding
        duplicates = 0
        if base is not None:
            base.check_backbone(backbone)
            known = set(base.images())
            kept = [e for e in plan.entries if e.image not in known]
            duplicates = len(plan.entries) - len(kept)
            plan = SourcePlan(plan.source, plan.kind, kept, plan.rejected, plan.columns)
        n = len(plan.entries)
        n_chunks = (n + chunk_size - 1) // chunk_size
        digest = self._plan_digest(plan, chunk_size, dtype, dim, base)
        done = self._prepare_state(plan.source, digest, probe, n_chunks, chunk_size, n)
        resumed = len(done)
        if resumed:
            self._say(f"resuming: {resumed} of {n_chunks} chunks already encoded")
        if on_progress is not None:
            on_progress(sum(min(chunk_size, n - c * chunk_size) for c in done), n)
        encoded, enc_s, wait_s = self._encode(
            plan,
            backbone,
            done,
            n_chunks,
            chunk_size,
            batch_size,
            dtype,
            dim,
            digest,
            on_progress,
            _loader_workers(workers, backbone),
        )

        # -- assemble: small arrays now, embeddings streamed chunk by chunk ----------------------
        heads = [self._chunk_head(c, digest, chunk_size, n) for c in range(n_chunks)]
        if any(h is None for h in heads):  # pragma: no cover - chunks are written atomically
            raise DatabaseError(f"a chunk file in {self.chunks} is unreadable", hint="rerun the same command to redo it")
        parts = [h for h in heads if h is not None]
        new_count = sum(int(p["rows"].shape[0]) for p in parts)
        failures: list[tuple[str, str]] = list(plan.rejected)
        no_gps = 0
        for p in parts:
            for r, reason in zip(p["fail_rows"].tolist(), p["fail_reasons"].tolist()):
                failures.append((plan.entries[r].image, str(reason)))
            for r in p["nogps_rows"].tolist():
                failures.append((plan.entries[r].image, NO_GPS_REASON))
            no_gps += int(p["nogps_rows"].shape[0])
        n_failed = len(failures) - no_gps
        base_count = len(base) if base is not None else 0
        report = BuildReport(
            path=str(self.root),
            rows=base_count + new_count,
            added=new_count,
            failed=n_failed,
            no_gps=no_gps,
            duplicates=duplicates,
            encoded=encoded,
            resumed_chunks=resumed,
            chunks=n_chunks,
            seconds=0.0,
            encoder_seconds=enc_s + probe_s,
            loader_wait_seconds=wait_s,
            failed_file=str(self.root / FAILED),
        )
        if new_count == 0 and base is None:
            shown = "; ".join(f"{Path(a).name}: {b}" for a, b in failures[:3])
            raise DatabaseError(
                f"no photo of {plan.source} could be added ({n_failed} unreadable or invalid, {no_gps} without GPS)"
                + (f": {shown}" if shown else ""),
                hint="check the source (a CSV image,lat,lon or a folder of photos with EXIF GPS)",
            )
        if new_count == 0 and base is not None and not failures:
            self._say("nothing new to add")
            self.discard()
            report.seconds = time.perf_counter() - t_start
            return report
        latlon_new = np.concatenate([p["latlon"] for p in parts]) if parts else np.zeros((0, 2))
        latlon = latlon_new if base is None else np.concatenate([np.asarray(base.latlon), latlon_new])

        def all_norms() -> np.ndarray | None:
            new = np.concatenate([p["norms"] for p in parts]) if parts else np.zeros(0, dtype=np.float32)
            if base is None:
                return new
            return None if base.norms is None else np.concatenate([np.asarray(base.norms), new])

        def emb_blocks() -> Iterator[np.ndarray]:
            if base is not None:
                for s in range(0, base_count, 65536):
                    yield np.asarray(base.embeddings[s : s + 65536])
            for c in range(n_chunks):
                with np.load(self._chunk_path(c), allow_pickle=False) as z:
                    emb = z["emb"]
                if emb.shape[0]:
                    yield emb

        def meta_lines() -> Iterator[str]:
            if base is not None:
                with open(base.path / META, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            yield line.rstrip("\n")
            for p in parts:
                for r in p["rows"].tolist():
                    e = plan.entries[r]
                    yield json.dumps({"image": e.image, **dict(e.meta)}, ensure_ascii=False)

        src_record = {
            "source": plan.source,
            "kind": plan.kind,
            "added": int(new_count),
            "failed": int(n_failed),
            "no_gps": int(no_gps),
            "duplicates": int(duplicates),
            "date": _now(),
        }
        base_m = base.manifest if base is not None else {}
        manifest_extra: dict[str, Any] = {
            "backbone": _backbone_info(backbone, probe),
            "sources": list(base_m.get("sources", [])) + [src_record],
            "failed": int(base_m.get("failed", 0)) + n_failed,
            "no_gps": int(base_m.get("no_gps", 0)) + no_gps,
            "columns": sorted(set(base_m.get("columns", [])) | set(plan.columns)),
        }
        if base is not None:
            manifest_extra["created"] = base_m.get("created")
        all_failures = (base.failures() if base is not None else []) + failures
        self.assemble(
            n_rows=base_count + new_count,
            dim=dim,
            dtype=dtype,
            factory=factory,
            emb_blocks=emb_blocks(),
            latlon=latlon,
            norms=all_norms,
            meta_lines=meta_lines(),
            failures=all_failures,
            manifest_extra=manifest_extra,
            train_size=train_size,
            base=base,
        )
        if base is not None:
            base._gallery = None  # drop references to the old memmaps before the swap
            base._faiss_index = None
        self.install()
        report.seconds = time.perf_counter() - t_start
        return report

    # -- state -------------------------------------------------------------------------------------
    def _plan_digest(self, plan: SourcePlan, chunk_size: int, dtype: str, dim: int, base: Database | None) -> str:
        h = hashlib.sha256()
        head = {
            "mode": self.mode,
            "source": plan.source,
            "kind": plan.kind,
            "chunk_size": chunk_size,
            "dtype": dtype,
            "dim": dim,
            "format": FORMAT_VERSION,
            "base": hashlib.sha256((base.path / MANIFEST).read_bytes()).hexdigest() if base is not None else None,
        }
        h.update(json.dumps(head, sort_keys=True).encode())
        for e in plan.entries:
            h.update(json.dumps([e.image, e.lat, e.lon, list(e.meta)]).encode())
            h.update(b"\n")
        return h.hexdigest()

    def _prepare_state(self, source: str, digest: str, probe: np.ndarray, n_chunks: int, chunk_size: int, n: int) -> set[int]:
        """Keep the committed chunks of an identical interrupted run; otherwise start afresh."""
        if self.staged.exists():
            shutil.rmtree(self.staged)
        state_path = self.partial / STATE
        state: dict[str, Any] | None = None
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                state = None
        reusable = (
            state is not None
            and state.get("digest") == digest
            and _probe_cosine(state.get("probe") or [], probe) >= PROBE_MIN_COSINE
        )
        if state is not None and not reusable and self.chunks.exists() and any(self.chunks.iterdir()):
            if state.get("mode") != self.mode:
                raise DatabaseError(
                    f"{self.partial} holds an interrupted geofast db {state.get('mode')} of {state.get('source')}",
                    hint=f"finish it by rerunning that command, or delete {self.partial} to discard it",
                )
            self._say("the source, options or backbone changed since the interrupted run: starting over")
        if not reusable:
            if self.chunks.exists():
                shutil.rmtree(self.chunks)
            self.chunks.mkdir(parents=True)
            atomic_write_text(
                state_path,
                json.dumps({"digest": digest, "mode": self.mode, "source": source, "probe": probe.tolist(), "created": _now()}),
            )
            return set()
        return {c for c in range(n_chunks) if self._chunk_head(c, digest, chunk_size, n) is not None}

    def discard(self) -> None:
        """Remove the work folder (nothing to install)."""
        for child in list(self.partial.iterdir()) if self.partial.exists() else []:
            if child.name == "lock":
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.partial / "lock").unlink()
            self.partial.rmdir()

    def _chunk_path(self, c: int) -> Path:
        return self.chunks / f"{c:08d}.npz"

    def _chunk_head(self, c: int, digest: str, chunk_size: int, n: int) -> dict[str, np.ndarray] | None:
        """A committed chunk's small arrays (not its embeddings), or None if absent or foreign."""
        path = self._chunk_path(c)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["digest"]) != digest:
                    return None
                part = {k: z[k] for k in ("rows", "latlon", "norms", "fail_rows", "fail_reasons", "nogps_rows")}
        except (OSError, ValueError, KeyError, EOFError):
            return None
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        rows = part["rows"]
        ok = (
            part["latlon"].shape == (rows.shape[0], 2)
            and part["norms"].shape == (rows.shape[0],)
            and bool(((rows >= lo) & (rows < hi)).all())
        )
        return part if ok else None

    def _write_chunk(self, c: int, digest: str, acc: _ChunkAccumulator, dim: int, dtype: str) -> None:
        np_dtype = _DTYPES[dtype]
        rows = np.asarray(acc.rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # batches arrive in order; keep rows ascending anyway
        emb = np.concatenate(acc.emb)[order].astype(np_dtype) if acc.emb else np.zeros((0, dim), dtype=np_dtype)
        failures = sorted(acc.failures)
        arrays = {
            "digest": np.array(digest),
            "rows": rows[order],
            "emb": emb,
            "norms": (np.concatenate(acc.norms) if acc.norms else np.zeros(0, dtype=np.float32))[order],
            "latlon": np.asarray(acc.latlon, dtype=np.float64).reshape(-1, 2)[order],
            "fail_rows": np.asarray([r for r, _ in failures], dtype=np.int64),
            "fail_reasons": np.asarray([s for _, s in failures], dtype=np.str_) if failures else np.zeros(0, dtype="<U1"),
            "nogps_rows": np.asarray(sorted(acc.no_gps), dtype=np.int64),
        }
        atomic_write(self._chunk_path(c), lambda f: np.savez(f, allow_pickle=False, **arrays))

    # -- encoding ----------------------------------------------------------------------------------
    def _encode(
        self,
        plan: SourcePlan,
        backbone: Backbone,
        done: set[int],
        n_chunks: int,
        chunk_size: int,
        batch_size: int,
        dtype: str,
        dim: int,
        digest: str,
        on_progress: Progress | None,
        workers: int,
    ) -> tuple[int, float, float]:
        """Encode every chunk not in ``done``. ``workers`` background threads load and preprocess
        the next batches (PIL decoding releases the GIL) while the encoder runs; results are
        consumed in order. Returns (images encoded, seconds inside the encoder, seconds waiting for images)."""
        from concurrent.futures import Future, ThreadPoolExecutor

        n = len(plan.entries)
        todo = [c for c in range(n_chunks) if c not in done]
        if not todo:
            return 0, 0.0, 0.0
        progressed = sum(min(chunk_size, n - c * chunk_size) for c in done)
        jobs: list[tuple[int, list[int], bool]] = []
        for c in todo:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            starts = list(range(lo, hi, batch_size))
            for j, s in enumerate(starts):
                jobs.append((c, list(range(s, min(hi, s + batch_size))), j == len(starts) - 1))

        encoded = 0
        enc_s = wait_s = 0.0
        acc = _ChunkAccumulator()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geofast-db-load")
        try:
            pending: deque[Future[_Prepared]] = deque()
            it = iter(jobs)
            for job in it:
                pending.append(pool.submit(_prepare_batch, plan, backbone, *job))
                if len(pending) >= workers + 1:
                    break
            while pending:
                t_wait = time.perf_counter()
                batch = pending.popleft().result()
                wait_s += time.perf_counter() - t_wait
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(_prepare_batch, plan, backbone, *nxt))
                if batch.pixels is not None:
                    t0 = time.perf_counter()
                    feats = backbone.encode(batch.pixels).cpu().numpy()
                    enc_s += time.perf_counter() - t0
                    encoded += len(batch.rows)
                    norms = np.linalg.norm(feats.astype(np.float64), axis=1)
                    good = np.isfinite(norms) & (norms > 0)
                    for i in np.flatnonzero(~good):
                        batch.failures.append((batch.rows[i], "the backbone gave a zero or non-finite embedding"))
                    sel = np.flatnonzero(good)
                    if sel.shape[0]:
                        acc.emb.append((feats[sel] / norms[sel, None]).astype(np.float32))
                        acc.norms.append(norms[sel].astype(np.float32))
                        acc.rows.extend(batch.rows[i] for i in sel)
                        acc.latlon.extend(batch.latlon[i] for i in sel)
                acc.failures.extend(batch.failures)
                acc.no_gps.extend(batch.no_gps)
                if batch.last_in_chunk:
                    self._write_chunk(batch.chunk, digest, acc, dim, dtype)
                    progressed += min(chunk_size, n - batch.chunk * chunk_size)
                    acc = _ChunkAccumulator()
                    if on_progress is not None:
                        on_progress(progressed, n)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return encoded, enc_s, wait_s

    # -- assembly and install ------------------------------------------------------------------
    def assemble(
        self,
        *,
        n_rows: int,
        dim: int,
        dtype: str,
        factory: str,
        emb_blocks: Iterable[np.ndarray],
        latlon: np.ndarray,
        norms: Callable[[], np.ndarray | None],
        meta_lines: Iterable[str],
        failures: list[tuple[str, str]],
        manifest_extra: dict[str, Any],
        train_size: int,
        base: Database | None,
    ) -> None:
        """Write the complete new database into ``DIR.partial/db`` (manifest last)."""
        if self.staged.exists():
            shutil.rmtree(self.staged)
        self.staged.mkdir(parents=True)
        np_dtype = np.dtype(_DTYPES[dtype])
        records: dict[str, dict[str, Any]] = {}

        # embeddings.npy, streamed
        path = self.staged / EMBEDDINGS
        written = 0
        with open(path, "wb") as f:
            w = _HashingWriter(f)
            w.write(_npy_header((n_rows, dim), np_dtype))
            for blk in emb_blocks:
                blk = np.ascontiguousarray(blk, dtype=np_dtype)
                if blk.ndim != 2 or blk.shape[1] != dim:
                    raise ShapeError(f"embedding block of shape {blk.shape} does not have {dim} columns")
                w.write(blk.data.cast("B"))
                written += blk.shape[0]
            f.flush()
            os.fsync(f.fileno())
        if written != n_rows:
            raise DatabaseError(f"internal error: wrote {written} embeddings for {n_rows} rows")
        records[EMBEDDINGS] = _file_record(path, w.h.hexdigest())

        # coords.npy
        ll = np.ascontiguousarray(latlon, dtype=np.float64)
        if ll.shape != (n_rows, 2):
            raise DatabaseError(f"internal error: {ll.shape} coordinates for {n_rows} rows")
        path = self.staged / COORDS
        atomic_write(path, lambda f: np.save(f, ll, allow_pickle=False))
        records[COORDS] = _file_record(path)

        # norms.npy (known once every embedding block has been written)
        nv = norms()
        if nv is not None:
            nv = np.ascontiguousarray(nv, dtype=np.float32)
            if nv.shape != (n_rows,):
                raise DatabaseError(f"internal error: {nv.shape} norms for {n_rows} rows")
            path = self.staged / NORMS
            atomic_write(path, lambda f: np.save(f, nv, allow_pickle=False))
            records[NORMS] = _file_record(path)

        # meta.jsonl
        path = self.staged / META
        lines = 0
        with open(path, "wb") as f:
            w = _HashingWriter(f)
            for line in meta_lines:
                w.write(line.encode("utf-8") + b"\n")
                lines += 1
            f.flush()
            os.fsync(f.fileno())
        if lines != n_rows:
            raise DatabaseError(f"internal error: wrote {lines} metadata lines for {n_rows} rows")
        records[META] = _file_record(path, w.h.hexdigest())

        # failed.csv
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "reason"])
        writer.writerows(failures)
        path = self.staged / FAILED
        atomic_write_text(path, buf.getvalue())
        records[FAILED] = _file_record(path)

        # index.faiss (non-flat)
        index_info: dict[str, Any] = {"factory": factory, "metric": "inner_product"}
        if not _is_flat(factory):
            faiss = _faiss()
            emb = np.load(self.staged / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
            if base is not None and not base.is_flat and base.index_factory == factory:
                index = faiss.read_index(str(base.path / INDEX))  # trained: only add the new rows
                _train_and_fill(index, emb, train_size, self._say, start=index.ntotal)
                params = base.manifest["index"].get("search_params", "")
                trained_on = base.manifest["index"].get("trained_on")
            else:
                index = _new_faiss_index(factory, dim)
                _train_and_fill(index, emb, train_size, self._say)
                params = _default_search_params(factory, index)
                trained_on = min(n_rows, train_size)
            del emb
            path = self.staged / INDEX
            faiss.write_index(index, str(path))
            with open(path, "rb") as fi:
                os.fsync(fi.fileno())
            records[INDEX] = _file_record(path)
            index_info.update(search_params=params, trained_on=trained_on)

        now = _now()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "geofast_version": __version__,
            "created": manifest_extra.get("created") or now,
            "updated": now,
            "count": int(n_rows),
            "dim": int(dim),
            "dtype": dtype,
            "index": index_info,
            **{k: v for k, v in manifest_extra.items() if k != "created"},
            "files": records,
        }
        _fsync_dir(self.staged)
        atomic_write_text(self.staged / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        _fsync_dir(self.staged)

    def install(self) -> None:
        """Swap the staged database into place: ``DIR → DIR.old``, ``staged → DIR``, clean up."""
        old = _sibling(self.root, ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.staged, self.root)
        _fsync_dir(self.root.parent)
        shutil.rmtree(old, ignore_errors=True)
        self.discard()


def _loader_workers(workers: int | None, backbone: Backbone) -> int:
    if workers is not None:
        if workers < 1:
            raise ParameterError(f"workers must be >= 1, got {workers}")
        return int(workers)
    device = getattr(getattr(backbone, "device", None), "type", "cpu")
    if device == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _prepare_batch(plan: SourcePlan, backbone: Backbone, chunk: int, rows: list[int], last: bool) -> _Prepared:
    """Load and preprocess a batch (EXIF GPS first for folder sources), never raising for a bad image."""
    from geofast.images import load_image

    ok_rows: list[int] = []
    images: list[Any] = []
    latlon: list[tuple[float, float]] = []
    failures: list[tuple[int, str]] = []
    no_gps: list[int] = []
    for r in rows:
        e = plan.entries[r]
        try:
            if e.lat is None or e.lon is None:
                gps = read_exif_gps(e.image)
                if gps is None:
                    no_gps.append(r)
                    continue
            else:
                gps = (e.lat, e.lon)
            im = load_image(e.image)
        except ImageError as err:
            failures.append((r, str(err)))
            continue
        except Exception as err:
            failures.append((r, f"{e.image}: {type(err).__name__}: {err}"))
            continue
        ok_rows.append(r)
        images.append(im)
        latlon.append(gps)
    pixels = None
    if images:
        try:
            pixels = backbone.preprocess(images)
        except Exception:
            import torch

            keep, keep_ll, tensors = [], [], []
            for r, im, ll in zip(ok_rows, images, latlon):
                try:
                    tensors.append(backbone.preprocess([im]))
                    keep.append(r)
                    keep_ll.append(ll)
                except Exception as err:
                    failures.append((r, f"{plan.entries[r].image}: cannot preprocess ({type(err).__name__}: {err})"))
            ok_rows, latlon = keep, keep_ll
            pixels = torch.cat(tensors) if tensors else None
    return _Prepared(
        chunk=chunk, rows=ok_rows, pixels=pixels, latlon=latlon, failures=failures, no_gps=no_gps, last_in_chunk=last
    )


__all__ = [
    "BuildReport",
    "Database",
    "Entry",
    "Neighbours",
    "SourcePlan",
    "encode_pil",
    "gps_to_degrees",
    "normalize_rows",
    "plan_source",
    "probe_embedding",
    "probe_image",
    "read_csv_source",
    "read_exif_gps",
    "scan_folder_source",
]
