"""The LLM client against a real chat-completions server on 127.0.0.1 (geofast.testing.openai_stub).

Covers the request content (data URL → JPEG of the configured size, the references in the
prompt, the key header), retries on 500/429 with the openai client's backoff and Retry-After,
timeouts, the concurrency limit, the on-disk cache, and the errors that stop a run.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import time

import numpy as np
import pytest
from PIL import Image

from geofast.errors import LLMError, ParameterError
from geofast.llm import LLMClient, LLMConfig, ResponseCache, Usage, encode_image
from geofast.predict.rag import predict_rag
from geofast.testing.openai_stub import StubChatServer, StubReply
from llm_support import geoclip_prediction, jpeg_size, noise_image

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


def cfg(server: StubChatServer, **kw) -> LLMConfig:
    base = {
        "base_url": server.base_url,
        "model": "stub-vision",
        "references": (0,),
        "samples": 1,
        "max_retries": 2,
        "timeout_s": 10.0,
    }
    return LLMConfig(**{**base, **kw})


def one_geoclip(n: int = 1, cands: list[tuple[float, float]] | None = None):
    cands = cands or [(10.0, 20.0), (11.0, 21.0), (12.0, 22.0)]
    return [geoclip_prediction(f"img{i}", cands) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Request content
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((1024, 768), 512, (512, 384)), ((600, 1000), 256, (154, 256)), ((300, 200), 512, (300, 200))],
)
def test_request_carries_jpeg_data_url_of_max_side(server, tmp_path, size, max_side, expected):
    path = tmp_path / "photo.png"
    noise_image(*size).save(path)
    preds = predict_rag([str(path)], config=cfg(server, image_max_side=max_side), geoclip=one_geoclip())
    assert preds[0].ok and len(server.requests) == 1
    req = server.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "stub-vision"
    urls = req.image_urls
    assert len(urls) == 1 and urls[0].startswith("data:image/jpeg;base64,")
    fmt, got = jpeg_size(base64.b64decode(urls[0].split(",", 1)[1]))
    assert fmt == "JPEG"
    assert got == expected  # longest side = max_side (never upscaled), aspect kept
    # Answer format requested as JSON.
    assert '{"latitude": <float>, "longitude": <float>}' in req.prompt


def test_exif_orientation_is_applied(server, tmp_path):
    im = noise_image(400, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes())
    predict_rag([str(path)], config=cfg(server), geoclip=one_geoclip())
    assert jpeg_size(server.requests[0].image_bytes())[1] == (200, 400)
    with Image.open(path) as opened:  # a PIL image that still carries the tag
        predict_rag([opened], config=cfg(server, image_max_side=100), geoclip=one_geoclip())
    assert jpeg_size(server.requests[1].image_bytes())[1] == (50, 100)


def test_prompts_hold_the_references_and_samples(server):
    # GeoCLIP candidates as references; G3 plan: prompts with 0, 2 and 4 references, 2 samples each.
    cands = [(35.6762, 139.6503), (34.6937, 135.5023), (43.0618, 141.3545), (26.2124, 127.6809)]
    probs = [0.4, 0.3, 0.2, 0.1]
    g = [geoclip_prediction("a", cands, probs)]
    c = cfg(server, references=(0, 2, 4), samples=2, temperature=0.9)
    preds = predict_rag([noise_image(64, 64)], config=c, geoclip=g)
    assert len(server.requests) == 6
    coords = re.compile(r"\((-?\d+\.\d{4}), (-?\d+\.\d{4})\)")
    seen: dict[int, int] = {}
    for req in server.requests:
        found = [(float(a), float(b)) for a, b in coords.findall(req.prompt)]
        n = len(found)
        assert found == [(round(la, 4), round(lo, 4)) for la, lo in cands[:n]]  # best first
        seen[n] = seen.get(n, 0) + 1
        assert req.body["temperature"] == 0.9
        assert req.body["max_tokens"] == c.max_tokens
    assert seen == {0: 2, 2: 2, 4: 2}
    sources = sorted(x.source for x in preds[0].candidates if x.source.startswith("llm"))
    assert sources == ["llm:p0s0", "llm:p0s1", "llm:p2s0", "llm:p2s1", "llm:p4s0", "llm:p4s1"]


def test_key_from_environment_and_placeholder(server, monkeypatch):
    predict_rag([noise_image(32, 32)], config=cfg(server), geoclip=one_geoclip())
    placeholder = server.requests[-1].headers.get("authorization")
    assert placeholder is not None and placeholder.startswith("Bearer ") and len(placeholder) > len("Bearer ")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env")
    predict_rag([noise_image(32, 32, 1)], config=cfg(server), geoclip=one_geoclip())
    assert server.requests[-1].headers["authorization"] == "Bearer sk-openai-env"
    monkeypatch.setenv("GEOFAST_LLM_API_KEY", "sk-geofast-env")  # takes precedence
    predict_rag([noise_image(32, 32, 2)], config=cfg(server), geoclip=one_geoclip())
    assert server.requests[-1].headers["authorization"] == "Bearer sk-geofast-env"


def test_openai_endpoint_without_key_is_a_configuration_error():
    with pytest.raises(LLMError) as e:
        LLMClient(LLMConfig())
    assert "no API key" in str(e.value) and "GEOFAST_LLM_API_KEY" in (e.value.hint or "")


def test_base_url_and_model_from_environment(server, monkeypatch):
    monkeypatch.setenv("GEOFAST_LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("GEOFAST_LLM_MODEL", "env-model")
    preds = predict_rag([noise_image(32, 32)], config=LLMConfig(references=(0,), samples=1), geoclip=one_geoclip())
    assert server.requests[0].body["model"] == "env-model"
    assert preds[0].llm.model == "env-model"


# ------------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------------


def test_good_answers_and_usage(server):
    server.set_script(
        lambda req: StubReply(
            GOOD, usage={"prompt_tokens": 7 + req.index, "completion_tokens": 3, "total_tokens": 10 + req.index}
        )
    )
    c = cfg(server, references=(0, 1), samples=2, temperature=0.5)
    preds = predict_rag([noise_image(40, 30, i) for i in range(3)], config=c, geoclip=one_geoclip(3))
    n = len(server.requests)
    assert n == 3 * 2 * 2
    total = Usage.total(p.llm.usage for p in preds)
    assert total.requests == n and total.cached == 0 and total.failed == 0
    assert total.prompt_tokens == sum(7 + i for i in range(n))
    assert total.completion_tokens == 3 * n
    assert total.total_tokens == sum(10 + i for i in range(n))
    for p in preds:
        assert p.method == "rag" and not p.fallback
        assert (p.lat, p.lon) == (48.8566, 2.3522)
        assert p.llm.answers == 4 and p.llm.unparsed == 0
        # geoclip's confidence is carried over
        assert p.confidence == 0.4 and p.localizable is True


def test_prose_answer(server):
    server.set_script(lambda req: "I think this is Paris, around 48.85°N, 2.35°E")
    preds = predict_rag([noise_image(40, 30)], config=cfg(server), geoclip=one_geoclip())
    assert (preds[0].lat, preds[0].lon) == (48.85, 2.35)
    assert preds[0].candidates[0].source == "llm:p0s0" and not preds[0].fallback


def test_garbage_answers_fall_back_to_retrieval(server):
    server.set_script(lambda req: "I cannot say. The photo is too dark.")
    preds = predict_rag([noise_image(40, 30)], config=cfg(server, references=(0, 3)), geoclip=one_geoclip())
    p = preds[0]
    assert p.fallback and p.fallback_reason == "no usable LLM answer"
    assert p.llm.unparsed == 2 and p.llm.answers == 0
    assert (p.lat, p.lon) == (10.0, 20.0)  # GeoCLIP's top-1
    assert [c.source for c in p.candidates] == ["geoclip"] * 3


def test_body_that_is_not_a_completion_is_no_answer(server):
    server.set_script(lambda req: StubReply(raw={"unexpected": True}))
    p = predict_rag([noise_image(40, 30)], config=cfg(server), geoclip=one_geoclip())[0]
    assert p.fallback and p.llm.errors


# ------------------------------------------------------------------------------------------------
# Reliability: retries, Retry-After, timeouts, errors that stop the run
# ------------------------------------------------------------------------------------------------


def test_500_then_success_is_retried(server):
    server.set_script([StubReply("overloaded", status=500), StubReply(GOOD)])
    p = predict_rag([noise_image(40, 30)], config=cfg(server, max_retries=2), geoclip=one_geoclip())[0]
    assert len(server.requests) == 2
    assert not p.fallback and (p.lat, p.lon) == (48.8566, 2.3522)
    assert p.llm.usage["retries"] == 1 and p.llm.usage["requests"] == 1


def test_backoff_is_exponential(server):
    server.set_script([StubReply("e", status=503), StubReply("e", status=502), StubReply(GOOD)])
    p = predict_rag([noise_image(40, 30)], config=cfg(server, max_retries=2), geoclip=one_geoclip())[0]
    assert len(server.requests) == 3 and not p.fallback
    t = [r.received_at for r in server.requests]
    gap1, gap2 = t[1] - t[0], t[2] - t[1]
    # openai's backoff: 0.5 s · 2^attempt with up to 25 % jitter.
    assert 0.35 <= gap1 <= 0.8, gap1
    assert 0.7 <= gap2 <= 1.4, gap2
    assert gap2 > gap1


def test_500_exhausting_retries_is_a_failed_request(server):
    server.set_script(lambda req: StubReply("down", status=500) if req.index < 2 else StubReply(GOOD))
    # Two images, max_retries=1: image A's request and its retry fail; image B succeeds.
    c = cfg(server, max_retries=1, concurrency=1)
    preds = predict_rag([noise_image(40, 30, 0), noise_image(40, 30, 1)], config=c, geoclip=one_geoclip(2))
    assert len(server.requests) == 3
    assert preds[0].fallback and "HTTP 500" in preds[0].llm.errors[0]
    assert preds[0].llm.usage["failed"] == 1
    assert not preds[1].fallback


def test_429_honours_retry_after(server):
    server.set_script([StubReply("slow down", status=429, headers={"Retry-After": "1"}), StubReply(GOOD)])
    p = predict_rag([noise_image(40, 30)], config=cfg(server, max_retries=2), geoclip=one_geoclip())[0]
    assert len(server.requests) == 2 and not p.fallback
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert gap >= 0.95, gap  # without the header the first backoff is at most 0.5 s


def test_stall_past_timeout_is_retried(server):
    server.set_script([StubReply(GOOD, delay_s=600.0), StubReply(GOOD)])
    t0 = time.monotonic()
    p = predict_rag([noise_image(40, 30)], config=cfg(server, timeout_s=0.5, max_retries=1), geoclip=one_geoclip())[0]
    elapsed = time.monotonic() - t0
    assert len(server.requests) == 2 and not p.fallback
    assert server.requests[1].received_at - server.requests[0].received_at >= 0.5
    # The whole test takes 1.0 to 6.0 s under `taskset -c 0` at load 18 to 24; waiting for the
    # stall takes 600 s. 60 s leaves 10x and still fails that bug.
    assert elapsed < 60.0


def test_every_request_timing_out_is_an_error(server):
    server.set_script(lambda req: StubReply(GOOD, delay_s=30.0))
    with pytest.raises(LLMError) as e:
        predict_rag([noise_image(40, 30)], config=cfg(server, timeout_s=0.3, max_retries=1), geoclip=one_geoclip())
    assert "timed out" in str(e.value) and "timeout_s" in (e.value.hint or "") and "timeout_s" in e.value.params
    assert len(server.requests) == 2


def test_one_stalled_image_falls_back_flagged(server):
    def script(req):
        _, size = jpeg_size(req.image_bytes())
        return StubReply(GOOD, delay_s=30.0) if size == (50, 50) else StubReply(GOOD)

    server.set_script(script)
    images = [noise_image(40, 30), noise_image(50, 50), noise_image(60, 30)]
    # concurrency 1: the good first image answers before the stalled one gives up.
    preds = predict_rag(images, config=cfg(server, timeout_s=0.3, max_retries=0, concurrency=1), geoclip=one_geoclip(3))
    assert [p.fallback for p in preds] == [False, True, False]
    assert "timed out" in preds[1].llm.errors[0]
    assert preds[1].fallback_reason == "no usable LLM answer (timed out after 0.3 s (0 retries))"
    assert (preds[1].lat, preds[1].lon) == (10.0, 20.0)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_stops_the_run(server, status):
    server.set_script(lambda req: StubReply("invalid api key", status=status))
    with pytest.raises(LLMError) as e:
        predict_rag([noise_image(40, 30, i) for i in range(20)], config=cfg(server, concurrency=2), geoclip=one_geoclip(20))
    assert f"HTTP {status}" in str(e.value) and "GEOFAST_LLM_API_KEY" in (e.value.hint or "")
    assert len(server.requests) <= 2  # stopped at once, not retried per image


def test_unknown_model_stops_the_run(server):
    server.set_script(lambda req: StubReply("The model `nope` does not exist.", status=404))
    with pytest.raises(LLMError) as e:
        predict_rag([noise_image(40, 30)], config=cfg(server, model="nope"), geoclip=one_geoclip())
    assert "'nope'" in str(e.value) and "does not exist" in str(e.value)
    assert "model" in (e.value.hint or "") and e.value.params == ("model", "base_url")


def test_unreachable_endpoint_is_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    c = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", references=(0,), samples=1, max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(LLMError) as e:
        predict_rag([noise_image(40, 30, i) for i in range(10)], config=c, geoclip=one_geoclip(10))
    assert "cannot connect" in str(e.value) and "base_url" in (e.value.hint or "") and e.value.params == ("base_url",)
    assert time.monotonic() - t0 < 5.0  # the whole test: 0.20 s under `taskset -c 0` at load 24 (25x)


def test_all_requests_failing_is_an_error(server):
    server.set_script(lambda req: StubReply("bad image", status=400))
    with pytest.raises(LLMError) as e:
        predict_rag([noise_image(40, 30, i) for i in range(3)], config=cfg(server), geoclip=one_geoclip(3))
    assert "all 3 requests" in str(e.value) and "bad image" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Concurrency
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_concurrency_limit_is_reached_and_never_exceeded(limit):
    # A delay long enough for every slot to fill even on a loaded machine; 3 rounds of requests.
    n = 3 * limit
    with StubChatServer(delay_s=0.3) as server:
        c = cfg(server, concurrency=limit, cache=False)
        t0 = time.monotonic()
        preds = predict_rag([noise_image(40, 30, i) for i in range(n)], config=c, geoclip=one_geoclip(n))
        elapsed = time.monotonic() - t0
        assert len(server.requests) == n and all(not p.fallback for p in preds)
        assert server.max_in_flight == limit
        assert elapsed >= 3 * 0.3


def test_requests_of_one_image_count_against_the_limit():
    with StubChatServer(delay_s=0.3) as server:
        c = cfg(server, concurrency=4, references=(0, 1, 2), samples=3, temperature=0.7, cache=False)
        predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip())
        assert len(server.requests) == 9 and server.max_in_flight == 4


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------


def _answers(preds):
    return [[(c.lat, c.lon, c.source) for c in p.candidates] for p in preds]


def test_rerun_is_served_from_the_cache(server, tmp_path):
    rng = np.random.default_rng(0)
    server.set_script(
        lambda req: json.dumps({"latitude": float(rng.uniform(-60, 60)), "longitude": float(rng.uniform(-170, 170))})
    )
    images = [noise_image(40, 30, i) for i in range(4)]
    c = cfg(server, references=(0, 2), samples=2, temperature=0.8)
    first = predict_rag(images, config=c, geoclip=one_geoclip(4))
    n = len(server.requests)
    assert n == 16
    files = list((tmp_path / "cache" / "llm").rglob("*.json"))
    assert len(files) == n
    server.reset()
    second = predict_rag(images, config=c, geoclip=one_geoclip(4))
    assert len(server.requests) == 0
    assert _answers(second) == _answers(first)
    assert Usage.total(p.llm.usage for p in second) == Usage(cached=16)

    # Anything that changes the request misses: temperature, model, image size, sample count.
    for changed in (dict(temperature=0.9), dict(model="other"), dict(image_max_side=32), dict(samples=3)):
        server.reset()
        predict_rag(
            images,
            config=cfg(server, **{**dict(references=(0, 2), samples=2, temperature=0.8), **changed}),
            geoclip=one_geoclip(4),
        )
        expected_new = 4 * 2 if changed == dict(samples=3) else 16  # samples 0, 1 are cached
        assert len(server.requests) == expected_new, changed


def test_cache_off_always_asks(server):
    c = cfg(server, cache=False)
    predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip())
    predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip())
    assert len(server.requests) == 2


def test_failures_are_not_cached(server):
    server.set_script([StubReply("down", status=500), StubReply(GOOD)])
    c = cfg(server, max_retries=0, concurrency=1)
    preds = predict_rag([noise_image(40, 30, 0), noise_image(40, 30, 1)], config=c, geoclip=one_geoclip(2))
    assert preds[0].fallback and not preds[1].fallback
    server.set_script(lambda req: GOOD)
    server.reset()
    preds = predict_rag([noise_image(40, 30, 0), noise_image(40, 30, 1)], config=c, geoclip=one_geoclip(2))
    assert len(server.requests) == 1 and not preds[0].fallback


def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(server, tmp_path):
    cache = ResponseCache(tmp_path / "c")
    c = cfg(server)
    client = LLMClient(c, cache=cache)
    predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip(), client=client)
    (entry,) = list((tmp_path / "c").rglob("*.json"))
    entry.write_text('{"key": "trunc')
    predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip(), client=LLMClient(c, cache=cache))
    assert len(server.requests) == 2
    assert json.loads(entry.read_text())["content"] == GOOD
    predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip(), client=LLMClient(c, cache=cache))
    assert len(server.requests) == 2


def test_cache_key_covers_request_identity(tmp_path):
    enc = encode_image(noise_image(64, 48), 512)
    c = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m")
    k = LLMClient(c, cache=ResponseCache(tmp_path)).key
    base = k("prompt", enc, 0)
    assert base == k("prompt", enc, 0)
    assert len({base, k("prompt!", enc, 0), k("prompt", enc, 1), k("prompt", encode_image(noise_image(64, 48, 1), 512), 0)}) == 4
    other = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m2"), cache=ResponseCache(tmp_path)).key
    assert other("prompt", enc, 0) != base


# ------------------------------------------------------------------------------------------------
# Misc
# ------------------------------------------------------------------------------------------------


def test_sync_api_works_inside_a_running_event_loop(server):
    async def inside():
        return predict_rag([noise_image(40, 30)], config=cfg(server), geoclip=one_geoclip())

    preds = asyncio.run(inside())
    assert not preds[0].fallback


def test_ask_outside_context_manager_is_a_clear_error(server):
    client = LLMClient(cfg(server))
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(client.ask("p", encode_image(noise_image(8, 8)), 0))


@pytest.mark.parametrize(
    "bad",
    [
        dict(timeout_s=0),
        dict(max_retries=-1),
        dict(concurrency=0),
        dict(temperature=2.5),
        dict(samples=0),
        dict(samples=2, temperature=0.0),
        dict(references=()),
        dict(references=(-1,)),
        dict(nearest=-1),
        dict(farthest=-2),
        dict(image_max_side=8),
        dict(max_tokens=0),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ParameterError) as e:
        LLMConfig(**bad)
    (field,) = e.value.params
    assert field in bad  # the field the error names is one of those set
    assert isinstance(e.value, ValueError) and e.value.hint == f"set {field} accordingly"
    # The CLI shows the field as its --llm-* flag.
    from geofast.cli import as_flags

    assert as_flags(e.value.hint, e.value.params).startswith("set --llm-")


def test_presets():
    assert LLMConfig.img2loc().references == (16,) and LLMConfig.img2loc().nearest == 16
    assert LLMConfig.img2loc().farthest == 16 and LLMConfig.img2loc().samples == 1
    assert LLMConfig.g3().references == (0, 5, 10, 15) and LLMConfig.g3().samples >= 2
    assert LLMConfig(references=[3, 4]).references == (3, 4)


def test_image_loading_errors_are_per_image(server, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    images = [noise_image(40, 30), str(tmp_path / "missing.jpg"), str(bad)]
    preds = predict_rag(images, config=cfg(server), geoclip=one_geoclip(3))
    assert preds[0].ok and not preds[0].fallback
    # The messages are geofast.images.load_image's.
    assert "missing.jpg" in preds[1].error and "no such file" in preds[1].error
    assert "broken.jpg" in preds[2].error and "not an image" in preds[2].error
    assert len(server.requests) == 1


def test_data_url_roundtrip():
    enc = encode_image(noise_image(700, 100), 350, quality=80)
    head, data = enc.data_url.split(",", 1)
    assert head == "data:image/jpeg;base64"
    raw = base64.b64decode(data)
    assert raw == enc.jpeg
    with Image.open(io.BytesIO(raw)) as im:
        assert im.size == (350, 50) == (enc.width, enc.height)


def test_stub_in_a_child_process_answers_deterministically():
    from geofast.testing.openai_stub import StubChatProcess

    with StubChatProcess(delay_s=0.0) as proc:
        c = LLMConfig(base_url=proc.base_url, model="m", references=(0, 1), samples=1, cache=False)
        first = predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip())
        second = predict_rag([noise_image(40, 30)], config=c, geoclip=one_geoclip())
        assert proc.stats() == {"requests": 4, "max_in_flight": proc.stats()["max_in_flight"]}
        assert 1 <= proc.stats()["max_in_flight"] <= 2
        proc.reset()
        assert proc.stats()["requests"] == 0
        child = proc._proc
    assert _answers(first) == _answers(second) and not first[0].fallback
    assert child is not None and child.poll() is not None  # the child has exited


def test_content_as_a_list_of_text_parts(server):
    # Some servers answer with content parts instead of a string.
    completion = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Answer: "}, {"type": "text", "text": GOOD}],
                },
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    server.set_script(lambda req: StubReply(raw=completion))
    p = predict_rag([noise_image(40, 30)], config=cfg(server), geoclip=one_geoclip())[0]
    assert not p.fallback and (p.lat, p.lon) == (48.8566, 2.3522)
    assert p.llm.usage["total_tokens"] == 3
