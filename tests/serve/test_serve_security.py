"""Issue 20: what a hostile client, a web page or a slow peer could do to ``geofast serve``,
each attack reproduced against a real ``geofast serve`` process on 127.0.0.1 (bounded in count
and time), with its status, body and — where memory is the point — the server's peak RSS
(``VmHWM`` after resetting it through ``/proc/PID/clear_refs``)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_support import assert_error_body, cli_env, encoded, free_port, start_server, stop

MB = 1024 * 1024
#: Targets of issue 20: peak RSS growth of the server for one image of <= 1 KB, and for 8 × 6000².
SMALL_IMAGE_RSS = 300 * MB
BIG_REQUEST_RSS = 1024 * MB
#: /healthz during any request: the target is 1 s; measured here at 0.06-0.13 s (bombs, embed) and
#: 0.73 s (8 × 36 MP decoding) with a load average of 20-29 on 2 cores. The test bound is 3 s (4x the
#: worst measured, so not flaky on a loaded machine), below the stalls of the issue (6.7 s, 13.5 s
#: before the warm-up, 19 s); the 1 s target itself is reported from the printed figures.
HEALTHZ_S = 3.0


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5); returns it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kb(pid, "VmHWM")


@pytest.fixture(scope="module")
def server(geolocator, tiny_clip_dir, cache_dir):
    base, port, proc = start_server(
        cache_dir,
        tiny_clip_dir,
        "--header-timeout",
        "2",
        "--max-connections",
        "24",
        "--allow-urls",
        "--allow-private-urls",
        "--url-timeout",
        "2",
        # 8 × 36 MP decoded one or two at a time takes minutes on a loaded 2-core machine.
        "--deadline",
        "400",
    )
    try:
        # Warm up (first forward pass, GeoNames index): what a request costs, not what starting costs.
        warm = encoded(Image.fromarray(np.full((240, 320, 3), 90, np.uint8)), "PNG")
        r = httpx.post(base + "/v1/locate", files=[("images", ("warm.png", warm, "image/png"))], timeout=300)
        assert r.status_code == 200, r.text
        yield base, port, proc
    finally:
        stop(proc)


class HealthProbe:
    """Polls ``/healthz`` every 50 ms in a thread and records each answer's latency."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = http.get(self.base + "/healthz")
                    if r.status_code != 200:
                        self.failures.append(str(r.status_code))
                except httpx.HTTPError as e:
                    self.failures.append(type(e).__name__)
                self.latencies.append(time.monotonic() - t0)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)


def png(im: Image.Image) -> bytes:
    return encoded(im, "PNG", optimize=True)


def reference_crop(im: Image.Image, ratio: int = 16) -> Image.Image:
    """The central ratio:1 part of an image, cut with numpy slicing (independent of clip_view)."""
    arr = np.asarray(im.convert("RGB"))
    h, w = arr.shape[:2]
    if w > ratio * h:
        left = (w - ratio * h) // 2
        arr = arr[:, left : left + ratio * h]
    elif h > ratio * w:
        top = (h - ratio * w) // 2
        arr = arr[top : top + ratio * w]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def stripe(width: int, height: int) -> Image.Image:
    """A thin image whose content changes along its length (so a wrong crop gives other numbers)."""
    n = max(width, height)
    ramp = ((np.arange(n) * 7) % 251).astype(np.uint8)
    line = np.stack([ramp, ramp[::-1], ((ramp.astype(np.uint16) * 3) % 256).astype(np.uint8)], axis=-1)
    arr = line[None, :, :] if width >= height else line[:, None, :]
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(arr, (height, width, 3))), "RGB")


# -- defect 1: aspect-ratio bombs ---------------------------------------------------------------
def test_clip_view_keeps_normal_photos_and_crops_like_numpy(geolocator):
    from geofast.images import MAX_ASPECT, clip_view

    proc = geolocator.backbone.processor
    for size in [(320, 240), (16 * 30, 30), (30, 16 * 30)]:
        im = stripe(*size)
        assert clip_view(im) is im  # up to 16:1 nothing changes: the processor sees the photo itself
    for size in [(8000, 1), (1, 30_000), (4000, 10), (901, 50)]:
        im = stripe(*size)
        got = clip_view(im)
        assert max(got.size) <= MAX_ASPECT * min(got.size)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(reference_crop(im)))
    # What CLIP sees of the cropped image equals what it sees of the full one: exactly for these
    # (the full-image processing of 4000 × 10 is affordable: a 224 × 89,600 intermediate).
    im = stripe(4000, 10)
    full = proc(images=[im], return_tensors="pt")["pixel_values"]
    np.testing.assert_array_equal(geolocator.backbone.preprocess([im]).numpy(), full.numpy())


