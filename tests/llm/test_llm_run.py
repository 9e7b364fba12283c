"""The LLM stage as one run: one client (one breaker, one set of totals) for every batch, a
per-image deadline with a flagged fallback, a short outage that does not stop the run and a dead
endpoint that does, at once. Against the stub chat server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from geofast.errors import LLMError
from geofast.llm import LLMClient, LLMConfig
from geofast.predict.rag import RagPredictor, predict_rag
from geofast.testing.openai_stub import StubChatServer, StubReply
from llm_support import SphereEncoder, geoclip_prediction, jpeg_size, noise_image

GOOD = '{"latitude": 48.8566, "longitude": 2.3522}'


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("GEOFAST_LLM_API_KEY", "OPENAI_API_KEY", "GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL", "GEOFAST_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEOFAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def server():
    with StubChatServer() as s:
        yield s


def cfg(server, **kw):
    base = {"base_url": server.base_url, "model": "stub", "references": (0,), "samples": 1, "max_retries": 0, "cache": False}
    return LLMConfig(**{**base, **kw})


class FakeGeolocator:
    """GeoCLIP's interface for RagPredictor, from real numbers: the image embedding encodes the
    image's width as a place, the candidates are fixed."""

    def __init__(self) -> None:
        self.enc = SphereEncoder(dim=32, seed=0)

    def embed_pil(self, ims, with_clip=False):
        emb = np.stack([self.enc.image_embedding(48.8566, 2.3522) for _ in ims])  # the LLM's answer verifies best
        return emb, None

    def predict_embeddings(self, emb, names, top_k, places=False, merge_duplicates=True):
        return [geoclip_prediction(n, [(-30.0, 150.0), (-31.0, 151.0)]) for n in names]

    def encode_locations(self, latlon):
        return self.enc.encode_locations(latlon)


def test_stalled_image_hits_the_deadline_and_falls_back_flagged(server):
    def script(req):
        _, size = jpeg_size(req.image_bytes())
        return StubReply(GOOD, delay_s=600.0) if size == (50, 50) else StubReply(GOOD)

    server.set_script(script)
    images = [noise_image(40, 30), noise_image(50, 50), noise_image(60, 30)]
    t0 = time.monotonic()
    # The request timeout (300 s) and the stall (600 s) are far longer than the deadline: it decides.
    preds = predict_rag(
        images, config=cfg(server, timeout_s=300.0, deadline_s=0.8, concurrency=2), geoclip=[geoclip_prediction(f"i{i}", [(10.0, 20.0)]) for i in range(3)]
    )  # fmt: skip
    # The whole test takes 4.95 s under `taskset -c 0` at load 24 (12x); without the deadline
    # the run waits for the request timeout (300 s).
    assert time.monotonic() - t0 < 60.0
    assert [p.fallback for p in preds] == [False, True, False]
    assert "deadline of 0.8 s exceeded" in (preds[1].fallback_reason or "")
    assert (preds[1].lat, preds[1].lon) == (10.0, 20.0) and preds[1].error is None
    assert preds[1].llm.usage["failed"] == 1
    assert (preds[0].lat, preds[0].lon) == (48.8566, 2.3522)


def test_one_client_for_every_batch_and_a_short_outage_does_not_stop_the_run(server):
    # Requests 4 and 5 (the third batch of two images) meet an outage (HTTP 503), then it is over.
    server.set_script(lambda req: StubReply("down for maintenance", status=503) if req.index in (4, 5) else StubReply(GOOD))
    made = []
    real_init = LLMClient.__init__

    def counting(self, *a, **kw):
        made.append(self)
        real_init(self, *a, **kw)

    LLMClient.__init__ = counting  # type: ignore[method-assign]
    try:
        pred = RagPredictor(FakeGeolocator(), config=cfg(server))
        images = [noise_image(20 + i, 20) for i in range(10)]
        out = pred.predict(images, batch_size=2, places=False)
        # eval calls predict batch by batch, with the same predictor:
        more = pred.predict([noise_image(40, 20)], batch_size=2, places=False)
    finally:
        LLMClient.__init__ = real_init  # type: ignore[method-assign]
    assert len(made) == 1
    assert len(out) == 10 and all(p.error is None for p in out)
    flagged = [i for i, p in enumerate(out) if p.fallback]
    hit = {jpeg_size(r.image_bytes())[1][0] - 20 for r in server.requests if r.index in (4, 5)}
    assert flagged == sorted(hit) and all("HTTP 503" in (out[i].fallback_reason or "") for i in flagged)
    assert not more[0].fallback
    assert pred.client.stats.requests == 9 and pred.client.stats.failed == 2


def test_outage_batch_alone_does_not_abort_a_run_that_worked(server):
    client = LLMClient(cfg(server))
    g = [geoclip_prediction("a", [(1.0, 2.0)])]
    assert not predict_rag([noise_image(30, 30)], client=client, geoclip=g)[0].fallback
    server.set_script(lambda req: StubReply("overloaded", status=503))
    p = predict_rag([noise_image(31, 30)], client=client, geoclip=g)[0]  # every request of this call fails
    assert p.fallback and "HTTP 503" in (p.fallback_reason or "")
    server.set_script(None)
    assert not predict_rag([noise_image(32, 30)], client=client, geoclip=g)[0].fallback


