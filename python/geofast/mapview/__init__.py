"""geofast's one map renderer: self-contained HTML pages with this project's own SVG map.

Every map geofast shows — the web page of ``geofast serve`` (:func:`app_page_html`), the file of
``geofast locate --map`` (:func:`write_map`) and the coverage map of ``geofast db info --map``
(:func:`write_coverage_map`) — is the same page built from the hand-written assets in
``geofast/mapview/assets`` (``map.js``: Web-Mercator SVG map with pan/zoom, Natural Earth
country outlines, grid clustering, geodesic km circles; ``view.js``: results as map layers and
tables; ``app.js``: the upload form), inlined into one HTML file with the data as embedded JSON.
Nothing is fetched from outside the page unless online tiles are configured (``tiles=``); a
Content-Security-Policy in the page enforces it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from geofast._io import atomic_write_text
from geofast.constants import EARTH_RADIUS_KM, LOCALIZABLE_THRESHOLD, PD_RADIUS_KM
from geofast.errors import ParameterError
from geofast.mapview.coverage import CoverageCells, coverage_cells
from geofast.output import prediction_json
from geofast.predict.types import Prediction

__all__ = [
    "CoverageCells",
    "app_page_html",
    "coverage_cells",
    "map_page_html",
    "write_coverage_map",
    "write_map",
]

#: Most database cells a coverage map embeds (photo positions are aggregated to a grid this small).
COVERAGE_MAX_CELLS = 20_000

_TILE_RE = re.compile(r"^https?://[^/\s\"'<>]+/[^\s\"'<>]*$")


@functools.cache
def _asset(name: str) -> str:
    return resources.files("geofast.mapview").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _check_tiles(tiles: str | None) -> str | None:
    if tiles is None:
        return None
    if not _TILE_RE.match(tiles) or not all(f"{{{k}}}" in tiles for k in ("z", "x", "y")):
        raise ParameterError(
            f"tiles URL {tiles!r} is not an http(s) URL template with {{z}}, {{x}} and {{y}}",
            hint="pass e.g. 'https://tile.example.org/{z}/{x}/{y}.png', or no tiles for the offline outline map",
        )
    return tiles


def map_page_html(data: Mapping[str, Any], *, title: str = "geofast", tiles: str | None = None) -> str:
    """The complete self-contained page for ``data``.

    ``data`` is ``{"mode": "app"}`` (the upload page of ``geofast serve``), ``{"mode":
    "results", "results": [<prediction_json objects>]}`` or ``{"mode": "coverage", "coverage":
    {...}}``. Scripts, styles and the country outlines are inlined; scripts are allowed by hash
    in the page's Content-Security-Policy, which also forbids any request outside the page's own
    origin (except tiles from ``tiles``' origin when given).
    """
    tiles = _check_tiles(tiles)
    config = dict(data)
    config["tiles"] = tiles
    config["constants"] = {
        "pd_radius_km": PD_RADIUS_KM,
        "earth_radius_km": EARTH_RADIUS_KM,
        "localizable_threshold": LOCALIZABLE_THRESHOLD,
    }
    scripts = [_asset("map.js"), _asset("view.js"), _asset("app.js")]
    img_src = "'self' data: blob:"
    if tiles is not None:
        origin = re.match(r"^(https?://[^/]+)", tiles)
        assert origin is not None
        img_src += " " + origin.group(1)
    connect = "'self' blob:" if config.get("mode") == "app" else "blob:"
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(f"'sha256-{_sha256_b64(s)}'" for s in scripts),
            "style-src 'unsafe-inline'",
            f"img-src {img_src}",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    page = _asset("page.html")
    parts = {
        "CSP": _html_text(csp),
        "TITLE": _html_text(title),
        "CSS": _asset("style.css"),
        "OUTLINES": _asset("countries.json").strip().replace("<", "\\u003c"),
        "DATA": _script_json(config),
        "SCRIPTS": "\n".join(f"<script>{s}</script>" for s in scripts),
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], page)


@functools.cache
def app_page_html() -> str:
    """The page ``geofast serve`` shows at ``GET /``: drop photos (or type a text query), see them
    located on the map, with the candidates, the confidence circle and a table; the results
    download as JSON. It calls ``POST /v1/locate`` (relative URL) and works with no internet."""
    return map_page_html({"mode": "app"}, title="geofast — where was this photo taken?")


def _as_json(p: Prediction | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(p, Prediction):
        return prediction_json(p)
    return dict(p)


def write_map(
    path: str | os.PathLike[str],
    predictions: Sequence[Prediction | Mapping[str, Any]],
    *,
    title: str | None = None,
    tiles: str | None = None,
) -> None:
    """Write one self-contained HTML map of ``predictions`` (typed Predictions, or the JSON
    objects of ``geofast locate --json``): every image's top-1 pin (clustered when there are
    many), its ranked candidates sized by probability, the PD₂₅ circle, database neighbours and
    LLM candidates when present, and a table. Opens offline; written atomically."""
    results = [_as_json(p) for p in predictions]
    html = map_page_html({"mode": "results", "results": results}, title=title or "geofast map", tiles=tiles)
    atomic_write_text(path, html)


def write_coverage_map(
    path: str | os.PathLike[str],
    latlon: Any,
    *,
    title: str | None = None,
    tiles: str | None = None,
    max_cells: int = COVERAGE_MAX_CELLS,
) -> CoverageCells:
    """Write a self-contained HTML coverage map of photo positions (``(N, 2)`` degrees, latitude
    first; may be a memory map of millions of rows). Positions are aggregated exactly onto a
    latitude/longitude grid whose cells double in size until at most ``max_cells`` are occupied
    (see :func:`coverage_cells`); the page clusters the cells further per zoom level."""
    cells = coverage_cells(latlon, max_cells=max_cells)
    coverage = {
        "rows": cells.rows,
        "cell_deg": cells.cell_deg,
        "cells": [
            [round(a, 5), round(b, 5), int(n)] for a, b, n in zip(cells.lat.tolist(), cells.lon.tolist(), cells.count.tolist())
        ],
    }
    html = map_page_html({"mode": "coverage", "coverage": coverage}, title=title or "geofast coverage", tiles=tiles)
    atomic_write_text(path, html)
    return cells