@pytest.mark.slow
def test_aspect_bomb_upload_small_memory_same_answer_as_its_centre_crop(server, geolocator):
    base, _, proc = server
    for size in [(8000, 1), (1, 30_000)]:
        im = stripe(*size)
        data = png(im)
        assert len(data) <= 1024, len(data)
        before = reset_peak(proc.pid)
        with HealthProbe(base) as probe:
            r = httpx.post(
                base + "/v1/locate", files=[("images", ("thin.png", data, "image/png"))], data={"top_k": "3"}, timeout=120
            )
        grow = status_kb(proc.pid, "VmHWM") - before
        assert r.status_code == 200, r.text
        (row,) = r.json()["results"]
        (want,) = geolocator.predict([reference_crop(im)], top_k=3, places=False)
        got = np.array([[c["lat"], c["lon"], c["prob"]] for c in row["predictions"]])
        np.testing.assert_allclose(got, [[c.lat, c.lon, c.prob] for c in want.candidates], rtol=1e-4, atol=1e-7)
        print(f"{size}: {len(data)} bytes, server peak RSS +{grow / MB:.0f} MiB, healthz max {max(probe.latencies):.2f} s")
        assert grow < SMALL_IMAGE_RSS, f"{size}: +{grow / MB:.0f} MiB"
        assert not probe.failures and max(probe.latencies) < HEALTHZ_S


