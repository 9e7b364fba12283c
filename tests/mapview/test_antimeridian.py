"""The map across the antimeridian, measured in headless Chromium: markers, circles, land and the
fit wrap across +-180 degrees; photos sharing one top-1 show as one pin with a count.

Screen positions are compared with Web Mercator computed here in numpy (world x, y in [0, 256)
at zoom 0, ``2**zoom`` pixels per world unit). Markers are placed at screen coordinates rounded to
0.1 px (``toFixed(1)`` in map.js), so a distance between two markers is exact to 2 x 0.05 px =
0.1 px: that rounding bound is the tolerance (the float64 arithmetic adds ~1e-10 px)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

import geofast as gf
from browser_support import browser_errors, chromium, embedded_data, network_urls, open_file, outside_requests, wait_ready
from geofast.constants import EARTH_RADIUS_KM, PD_RADIUS_KM
from geofast.mapview import write_coverage_map, write_map
from geofast.predict.types import Candidate, Prediction

pytestmark = pytest.mark.slow

ROUND_PX = 0.1  # two marker positions, each rounded to 0.1 px: |error| <= 0.05 + 0.05
FIT_PAD_PX = 48  # map.js fitWorld: padding on each side
FIT_MARGIN = 0.02  # map.js fitPoints: world units added around the points
PHOTO_MAX_ZOOM = 5  # view.js: most zoom when fitting one photo's points


def mercator(lat, lon):
    lat = np.clip(np.asarray(lat, float), -85.0511287798, 85.0511287798)
    x = (np.asarray(lon, float) + 180.0) / 360.0 * 256.0
    y = (1.0 - np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) / np.pi) / 2.0 * 256.0
    return x, y


def km_per_px(lat: float, zoom: float) -> float:
    return 2 * np.pi * EARTH_RADIUS_KM * np.cos(np.radians(lat)) / (256 * 2**zoom)


def fit_zoom(dx_world: float, dy_world: float, size, max_zoom: float) -> float:
    """map.js fitWorld: the largest half-step zoom that shows the padded box, at most max_zoom."""
    w, h = size
    dx, dy = max(dx_world + 2 * FIT_MARGIN, 1e-9), max(dy_world + 2 * FIT_MARGIN, 1e-9)
    z = np.log2(min((w - 2 * FIT_PAD_PX) / dx, (h - 2 * FIT_PAD_PX) / dy))
    return np.floor(min(z, max_zoom) * 2) / 2


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def _open(driver, path) -> None:
    open_file(driver, path)
    wait_ready(driver)
    driver.execute_script("geofastMap._draw()")


def _state(driver):
    return driver.execute_script(
        "return {zoom: geofastMap.zoom, cx: geofastMap.center[0], cy: geofastMap.center[1],"
        " w: geofastMap.root.clientWidth, h: geofastMap.root.clientHeight}"
    )


def _marker_xy(driver, layer: str) -> list[dict]:
    """Each marker of a layer: its data and its screen position in the map (the translate of its group)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.gf-layer[data-layer=\"' + arguments[0] + '\"] > g')).map(e => {"
        " const m = e.transform.baseVal.consolidate().matrix;"
        " return {x: m.e, y: m.f, lat: +e.dataset.lat, lon: +e.dataset.lon, count: e.dataset.count || null,"
        "  cls: e.getAttribute('class'), badge: (e.querySelector('.gf-badge-text') || {}).textContent || null}; })",
        layer,
    )


def _photo(name: str, cands: list[tuple[float, float, float]], confidence: float | None = 0.5) -> Prediction:
    c = [Candidate(lat=a, lon=b, prob=p, place=f"{name} #{k + 1}") for k, (a, b, p) in enumerate(cands)]
    return Prediction(
        image=f"photos/{name}.jpg", lat=c[0].lat, lon=c[0].lon, prob=c[0].prob, candidates=c,
        confidence=confidence, localizable=confidence is not None and confidence > 0.2, place=c[0].place,
    )  # fmt: skip


# Two candidates either side of the antimeridian, 0.15 degree of longitude apart at 61 N (8.1 km).
LAT = 61.0
EAST, WEST = 179.9, -179.95


