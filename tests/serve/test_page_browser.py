"""The page of ``geofast serve`` in a real browser: headless Chromium (Debian's chromium +
chromium-driver through Selenium) opens ``/`` of a real ``geofast serve`` (tiny test backbone),
uploads a photo, and the markers and table must show the numbers of the API's JSON for the same
photo; the page must make no request outside 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

import geofast as gf
from browser_support import browser_errors, chromium, network_urls, outside_requests, wait_ready
from conftest import make_photo
from geofast.constants import EARTH_RADIUS_KM, PD_RADIUS_KM

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300.0  # a cold gallery cache is encoded at start-up
WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    pts = gf.fibonacci_lattice(300.0)  # a small gallery (5,152 points) keeps start-up short
    np.savetxt(folder / "gallery.csv", pts, delimiter=",", header="lat,lon", comments="")
    make_photo(folder / "harbour.jpg", seed=7, size=(400, 300))
    make_photo(folder / "street.png", seed=11, size=(300, 300), fmt="PNG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def server(page_files, tiny_clip_dir, cache_dir):
    """``geofast serve`` on 127.0.0.1 and a free port; stopped at the end whatever happens."""
    port = _free_port()
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "GEOFAST_NUM_THREADS": "1"}
    env.pop("GEOFAST_API_KEY", None)
    log = open(page_files / "server.log", "wb")
    cmd = [sys.executable, "-m", "geofast", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--clip", str(tiny_clip_dir), "--device", "cpu", "--gallery", str(page_files / "gallery.csv")]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"geofast serve exited with {proc.returncode}:\n{(page_files / 'server.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(base + "/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"geofast serve not ready after {START_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def _api(base: str, paths, top_k: int = 5) -> dict:
    files = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    r = httpx.post(base + "/v1/locate", files=files, data={"top_k": str(top_k)}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _open_page(driver, server: str) -> None:
    """Open the page with the browser's logs emptied first (the driver is shared by the tests)."""
    network_urls(driver)
    browser_errors(driver)
    driver.get(server + "/")
    wait_ready(driver)


def _upload(driver, paths) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "gf-files").send_keys("\n".join(str(p) for p in paths))


def _wait(driver, script: str, timeout_s: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script(script))


