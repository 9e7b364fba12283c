"""`--method rag` end to end with the real (tiny-CLIP) GeoCLIP encoder and a chat server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from geofast.llm import LLMConfig
from geofast.predict.rag import RagPredictor
from geofast.testing.openai_stub import StubChatServer


def _cli(*args, cache_dir, env_extra=None):
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    for var in ("GEOFAST_CLIP", "GEOFAST_LLM_API_KEY", "OPENAI_API_KEY", "GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL"):
        env.pop(var, None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "geofast", "locate", *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


def _verified(geolocator, image, cands):
    """Independent geo-verification: cosine of GeoCLIP location and image embeddings (numpy)."""
    img = geolocator.encode_images([image])[0].astype(np.float64)
    loc = geolocator.encode_locations(np.array([[c["lat"], c["lon"]] for c in cands])).astype(np.float64)
    return loc @ img / (np.linalg.norm(loc, axis=1) * np.linalg.norm(img))


@pytest.mark.slow
def test_library_rag_with_real_encoder(geolocator, photo_dir, tmp_path):
    img = str(sorted(photo_dir.iterdir())[0])
    answers = {"0": '{"latitude": 48.8566, "longitude": 2.3522}', "5": "Probably Kyoto, around 35.01°N, 135.77°E."}

    def script(req):
        refs = "5" if "proposes these coordinates" in req.prompt else "0"
        return answers[refs]

    with StubChatServer(script) as server:
        cfg = LLMConfig(base_url=server.base_url, model="stub", references=(0, 5), samples=1, cache=False)
        pred = RagPredictor(geolocator, config=cfg).predict([img], top_k=5)[0]
        assert len(server.requests) == 2
        geoclip_top = geolocator.predict([img], top_k=5, places=False)[0]
        # The GeoCLIP candidates are the references of the 5-reference prompt.
        for c in geoclip_top.candidates:
            assert (
                f"({c.lat:.4f}, {c.lon:.4f})"
                in server.requests[
                    [r.prompt for r in server.requests].index(next(r.prompt for r in server.requests if "proposes" in r.prompt))
                ].prompt
            )
    assert pred.method == "rag" and pred.error is None
    sources = [c.source for c in pred.candidates]
    assert "llm:p0s0" in sources and "llm:p5s0" in sources and sources.count("geoclip") == 5
    cands = [{"lat": c.lat, "lon": c.lon} for c in pred.candidates]
    ref_scores = _verified(geolocator, img, cands)
    np.testing.assert_allclose([c.score for c in pred.candidates], ref_scores, atol=1e-5)
    best = int(np.argmax(ref_scores))
    assert (pred.lat, pred.lon) == (pred.candidates[best].lat, pred.candidates[best].lon)
    assert pred.fallback == (not pred.candidates[best].source.startswith("llm"))
    assert pred.confidence == pytest.approx(geoclip_top.confidence)


@pytest.mark.slow
def test_cli_rag_json_cache_fallback_and_database(geolocator, tiny_clip_dir, cache_dir, photo_dir, tmp_path):
    images = sorted(photo_dir.iterdir())
    img = images[0]
    llm_cache = tmp_path / "cache"
    (llm_cache / "galleries").mkdir(parents=True)
    for f in (cache_dir / "galleries").iterdir():  # reuse the session's gallery embeddings
        os.symlink(f, llm_cache / "galleries" / f.name)
    with StubChatServer(lambda req: '{"latitude": -33.8688, "longitude": 151.2093}') as server:
        args = [
            img,
            "--method",
            "rag",
            "--clip",
            tiny_clip_dir,
            "--llm-base-url",
            server.base_url,
            "--llm-model",
            "stub",
            "--llm-references",
            "0,5",
            "--llm-samples",
            "1",
            "--json",
        ]
        r = _cli(*args, cache_dir=llm_cache)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)[0]
        assert out["method"] == "rag" and isinstance(out["fallback"], bool)
        assert {c["source"] for c in out["candidates"]} >= {"llm:p0s0", "llm:p5s0", "geoclip"}
        scores = _verified(geolocator, str(img), out["candidates"])
        np.testing.assert_allclose([c["score"] for c in out["candidates"]], scores, atol=1e-5)
        best = out["candidates"][int(np.argmax(scores))]
        assert (out["predictions"][0]["lat"], out["predictions"][0]["lon"]) == (best["lat"], best["lon"])
        assert "LLM usage:" in r.stderr
        n = len(server.requests)
        assert n == 2
        # A rerun pays nothing: every answer comes from the on-disk cache.
        r2 = _cli(*args, cache_dir=llm_cache)
        again = json.loads(r2.stdout)[0]
        assert r2.returncode == 0 and again["usage"]["requests"] == 0 and again["usage"]["cached"] == 2
        assert {k: v for k, v in again.items() if k != "usage"} == {k: v for k, v in out.items() if k != "usage"}
        assert len(server.requests) == n

        # Garbage answers: no LLM candidate, the retrieval answer is used and flagged.
        server.set_script(lambda req: "I cannot tell where this is.")
        r3 = _cli(*args, "--no-llm-cache", cache_dir=llm_cache)
        assert r3.returncode == 0, r3.stderr
        g = json.loads(r3.stdout)[0]
        assert g["fallback"] is True and all(not c["source"].startswith("llm") for c in g["candidates"])

        # With an image database the prompt holds the nearest database photos' coordinates.
        from geofast.db import Database

        rows = "\n".join(f"{p.name},{10 + i},{20 + i}" for i, p in enumerate(images[:8]))
        (photo_dir / "db.csv").write_text("image,lat,lon\n" + rows + "\n")
        try:
            Database.build(photo_dir / "db.csv", tmp_path / "db", clip=tiny_clip_dir, device="cpu", batch_size=4)
        finally:
            (photo_dir / "db.csv").unlink()
        server.reset()
        server.set_script(lambda req: '{"latitude": 10.0, "longitude": 20.0}')
        r4 = _cli(
            img,
            "--method",
            "rag",
            "--db",
            tmp_path / "db",
            "--clip",
            tiny_clip_dir,
            "--llm-base-url",
            server.base_url,
            "--llm-model",
            "stub",
            "--llm-recipe",
            "img2loc",
            "--llm-nearest",
            "3",
            "--llm-farthest",
            "2",
            "--json",
            cache_dir=llm_cache,
        )
        assert r4.returncode == 0, r4.stderr
        prompts = [q.prompt for q in server.requests]
        assert len(prompts) == 1 and "(10.0000, 20.0000)" in prompts[0]  # the photo itself is its nearest neighbour
        assert "look very different" in prompts[0]
        x = json.loads(r4.stdout)[0]
        assert any(c["source"] == "db" for c in x["candidates"])
        # The prompt's database photos are in the output (the page's nearest and farthest layers),
        # equal to the database's own search of the photo's CLIP embedding.
        from geofast.images import load_image

        db = Database.open(tmp_path / "db")
        _, q = geolocator.embed_pil([load_image(img)], with_clip=True)
        sims, latlon, ids = db.search(q, 3)
        fsims, flatlon, fids = db.farthest(q, 2)
        assert [n["id"] for n in x["neighbours"]] == ids[0].tolist()
        assert [n["image"] for n in x["neighbours"]] == [m["image"] for m in db.meta(ids[0])]
        np.testing.assert_allclose([n["similarity"] for n in x["neighbours"]], sims[0], atol=1e-5)
        np.testing.assert_allclose([[n["lat"], n["lon"]] for n in x["neighbours"]], latlon[0], atol=1e-9)
        assert [n["id"] for n in x["farthest"]] == fids[0].tolist()
        assert [n["image"] for n in x["farthest"]] == [m["image"] for m in db.meta(fids[0])]
        np.testing.assert_allclose([n["similarity"] for n in x["farthest"]], fsims[0], atol=1e-5)
        np.testing.assert_allclose([[n["lat"], n["lon"]] for n in x["farthest"]], flatlon[0], atol=1e-9)


def test_cli_rag_errors(tmp_path, photo_dir):
    img = sorted(photo_dir.iterdir())[0]
    r = _cli(img, "--method", "rag", cache_dir=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: no API key for https://api.openai.com/v1" in r.stderr and "GEOFAST_LLM_API_KEY" in r.stderr
    r = _cli(img, "--method", "rag", "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-references", "a", cache_dir=tmp_path)
    assert r.returncode == 1 and "--llm-references" in r.stderr
    r = _cli(
        img,
        "--method",
        "rag",
        "--llm-base-url",
        "http://127.0.0.1:9/v1",
        "--llm-samples",
        "3",
        "--llm-temperature",
        "0",
        cache_dir=tmp_path,
    )
    assert r.returncode == 1 and "temperature" in r.stderr