def test_candidates_across_180_are_neighbours_after_the_fit(driver, tmp_path):
    write_map(tmp_path / "a.html", [_photo("fiji", [(LAT, EAST, 0.5), (LAT, WEST, 0.3)])])
    _open(driver, tmp_path / "a.html")
    st = _state(driver)
    x, y = mercator([LAT, LAT], [EAST, WEST])
    dx_world = (x[1] + 256.0) - x[0]  # the short way round, across +-180
    assert dx_world == pytest.approx(0.15 / 360 * 256)
    # The fit frames the short span (a world-wide fit would be zoom 1.5 and the markers 724 px apart).
    assert st["zoom"] == fit_zoom(dx_world, 0.0, (st["w"], st["h"]), PHOTO_MAX_ZOOM)
    (east, west) = _marker_xy(driver, "candidates")
    assert (east["lon"], west["lon"]) == (EAST, WEST)
    s = 2 ** st["zoom"]
    want_px = dx_world * s  # west is east + dx on screen: it is east of the line, so to the right
    assert west["x"] - east["x"] == pytest.approx(want_px, abs=ROUND_PX)
    assert abs(west["y"] - east["y"]) <= ROUND_PX
    # The same distance in km: the pixels times the Mercator scale equal geofast's haversine
    # (along a parallel over 8 km the great circle is shorter by a relative ~1e-7).
    d_km = float(gf.haversine(np.array([[LAT, EAST]]), np.array([[LAT, WEST]]))[0])
    assert 8.0 < d_km < 8.2
    assert (west["x"] - east["x"]) * km_per_px(LAT, st["zoom"]) == pytest.approx(d_km, abs=ROUND_PX * km_per_px(LAT, st["zoom"]))
    # The map is centred on the data: the midpoint of the two is the middle of the view.
    assert (east["x"] + west["x"]) / 2 == pytest.approx(st["w"] / 2, abs=ROUND_PX)
    assert east["y"] == pytest.approx(st["h"] / 2, abs=ROUND_PX / 2)
    # The top-1 pin sits on the first candidate.
    (pin,) = _marker_xy(driver, "top1")
    assert (pin["x"], pin["y"]) == (east["x"], east["y"])
    # The PD25 circle around the top-1 crosses 180: drawn whole, centred on the pin, as wide as a
    # geodesic circle of 25 km (its extreme longitudes: asin(sin(d/R) / cos(lat)), spherical).
    circle = driver.execute_script(
        "const c = document.querySelector('.gf-circle[data-layer=\"pd25\"]'); if (!c) return null;"
        "const b = c.getBoundingClientRect(), r = geofastMap.root.getBoundingClientRect();"
        "return [b.left - r.left, b.top - r.top, b.width, b.height];"
    )
    assert circle is not None
    half_dlon = np.degrees(np.arcsin(np.sin(PD_RADIUS_KM / EARTH_RADIUS_KM) / np.cos(np.radians(LAT))))
    want_w = 2 * half_dlon / 360 * 256 * s
    # Error bounds: the ring has 96 vertices on the circle, so its width falls short by at most
    # 1 - cos(pi / 96) = 5.4e-4 of it; its vertices are written to 0.001 world unit (0.0005 * 2^zoom
    # px at each side); Chromium lays SVG out in float32 (~1e-3 px at the ~8,000 px of the
    # translated group). The box is the geometry's, without the stroke.
    vertex_px = 0.0005 * s
    float32_px = 2e-3
    assert circle[2] == pytest.approx(want_w, abs=want_w * (1 - np.cos(np.pi / 96)) + 2 * vertex_px + float32_px)
    assert circle[0] + circle[2] / 2 == pytest.approx(pin["x"], abs=ROUND_PX / 2 + vertex_px + float32_px)
    assert circle[0] > 0 and circle[0] + circle[2] < st["w"]
    # Panning east across the line with the arrow keys (80 px a press) moves both markers west by
    # as much: the centre wraps from 180 to -180 instead of stopping at the edge of the world.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("geofastMap.root.focus()")
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT * 3).perform()
    driver.execute_script("geofastMap._draw()")
    assert _state(driver)["cx"] == pytest.approx(st["cx"] + 240 / s - 256.0, abs=1e-9)  # wrapped into [0, 256)
    east2, west2 = _marker_xy(driver, "candidates")
    assert east2["x"] == pytest.approx(east["x"] - 240, abs=ROUND_PX)
    assert west2["x"] == pytest.approx(west["x"] - 240, abs=ROUND_PX)
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


def _country_at(driver, sx: float, sy: float) -> str | None:
    return driver.execute_script(
        "const r = geofastMap.root.getBoundingClientRect();"
        "const hit = document.elementsFromPoint(r.left + arguments[0], r.top + arguments[1]).find(e => e.classList.contains('gf-country'));"
        "return hit ? hit.getAttribute('data-name') : null;",
        sx,
        sy,
    )


def _inside_reference(name: str, lat: float, lon: float) -> bool:
    """Point in Natural Earth's polygons of country ``name`` by matplotlib (independent of the page)."""
    from matplotlib.path import Path as MPath

    doc = json.loads(resources.files("geofast.mapview").joinpath("assets", "countries.json").read_text())
    (c,) = [c for c in doc["countries"] if c["name"] == name]
    rings = [np.cumsum(np.asarray(r, dtype=np.int64).reshape(-1, 2), axis=0) / doc["scale"] for r in c["rings"]]
    return any(MPath(r).contains_point((lon, lat)) for r in rings)


