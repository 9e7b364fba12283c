"""Benchmark workloads of ``geofast serve``: the HTTP server under a loopback load generator.

The server runs in this process (uvicorn in a background thread, the predictor loaded once and
shared by every server configuration); clients are threads with their own ``httpx.Client``,
each posting one image per request, so the GIL is shared — a conservative setting for the
server. Timed once each after a warm-up (full-size forward passes are slow on small machines):

* **8 clients vs the same server forced to batch 1** (``max_batch=1``): what micro-batching
  gains. Target ≥ 1.5×.
* **8 clients vs ``geofast locate``'s library call on a batch of the same images**
  (``Predictor.predict(paths, batch_size=16)``): what serving costs against a batch job.
  Target ≥ 0.9×. p50/p95 request latency in the agreement column.
* **server overhead per request** (tiny CLIP, sequential single-image requests of a 320×240
  JPEG, alternating with the library call on the same file): median request latency minus the
  median library call; target ≤ 10 ms (reported in the
  agreement column; the speed-up column is library time / request time).

Full mode: ViT-L/14 with random weights (as ``e2e``), GeoCLIP's 100K gallery, 16 images of
640×480. Quick mode: tiny CLIP, 5K gallery, 64 images.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benches.harness import Workload, quiet_libraries
from benches.workloads.e2e import QUICK_GALLERY, _photos, random_clip

CLIENTS = 8
FULL_IMAGES = 16
QUICK_IMAGES = 64
OVERHEAD_REQUESTS = 100


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``geofast serve``'s app on loopback in a background thread; stop() always ends it."""

    def __init__(self, predictor: Any, **settings: Any) -> None:
        import uvicorn

        from geofast.serve import ServeConfig, create_app

        self.port = _free_port()
        app = create_app(ServeConfig(port=self.port, **settings), predictor=predictor)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, name="bench-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        t_end = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > t_end or not self.thread.is_alive():
                self.stop()
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load(base: str, photos: list[Path], clients: int) -> tuple[float, list[float]]:
    """All ``photos`` posted one per request by ``clients`` threads: (wall seconds, latencies)."""
    import httpx

    payloads = [(p.name, p.read_bytes()) for p in photos]
    todo = iter(range(len(payloads)))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                name, data = payloads[k]
                t0 = time.perf_counter()
                r = http.post("/v1/locate", files=[("images", (name, data, "image/jpeg"))], data={"top_k": "5"})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200 or "error" in r.json()["results"][0]:
                        failures.append(f"{name}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        raise AssertionError(f"{len(failures)} requests failed: {failures[:3]}")
    return wall, latencies


def _pct(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, round(q * (len(ys) - 1))))]


