"""Sources of a database build: CSV files (``image,lat,lon``) and folders of photos with EXIF GPS.

**EXIF GPS.** :func:`read_exif_gps` reads the GPS IFD (tag 0x8825): latitude/longitude as three
rationals (degrees, minutes, seconds) with ``N``/``S`` and ``E``/``W`` references (``S``/``W``
negative). A GPS IFD with ``GPSStatus = V`` (void) or exactly (0, 0) — what cameras write without
a fix — counts as no GPS.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, overload

import numpy as np

from geofast.errors import InputError
from geofast.gallery import find_column

if TYPE_CHECKING:
    from PIL import Image

_IMAGE_COLUMNS = ("image", "path", "file", "filename", "img", "image_path")
_LAT_COLUMNS = ("lat", "latitude", "lat_deg")
_LON_COLUMNS = ("lon", "lng", "long", "longitude", "lon_deg")
_GPS_IFD = 0x8825
NO_GPS_REASON = "no GPS position in EXIF"
#: ``on_progress(bytes_read, total_bytes)`` while a source is planned.
PlanProgress = Callable[[int, int], None]

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


class _EntryView(Sequence[Entry]):
    """The entries of a :class:`SourcePlan`, made on demand from its columns (1M entries would
    otherwise cost ~0.5 GB of Python objects)."""

    def __init__(self, plan: SourcePlan) -> None:
        self._plan = plan

    def __len__(self) -> int:
        return len(self._plan.images)

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._plan.entry(int(i))


@dataclass
class SourcePlan:
    """Everything a build will encode, in order, plus the rows rejected before encoding.

    Stored by column: ``images`` (absolute paths), ``latlon`` ``(n, 2)`` float64 degrees (None for
    a folder: positions come from EXIF GPS when encoded), ``values`` (the extra ``columns`` of
    each row, or None). ``entries`` gives :class:`Entry` objects on demand. ``digest`` is a
    sha256 of the source's content (CSV bytes, folder listing): resuming compares it instead of
    hashing every entry again."""

    source: str
    kind: str  # "csv" | "folder"
    images: list[str]
    latlon: np.ndarray | None = None
    values: list[tuple[str, ...]] | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    columns: list[str] = field(default_factory=list)  # extra metadata columns (CSV)
    digest: str = ""

    @property
    def entries(self) -> Sequence[Entry]:
        return _EntryView(self)

    def __len__(self) -> int:
        return len(self.images)

    def entry(self, i: int) -> Entry:
        if self.latlon is None:
            lat = lon = None
        else:
            lat, lon = float(self.latlon[i, 0]), float(self.latlon[i, 1])
        meta = tuple(zip(self.columns, self.values[i])) if self.values is not None else ()
        return Entry(image=self.images[i], lat=lat, lon=lon, meta=meta)

    def meta(self, i: int) -> dict[str, str]:
        """The metadata object stored for entry ``i`` (without the image path)."""
        return dict(zip(self.columns, self.values[i])) if self.values is not None else {}

    def subset(self, rows: np.ndarray) -> SourcePlan:
        """The plan restricted to the given entry indices (ascending), same rejected rows; the
        digest covers the selection."""
        idx = np.asarray(rows, dtype=np.int64)
        h = hashlib.sha256(self.digest.encode())
        h.update(idx.tobytes())
        return SourcePlan(
            source=self.source,
            kind=self.kind,
            images=[self.images[i] for i in idx.tolist()],
            latlon=None if self.latlon is None else self.latlon[idx],
            values=None if self.values is None else [self.values[i] for i in idx.tolist()],
            rejected=self.rejected,
            columns=self.columns,
            digest=h.hexdigest(),
        )


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


_BLOCK_BYTES = 4 << 20


class _HashingReader(io.RawIOBase):
    """A binary file whose bytes are hashed as they are read, reporting ``(read, total)``."""

    def __init__(self, f: IO[bytes], h: Any, total: int, on_progress: PlanProgress | None) -> None:
        self.f, self.h, self.total, self.on_progress = f, h, total, on_progress
        self.done = 0
        self._last = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self.f.readinto(buf)  # type: ignore[attr-defined]
        if n:
            self.h.update(memoryview(buf)[:n])
            self.done += n
            if self.on_progress is not None and time.monotonic() - self._last > 0.1:
                self._last = time.monotonic()
                self.on_progress(self.done, self.total)
        return int(n or 0)


def _join_paths(names: Any, prefix: str, base: str) -> list[str]:
    """``base/name`` for a pyarrow string array, normalised without touching the file system (no
    per-row stat or realpath: a missing photo is found when the loader reads it and is listed in
    failed.csv). Plain relative names are joined by one vectorised concatenation."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = pc.utf8_trim_whitespace(names)
    odd = pc.or_(
        pc.or_(pc.starts_with(names, "/"), pc.starts_with(names, ".")),
        pc.or_(pc.starts_with(names, "~"), pc.match_substring_regex(names, r"/\.|//|\\\\")),
    )
    joined = pc.binary_join_element_wise(pa.scalar(prefix), names, "").to_pylist()
    if pc.any(odd).as_py():
        for i in np.flatnonzero(odd.to_numpy(zero_copy_only=False)).tolist():
            name = os.path.expanduser(names[i].as_py())
            joined[i] = os.path.normpath(name if os.path.isabs(name) else os.path.join(base, name))
    return joined