@pytest.mark.parametrize("centre_lon", [180.0, -180.0])
def test_land_on_both_sides_of_180_is_drawn(driver, tmp_path, centre_lon):
    """Zoomed in on 180 degrees (reached from either side), Chukotka shows west and east of the line."""
    write_map(tmp_path / "l.html", [_photo("far", [(-40.0, 20.0, 0.9)])])
    _open(driver, tmp_path / "l.html")
    lat, zoom = 66.5, 6
    driver.execute_script(
        "geofastMap.setView(arguments[0], arguments[1], arguments[2]); geofastMap._draw();", lat, centre_lon, zoom
    )
    st = _state(driver)
    assert st["zoom"] == zoom
    cx, cy = mercator(lat, centre_lon)
    for lon in (177.0, -177.0):  # 3 degrees either side of the line: about 136 px at zoom 6
        assert _inside_reference("Russia", lat, lon)
        x, y = mercator(lat, lon)
        x = x + 256.0 * np.round((cx - x) / 256.0)  # the copy nearest the view's centre
        sx, sy = (x - cx) * 2**zoom + st["w"] / 2, (y - cy) * 2**zoom + st["h"] / 2
        assert 0 < sx < st["w"] and 0 < sy < st["h"]
        assert _country_at(driver, sx, sy) == "Russia", (lon, sx, sy)
    # No seam: Natural Earth cuts Russia at 180, but the cut is not stroked as a border. On the
    # line (inside Chukotka) the screenshot has the flat land colour of the pixels beside it; a
    # 0.7 px border there would darken it by ~(244 - 185) * 0.7 = 40 levels.
    sx180 = st["w"] / 2 + 0.0  # the view is centred on the line
    _, sy180 = mercator(lat + 0.3, 180.0)
    sy180 = (sy180 - cy) * 2**zoom + st["h"] / 2
    px = _pixels(driver, [(sx180, sy180), (sx180 - 6, sy180), (sx180 + 6, sy180)])
    assert _country_at(driver, sx180 - 6, sy180) == _country_at(driver, sx180 + 6, sy180) == "Russia"
    assert np.abs(px[0] - px[1]).max() <= 1 and np.abs(px[0] - px[2]).max() <= 1, px
    assert browser_errors(driver) == []


def _pixels(driver, points) -> np.ndarray:
    """RGB of the screenshot at map points (x, y in CSS px from the map's corner)."""
    import io

    from PIL import Image

    left, top, ratio = driver.execute_script(
        "const r = geofastMap.root.getBoundingClientRect(); return [r.left, r.top, window.devicePixelRatio]"
    )
    img = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    return np.array([img[int((top + y) * ratio), int((left + x) * ratio)] for x, y in points])


def test_selecting_a_photo_near_180_fits_its_span(driver, tmp_path):
    """Selecting a photo (the list of photos) fits its candidates the short way round, not the world."""
    preds = [_photo("paris", [(48.85, 2.35, 0.6), (45.76, 4.83, 0.2)]), _photo("fiji", [(LAT, EAST, 0.5), (LAT, WEST, 0.3)])]
    write_map(tmp_path / "s.html", preds)
    _open(driver, tmp_path / "s.html")
    driver.find_elements("css selector", ".gf-image-button")[1].click()
    driver.execute_script("geofastMap._draw()")
    st = _state(driver)
    x, _ = mercator([LAT, LAT], [EAST, WEST])
    assert st["zoom"] == fit_zoom(x[1] + 256.0 - x[0], 0.0, (st["w"], st["h"]), PHOTO_MAX_ZOOM)
    east, west = _marker_xy(driver, "candidates")
    assert west["x"] - east["x"] == pytest.approx((x[1] + 256.0 - x[0]) * 2 ** st["zoom"], abs=ROUND_PX)
    for m in (east, west):
        assert 0 < m["x"] < st["w"] and 0 < m["y"] < st["h"]
    assert browser_errors(driver) == []


