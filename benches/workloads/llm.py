"""Benchmark workloads of the RAG/LLM stage against a local chat server (geofast.testing.openai_stub).

- **overhead, cached**: a rerun where every answer comes from the on-disk cache: what is left is
  geofast's own work around the LLM call (image downscale + JPEG, prompt building, cache
  look-ups, parsing, geo-verification, the event loop). Target ≤ 20 ms per image.
- **overhead vs bare openai**: the full stage against a zero-delay stub vs the same requests,
  prebuilt, sent with a bare ``openai.AsyncOpenAI`` at the same concurrency; the difference of
  their CPU time per image is geofast's overhead (image downscale + JPEG included). CPU time,
  because wall time on a shared 2-core machine varies by ±50 % from run to run.
- **concurrency**: 32 images (one request each) against a stub that answers after a fixed delay,
  at concurrency 8 vs 1 (sequential, as Img2Loc's code did): the wall time should be ≈ 4
  delays, not 32 (target speed-up 6×; ideal 8×).

The stub server runs in a child process (as a real LLM server would: it does not share this
interpreter's GIL); its answers are a deterministic function of the request, so the check can
compare geofast's parsed candidates with the bare client's answers.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import weakref
from typing import Any

import numpy as np

from benches.harness import Workload

N_REQUESTS_PER_IMAGE = 8  # G3 plan: 4 prompts × 2 samples


class _State:
    """Workload state (any attributes); closes its stub server and temp folder when dropped."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.times: list[float] = []
        self.anchor_times: list[float] = []
        # CPU seconds of this process (threads included; the stub server is another process):
        # on a shared, loaded machine a far steadier measure of work than wall time.
        self.cpu: list[float] = []
        self.anchor_cpu: list[float] = []

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value


def _finalize(state: _State, server: Any, tmpdir: str | None) -> None:
    def cleanup() -> None:
        server.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    weakref.finalize(state, cleanup)