def read_csv_source(path: str | os.PathLike[str], on_progress: PlanProgress | None = None) -> SourcePlan:
    """Plan a build from a CSV with columns ``image,lat,lon`` (any order and case; ``path``,
    ``latitude``, ``longitude``, ``lng`` accepted too). Relative image paths are relative to the
    CSV's folder; other columns are kept as metadata (strings). Rows with a missing path, an
    invalid coordinate or the wrong number of fields are rejected (listed in ``failed.csv``),
    never fatal.

    The file is streamed (pyarrow's CSV reader, 4 MiB blocks: memory holds the parsed columns,
    not the text) and no image path is looked up on disk here. ``on_progress(bytes_read,
    total_bytes)`` reports while it is read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    p = Path(path).expanduser().resolve()
    hint = "pass a UTF-8 CSV with columns image,lat,lon"
    try:
        f = open(p, "rb")
    except OSError as e:
        raise InputError(f"cannot read CSV {p}: {e}", hint=hint) from e
    with f:
        try:
            first = f.readline()
            header = next(csv.reader([first.decode("utf-8-sig")]), [])
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"cannot read CSV {p}: {e}", hint=hint) from e
        if not header:
            raise InputError(f"CSV {p} is empty", hint="add a header line image,lat,lon and one row per photo")
        header = [c.strip() for c in header]
        img_col, lat_col, lon_col = (find_column(header, names) for names in (_IMAGE_COLUMNS, _LAT_COLUMNS, _LON_COLUMNS))
        if img_col is None or lat_col is None or lon_col is None:
            raise InputError(
                f"CSV {p} needs columns image, lat and lon; found {', '.join(header[:8]) or 'none'}",
                hint="name the columns image,lat,lon (paths relative to the CSV's folder)",
            )
        i_img, i_lat, i_lon = header.index(img_col), header.index(lat_col), header.index(lon_col)
        extra = [(i, c) for i, c in enumerate(header) if i not in (i_img, i_lat, i_lon) and c]
        names = [f"c{i}" for i in range(len(header))]
        base = str(p.parent)
        prefix = base.rstrip(os.sep) + os.sep
        h = hashlib.sha256(b"csv\0" + base.encode("utf-8", "surrogateescape") + b"\0")
        h.update(first)
        total = os.fstat(f.fileno()).st_size
        rejected: list[tuple[str, str]] = []

        def bad_row(row: Any) -> str:
            where = f"{p.name}:{row.number}" if row.number is not None else p.name
            text = (row.text or "")[:120]
            rejected.append((where, f"{row.actual_columns} fields where the header has {row.expected_columns}: {text!r}"))
            return "skip"

        images: list[str] = []
        latlon_parts: list[np.ndarray] = []
        values: list[tuple[str, ...]] = []
        data_row = 0  # data rows seen (for line numbers: exact without blank lines or multi-line fields)
        reader_src = io.BufferedReader(_HashingReader(f, h, total, on_progress), buffer_size=_BLOCK_BYTES)
        try:
            reader = pacsv.open_csv(
                reader_src,
                read_options=pacsv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES, encoding="utf8"),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=bad_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
                ),
            )
            for batch in reader:
                n = batch.num_rows
                cols = [batch.column(i) for i in range(len(names))]
                img = pc.utf8_trim_whitespace(cols[i_img])
                lat_s, lon_s = cols[i_lat], cols[i_lon]
                try:
                    lat = pc.cast(pc.utf8_trim_whitespace(lat_s), pa.float64()).to_numpy(zero_copy_only=False)
                    lon = pc.cast(pc.utf8_trim_whitespace(lon_s), pa.float64()).to_numpy(zero_copy_only=False)
                    numeric = np.ones(n, dtype=bool)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    lat, lon, numeric = _floats_slow(lat_s, lon_s)
                empty = pc.equal(pc.utf8_length(img), 0).to_numpy(zero_copy_only=False)
                in_range = numeric & np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
                ok = ~empty & in_range
                joined = _join_paths(img, prefix, base)
                if not ok.all():
                    for i in np.flatnonzero(~ok).tolist():
                        line_no = data_row + i + 2
                        if empty[i]:
                            if all(not str(c[i].as_py()).strip() for c in cols):
                                continue  # a blank row
                            rejected.append((f"{p.name}:{line_no}", "empty image path"))
                        elif not numeric[i]:
                            rejected.append(
                                (
                                    joined[i],
                                    f"line {line_no}: latitude/longitude {lat_s[i].as_py()!r}, {lon_s[i].as_py()!r} are not numbers",
                                )
                            )
                        else:
                            rejected.append(
                                (
                                    joined[i],
                                    f"line {line_no}: coordinates ({lat[i]}, {lon[i]}) out of range (degrees, latitude first)",
                                )
                            )
                    keep = np.flatnonzero(ok)
                    images.extend(joined[i] for i in keep.tolist())
                    latlon_parts.append(np.column_stack([lat[keep], lon[keep]]))
                    if extra:
                        vals = [cols[i].take(pa.array(keep)).to_pylist() for i, _ in extra]
                        values.extend(zip(*vals))
                else:
                    images.extend(joined)
                    latlon_parts.append(np.column_stack([lat, lon]))
                    if extra:
                        values.extend(zip(*(cols[i].to_pylist() for i, _ in extra)))
                data_row += n
        except pa.ArrowInvalid as e:
            raise InputError(f"cannot read CSV {p}: {str(e).strip().splitlines()[0]}", hint=hint) from e
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read CSV {p}: {e}", hint=hint) from e
    if on_progress is not None:
        on_progress(total, total)
    latlon = np.concatenate(latlon_parts) if latlon_parts else np.zeros((0, 2))
    return SourcePlan(
        source=str(p),
        kind="csv",
        images=images,
        latlon=np.ascontiguousarray(latlon, dtype=np.float64),
        values=values if extra else None,
        rejected=rejected,
        columns=[c for _, c in extra],
        digest=h.hexdigest(),
    )


_NUMBER = r"(?i)^\s*[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)\s*$"


def _floats_slow(lat_s: Any, lon_s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float parsing of a block that holds a non-number: the number-shaped cells are cast, the
    others flagged (vectorised; accepts what Python's float() accepts but digit underscores)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = []
    numeric = None
    for col in (lat_s, lon_s):
        ok = pc.match_substring_regex(col, _NUMBER)
        out.append(pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, "nan")), pa.float64()).to_numpy(zero_copy_only=False))
        m = ok.to_numpy(zero_copy_only=False)
        numeric = m if numeric is None else numeric & m
    assert numeric is not None
    return out[0], out[1], numeric


def scan_folder_source(path: str | os.PathLike[str]) -> SourcePlan:
    """Plan a build from a folder (searched recursively, sorted) of photos; positions come from
    each photo's EXIF GPS when it is encoded (photos without GPS are skipped and counted)."""
    from geofast.images import expand_images

    p = Path(path).expanduser().resolve()
    images = [os.path.normpath(os.path.join(str(p), x)) for x in expand_images([p])]
    h = hashlib.sha256(b"folder\0")
    for x in images:
        h.update(x.encode("utf-8", "surrogateescape") + b"\0")
    return SourcePlan(source=str(p), kind="folder", images=images, digest=h.hexdigest())


def plan_source(source: str | os.PathLike[str], on_progress: PlanProgress | None = None) -> SourcePlan:
    """A CSV file or a folder of photos → :class:`SourcePlan` (``on_progress(bytes, total)``
    while a CSV is read)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return scan_folder_source(p)
    if p.is_file():
        return read_csv_source(p, on_progress)
    raise InputError(f"source {source} does not exist", hint="pass a CSV (image,lat,lon) or a folder of photos with EXIF GPS")
