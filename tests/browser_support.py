"""Headless Chromium for page tests: Debian's chromium + chromium-driver driven by Selenium.

Selenium Manager is kept offline (``SE_OFFLINE=true``) and Chromium runs without background
networking, so the only requests a test sees are the page's own. ``network_urls`` reads every
request the page made from Chromium's performance log (``Network.requestWillBeSent``).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_PREFIXES = ("http://127.0.0.1", "http://localhost", "data:", "blob:", "file://", "about:", "chrome-error:")


def _require(path: str) -> str:
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if not found:
        raise RuntimeError(
            f"{path} is missing: the browser tests need Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/setup installs them)"
        )
    return found


@contextmanager
def chromium(width: int = 1280, height: int = 860):
    """A headless Chromium WebDriver with performance logging; always quit at the end."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = _require(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--metrics-recording-only",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(_require(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def network_urls(driver: Any) -> list[str]:
    """Every URL the page requested since the last call (performance log entries are consumed)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def outside_requests(urls: list[str]) -> list[str]:
    return [u for u in urls if not u.startswith(LOCAL_PREFIXES)]


def browser_errors(driver: Any) -> list[str]:
    """Console errors (uncaught exceptions, CSP violations) the page logged."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def open_file(driver: Any, path: Path) -> None:
    """Open a local HTML file, emptying the browser's logs first (drivers are shared by tests)."""
    network_urls(driver)
    browser_errors(driver)
    driver.get(Path(path).resolve().as_uri())


def wait_ready(driver: Any, timeout_s: float = 20.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def embedded_data(html: str) -> dict[str, Any]:
    """The JSON a geofast page embeds (``<script type="application/json" id="gf-config">``)."""
    import re

    m = re.search(r'<script type="application/json" id="gf-config">(.*?)</script>', html, re.S)
    assert m is not None, "no embedded gf-config data in the page"
    return json.loads(m.group(1))
