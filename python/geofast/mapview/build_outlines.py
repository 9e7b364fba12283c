"""Convert Natural Earth's 1:110m admin-0 country outlines into geofast's compact map data.

Source: Natural Earth (https://www.naturalearthdata.com), "Admin 0 – Countries" at 1:110m,
which is in the public domain ("No permission is needed to use Natural Earth. Crediting the
authors is unnecessary", naturalearthdata.com/about/terms-of-use). The shapefile read here is
the copy that geopandas 0.14 ships as ``geopandas/datasets/naturalearth_lowres`` (geopandas
dropped its datasets in 1.0):

    pip download --no-deps geopandas==0.14.4 -d /tmp/ne
    unzip -o /tmp/ne/geopandas-0.14.4-py3-none-any.whl 'geopandas/datasets/naturalearth_lowres/*' -d /tmp/ne
    python -m geofast.mapview.build_outlines /tmp/ne/geopandas/datasets/naturalearth_lowres/naturalearth_lowres \
        python/geofast/mapview/assets/countries.json

The shapefile (.shp polygons, .dbf attributes) is read with the standard library only. Output:
``{"source": ..., "countries": [{"name", "iso_a3", "continent", "rings": [[lon0, lat0, dlon1,
dlat1, ...], ...]}]}`` with coordinates as integers in units of 1/100 degree (about 1 km),
the first vertex absolute and the others as differences from the previous one; consecutive
duplicates after rounding and rings that collapse below four vertices are dropped.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

SCALE = 100  # 1/100 degree


def read_dbf(path: Path, encoding: str) -> list[dict[str, str]]:
    data = path.read_bytes()
    n_rec, header_len, rec_len = struct.unpack("<IHH", data[4:12])
    fields = []
    pos = 32
    while data[pos] != 0x0D:
        name = data[pos : pos + 11].split(b"\0", 1)[0].decode("ascii")
        length = data[pos + 16]
        fields.append((name, length))
        pos += 32
    rows = []
    for i in range(n_rec):
        off = header_len + i * rec_len + 1  # skip the deletion flag
        row = {}
        for name, length in fields:
            row[name] = data[off : off + length].decode(encoding).strip()
            off += length
        rows.append(row)
    return rows


def read_shp_polygons(path: Path) -> list[list[list[tuple[float, float]]]]:
    data = path.read_bytes()
    shape_type = struct.unpack("<i", data[32:36])[0]
    if shape_type != 5:
        raise ValueError(f"{path}: shape type {shape_type}, expected 5 (polygon)")
    pos = 100
    out: list[list[list[tuple[float, float]]]] = []
    while pos < len(data):
        _, content_words = struct.unpack(">ii", data[pos : pos + 8])
        rec = data[pos + 8 : pos + 8 + 2 * content_words]
        pos += 8 + 2 * content_words
        if struct.unpack("<i", rec[:4])[0] == 0:  # null shape
            out.append([])
            continue
        n_parts, n_points = struct.unpack("<ii", rec[36:44])
        parts = list(struct.unpack(f"<{n_parts}i", rec[44 : 44 + 4 * n_parts])) + [n_points]
        xy = struct.unpack(f"<{2 * n_points}d", rec[44 + 4 * n_parts : 44 + 4 * n_parts + 16 * n_points])
        out.append([[(xy[2 * j], xy[2 * j + 1]) for j in range(parts[k], parts[k + 1])] for k in range(n_parts)])
    return out


def encode_ring(ring: list[tuple[float, float]]) -> list[int] | None:
    pts: list[tuple[int, int]] = []
    for lon, lat in ring:
        q = (round(lon * SCALE), round(lat * SCALE))
        if not pts or q != pts[-1]:
            pts.append(q)
    if len(pts) < 4:
        return None
    flat = [pts[0][0], pts[0][1]]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        flat += [x1 - x0, y1 - y0]
    return flat


def main(stem: str, out: str) -> None:
    base = Path(stem)
    cpg = base.with_suffix(".cpg")
    encoding = cpg.read_text().strip() if cpg.exists() else "latin-1"
    rows = read_dbf(base.with_suffix(".dbf"), "cp1252" if encoding.upper() in ("1252", "ANSI 1252") else encoding)
    shapes = read_shp_polygons(base.with_suffix(".shp"))
    assert len(rows) == len(shapes)
    countries = []
    for row, rings in zip(rows, shapes):
        enc = [r for r in (encode_ring(ring) for ring in rings) if r is not None]
        if enc:
            countries.append({"name": row["name"], "iso_a3": row["iso_a3"], "continent": row["continent"], "rings": enc})
    doc = {
        "source": "Natural Earth 1:110m Admin 0 - Countries (public domain), via geopandas 0.14.4 naturalearth_lowres",
        "scale": SCALE,
        "countries": countries,
    }
    Path(out).write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(len(r) // 2 for c in countries for r in c["rings"])
    print(f"{len(countries)} countries, {n} vertices, {Path(out).stat().st_size} bytes -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