def _attrs(driver, selector: str) -> list[dict[str, str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => Object.fromEntries("
        "Array.from(e.attributes).map(a => [a.name, a.value])));",
        selector,
    )


def _num(s: str) -> float | None:
    return None if s in ("null", "undefined") else float(s)


def test_page_locates_a_photo_and_shows_the_apis_numbers(server, driver, page_files):
    from selenium.webdriver.common.by import By

    _open_page(driver, server)
    photo = page_files / "harbour.jpg"
    _upload(driver, [photo])
    _wait(driver, "return document.body.dataset.results === '1' && document.querySelectorAll('tr.gf-row-prediction').length > 0")
    ref = _api(server, [photo])["results"][0]
    preds = ref["predictions"]
    assert len(preds) == 5 and "error" not in ref

    # The table: one row per candidate, exact numbers in data attributes, rounded ones shown.
    rows = _attrs(driver, "tr.gf-row-prediction")
    assert [(float(r["data-lat"]), float(r["data-lon"])) for r in rows] == [(p["lat"], p["lon"]) for p in preds]
    np.testing.assert_allclose([float(r["data-prob"]) for r in rows], [p["prob"] for p in preds], rtol=1e-6)
    assert [r["data-place"] or None for r in rows] == [p["place"] for p in preds]
    shown = [
        [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, "tr.gf-row-prediction")
    ]
    np.testing.assert_allclose([[float(c[0]), float(c[1])] for c in shown], [[p["lat"], p["lon"]] for p in preds], atol=0.51e-5)
    np.testing.assert_allclose([float(c[2]) for c in shown], [p["prob"] for p in preds], atol=0.51e-4)
    assert [c[3] for c in shown] == [p["place"] or "\u2013" for p in preds]

    # The map: one candidate marker per prediction, the top-1 pin with its place, the PD25 circle.
    cands = _attrs(driver, '.gf-layer[data-layer="candidates"] .gf-marker')
    assert [(float(m["data-lat"]), float(m["data-lon"])) for m in cands] == [(p["lat"], p["lon"]) for p in preds]
    np.testing.assert_allclose([float(m["data-prob"]) for m in cands], [p["prob"] for p in preds], rtol=1e-6)
    radii = driver.execute_script(
        "return Array.from(document.querySelectorAll('.gf-layer[data-layer=\"candidates\"] .gf-marker .gf-shape')).map(e => +e.getAttribute('r'))"
    )
    assert radii == sorted(radii, reverse=True) and radii[0] > radii[-1]  # size by probability
    (pin,) = _attrs(driver, '.gf-layer[data-layer="top1"] .gf-marker')
    assert (float(pin["data-lat"]), float(pin["data-lon"])) == (preds[0]["lat"], preds[0]["lon"])
    assert pin["data-place"] == preds[0]["place"]
    assert _num(pin["data-confidence"]) == pytest.approx(ref["confidence"], rel=1e-6)
    assert pin["data-localizable"] == json.dumps(ref["localizable"])
    # The PD25 circle is drawn once zoomed in (under 3 px it is skipped), 50 km across on screen.
    zoom = 9
    driver.execute_script(
        "geofastMap.setView(arguments[0], arguments[1], arguments[2]); geofastMap._draw();",
        preds[0]["lat"],
        preds[0]["lon"],
        zoom,
    )
    circles = _attrs(driver, '.gf-circle[data-layer="pd25"]')
    assert len(circles) == 1 and float(circles[0]["data-radius-km"]) == PD_RADIUS_KM
    height_px = driver.execute_script(
        "return document.querySelector('.gf-circle[data-layer=\"pd25\"]').getBoundingClientRect().height"
    )
    km_per_px = (
        2 * np.pi * EARTH_RADIUS_KM * np.cos(np.radians(preds[0]["lat"])) / (256 * 2**zoom)
    )  # Web Mercator at that latitude
    assert height_px * km_per_px == pytest.approx(2 * PD_RADIUS_KM, rel=0.03)
    assert float(driver.find_element(By.ID, "gf-confidence").text) == pytest.approx(ref["confidence"], abs=0.51e-4)
    assert driver.find_element(By.ID, "gf-localizable").text == ("yes" if ref["localizable"] else "no")
    assert driver.find_element(By.ID, "gf-top1-place").text == preds[0]["place"]

    # The JSON download holds the API's answer.
    href = driver.find_element(By.ID, "gf-download").get_attribute("href")
    assert href.startswith("blob:")
    done = "const cb = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(cb, e => cb(String(e)))"
    text = driver.execute_async_script(done, href)
    got = json.loads(text)["results"][0]
    assert got["image"] == ref["image"] and [(p["lat"], p["lon"]) for p in got["predictions"]] == [
        (p["lat"], p["lon"]) for p in preds
    ]

    # Nothing left 127.0.0.1, and the page logged no error (CSP violations included).
    urls = network_urls(driver)
    assert any(u.startswith(server + "/v1/locate") for u in urls), urls
    assert outside_requests(urls) == []
    assert browser_errors(driver) == []


def test_page_several_photos_and_a_broken_one(server, driver, page_files):
    from selenium.webdriver.common.by import By

    _open_page(driver, server)
    paths = [page_files / "street.png", page_files / "broken.jpg", page_files / "harbour.jpg"]
    _upload(driver, paths)
    _wait(driver, "return document.body.dataset.results === '3'")
    ref = _api(server, paths)["results"]
    assert "error" in ref[1] and "error" not in ref[0]
    buttons = driver.find_elements(By.CSS_SELECTOR, ".gf-image-button")
    assert [b.text for b in buttons] == ["street.png", "broken.jpg \u2014 error", "harbour.jpg"]
    # Every located photo has its top-1 pin; the first is selected and tabulated.
    pins = _attrs(driver, '.gf-layer[data-layer="top1"] .gf-marker')
    # (photos sharing a top-1 are one pin with their count)
    assert sorted(
        (float(p["data-lat"]), float(p["data-lon"])) for p in pins for _ in range(int(p.get("data-count", 1)))
    ) == sorted((r["predictions"][0]["lat"], r["predictions"][0]["lon"]) for r in ref if "error" not in r)
    rows = _attrs(driver, "tr.gf-row-prediction")
    assert [(float(r["data-lat"]), float(r["data-lon"])) for r in rows] == [(p["lat"], p["lon"]) for p in ref[0]["predictions"]]
    # Selecting the broken photo shows its error; selecting the third tabulates its candidates.
    buttons[1].click()
    assert driver.find_element(By.CSS_SELECTOR, ".gf-result .gf-error").text == ref[1]["error"]
    driver.find_elements(By.CSS_SELECTOR, ".gf-image-button")[2].click()
    rows = _attrs(driver, "tr.gf-row-prediction")
    assert [(float(r["data-lat"]), float(r["data-lon"])) for r in rows] == [(p["lat"], p["lon"]) for p in ref[2]["predictions"]]
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []


def test_page_shows_the_servers_error(server, driver, page_files):
    from selenium.webdriver.common.by import By

    _open_page(driver, server)
    driver.find_element(By.CSS_SELECTOR, ".gf-options summary").click()
    driver.find_element(By.ID, "gf-topk").clear()
    driver.find_element(By.ID, "gf-topk").send_keys("100000")  # above the server's limit: 400
    _upload(driver, [page_files / "harbour.jpg"])
    _wait(driver, "return document.getElementById('gf-status').classList.contains('gf-error')")
    r = httpx.post(
        server + "/v1/locate",
        files=[("images", ("harbour.jpg", (page_files / "harbour.jpg").read_bytes(), "image/jpeg"))],
        data={"top_k": "100000"},
    )
    assert r.status_code == 400
    status = driver.find_element(By.ID, "gf-status").text
    assert status.startswith("The server answered 400: ") and r.json()["error"] in status
    assert driver.find_element(By.ID, "gf-status").get_attribute("role") == "alert"
    assert outside_requests(network_urls(driver)) == []


def test_page_text_query(server, driver):
    """The text box sends form field ``text``; the answer is mapped and tabulated like a photo's."""
    from selenium.webdriver.common.by import By

    _open_page(driver, server)
    query = "a harbour with red wooden houses / fjord"
    driver.find_element(By.ID, "gf-text").send_keys(query)
    driver.find_element(By.ID, "gf-submit").click()
    _wait(driver, "return document.body.dataset.results === '1' && document.querySelectorAll('tr.gf-row-prediction').length > 0")
    r = httpx.post(server + "/v1/locate", data={"text": query, "top_k": "5"}, timeout=120)
    assert r.status_code == 200, r.text
    ref = r.json()["results"][0]
    assert ref["image"] == "text: " + query
    assert driver.find_element(By.CSS_SELECTOR, ".gf-image-name").text == ref["image"]
    rows = _attrs(driver, "tr.gf-row-prediction")
    assert [(float(x["data-lat"]), float(x["data-lon"])) for x in rows] == [(p["lat"], p["lon"]) for p in ref["predictions"]]
    np.testing.assert_allclose([float(x["data-prob"]) for x in rows], [p["prob"] for p in ref["predictions"]], rtol=1e-6)
    pins = _attrs(driver, '.gf-layer[data-layer="top1"] .gf-marker')
    assert [(float(p["data-lat"]), float(p["data-lon"])) for p in pins] == [
        (ref["predictions"][0]["lat"], ref["predictions"][0]["lon"])
    ]
    assert outside_requests(network_urls(driver)) == []
    assert browser_errors(driver) == []