def workloads(quick: bool) -> list[Workload]:
    state: dict[str, Any] = {}
    n_images = QUICK_IMAGES if quick else FULL_IMAGES
    size = f"tiny CLIP, {QUICK_GALLERY // 1000}K gallery" if quick else "ViT-L/14 (random weights)"

    def predictor_for(full_size: bool) -> Any:
        from geofast.gallery import read_gallery_file
        from geofast.models import resolve
        from geofast.predict.geoclip import GeoclipPredictor, Geolocator

        gallery = read_gallery_file(resolve("geoclip").default_gallery)[:QUICK_GALLERY] if quick else None
        with quiet_libraries():
            loc = Geolocator.from_pretrained(
                "geoclip", clip=random_clip(full_size), gallery=gallery, device="cpu", progress=False
            )
        return GeoclipPredictor(loc)

    def setup_throughput() -> dict[str, Any]:
        if "batched_s" in state:
            return state
        predictor = predictor_for(full_size=not quick)
        photos = _photos(n_images)
        predictor.predict(photos[:2], top_k=5, batch_size=16)  # warm: place index, allocator, threads
        # geofast locate's library call on a batch of the same images.
        t0 = time.perf_counter()
        predictor.predict(photos, top_k=5, batch_size=16)
        state["locate_s"] = time.perf_counter() - t0
        for key, max_batch in (("batched", 16), ("batch1", 1)):
            with LocalServer(predictor, max_batch=max_batch, max_wait_ms=10, queue_size=256, deadline_s=3600) as base:
                load(base, photos[:2], 2)  # warm-up: connections, worker, decode threads
                wall, lat = load(base, photos, CLIENTS)
            state[f"{key}_s"], state[f"{key}_lat"] = wall, lat
        state["photos"] = photos
        return state

    def setup_overhead() -> dict[str, Any]:
        if "overhead" in state:
            return state
        import httpx
        from PIL import Image

        predictor = predictor_for(full_size=False)
        photo = _photos(1)[0].with_name("overhead.jpg")
        Image.open(photo.with_name("p000.jpg")).resize((320, 240)).save(photo, quality=90)
        data = photo.read_bytes()
        predictor.predict([photo], top_k=5)
        lib: list[float] = []
        srv: list[float] = []
        with LocalServer(predictor, max_batch=16, max_wait_ms=0) as base, httpx.Client(base_url=base, timeout=60) as http:
            for i in range(OVERHEAD_REQUESTS + 5):
                t0 = time.perf_counter()
                predictor.predict([photo], top_k=5)
                t1 = time.perf_counter()
                r = http.post("/v1/locate", files=[("images", (photo.name, data, "image/jpeg"))], data={"top_k": "5"})
                t2 = time.perf_counter()
                if r.status_code != 200:
                    raise AssertionError(f"overhead request failed: {r.status_code} {r.text[:200]}")
                if i >= 5:  # the first requests warm the connection and the worker
                    lib.append(t1 - t0)
                    srv.append(t2 - t1)
        state["overhead"] = {"lib": statistics.median(lib), "srv": statistics.median(srv)}
        return state

    def latency_note(s: dict[str, Any], key: str) -> str:
        lat = s[f"{key}_lat"]
        return f"p50 {_pct(lat, 0.5):.2f} s, p95 {_pct(lat, 0.95):.2f} s; {len(lat) / s[f'{key}_s']:.2f} images/s"

    def throughput_vs_batch1(s: dict[str, Any], _g: Any, _a: Any) -> str:
        return f"batched {latency_note(s, 'batched')}; batch 1 {latency_note(s, 'batch1')}"

    def throughput_vs_locate(s: dict[str, Any], _g: Any, _a: Any) -> str:
        return f"serve {latency_note(s, 'batched')}; locate {n_images / s['locate_s']:.2f} images/s"

    def overhead_check(s: dict[str, Any], _g: Any, _a: Any) -> str:
        o = s["overhead"]
        extra_ms = (o["srv"] - o["lib"]) * 1000
        return f"overhead {extra_ms:.1f} ms/request (target ≤ 10 ms): request {o['srv'] * 1000:.1f} ms, library {o['lib'] * 1000:.1f} ms"

    return [
        Workload(
            name=f"serve {n_images} images, {CLIENTS} clients vs batch 1 [{size}]",
            kernel="serve",
            anchor="the same server with max_batch=1",
            setup=setup_throughput,
            run_geofast=lambda s: None,
            geofast_seconds=lambda s: float(s["batched_s"]),
            run_anchor=lambda s: None,
            anchor_seconds=lambda s: float(s["batch1_s"]),
            check=throughput_vs_batch1,
            target=None if quick else 1.5,
            note="one image per request; max_batch 16, max_wait 10 ms; timed once after a warm-up",
            repeat=1,
        ),
        Workload(
            name=f"serve {n_images} images, {CLIENTS} clients vs locate batch [{size}]",
            kernel="serve",
            anchor="Predictor.predict(paths, batch_size=16) (geofast locate's call)",
            setup=setup_throughput,
            run_geofast=lambda s: None,
            geofast_seconds=lambda s: float(s["batched_s"]),
            run_anchor=lambda s: None,
            anchor_seconds=lambda s: float(s["locate_s"]),
            check=throughput_vs_locate,
            target=None if quick else 0.9,
            note="speed-up ≥ 0.9 means the server reaches ≥ 90 % of the batch job's images/s",
            repeat=1,
        ),
        Workload(
            name=f"serve overhead per request [tiny CLIP{', 5K gallery' if quick else ', 100K gallery'}]",
            kernel="serve",
            anchor="the library call alone (Predictor.predict on the same image)",
            setup=setup_overhead,
            run_geofast=lambda s: None,
            geofast_seconds=lambda s: float(s["overhead"]["srv"]),
            run_anchor=lambda s: None,
            anchor_seconds=lambda s: float(s["overhead"]["lib"]),
            check=overhead_check,
            note=f"medians of {OVERHEAD_REQUESTS} sequential single-image requests; client in the same process",
            repeat=1,
        ),
    ]