def _peak_rss_of_cli(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run the geofast CLI in a child that reports its own peak RSS (ru_maxrss) into a file."""
    out = tmp_path / f"maxrss-{time.monotonic_ns()}"
    code = (
        "import resource, sys\n"
        "from geofast.cli import run\n"
        f"sys.argv = ['geofast', *{args!r}]\n"
        "try:\n    run()\nfinally:\n"
        f"    open({str(out)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    return r, int(out.read_text())


@pytest.mark.slow
def test_aspect_bomb_in_locate_and_db_build(geolocator, tiny_clip_dir, cache_dir, tmp_path):
    """The same crop in ``geofast locate`` and ``geofast db build``: the answer (and the stored
    embedding) is that of the centre crop, and the peak RSS is that of a normal photo's run."""
    bomb = tmp_path / "photos" / "thin.png"
    bomb.parent.mkdir()
    im = stripe(1, 30_000)
    bomb.write_bytes(png(im))
    normal = tmp_path / "normal.png"
    normal.write_bytes(png(stripe(320, 240)))
    env = cli_env(cache_dir)
    common = ["--clip", str(tiny_clip_dir), "--json", "-k", "3", "--no-places"]
    r_normal, rss_normal = _peak_rss_of_cli(["locate", str(normal), *common], env, tmp_path)
    r_bomb, rss_bomb = _peak_rss_of_cli(["locate", str(bomb), *common], env, tmp_path)
    assert r_normal.returncode == 0 and r_bomb.returncode == 0, r_bomb.stderr
    (row,) = json.loads(r_bomb.stdout)
    (want,) = geolocator.predict([reference_crop(im)], top_k=3, places=False)
    got = np.array([[c["lat"], c["lon"], c["prob"]] for c in row["predictions"]])
    np.testing.assert_allclose(got, [[c.lat, c.lon, c.prob] for c in want.candidates], rtol=1e-4, atol=1e-7)
    print(f"locate peak RSS: normal {rss_normal / MB:.0f} MiB, 1 × 30,000 bomb {rss_bomb / MB:.0f} MiB")
    assert rss_bomb - rss_normal < SMALL_IMAGE_RSS

    csv = tmp_path / "db.csv"
    csv.write_text(f"image,lat,lon\n{bomb},10.0,20.0\n{normal},30.0,40.0\n")
    r_db, rss_db = _peak_rss_of_cli(
        ["db", "build", str(csv), "--out", str(tmp_path / "db"), "--clip", str(tiny_clip_dir)], env, tmp_path
    )
    assert r_db.returncode == 0, r_db.stderr
    from geofast.db import Database

    db = Database.open(tmp_path / "db")
    assert len(db) == 2
    emb = np.asarray(db.embeddings, dtype=np.float32)
    feats = geolocator.backbone.encode(geolocator.backbone.preprocess([reference_crop(im)])).numpy()
    want_row = feats[0] / np.linalg.norm(feats[0])
    rows = [m["image"] for m in db.meta([0, 1])]
    got_row = emb[rows.index(str(bomb))]
    # f16 storage when the database stores f16: 2^-11 relative per component, |x| <= 1.
    np.testing.assert_allclose(got_row, want_row, atol=2e-3)
    print(f"db build peak RSS {rss_db / MB:.0f} MiB")
    assert rss_db - rss_normal < SMALL_IMAGE_RSS


# -- defect 2: decoded memory budget --------------------------------------------------------------
@pytest.mark.slow
def test_eight_6000px_pngs_stay_under_a_gigabyte_and_memory_comes_back(server, geolocator):
    base, _, proc = server
    black = png(Image.new("L", (6000, 6000)))
    files = [("images", (f"black{i}.png", black, "image/png")) for i in range(8)]
    rss0 = status_kb(proc.pid, "VmRSS")
    before = reset_peak(proc.pid)
    with HealthProbe(base) as probe:
        r = httpx.post(base + "/v1/locate", files=files, data={"top_k": "2"}, timeout=420)
    grow = status_kb(proc.pid, "VmHWM") - before
    time.sleep(0.5)
    rss1 = status_kb(proc.pid, "VmRSS")
    assert r.status_code == 200, r.text
    (want,) = geolocator.predict([Image.new("RGB", (224, 224))], top_k=2, places=False)  # black stays black
    for row in r.json()["results"]:
        assert [c["lat"] for c in row["predictions"]] == pytest.approx([c.lat for c in want.candidates], abs=1e-9)
    print(
        f"8 × 6000²: upload {8 * len(black) / MB:.2f} MiB, peak RSS +{grow / MB:.0f} MiB, kept +{(rss1 - rss0) / MB:.0f} MiB, "
        f"healthz max {max(probe.latencies):.2f} s"
    )
    assert grow < BIG_REQUEST_RSS
    assert rss1 - rss0 < 200 * MB  # given back (before: 3 GB kept)
    assert not probe.failures and max(probe.latencies) < HEALTHZ_S


# -- defect 3: DNS rebinding and cross-site requests --------------------------------------------
def test_foreign_host_and_cross_origin_posts_refused(server, photo_dir):
    base, port, _ = server
    photo = sorted(photo_dir.iterdir())[0]
    files = [("images", (photo.name, photo.read_bytes(), "image/jpeg"))]
    r = httpx.get(base + "/v1/models", headers={"Host": f"attacker.example:{port}"}, timeout=30)
    body = assert_error_body(r, 400)
    assert "attacker.example" in body["error"] and "--allowed-host" in body["hint"]
    r = httpx.post(base + "/v1/locate", files=files, headers={"Host": f"attacker.example:{port}"}, timeout=30)
    assert_error_body(r, 400)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(base + "/v1/models", headers={"Host": host}, timeout=30).status_code == 200
    r = httpx.post(base + "/v1/locate", files=files, headers={"Origin": "http://attacker.example"}, timeout=60)
    body = assert_error_body(r, 403)
    assert "attacker.example" in body["error"] and "--cors" in body["hint"]
    r = httpx.post(base + "/v1/locate", files=files, headers={"Sec-Fetch-Site": "cross-site"}, timeout=60)
    assert_error_body(r, 403)
    r = httpx.post(base + "/v1/locations/embed", json={"latlon": [[1, 2]]}, headers={"Origin": "null"}, timeout=60)
    assert_error_body(r, 403)
    # The page's own requests (same origin) and non-browser clients (no Origin) still work.
    assert httpx.post(base + "/v1/locate", files=files, headers={"Origin": base}, timeout=60).status_code == 200
    assert httpx.post(base + "/v1/locate", files=files, timeout=60).status_code == 200


def test_allowed_host_and_cors_origin_are_admitted(geolocator):
    from fastapi.testclient import TestClient

    from geofast.predict.geoclip import GeoclipPredictor
    from geofast.serve import ServeConfig, create_app

    app = create_app(
        ServeConfig(allowed_hosts=("geo.internal",), cors_origins=("https://ok.example",)), predictor=GeoclipPredictor(geolocator)
    )
    with TestClient(app, base_url="http://geo.internal") as client:
        assert client.get("/v1/models").status_code == 200
        embed = {"latlon": [[1.0, 2.0]]}
        assert client.post("/v1/locations/embed", json=embed, headers={"Origin": "https://ok.example"}).status_code == 200
        assert_error_body(client.post("/v1/locations/embed", json=embed, headers={"Origin": "https://no.example"}), 403)
        assert_error_body(client.get("/v1/models", headers={"Host": "other.internal"}), 400)


# -- defect 4: security headers -------------------------------------------------------------------
def test_security_headers_on_every_response(server):
    base, _, _ = server
    responses = {
        "/": httpx.get(base + "/", timeout=30),
        "/docs": httpx.get(base + "/docs", timeout=30),
        "/healthz": httpx.get(base + "/healthz", timeout=30),
        "/openapi.json": httpx.get(base + "/openapi.json", timeout=30),
        "404": httpx.get(base + "/nope", timeout=30),
        "400 host": httpx.get(base + "/healthz", headers={"Host": "evil.example"}, timeout=30),
        "422": httpx.post(base + "/v1/locations/embed", content=b"{", headers={"content-type": "application/json"}, timeout=30),
    }
    for name, r in responses.items():
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("referrer-policy") == "no-referrer", name
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, (name, csp)
    # /docs: its inline script is the only one allowed (by hash), nothing else loads from elsewhere.
    docs = responses["/docs"]
    scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = docs.headers["content-security-policy"]
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp and "unsafe-inline' " not in csp.split("script-src")[1]
    # The page keeps its own policy (script hashes) in the header too.
    page = responses["/"]
    meta = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page.text)
    assert meta is not None
    import html

    assert page.headers["content-security-policy"].startswith(html.unescape(meta.group(1)))


