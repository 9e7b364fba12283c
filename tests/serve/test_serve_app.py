"""The serve app in-process (FastAPI TestClient) with the tiny test backbone: answers equal the
library's, micro-batching, per-image errors, limits, queue, deadline, auth, CORS, error bodies."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from geofast.output import prediction_json
from geofast.predict.factory import MethodOptions
from geofast.predict.geoclip import GeoclipPredictor
from geofast.serve import ServeConfig, create_app
from geofast.serve.security import InsecureBindError
from serve_support import Gate, assert_error_body, encoded, uploads, with_name


@pytest.fixture(scope="module")
def predictor(geolocator):
    return GeoclipPredictor(geolocator)


@pytest.fixture(scope="module")
def photos(photo_dir) -> list[Path]:
    return sorted(photo_dir.iterdir())


#: The in-process clients send Host: 127.0.0.1 (the bound address; "testserver" is refused).
LOCAL = "http://127.0.0.1"


def client_for(predictor, **settings) -> TestClient:
    return TestClient(create_app(ServeConfig(**settings), predictor=predictor), base_url=LOCAL)


def wait_until(cond, timeout_s: float = 240.0) -> None:
    # Only bounds a failure: under `taskset -c 0` at load 24 one tiny-model batch took over 20 s.
    t_end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# -- answers ----------------------------------------------------------------------------------
@pytest.mark.slow  # the first test of a session pays for the gallery cache and the place index
def test_locate_equals_library(predictor, geolocator, photos):
    chosen = photos[:3]  # jpg, png, webp
    with client_for(predictor) as client:
        r = client.post("/v1/locate", files=uploads(chosen), data={"top_k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"results", "timings_ms"}
    assert set(body["timings_ms"]) == {"queue", "decode", "inference", "total"}
    t = body["timings_ms"]
    assert all(v >= 0 for v in t.values()) and t["total"] >= t["inference"] and t["inference"] > 0
    ref = [prediction_json(p) for p in geolocator.predict([str(p) for p in chosen], top_k=3)]
    # Identical numbers (same bytes, same batch), through a JSON round trip like the CLI's.
    assert body["results"] == json.loads(json.dumps(with_name(ref, [p.name for p in chosen])))
    assert [len(x["predictions"]) for x in body["results"]] == [3, 3, 3]


def test_bad_images_get_their_own_entries(predictor, geolocator, photos, tmp_path):
    good = photos[3:5]
    trunc = photos[0].read_bytes()
    files = [
        ("images", (good[0].name, good[0].read_bytes(), "image/png")),
        ("images", ("notimage.jpg", b"hello, not an image", "image/jpeg")),
        ("images", ("truncated.jpg", trunc[: len(trunc) // 3], "image/jpeg")),
        ("images", ("empty.png", b"", "image/png")),
        ("images", (good[1].name, good[1].read_bytes(), "image/jpeg")),
    ]
    with client_for(predictor) as client:
        r = client.post("/v1/locate", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert [x["image"] for x in rows] == [f[1][0] for f in files]
    for row, text in zip(rows[1:4], ("not an image", "truncated", "empty file")):
        assert set(row) == {"image", "error"} and text in row["error"], row
    ref = [prediction_json(p) for p in geolocator.predict([str(p) for p in good], top_k=2)]
    got = [rows[0], rows[4]]
    assert got == json.loads(json.dumps(with_name(ref, [p.name for p in good])))


def test_micro_batching_coalesces_waiting_requests(predictor, geolocator, photos):
    """While the worker is busy, three requests queue up; they then share one forward pass."""
    gate = Gate()
    calls: list[int] = []
    encode = geolocator.backbone.encode

    def counting_encode(pixels):
        calls.append(int(pixels.shape[0]))
        return encode(pixels)

    with client_for(predictor, max_batch=8, max_wait_ms=0) as client:
        batcher = client.app.state.geofast.batcher
        batcher.before_batch = gate
        geolocator.backbone.encode = counting_encode
        try:
            with ThreadPoolExecutor(4) as pool:
                first = pool.submit(client.post, "/v1/locate", files=uploads(photos[:1]), data={"top_k": "3"})
                assert gate.entered.wait(20)
                rest = [
                    pool.submit(client.post, "/v1/locate", files=uploads(photos[i : i + n]), data={"top_k": "3"})
                    for i, n in ((1, 1), (2, 2), (4, 1))
                ]
                wait_until(lambda: batcher.pending == 3)
                gate.open()
                answers = [first.result(60)] + [f.result(60) for f in rest]
        finally:
            geolocator.backbone.encode = encode
    assert [a.status_code for a in answers] == [200] * 4
    assert gate.batches[0] == [1] and sorted(gate.batches[1]) == [1, 1, 2]  # 3 requests, 4 images in the second call
    assert len(gate.batches) == 2
    assert calls == [1, 4]  # one forward pass each
    assert [(b.requests, b.images) for b in batcher.batches] == [(1, 1), (3, 4)]
    # Coalesced answers agree with the library run on each request alone (batch composition
    # may change the last float bits of a forward pass).
    for answer, chunk in zip(answers[1:], (photos[1:2], photos[2:4], photos[4:5])):
        ref = geolocator.predict([str(p) for p in chunk], top_k=3)
        for row, p in zip(answer.json()["results"], ref):
            got = np.array([[c["lat"], c["lon"], c["prob"]] for c in row["predictions"]])
            want = np.array([[c.lat, c.lon, c.prob] for c in p.candidates])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
            assert row["confidence"] == pytest.approx(p.confidence, rel=1e-4, abs=1e-7)
    for a in answers[1:]:
        assert a.json()["timings_ms"]["queue"] > 0


def test_one_failing_request_never_fails_its_neighbours(geolocator, photos):
    """A batch whose predict call fails is rerun request by request: only the culprit fails."""

    class Fragile(GeoclipPredictor):
        def predict(self, images, **kw):
            # The culprit by its colour: the server hands the predictor the 224 × 224 crop CLIP sees.
            if any(im.getextrema() == ((9, 9), (9, 9), (9, 9)) for im in images):
                raise RuntimeError("boom")
            return super().predict(images, **kw)

    gate = Gate()
    bad = ("images", ("odd.png", encoded(Image.new("RGB", (33, 33), (9, 9, 9)), "PNG"), "image/png"))
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=0), predictor=Fragile(geolocator))
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        client.app.state.geofast.batcher.before_batch = gate
        with ThreadPoolExecutor(3) as pool:
            warm = pool.submit(client.post, "/v1/locate", files=uploads(photos[:1]))
            assert gate.entered.wait(20)
            ok = pool.submit(client.post, "/v1/locate", files=uploads(photos[1:3]))
            fail = pool.submit(client.post, "/v1/locate", files=[bad])
            wait_until(lambda: client.app.state.geofast.batcher.pending == 2)
            gate.open()
            results = warm.result(60), ok.result(60), fail.result(60)
    assert results[0].status_code == 200 and results[1].status_code == 200
    assert len(results[1].json()["results"]) == 2
    body = assert_error_body(results[2], 500)
    assert "boom" not in body["error"] and "RuntimeError" in body["error"]


# -- limits -----------------------------------------------------------------------------------
def test_body_limit_413_from_header_and_from_stream(predictor, photos):
    big = photos[4].read_bytes()  # 640×480 png
    limit = len(big) // 2
    with client_for(predictor, max_body_bytes=limit) as client:
        r = client.post("/v1/locate", files=[("images", ("big.png", big, "image/png"))])
        body = assert_error_body(r, 413)
        assert f"{limit:,}" in body["error"]

        def chunks():
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        # No Content-Length: the body is counted as it streams.
        r = client.post("/v1/locate", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert_error_body(r, 413)
        # A small request still passes.
        r = client.post("/v1/locate", files=uploads(photos[5:6]))
        assert r.status_code == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width × height`` pixels (IHDR), with an empty IDAT: no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_pixel_bomb_refused_before_decoding(predictor, photos, monkeypatch):
    import geofast.serve.app as serve_app

    decoded: list[str] = []
    real = serve_app.load_image_bytes

    def spy(im, name, **kw):
        decoded.append(name)
        return real(im, name, **kw)

    monkeypatch.setattr(serve_app, "load_image_bytes", spy)
    bomb = encoded(Image.new("L", (6000, 6000)), "PNG")  # 36 MP, a few KB compressed
    assert len(bomb) < 200_000
    with client_for(predictor, max_pixels=10_000_000) as client:
        r = client.post(
            "/v1/locate",
            files=[("images", ("ok.jpg", photos[0].read_bytes(), "image/jpeg")), ("images", ("bomb.png", bomb, "image/png"))],
        )
        body = assert_error_body(r, 400)
        assert "bomb.png" in body["error"] and "36,000,000 pixels" in body["error"]
        assert "bomb.png" not in decoded
        # PIL's own hard limit (beyond 2 × MAX_IMAGE_PIXELS) is a 400 too: a bare PNG header.
        huge = png_header_only(30_000, 30_000)
        r = client.post("/v1/locate", files=[("images", ("huge.png", huge, "image/png"))])
        assert_error_body(r, 400)


def test_formats_and_request_validation(predictor, photos):
    ppm = encoded(Image.new("RGB", (40, 30), (1, 2, 3)), "PPM")
    with client_for(predictor, max_images=3) as client:
        body = assert_error_body(client.post("/v1/locate", files=[("images", ("x.ppm", ppm, "image/x-portable-pixmap"))]), 415)
        assert "PPM" in body["error"] and "JPEG" in body["hint"]
        assert_error_body(client.post("/v1/locate", files=uploads(photos[:4])), 400)  # 4 > 3 images
        assert_error_body(client.post("/v1/locate", files=uploads(photos[:1]), data={"top_k": "0"}), 400)
        assert_error_body(client.post("/v1/locate", files=uploads(photos[:1]), data={"top_k": "101"}), 400)
        assert_error_body(client.post("/v1/locate", files=uploads(photos[:1]), data={"top_k": "abc"}), 422)
        body = assert_error_body(client.post("/v1/locate", files=uploads(photos[:1]), data={"method": "rag"}), 400)
        assert "geoclip" in body["error"]
        assert_error_body(client.post("/v1/locate", data={"top_k": "3"}), 400)  # no images
        assert_error_body(client.get("/v1/nope"), 404)
        assert_error_body(client.get("/v1/locate"), 405)
        ok = client.post("/v1/locate", files=uploads(photos[:1]), data={"method": "geoclip"})
        assert ok.status_code == 200


# -- queue and deadline -----------------------------------------------------------------------
def test_queue_full_answers_503_with_retry_after(predictor, photos):
    gate = Gate()
    with client_for(predictor, max_batch=1, max_wait_ms=0, queue_size=1) as client:
        batcher = client.app.state.geofast.batcher
        batcher.before_batch = gate
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/v1/locate", files=uploads(photos[:1]))
            assert gate.entered.wait(20)
            waiting = pool.submit(client.post, "/v1/locate", files=uploads(photos[1:2]))
            wait_until(lambda: batcher.pending == 1)
            r = client.post("/v1/locate", files=uploads(photos[2:3]))
            body = assert_error_body(r, 503)
            assert int(r.headers["retry-after"]) >= 1 and "busy" in body["error"]
            gate.open()
            assert running.result(60).status_code == 200 and waiting.result(60).status_code == 200
        assert batcher.rejected == 1
        assert client.post("/v1/locate", files=uploads(photos[2:3])).status_code == 200


def test_deadline_answers_504_and_skips_expired_work(predictor, photos):
    gate = Gate()
    with client_for(predictor, max_batch=1, max_wait_ms=0, deadline_s=0.3) as client:
        batcher = client.app.state.geofast.batcher
        batcher.before_batch = gate
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v1/locate", files=uploads(photos[:1]))
            assert gate.entered.wait(20)
            t0 = time.monotonic()
            late = client.post("/v1/locate", files=uploads(photos[1:2]))
            waited = time.monotonic() - t0
            body = assert_error_body(late, 504)
            assert "deadline" in body["error"] and 0.25 < waited < 5
            gate.open()
            assert_error_body(first.result(60), 504)  # held past its deadline too
        wait_until(lambda: batcher.pending == 0)
        # Both were dropped, never run: the queued one, and (since issue 20) the held one, whose
        # request had been answered 504 before the worker got to run it.
        wait_until(lambda: batcher.expired == 2)
        assert [b.images for b in batcher.batches] == []


# -- auth, binding, CORS ----------------------------------------------------------------------
def test_api_key_required_when_configured(predictor, photos, monkeypatch):
    monkeypatch.setenv("GEOFAST_API_KEY", "s3cret-key")
    with client_for(predictor) as client:  # loopback, but a key is configured
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        body = assert_error_body(client.get("/v1/models"), 401)
        assert "missing" in body["error"]
        r = client.post("/v1/locate", files=uploads(photos[:1]))
        assert_error_body(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error_body(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error_body(client.get("/v1/models", headers={"X-API-Key": "s3cret-kez"}), 401)
        assert_error_body(client.get("/v1/models", headers={"Authorization": "Basic s3cret-key"}), 401)
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        r = client.post("/v1/locate", files=uploads(photos[:1]), headers={"authorization": "bearer s3cret-key"})
        assert r.status_code == 200


def test_key_comparison_is_constant_time_compare(monkeypatch):
    import hmac

    from geofast.serve import security

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert security.key_matches("abc", "abc") and not security.key_matches("abd", "abc")
    assert not security.key_matches(None, "abc")
    assert seen == [(b"abc", b"abc"), (b"abd", b"abc")]


def test_non_loopback_host_needs_a_key_or_explicit_no_auth(predictor, monkeypatch):
    monkeypatch.delenv("GEOFAST_API_KEY", raising=False)
    with pytest.raises(InsecureBindError, match="refusing to listen on 0.0.0.0"):
        create_app(ServeConfig(host="0.0.0.0"), predictor=predictor)
    with pytest.raises(InsecureBindError):
        create_app(ServeConfig(host="192.168.1.5"), predictor=predictor)
    create_app(ServeConfig(host="127.0.0.2"), predictor=predictor)  # loopback
    create_app(ServeConfig(host="0.0.0.0", no_auth=True), predictor=predictor)
    monkeypatch.setenv("GEOFAST_API_KEY", "k")
    create_app(ServeConfig(host="0.0.0.0"), predictor=predictor)


def test_cors_off_by_default_and_on_for_given_origin(predictor):
    origin = "http://tools.example.test"
    with client_for(predictor) as client:
        r = client.get("/v1/models", headers={"Origin": origin})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = client.options("/v1/locate", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
    with client_for(predictor, cors_origins=(origin,), api_key="k") as client:
        pre = client.options(
            "/v1/locate",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        r = client.get("/v1/models", headers={"Origin": origin, "X-API-Key": "k"})
        assert r.headers["access-control-allow-origin"] == origin
        denied = client.get("/v1/models", headers={"Origin": origin})  # 401 still carries CORS headers
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin
        other = client.get("/v1/models", headers={"Origin": "http://evil.test", "X-API-Key": "k"})
        assert "access-control-allow-origin" not in other.headers


# -- other routes -----------------------------------------------------------------------------
def test_location_embeddings_match_geoclip_package(predictor):
    import torch
    from geoclip.model.location_encoder import LocationEncoder

    from conftest import random_latlon

    latlon = random_latlon(50, seed=3)
    with client_for(predictor) as client:
        r = client.post("/v1/locations/embed", json={"latlon": latlon.tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        bad = client.post("/v1/locations/embed", json={"latlon": [[95.0, 0.0]]})
        body_bad = assert_error_body(bad, 400)
        assert "lat" in body_bad["error"].lower()
        assert_error_body(client.post("/v1/locations/embed", json={"latlon": [[1.0, 2.0, 3.0]]}), 422)
        assert_error_body(client.post("/v1/locations/embed", json={"latlon": []}), 400)
        assert_error_body(
            client.post("/v1/locations/embed", content=b"{not json", headers={"content-type": "application/json"}), 422
        )
    assert body["dim"] == 512 and body["model"] == "geoclip"
    got = np.array(body["embeddings"])
    enc = LocationEncoder(from_pretrained=True).double().eval()
    with torch.no_grad():
        ref = torch.nn.functional.normalize(enc(torch.tensor(latlon)), dim=1).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_models_openapi_and_offline_docs(predictor):
    with client_for(predictor, max_batch=4) as client:
        models = client.get("/v1/models").json()
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
        assert client.get("/redoc").status_code == 404
    assert models["method"] == "geoclip" and models["model"] == "geoclip" and models["ready"] is True
    assert models["limits"]["max_batch"] == 4 and models["gallery"]["points"] == 100_000
    assert {"/v1/locate", "/v1/locations/embed", "/v1/models", "/healthz", "/readyz"} <= set(schema["paths"])
    form = schema["paths"]["/v1/locate"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    html = docs.text
    assert 'fetch("openapi.json")' in html
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html


def test_models_load_in_the_background_and_readyz_waits(tiny_clip_dir, cache_dir, photos, monkeypatch):
    monkeypatch.setenv("GEOFAST_CACHE", str(cache_dir))
    opts = MethodOptions(clip=str(tiny_clip_dir), device="cpu")
    with TestClient(create_app(ServeConfig(method=opts)), base_url=LOCAL) as client:
        assert client.get("/healthz").status_code == 200
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=120)
        assert client.post("/v1/locate", files=uploads(photos[:1])).status_code == 200
    broken = MethodOptions(clip=str(tiny_clip_dir / "missing"), device="cpu")
    with TestClient(create_app(ServeConfig(method=broken)), base_url=LOCAL) as client:
        wait_until(lambda: client.app.state.geofast.load_error is not None, timeout_s=60)
        body = assert_error_body(client.get("/readyz"), 503)
        assert "failed to load" in body["error"]
        assert_error_body(client.post("/v1/locate", files=uploads(photos[:1])), 503)


# -- text queries and image URLs --------------------------------------------------------------
def test_text_queries_equal_library_and_come_after_images(predictor, photos):
    texts = ["a harbour with red wooden houses", "snow on the mountain"]
    with client_for(predictor) as client:
        r = client.post("/v1/locate", files=uploads(photos[:1]), data={"top_k": "3", "text": texts})
        only = client.post("/v1/locate", data={"top_k": "2", "text": texts[:1]})
        body_empty = assert_error_body(client.post("/v1/locate", data={"text": ["  "]}), 400)
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert rows[0]["image"] == photos[0].name
    ref = [prediction_json(p) for p in predictor.predict_text(texts, top_k=3)]
    assert [x["image"] for x in ref] == ["text: " + t for t in texts]
    assert rows[1:] == json.loads(json.dumps(ref))
    assert only.status_code == 200
    assert only.json()["results"] == json.loads(
        json.dumps([prediction_json(p) for p in predictor.predict_text(texts[:1], top_k=2)])
    )
    assert "empty" in body_empty["error"]


def test_text_queries_refused_without_gallery_predictor(geolocator):
    class NoText:
        method = "swc"

        def predict(self, images, **kw):
            raise AssertionError("not called")

    with TestClient(create_app(ServeConfig(), predictor=NoText()), base_url=LOCAL) as client:
        # A capability the server lacks is 501 (it was a 400 before issue 20).
        body = assert_error_body(client.post("/v1/locate", data={"text": ["a beach"]}), 501)
    assert "text queries" in body["error"]


@pytest.fixture
def image_site(photos):
    """A loopback HTTP server with a photo, a PPM, a large file and a redirect (always shut down)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {
        "/photo.jpg": photos[0].read_bytes(),
        "/pixmap.ppm": encoded(Image.new("RGB", (20, 20), (5, 6, 7)), "PPM"),
        "/big.png": photos[4].read_bytes(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/photo.jpg")
                self.end_headers()
                return
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_image_urls_only_when_allowed_and_private_only_when_allowed(predictor, geolocator, photos, image_site):
    urls = [
        f"{image_site}/photo.jpg",
        f"{image_site}/moved",
        f"{image_site}/pixmap.ppm",
        f"{image_site}/big.png",
        f"{image_site}/nope.jpg",
    ]
    with client_for(predictor) as client:  # URL fetching off
        body = assert_error_body(client.post("/v1/locate", data={"urls": urls[:1]}), 400)
        assert "does not fetch image URLs" in body["error"]
    with client_for(predictor, allow_urls=True) as client:  # on, but loopback is private
        r = client.post("/v1/locate", data={"urls": urls[:1]})
        assert r.status_code == 200
        (row,) = r.json()["results"]
        assert set(row) == {"image", "error"} and "loopback" in row["error"]
        assert_error_body(client.post("/v1/locate", data={"urls": ["file:///etc/passwd"]}), 400)
    big = len(photos[4].read_bytes())
    with client_for(predictor, allow_urls=True, allow_private_urls=True, url_max_bytes=big - 1) as client:
        r = client.post("/v1/locate", files=uploads(photos[1:2]), data={"urls": urls, "top_k": "3"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert [x["image"] for x in rows] == [photos[1].name, *urls]
    ref = [prediction_json(p) for p in geolocator.predict([str(photos[1]), str(photos[0]), str(photos[0])], top_k=3)]
    assert [rows[0], rows[1], rows[2]] == json.loads(json.dumps(with_name(ref, [photos[1].name, urls[0], urls[1]])))
    assert "accepted format" in rows[3]["error"]
    assert "larger than the limit" in rows[4]["error"]
    assert "404" in rows[5]["error"]
