"""Sources of a database build: CSV files (``image,lat,lon``) and folders of photos with EXIF GPS.

**EXIF GPS.** :func:`read_exif_gps` reads the GPS IFD (tag 0x8825): latitude/longitude as three
rationals (degrees, minutes, seconds) with ``N``/``S`` and ``E``/``W`` references (``S``/``W``
negative). A GPS IFD with ``GPSStatus = V`` (void) or exactly (0, 0) — what cameras write without
a fix — counts as no GPS.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofast.errors import InputError
from geofast.gallery import find_column

if TYPE_CHECKING:
    from PIL import Image

_IMAGE_COLUMNS = ("image", "path", "file", "filename", "img", "image_path")
_LAT_COLUMNS = ("lat", "latitude", "lat_deg")
_LON_COLUMNS = ("lon", "lng", "long", "longitude", "lon_deg")
_GPS_IFD = 0x8825
NO_GPS_REASON = "no GPS position in EXIF"

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