def test_stacked_top1_shows_a_count_and_each_photo_is_reachable(driver, tmp_path):
    """18 photos with the same top-1 are one pin with the badge "18"; its popup lists all 18, and
    each entry selects its photo."""
    same = [_photo(f"same{i:02d}", [(35.0, 139.0, 0.4), (34.0 + 0.1 * i, 135.0, 0.2)]) for i in range(18)]
    preds = [*same, _photo("other", [(-33.9, 151.2, 0.5)])]
    write_map(tmp_path / "k.html", preds)
    _open(driver, tmp_path / "k.html")
    pins = _marker_xy(driver, "top1")
    assert len(pins) == 2
    (stack,) = [p for p in pins if p["count"]]
    assert (stack["lat"], stack["lon"], stack["count"], stack["badge"]) == (35.0, 139.0, "18", "18")
    # The legend counts photos, not pins.
    assert "Top-1 answer (19)" in driver.find_element("css selector", ".gf-legend").text
    driver.execute_script(
        "document.querySelector('.gf-layer[data-layer=\"top1\"] .gf-marker[data-count]').dispatchEvent(new MouseEvent('click', {bubbles: true}))"
    )
    items = driver.find_elements("css selector", ".gf-popup .gf-popup-item")
    assert [b.text for b in items] == [f"same{i:02d}.jpg" for i in range(18)]
    # Pressing the pin selected the first of its photos (the only one pressed in the list).
    assert driver.find_element("css selector", ".gf-image-name").text == "same00.jpg"
    assert [b.get_attribute("aria-pressed") for b in items] == ["true"] + ["false"] * 17
    assert driver.find_element("css selector", ".gf-popup").text.splitlines()[1] == "18 photos share this top-1"
    driver.execute_script("arguments[0].scrollIntoView()", items[4])
    items[4].click()
    assert driver.find_element("css selector", ".gf-image-name").text == "same04.jpg"
    assert [b.get_attribute("aria-pressed") for b in items].index("true") == 4
    driver.execute_script("geofastMap._draw()")
    # The selected photo's own candidates are drawn (its second one is at 34.4, 135).
    cands = _marker_xy(driver, "candidates")
    assert [(c["lat"], c["lon"]) for c in cands] == [(35.0, 139.0), (34.0 + 0.1 * 4, 135.0)]
    assert browser_errors(driver) == []


def test_coverage_across_180_is_fitted_and_clustered(driver, tmp_path):
    """A database on both sides of 180 (Fiji): the coverage map fits the short span and every photo
    is counted once by the clusters and cells in view, at every zoom on the way in."""
    rng = np.random.default_rng(5)
    lon = np.concatenate([rng.uniform(178.0, 180.0, 300), rng.uniform(-180.0, -179.0, 200)])
    lat = rng.uniform(-18.5, -16.0, lon.shape[0])
    write_coverage_map(tmp_path / "c.html", np.stack([lat, lon], axis=1))
    _open(driver, tmp_path / "c.html")
    st = _state(driver)
    x, y = mercator(lat, lon)
    xw = np.where(x < 128.0, x + 256.0, x)  # the short way round
    cov = embedded_data((tmp_path / "c.html").read_text())["coverage"]["cells"]
    cx, cy = mercator([c[0] for c in cov], [c[1] for c in cov])
    cxw = np.where(cx < 128.0, cx + 256.0, cx)
    assert st["zoom"] == fit_zoom(cxw.max() - cxw.min(), cy.max() - cy.min(), (st["w"], st["h"]), 8)
    assert st["zoom"] >= 5 and xw.max() - xw.min() < 3 / 360 * 256
    for _ in range(4):
        marks = _marker_xy(driver, "coverage")
        assert sum(int(m["count"]) for m in marks) == lat.shape[0]
        assert all(0 < m["x"] < st["w"] and 0 < m["y"] < st["h"] for m in marks)
        driver.execute_script("geofastMap.zoomBy(-1); geofastMap._draw()")
        st = _state(driver)
    assert browser_errors(driver) == []


def test_lon_span_is_the_shortest_arc(driver):
    """map.js lonSpan against a brute force over every start point (numpy), on random longitudes."""
    rng = np.random.default_rng(11)
    for trial in range(300):
        n = int(rng.integers(1, 8))
        centre = rng.uniform(-180, 180)
        lons = (centre + rng.uniform(-1, 1, n) * rng.choice([1.0, 20.0, 100.0, 179.0]) + 180.0) % 360.0 - 180.0
        xs = (lons + 180.0) / 360.0 * 256.0
        got = driver.execute_script("return GeoMap.lonSpan(arguments[0])", xs.tolist())
        # Brute force: the arc starting at each point and covering all the others going east.
        spans = [((xs - s) % 256.0).max() for s in xs]
        best = int(np.argmin(spans))
        plain = xs.max() - xs.min()
        if plain <= 1.25 * spans[best]:  # map.js keeps [min, max] unless wrapping saves over a fifth
            want = (xs.min(), xs.max())
        else:
            want = (xs[best], xs[best] + spans[best])
        np.testing.assert_allclose(got, want, atol=1e-9, err_msg=str((trial, lons)))