# -- defect 5: one deadline for a URL fetch -------------------------------------------------------
class SlowOrigin:
    """A local HTTP origin that sends its response headers one byte every ``interval_s``."""

    def __init__(self, interval_s: float = 0.5, limit_s: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.interval_s = interval_s
        self.limit_s = limit_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _drip(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 500 + b"\r\n\r\n"
        t_end = time.monotonic() + self.limit_s
        try:
            conn.recv(4096)
            for i in range(len(head)):
                if self._stop.is_set() or time.monotonic() > t_end:
                    break
                conn.sendall(head[i : i + 1])
                time.sleep(self.interval_s)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> SlowOrigin:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self.sock.close()


def test_load_url_cut_at_its_deadline_on_slow_headers():
    from geofast.errors import ImageError
    from geofast.images import load_url

    with SlowOrigin() as origin:
        t0 = time.monotonic()
        with pytest.raises(ImageError, match=r"timed out after 1\.5 s"):
            load_url(f"http://127.0.0.1:{origin.port}/a.png", timeout_s=1.5, allow_private=True)
        took = time.monotonic() - t0
    assert took < 1.5 + 1.0, took


@pytest.mark.slow
def test_slow_origin_cut_in_locate_and_serve(server, tiny_clip_dir, cache_dir):
    base, _, _ = server
    with SlowOrigin() as origin:
        url = f"http://127.0.0.1:{origin.port}/a.png"
        t0 = time.monotonic()
        r = httpx.post(base + "/v1/locate", data={"urls": [url]}, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        (row,) = r.json()["results"]
        assert row["image"] == url and "timed out after 2 s" in row["error"]
        assert took < 2 + 1.0 + 1.0, took  # the limit, + 1 s (the target), + 1 s for the request itself
        cli = subprocess.run(
            [sys.executable, "-m", "geofast", "locate", url, "--clip", str(tiny_clip_dir), "--json", "--allow-private-urls"]
            + ["--url-timeout", "1.5", "--no-places"],
            env=cli_env(cache_dir),
            capture_output=True,
            text=True,
            timeout=300,
        )
    (row,) = json.loads(cli.stdout)
    assert "timed out after 1.5 s" in row["error"], cli.stdout + cli.stderr


# -- defect 6: /v1/locations/embed off the event loop, bounded -----------------------------------
@pytest.mark.slow
def test_location_embeddings_never_stall_the_server(server, geolocator):
    base, _, proc = server
    rng = np.random.default_rng(7)
    latlon = np.column_stack([rng.uniform(-80, 80, 1000), rng.uniform(-179, 179, 1000)])
    with HealthProbe(base) as probe, httpx.Client(timeout=120) as http:
        answers = [http.post(base + "/v1/locations/embed", json={"latlon": latlon.tolist()}) for _ in range(3)]
        t0 = time.monotonic()
        huge = b'{"latlon": [' + b",".join([b"[1.5,2.5]"] * 1_000_000) + b"]}"
        refused = http.post(base + "/v1/locations/embed", content=huge, headers={"content-type": "application/json"})
        refused_s = time.monotonic() - t0
    for r in answers:
        assert r.status_code == 200, r.text[:300]
    want = geolocator.encode_locations(latlon)
    np.testing.assert_allclose(np.array(answers[0].json()["embeddings"]), want, rtol=0, atol=1e-6)
    body = assert_error_body(refused, 413)
    assert "1000" in body["error"] or "1,000" in body["error"]
    print(f"embed: healthz max {max(probe.latencies):.2f} s over {len(probe.latencies)} probes; 1e6 refused in {refused_s:.2f} s")
    assert not probe.failures and max(probe.latencies) < HEALTHZ_S
    assert proc.poll() is None


# -- defect 7: no 500 with a server path; capabilities in /v1/models -----------------------------
def test_text_without_tokenizer_is_501_without_paths(tmp_path, cache_dir):
    from fastapi.testclient import TestClient

    from conftest import make_tiny_clip
    from geofast.predict.geoclip import GeoclipPredictor, Geolocator
    from geofast.serve import ServeConfig, create_app

    folder = make_tiny_clip(tmp_path / "clip-no-tokenizer", with_tokenizer=False)
    geo = Geolocator.from_pretrained("geoclip", clip=folder, device="cpu", cache_dir=cache_dir, progress=False)
    with TestClient(create_app(ServeConfig(), predictor=GeoclipPredictor(geo)), base_url="http://127.0.0.1") as client:
        body = assert_error_body(client.post("/v1/locate", data={"text": ["a harbour"]}), 501)
        models = client.get("/v1/models").json()
    assert "tokenizer" in body["error"] and str(tmp_path) not in json.dumps(body) and "/" not in body["error"]
    assert models["text_queries"] is False


def test_neighbour_paths_hidden():
    from geofast.serve.app import _hide_paths

    row = {
        "image": "q.jpg",
        "neighbours": [{"image": "/srv/db/photos/a.jpg"}, {"image": "/home/u/other/b.jpg"}, {"image": "rel/c.jpg"}],
    }
    _hide_paths(row, Path("/srv/db"))
    assert [n["image"] for n in row["neighbours"]] == ["photos/a.jpg", "b.jpg", "rel/c.jpg"]


# -- defect 8: slow connections, late work, keys, messages, extras -------------------------------
@pytest.mark.slow
def test_slowloris_connections_closed_and_connections_bounded(server):
    base, port, proc = server
    socks = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        # 30 > --max-connections 24: a further request is answered 503 while they are open.
        r = httpx.get(base + "/healthz", timeout=10)
        assert r.status_code == 503, r.status_code
        t0 = time.monotonic()
        closed = 0
        for s in socks:  # the server closes each within --header-timeout 2 s (+ scheduling)
            s.settimeout(max(0.1, t0 + 8 - time.monotonic()))
            try:
                while True:
                    s.sendall(b"X")  # one more header byte now and then: slowloris
                    if s.recv(1) == b"":
                        closed += 1
                        break
            except (TimeoutError, ConnectionError, OSError):
                closed += 1 if time.monotonic() < t0 + 8 else 0
        assert closed == 30, closed
    finally:
        for s in socks:
            s.close()
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    assert proc.poll() is None


def test_work_of_a_timed_out_request_does_not_run(geolocator):
    """A job whose request is gone (its future cancelled) after the worker took its batch is not
    computed (before: the predict call ran for nobody)."""
    import asyncio

    from geofast.predict.geoclip import GeoclipPredictor
    from geofast.serve.batcher import Batcher

    calls: list[int] = []

    class Counting(GeoclipPredictor):
        def predict(self, images, **kw):
            calls.append(len(images))
            return super().predict(images, **kw)

    batcher = Batcher(Counting(geolocator), max_batch=4, max_wait_ms=0)

    async def main() -> None:
        taken = threading.Event()
        release = threading.Event()

        def hold(jobs):
            taken.set()
            release.wait(20)

        batcher.before_batch = hold
        batcher.start()
        job = batcher.submit([Image.new("RGB", (64, 64))], ["a"], 2, time.monotonic() + 60)
        await asyncio.to_thread(taken.wait, 20)
        job.future.cancel()  # the request answered 504 meanwhile
        release.set()
        await asyncio.sleep(0.5)

    asyncio.run(main())
    batcher.stop()
    assert calls == [] and batcher.expired == 1


def test_image_job_cancelled_when_the_text_job_hits_a_full_queue(geolocator, photo_dir):
    from fastapi.testclient import TestClient

    from geofast.predict.geoclip import GeoclipPredictor
    from geofast.serve import ServeConfig, create_app
    from serve_support import Gate

    gate = Gate()
    app = create_app(ServeConfig(queue_size=1, max_wait_ms=0), predictor=GeoclipPredictor(geolocator))
    photo = sorted(photo_dir.iterdir())[0]
    files = [("images", (photo.name, photo.read_bytes(), "image/jpeg"))]
    from concurrent.futures import ThreadPoolExecutor

    with TestClient(app, base_url="http://127.0.0.1") as client, ThreadPoolExecutor(2) as pool:
        batcher = client.app.state.geofast.batcher
        batcher.before_batch = gate
        first = pool.submit(client.post, "/v1/locate", files=files)
        assert gate.entered.wait(30)
        r = client.post("/v1/locate", files=files, data={"text": ["a beach"]})  # image job queued, text job: full
        assert_error_body(r, 503)
        assert batcher.pending == 1 and batcher._queue[0].future.cancelled()
        gate.open()
        assert first.result(60).status_code == 200
        t_end = time.monotonic() + 20
        while batcher.expired < 1 and time.monotonic() < t_end:
            time.sleep(0.05)
    assert batcher.expired == 1 and batcher.served_requests == 1  # the orphan image job never ran


def test_non_ascii_api_key_refused_at_start(cache_dir):
    r = subprocess.run(
        [sys.executable, "-m", "geofast", "serve", "--port", str(free_port())],
        env=cli_env(cache_dir, GEOFAST_API_KEY="clé-secrète"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[0].startswith("error: GEOFAST_API_KEY holds characters other than printable ASCII"), r.stderr


def test_pixel_hint_names_the_server_flag_and_bad_multipart_is_422(server):
    base, _, _ = server
    big = png(Image.new("1", (9000, 5000)))  # 45 MP > the default 40 MP, a few KB
    r = httpx.post(base + "/v1/locate", files=[("images", ("big.png", big, "image/png"))], timeout=60)
    body = assert_error_body(r, 400)
    assert "--max-pixels" in body["hint"] and "GEOFAST_MAX_IMAGE_PIXELS" not in r.text
    r = httpx.post(
        base + "/v1/locate",
        content=b"--xyz\r\nno-colon-header\r\n\r\nabc\r\n--xyz--\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=60,
    )
    assert_error_body(r, 422)


def test_serve_without_its_extra_names_the_extra(cache_dir):
    code = (
        "import sys\n"
        "for m in ('fastapi', 'starlette', 'uvicorn', 'multipart'):\n    sys.modules[m] = None\n"
        "from geofast.cli import run\n"
        "sys.argv = ['geofast', 'serve']\nrun()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=cli_env(cache_dir), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert "geofast[serve]" in r.stderr and r.stderr.startswith("error: geofast serve needs the 'serve' extra"), r.stderr


def test_serve_accepts_llm_deadline():
    from typer.testing import CliRunner

    from geofast.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--llm-deadline" in r.output and "--allowed-host" in r.output
