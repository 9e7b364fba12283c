"""The RAG orchestration: references from an image database (faiss as the reference search) or
GeoCLIP candidates, geo-verification against a numpy computation of the cosine similarities,
consensus ranking without an encoder, fallbacks and per-image errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics.pairwise import haversine_distances

from geofast.errors import ParameterError, ShapeError
from geofast.llm import LLMConfig
from geofast.predict.rag import build_inputs, geo_verify, predict_rag
from geofast.predict.types import Prediction
from geofast.testing.openai_stub import StubChatServer, StubReply
from llm_support import FaissDatabase, SphereEncoder, geoclip_prediction, noise_image, unit_vectors

COORD = re.compile(r"\((-?\d+\.\d{4}), (-?\d+\.\d{4})\)")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("GEOFAST_LLM_API_KEY", "OPENAI_API_KEY", "GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL", "GEOFAST_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEOFAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def server():
    with StubChatServer() as s:
        yield s


def answer(lat: float, lon: float) -> str:
    return json.dumps({"latitude": lat, "longitude": lon})


def random_places(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, n)))
    return np.column_stack([lat, rng.uniform(-180, 180, n)])


def make_database(n: int = 300, dim: int = 32, seed: int = 0) -> FaissDatabase:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return FaissDatabase(emb, random_places(n, seed + 1))


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------


def test_database_references_are_the_nearest_and_farthest_by_inner_product():
    db = make_database()
    rng = np.random.default_rng(5)
    q = rng.normal(size=(3, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cfg = LLMConfig(nearest=7, farthest=5)
    inputs = build_inputs([noise_image(8, 8)] * 3, config=cfg, image_embeddings=q, database=db)
    sims = q.astype(np.float64) @ db.embeddings.T.astype(np.float64)
    for b, inp in enumerate(inputs):
        near = np.argsort(-sims[b], kind="stable")[:7]
        far = np.argsort(sims[b], kind="stable")[:5]
        assert [(r.lat, r.lon) for r in inp.nearest] == [tuple(db.latlon[i]) for i in near]
        assert [(r.lat, r.lon) for r in inp.farthest] == [tuple(db.latlon[i]) for i in far]
        np.testing.assert_allclose([r.score for r in inp.nearest], sims[b, near], atol=1e-5)
        assert inp.kind == "database"
        assert [(c.lat, c.lon, c.source) for c in inp.retrieval] == [(r.lat, r.lon, "db") for r in inp.nearest]


def test_neighbour_counts_are_capped_by_database_size():
    db = make_database(n=4)
    q = db.embeddings[:1]
    inp = build_inputs([noise_image(8, 8)], config=LLMConfig(nearest=16, farthest=16), image_embeddings=q, database=db)[0]
    assert len(inp.nearest) == 4 and len(inp.farthest) == 4
    assert all(k == 4 for _, k in db.calls)


def test_img2loc_prompt_holds_16_nearest_and_16_farthest(server):
    db = make_database()
    q = db.embeddings[10:11] + 0.01
    q /= np.linalg.norm(q)
    cfg = LLMConfig.img2loc(base_url=server.base_url, model="m")
    predict_rag([noise_image(32, 32)], config=cfg, image_embeddings=q, database=db)
    assert len(server.requests) == 1
    prompt = server.requests[0].prompt
    similar, _, different = prompt.partition("look very different")
    sims = q.astype(np.float64) @ db.embeddings.T.astype(np.float64)
    near = np.argsort(-sims[0])[:16]
    far = np.argsort(sims[0])[:16]
    got_near = [(float(a), float(b)) for a, b in COORD.findall(similar)]
    got_far = [(float(a), float(b)) for a, b in COORD.findall(different)]
    assert got_near == [(round(db.latlon[i, 0], 4), round(db.latlon[i, 1], 4)) for i in near]
    assert got_far == [(round(db.latlon[i, 0], 4), round(db.latlon[i, 1], 4)) for i in far]


def test_g3_plan_with_database(server):
    db = make_database()
    q = db.embeddings[:2]
    cfg = LLMConfig.g3(base_url=server.base_url, model="m", samples=2)
    preds = predict_rag([noise_image(32, 32, 0), noise_image(32, 32, 1)], config=cfg, image_embeddings=q, database=db)
    assert len(server.requests) == 2 * 4 * 2
    counts = sorted(len(COORD.findall(r.prompt)) for r in server.requests)
    # prompt with r references holds r nearest + r farthest
    assert counts == sorted([0] * 4 + [10] * 4 + [20] * 4 + [30] * 4)
    assert {c.source for p in preds for c in p.candidates if c.source.startswith("llm")} == {
        f"llm:p{r}s{s}" for r in (0, 5, 10, 15) for s in (0, 1)
    }


def test_geoclip_candidates_as_references_without_database(server):
    g = [geoclip_prediction("x", [(1.25, 2.5), (3.75, 4.125)], [0.7, 0.3])]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(2,), samples=1)
    preds = predict_rag([noise_image(32, 32)], config=cfg, geoclip=g)
    prompt = server.requests[0].prompt
    assert "(1.2500, 2.5000) probability 0.700" in prompt and "(3.7500, 4.1250) probability 0.300" in prompt
    assert "look very different" not in prompt
    assert preds[0].image == "x"


# ------------------------------------------------------------------------------------------------
# Geo-verification
# ------------------------------------------------------------------------------------------------


def test_geo_verify_is_the_cosine_of_the_encoder_outputs():
    enc = SphereEncoder(dim=48, seed=3)
    img = np.random.default_rng(0).normal(size=48)
    pts = random_places(20, 4)
    ref = enc.encode_locations(pts).astype(np.float64)
    ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)) @ (img / np.linalg.norm(img))
    np.testing.assert_allclose(geo_verify(img, pts, enc), ref, rtol=0, atol=1e-6)  # float32 by design (bounded memory)


def test_verification_ranks_candidates_by_cosine_similarity(server):
    enc = SphereEncoder(dim=64, seed=1)
    truth = (41.9028, 12.4964)  # the photo is in Rome
    emb = enc.image_embedding(*truth, noise=0.02)[None, :]
    llm_answers = [(48.8566, 2.3522), (41.89, 12.49), (40.4168, -3.7038), (45.4642, 9.19)]
    server.set_script(lambda req: answer(*llm_answers[req.index % 4]))
    g = [geoclip_prediction("rome.jpg", [(52.52, 13.405), (50.1109, 8.6821), (59.3293, 18.0686)])]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0, 3), samples=2, temperature=0.7)
    enc.calls = 0
    p = predict_rag([noise_image(32, 32)], config=cfg, geoclip=g, image_embeddings=emb, encoder=enc)[0]
    assert enc.calls == 1  # one batched call for the whole run

    assert len(p.candidates) == 2 * 2 + 3
    pts = np.array([[c.lat, c.lon] for c in p.candidates])
    loc = enc.encode_locations(pts).astype(np.float64)
    e = emb[0].astype(np.float64)
    cos = (loc @ e) / (np.linalg.norm(loc, axis=1) * np.linalg.norm(e))
    np.testing.assert_allclose([c.score for c in p.candidates], cos, atol=1e-12)
    assert list(np.argsort(-cos, kind="stable")) == list(range(len(cos)))  # already in that order
    # With an inner-product-preserving encoder the best score is the candidate nearest the truth.
    d = haversine_distances(np.radians(pts), np.radians([truth]))[:, 0]
    assert (p.candidates[0].lat, p.candidates[0].lon) == tuple(pts[np.argmin(d)]) == (41.89, 12.49)
    assert (p.lat, p.lon) == (41.89, 12.49) and p.candidates[0].source.startswith("llm")
    assert not p.fallback and p.fallback_reason is None


def test_retrieval_candidate_that_verifies_better_wins_flagged(server):
    enc = SphereEncoder(dim=64, seed=2)
    truth = (-33.8688, 151.2093)
    emb = enc.image_embedding(*truth)[None, :]
    server.set_script(lambda req: answer(-37.8136, 144.9631))  # the LLM says Melbourne
    g = [geoclip_prediction("s.jpg", [(-33.87, 151.21), (-27.47, 153.03)])]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    p = predict_rag([noise_image(32, 32)], config=cfg, geoclip=g, image_embeddings=emb, encoder=enc)[0]
    assert (p.lat, p.lon) == (-33.87, 151.21) and p.prob == g[0].candidates[0].prob
    assert p.fallback and p.fallback_reason == "a retrieval candidate verified better"
    assert p.llm.answers == 1


def test_verification_batches_images_and_keeps_them_apart(server):
    enc = SphereEncoder(dim=32, seed=7)
    truths = random_places(5, 9)
    emb = np.stack([enc.image_embedding(*t) for t in truths])
    # Each image's LLM answer is its truth; the others' truths are its retrieval candidates.
    sizes = [(20 + i, 20) for i in range(5)]

    def script(req):
        from llm_support import jpeg_size

        i = sizes.index(jpeg_size(req.image_bytes())[1])
        return answer(*truths[i])

    server.set_script(script)
    g = [geoclip_prediction(f"i{i}", [tuple(truths[j]) for j in range(5) if j != i]) for i in range(5)]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    enc.calls = 0
    preds = predict_rag([noise_image(*s) for s in sizes], config=cfg, geoclip=g, image_embeddings=emb, encoder=enc)
    for i, p in enumerate(preds):
        assert (p.lat, p.lon) == tuple(truths[i]) and not p.fallback
        assert p.candidates[0].score == pytest.approx(1.0, abs=1e-6)
    assert enc.calls == 1


def test_without_encoder_llm_answers_are_ranked_by_agreement(server):
    answers = [(48.8566, 2.3522), (48.86, 2.35), (35.6762, 139.6503), (48.80, 2.30), (-33.87, 151.21)]
    server.set_script(lambda req: answer(*answers[req.index]))
    g = [geoclip_prediction("p", [(10.0, 10.0)])]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=5, temperature=1.0, concurrency=1)
    p = predict_rag([noise_image(32, 32)], config=cfg, geoclip=g)[0]
    llm = [c for c in p.candidates if c.source.startswith("llm")]
    assert [c.source for c in p.candidates][-1] == "geoclip" and all(c.score is None for c in p.candidates)
    pts = np.radians(np.array([[c.lat, c.lon] for c in llm]))
    total = haversine_distances(pts).sum(axis=1)
    assert list(total) == sorted(total)  # medoid first
    assert (p.lat, p.lon) in {(48.8566, 2.3522), (48.86, 2.35)} and not p.fallback
    # samples are named in order of the requests
    assert sorted(c.source for c in llm) == [f"llm:p0s{s}" for s in range(5)]


def test_database_retrieval_fallback_without_geoclip(server):
    db = make_database()
    q = db.embeddings[42:43]
    server.set_script(lambda req: "no idea")
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    p = predict_rag([noise_image(32, 32)], config=cfg, image_embeddings=q, database=db)[0]
    assert p.fallback and (p.lat, p.lon) == tuple(db.latlon[42])  # the nearest neighbour is itself
    assert p.candidates[0].source == "db"


# ------------------------------------------------------------------------------------------------
# Errors and bookkeeping
# ------------------------------------------------------------------------------------------------


def test_failed_geoclip_prediction_is_passed_through(server):
    g = [geoclip_prediction("ok", [(1.5, 2.5)]), Prediction(image="bad.jpg", error="cannot read image bad.jpg")]
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    preds = predict_rag([noise_image(32, 32), "bad.jpg"], config=cfg, geoclip=g)
    assert preds[0].ok and preds[1].error == "cannot read image bad.jpg" and preds[1].method == "rag"
    assert len(server.requests) == 1


def test_no_candidates_at_all_is_an_error_prediction(server):
    server.set_script(lambda req: "garbage")
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    p = predict_rag([noise_image(32, 32)], config=cfg)[0]
    assert not p.ok and p.fallback and p.lat is None


def test_progress_is_reported_per_image(server):
    seen: list[tuple[int, int]] = []
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    predict_rag(
        [noise_image(32, 32, i) for i in range(4)],
        config=cfg,
        progress=lambda d, t: seen.append((d, t)),
        geoclip=[geoclip_prediction("a", [(1.5, 2.5)])] * 4,
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_argument_errors():
    db = make_database()
    with pytest.raises(ParameterError, match="image_embeddings"):
        build_inputs([noise_image(8, 8)], database=db)
    with pytest.raises(ShapeError):
        build_inputs([noise_image(8, 8)] * 2, image_embeddings=np.zeros((3, 32)), database=db)
    with pytest.raises(ShapeError):
        build_inputs([noise_image(8, 8)], geoclip=[])
    with pytest.raises(ParameterError, match="NaN"):
        build_inputs([noise_image(8, 8)], image_embeddings=np.full((1, 32), np.nan), database=db)
    with pytest.raises(ParameterError, match="embedding"):
        predict_rag(
            [noise_image(8, 8)],
            config=LLMConfig(base_url="http://127.0.0.1:9/v1"),
            geoclip=[geoclip_prediction("a", [(1.5, 2.5)])],
            encoder=SphereEncoder(),
        )


def test_encoder_in_another_space_is_a_shape_error():
    enc = SphereEncoder(dim=16)
    with pytest.raises(ShapeError, match="do not match") as e:
        geo_verify(np.ones(8), np.array([[1.0, 2.0]]), enc)
    assert "same space" in (e.value.hint or "")
    assert unit_vectors(np.array([[0.0, 0.0]])).shape == (1, 3)


def test_bad_server_replies_do_not_break_other_images(server):
    # One image's requests get a body that is not a completion; the other image is unaffected.
    from llm_support import jpeg_size

    server.set_script(
        lambda req: StubReply(raw=b"<html>502</html>") if jpeg_size(req.image_bytes())[1] == (33, 33) else answer(12.5, 13.5)
    )
    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1, max_retries=0, concurrency=1)
    preds = predict_rag(
        [noise_image(32, 32), noise_image(33, 33)], config=cfg, geoclip=[geoclip_prediction("a", [(1.5, 2.5)])] * 2
    )
    assert (preds[0].lat, preds[0].lon) == (12.5, 13.5) and not preds[0].fallback
    assert preds[1].fallback and preds[1].llm.errors


def test_total_usage_sums_the_run(server):
    server.set_script(
        lambda req: StubReply(answer(1.5, 2.5), usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    )
    from geofast.predict.rag import total_usage

    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0, 1), samples=1)
    g = [geoclip_prediction("a", [(1.5, 2.5)])] * 3
    preds = predict_rag([noise_image(32, 32, i) for i in range(3)], config=cfg, geoclip=g)
    u = total_usage(preds)
    assert (u.requests, u.prompt_tokens, u.completion_tokens, u.total_tokens) == (6, 30, 12, 42)
    again = total_usage(predict_rag([noise_image(32, 32, i) for i in range(3)], config=cfg, geoclip=g))
    assert (again.requests, again.cached, again.total_tokens) == (0, 6, 0)


def test_a_failing_progress_callback_surfaces_as_its_own_error(server):
    def boom(done, total):
        raise KeyError("progress broke")

    cfg = LLMConfig(base_url=server.base_url, model="m", references=(0,), samples=1)
    with pytest.raises(KeyError, match="progress broke"):
        predict_rag([noise_image(32, 32)], config=cfg, geoclip=[geoclip_prediction("a", [(1.5, 2.5)])], progress=boom)