def test_endpoint_that_dies_mid_run_opens_the_breaker_and_stops_sending(server):
    server.set_script(lambda req: StubReply(GOOD) if req.index < 3 else StubReply("gone", status=503))
    client = LLMClient(cfg(server, concurrency=2))
    n = 60
    with pytest.raises(LLMError) as e:
        predict_rag(
            [noise_image(20 + i, 20) for i in range(n)],
            client=client,
            geoclip=[geoclip_prediction(f"i{i}", [(1.0, 2.0)]) for i in range(n)],
        )
    assert "requests in a row failed" in str(e.value) and "stopped sending" in str(e.value)
    assert client.breaker_failures == 8
    failed_sent = len(server.requests) - 3
    assert 8 <= failed_sent <= 8 + 2  # the streak, plus at most the requests already in flight
    # The run is over for this client: nothing more is sent.
    before = len(server.requests)
    with pytest.raises(LLMError):
        predict_rag([noise_image(99, 20)], client=client, geoclip=[geoclip_prediction("x", [(1.0, 2.0)])])
    assert len(server.requests) == before


def test_progress_totals_count_requests_and_tokens(server):
    client = LLMClient(cfg(server, references=(0, 5), samples=2, temperature=0.7))
    seen = []
    predict_rag(
        [noise_image(20 + i, 20) for i in range(4)], client=client,
        geoclip=[geoclip_prediction(f"i{i}", [(1.0, 2.0)] * 5) for i in range(4)],
        progress=lambda done, total: seen.append((done, total, client.stats.requests)),
    )  # fmt: skip
    assert [s[:2] for s in seen] == [(i, 4) for i in range(1, 5)]
    assert client.stats.requests == 16 == len(server.requests)
    assert client.stats.total_tokens == 16 * 110  # the stub's usage per reply
    assert client.requests_per_second() > 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _geofast(cmd, *args, cache_dir):
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    for var in ("GEOFAST_CLIP", "GEOFAST_LLM_API_KEY", "OPENAI_API_KEY", "GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.slow
def test_cli_deadline_fallback_and_dead_endpoint(tmp_path, tiny_clip_dir, cache_dir, photo_dir, geolocator):
    photos = sorted(photo_dir.iterdir())[:3]
    # The second request stalls (one request per image with img2loc): its image hits the deadline.
    with StubChatServer(lambda req: StubReply(GOOD, delay_s=30.0) if req.index == 1 else StubReply(GOOD)) as server:
        r = _geofast(
            "locate", *photos, "--method", "rag", "--clip", tiny_clip_dir, "--json", "--no-places",
            "--llm-base-url", server.base_url, "--llm-recipe", "img2loc", "--llm-deadline", "1.5",
            "--llm-timeout", "60", "--llm-concurrency", "1", "--no-llm-cache", cache_dir=cache_dir,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)
    late = [p for p in preds if "deadline of 1.5 s exceeded" in (p.get("fallback_reason") or "")]
    assert (
        len(late) == 1
        and late[0]["fallback"] is True
        and late[0]["predictions"][0]["lat"] is not None
        and late[0].get("error") is None
    )
    others = [p for p in preds if p is not late[0]]
    assert all(p["fallback_reason"] in (None, "a retrieval candidate verified better") for p in others)

    dead = f"http://127.0.0.1:{_free_port()}/v1"
    r = _geofast(
        "locate",
        *photos,
        "--method",
        "rag",
        "--clip",
        tiny_clip_dir,
        "--llm-base-url",
        dead,
        "--no-llm-cache",
        cache_dir=cache_dir,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot connect" in errors[0]
    (tmp_path / "ds.csv").write_text("image,lat,lon\n" + "".join(f"{p.name},1.0,2.0\n" for p in photos))
    r = _geofast(
        "eval", tmp_path / "ds.csv", "--images", photo_dir, "--method", "rag", "--clip", tiny_clip_dir,
        "--llm-base-url", dead, "--out", tmp_path / "p.csv", cache_dir=cache_dir,
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot connect" in errors[0]


def test_rag_predictor_in_chunks_gives_the_same_predictions(server, tmp_path):
    server.set_script(lambda req: f'{{"latitude": {jpeg_size(req.image_bytes())[1][0] - 40}.5, "longitude": 2.5}}')
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    images = [noise_image(20 + i, 20) for i in range(7)] + [str(tmp_path / "bad.jpg")]
    whole = RagPredictor(FakeGeolocator(), config=cfg(server))
    ref = whole.predict(images, batch_size=2, places=False)
    chunked = RagPredictor(FakeGeolocator(), config=cfg(server))
    chunked.chunk = 3
    done = []
    got = chunked.predict(images, batch_size=2, places=False, on_progress=done.append)
    strip = lambda ps: [(p.image, p.lat, p.lon, p.fallback, p.error, [(c.lat, c.lon, c.score) for c in p.candidates]) for p in ps]  # noqa: E731
    assert strip(got) == strip(ref)
    assert got[-1].error is not None and sum(done) == len(images)
    assert [p.lat for p in got[:7]] == [float(f"{i - 20}.5") for i in range(7)]