class _SphereEncoder:
    """A location encoder from real numbers (unit vectors through an orthonormal 3 → 512
    projection), standing in for GeoCLIP's so the benchmark needs no weights."""

    def __init__(self, dim: int = 512) -> None:
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, 3)))
        self.proj = q.T

    def encode_locations(self, latlon: np.ndarray) -> np.ndarray:
        lat = np.radians(latlon[:, 0])
        lon = np.radians(latlon[:, 1])
        xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
        out = xyz @ self.proj
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _photo_like(width: int, height: int, seed: int) -> Any:
    """A smooth image with sensor noise (JPEG behaves as on a photo, unlike white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 6, width)[None, :, None]
    y = np.linspace(0, 4, height)[:, None, None]
    f = rng.uniform(1, 3, (2, 3))
    arr = 127 + 60 * np.sin(x * f[0] + y * f[1]) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def _inputs(n: int, seed: int = 0) -> dict[str, Any]:
    from geofast.predict.types import Candidate, Prediction

    rng = np.random.default_rng(seed)
    images = [_photo_like(1024, 768, seed + i) for i in range(n)]
    enc = _SphereEncoder()
    truths = np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-179, 179, n)])
    emb = enc.encode_locations(truths)
    geoclip = []
    for i in range(n):
        pts = rng.uniform([-60, -179], [60, 179], (16, 2))
        probs = rng.dirichlet(np.ones(16))
        order = np.argsort(-probs)
        cands = [Candidate(float(pts[j, 0]), float(pts[j, 1]), prob=float(probs[j])) for j in order]
        geoclip.append(Prediction(image=f"img{i}.jpg", lat=cands[0].lat, lon=cands[0].lon, candidates=cands))
    return {"images": images, "encoder": enc, "emb": emb, "geoclip": geoclip}


def _run_rag(state: _State, cache_dir: str | None) -> list[Any]:
    from geofast.llm import LLMClient, ResponseCache
    from geofast.predict.rag import predict_rag

    client = LLMClient(state.config, cache=ResponseCache(cache_dir) if cache_dir else None)
    c0, t0 = time.process_time(), time.perf_counter()
    preds = predict_rag(
        state.images,
        config=state.config,
        geoclip=state.geoclip,
        image_embeddings=state.emb,
        encoder=state.encoder,
        client=client,
    )
    state.times.append(time.perf_counter() - t0)
    state.cpu.append(time.process_time() - c0)
    return preds


def _check_preds(state: _State, preds: list[Any]) -> None:
    for p in preds:
        if not p.ok or p.llm is None or p.llm.answers != state.per_image:
            raise AssertionError(f"{p.image}: expected {state.per_image} LLM answers, got {p.llm}")


def workloads(quick: bool) -> list[Workload]:
    n = 8 if quick else 32
    # Concurrency: the stub's delay is long enough that Python's per-request CPU cost is not the
    # measurement; quick mode halves the images (the sequential anchor waits a delay per image).
    n_conc, delay_s = (16 if quick else 32), 0.2

    # -- 1. cached rerun: geofast's own overhead ------------------------------------------------
    def setup_cached() -> _State:
        from geofast.llm import LLMConfig
        from geofast.testing.openai_stub import StubChatProcess

        server = StubChatProcess().start()
        tmp = tempfile.mkdtemp(prefix="geofast-bench-llm-")
        state = _State(
            server=server,
            tmp=tmp,
            per_image=N_REQUESTS_PER_IMAGE,
            config=LLMConfig.g3(base_url=server.base_url, model="stub", samples=2),
            **_inputs(n),
        )
        _finalize(state, server, tmp)
        _run_rag(state, tmp)  # fill the cache
        server.reset()
        state.times.clear()
        return state

    def check_cached(state: _State, ours: list[Any], _ref: Any) -> str:
        _check_preds(state, ours)
        sent = state.server.stats()["requests"]
        if sent:
            raise AssertionError(f"cached rerun sent {sent} requests")
        per_image_ms = min(state.times) / n * 1e3
        cpu_ms = min(state.cpu) / n * 1e3
        return f"{per_image_ms:.1f} ms/image wall, {cpu_ms:.1f} ms/image CPU (target ≤ 20), 0 requests"

    # -- 2. end-to-end vs bare openai calls -----------------------------------------------------
    def setup_e2e() -> _State:
        from geofast.llm import LLMClient, LLMConfig, encode_image, plan_prompts
        from geofast.predict.rag import build_inputs
        from geofast.testing.openai_stub import StubChatProcess

        server = StubChatProcess().start()
        config = LLMConfig.g3(base_url=server.base_url, model="stub", samples=2, cache=False)
        state = _State(server=server, per_image=N_REQUESTS_PER_IMAGE, config=config, **_inputs(n, seed=100))
        _finalize(state, server, None)
        client = LLMClient(config)
        inputs = build_inputs(state.images, config=config, geoclip=state.geoclip)
        jobs = []
        for i, inp in enumerate(inputs):
            enc = encode_image(inp.image, config.image_max_side)
            for spec in plan_prompts(inp.nearest, inp.farthest, config.references, inp.kind):
                for _ in range(config.samples):
                    jobs.append((i, client.messages(spec.text, enc)))
        state.jobs = jobs
        return state

    async def bare(state: _State) -> list[tuple[int, str]]:
        import openai

        cfg = state.config
        sem = asyncio.Semaphore(cfg.concurrency)
        from geofast.llm.client import _ssl_context

        # The same client settings as geofast's (incl. its reused TLS context), so the difference
        # is geofast's own work.
        async with openai.AsyncOpenAI(
            base_url=cfg.base_url,
            api_key="sk-none",
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
            http_client=openai.DefaultAsyncHttpxClient(verify=_ssl_context()),
        ) as client:

            async def one(i: int, messages: list[dict[str, Any]]) -> tuple[int, str]:
                async with sem:
                    r = await client.chat.completions.create(
                        model="stub",
                        messages=messages,  # type: ignore[arg-type]
                        temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens,
                    )
                return i, r.choices[0].message.content or ""

            return list(await asyncio.gather(*(one(i, m) for i, m in state.jobs)))

    def run_bare(state: _State) -> list[tuple[int, str]]:
        c0, t0 = time.process_time(), time.perf_counter()
        out = asyncio.run(bare(state))
        state.anchor_times.append(time.perf_counter() - t0)
        state.anchor_cpu.append(time.process_time() - c0)
        return out

    def check_e2e(state: _State, ours: list[Any], ref: list[tuple[int, str]]) -> str:
        from geofast.llm import parse_latlon

        _check_preds(state, ours)
        expected: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        for i, content in ref:
            ll = parse_latlon(content)
            assert ll is not None
            expected[i].append(ll)
        for p, exp in zip(ours, expected, strict=True):
            got = sorted((c.lat, c.lon) for c in p.candidates if c.source.startswith("llm"))
            if got != sorted(exp):
                raise AssertionError(f"{p.image}: geofast's answers differ from the bare client's")
        g, a = min(state.cpu), min(state.anchor_cpu)
        return (
            f"geofast CPU {(g - a) / n * 1e3:.1f} ms/image over the bare client "
            f"({g / n * 1e3:.1f} vs {a / n * 1e3:.1f}; target ≤ 20); answers identical"
        )

    # -- 3. concurrency ---------------------------------------------------------------------------
    def setup_conc() -> _State:
        from geofast.llm import LLMConfig
        from geofast.testing.openai_stub import StubChatProcess

        server = StubChatProcess(delay_s=delay_s).start()
        base: dict[str, Any] = dict(base_url=server.base_url, model="stub", references=(0,), samples=1, cache=False)
        state = _State(
            server=server,
            per_image=1,
            config=LLMConfig(concurrency=8, **base),
            sequential=LLMConfig(concurrency=1, **base),
            **_inputs(n_conc, seed=200),
        )
        state.encoder = None
        _finalize(state, server, None)
        return state

    def run_conc(state: _State) -> list[Any]:
        state.server.reset()
        preds = _run_rag(state, None)
        state.max_in_flight = state.server.stats()["max_in_flight"]
        return preds

    def run_seq(state: _State) -> list[Any]:
        from geofast.predict.rag import predict_rag

        state.server.reset()
        t0 = time.perf_counter()
        preds = predict_rag(state.images, config=state.sequential, geoclip=state.geoclip)
        state.anchor_times.append(time.perf_counter() - t0)
        state.seq_max_in_flight = state.server.stats()["max_in_flight"]
        return preds

    def check_conc(state: _State, ours: list[Any], ref: list[Any]) -> str:
        _check_preds(state, ours)
        if state.max_in_flight != 8 or state.seq_max_in_flight != 1:
            raise AssertionError(f"in flight: {state.max_in_flight} (want 8), {state.seq_max_in_flight} (want 1)")
        if [(p.lat, p.lon) for p in ours] != [(p.lat, p.lon) for p in ref]:
            raise AssertionError("concurrent and sequential runs disagree")
        g, a = min(state.times) / delay_s, min(state.anchor_times) / delay_s
        return (
            f"wall = {g:.2f} delays at concurrency 8 (ideal {n_conc // 8}), {a:.1f} sequential (ideal {n_conc}); max in flight 8"
        )

    return [
        Workload(
            name=f"rag overhead, {n} images × {N_REQUESTS_PER_IMAGE} requests, cached rerun",
            kernel="rag",
            anchor="-",
            setup=setup_cached,
            run_geofast=lambda s: _run_rag(s, s.tmp),
            run_anchor=None,
            check=check_cached,
            note="geofast time is for all images; the agreement column gives it per image",
            repeat=2 if quick else 5,
            extra={"images": n},
        ),
        Workload(
            name=f"rag vs bare openai, {n} images × {N_REQUESTS_PER_IMAGE} requests, zero-delay stub",
            kernel="rag",
            anchor="openai.AsyncOpenAI, same requests prebuilt",
            setup=setup_e2e,
            run_geofast=lambda s: _run_rag(s, None),
            run_anchor=run_bare,
            check=check_e2e,
            repeat=2 if quick else 5,
            extra={"images": n},
        ),
        Workload(
            name=f"rag {n_conc} images, concurrency 8, stub delay {delay_s * 1e3:.0f} ms",
            kernel="rag concurrency",
            anchor="the same at concurrency 1",
            setup=setup_conc,
            run_geofast=run_conc,
            run_anchor=run_seq,
            check=check_conc,
            target=6.0,
            repeat=1 if quick else 3,
            extra={"images": n_conc, "delay_s": delay_s},
        ),
    ]
