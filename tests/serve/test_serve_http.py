"""``geofast serve`` as a real process on loopback, over HTTP: the same JSON as ``geofast locate
--json``, start-up refusals, and a bounded load test (nothing lost, no 5xx but the documented
503, memory flat)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_support import cli_env, encoded, free_port, start_server, stop, uploads, with_name


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(geolocator, tiny_clip_dir, cache_dir):
    """A ``geofast serve`` subprocess with the tiny backbone; always terminated."""
    base, _port, proc = start_server(cache_dir, tiny_clip_dir)
    try:
        yield base, proc
    finally:
        stop(proc)


def test_http_answers_equal_geofast_locate_json(server, photo_dir, tiny_clip_dir, cache_dir):
    base, proc = server
    chosen = sorted(photo_dir.iterdir())[:4]
    r = httpx.post(base + "/v1/locate", files=uploads(chosen), data={"top_k": "4"}, timeout=60)
    assert r.status_code == 200, r.text
    cli = subprocess.run(
        [sys.executable, "-m", "geofast", "locate", *map(str, chosen), "--clip", str(tiny_clip_dir), "--json", "-k", "4"],
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    rows = json.loads(cli.stdout)
    assert r.json()["results"] == with_name(rows, [p.name for p in chosen])
    assert proc.poll() is None


@pytest.mark.slow
def test_load_nothing_lost_no_5xx_memory_flat(server, geolocator, tmp_path):
    """8 concurrent clients, 2,000 single-image requests (bounded in time): every answer is the
    one for the image sent, only 200 or a documented 503 (then retried), RSS flat."""
    base, proc = server
    images = []
    for i in range(16):
        rng = np.random.default_rng(100 + i)
        arr = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        path = tmp_path / f"load_{i:02d}.jpg"
        path.write_bytes(encoded(Image.fromarray(arr), "JPEG", quality=85))
        images.append(path)
    ref = {p.name: pred for p, pred in zip(images, geolocator.predict([str(p) for p in images], top_k=2))}
    payloads = {p.name: p.read_bytes() for p in images}

    total, clients, budget_s = 2_000, 8, 480.0
    counter = iter(range(total))
    lock = threading.Lock()
    done: list[int] = []
    statuses: dict[int, int] = {}
    problems: list[str] = []
    rss: dict[str, int] = {}
    t_end = time.monotonic() + budget_s

    def client() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while time.monotonic() < t_end:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name = images[k % len(images)].name
                for _attempt in range(20):
                    r = http.post("/v1/locate", files=[("images", (name, payloads[name], "image/jpeg"))], data={"top_k": "2"})
                    with lock:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 503:
                        break
                    time.sleep(min(1.0, float(r.headers.get("retry-after", "1"))))
                if r.status_code != 200:
                    problems.append(f"{k}: {r.status_code} {r.text[:200]}")
                    continue
                (row,) = r.json()["results"]
                want = ref[name]
                top = row["predictions"][0]
                if row["image"] != name or abs(top["prob"] - want.candidates[0].prob) > 1e-4 * want.candidates[0].prob:
                    problems.append(f"{k}: answer for {row['image']} does not match {name}")
                with lock:
                    done.append(k)
                    if len(done) == 500:
                        rss["after_500"] = rss_bytes(proc.pid)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(budget_s + 60)
    elapsed = time.monotonic() - t0
    rss["end"] = rss_bytes(proc.pid)
    assert not problems, problems[:5]
    assert sorted(done) == list(range(total)), f"{len(done)} of {total} answered in {elapsed:.0f} s"
    assert set(statuses) <= {200, 503}, statuses
    stats = httpx.get(base + "/v1/models", timeout=10).json()["batcher"]
    assert stats["served_requests"] >= total
    grow = rss["end"] - rss["after_500"]
    assert grow < 0.10 * rss["after_500"] + 24 * 2**20, {k: v / 2**20 for k, v in rss.items()}
    print(
        f"load: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s), statuses {statuses}, "
        f"RSS {rss['after_500'] / 2**20:.0f} → {rss['end'] / 2**20:.0f} MiB, mean batch {stats['recent_batch_images_mean']}"
    )


def test_refuses_non_loopback_without_key(cache_dir, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "geofast", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[0] == "error: refusing to listen on 0.0.0.0 without an API key", r.stderr
    assert len(lines) <= 2 and "--no-auth" in r.stderr and "GEOFAST_API_KEY" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.slow
def test_model_load_failure_stops_the_server_with_one_line(cache_dir, tmp_path):
    port = free_port()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geofast",
            "serve",
            "--clip",
            str(tmp_path / "no-such-clip"),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no-such-clip" in errors[0], r.stderr
