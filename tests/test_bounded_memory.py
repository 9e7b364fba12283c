"""Bounded-memory versions of prediction density and RAG geo-verification against the unchunked
numpy formulas (float64) they replace."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_latlon
from geofast.predict.geoclip import GalleryData, prediction_density
from geofast.predict.rag import RagInput, verify_scores
from geofast.predict.types import Candidate
from llm_support import SphereEncoder


def numpy_pd(query, top1, latlon, emb, scale, lse, radius_km=25.0):
    """The unchunked formula: the whole (B, N) haversine matrix (R = 6371.0088 km) at once."""
    lat1, lon1 = np.radians(top1[:, 0])[:, None], np.radians(top1[:, 1])[:, None]
    lat2, lon2 = np.radians(latlon[:, 0])[None, :], np.radians(latlon[:, 1])[None, :]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    dist = 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    logits = scale * (query.astype(np.float64) @ emb.astype(np.float64).T) - lse[:, None]
    return np.minimum((np.exp(logits) * (dist <= radius_km)).sum(axis=1), 1.0)


def make_gallery(n, dim=32, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    # Clustered points so that many fall within 25 km of each other.
    centres = random_latlon(20, seed + 1)
    latlon = centres[rng.integers(0, 20, n)] + rng.normal(0, 0.1, (n, 2))
    latlon[:, 0] = np.clip(latlon[:, 0], -90, 90)
    latlon[:, 1] = (latlon[:, 1] + 180) % 360 - 180
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return GalleryData(latlon=latlon, embeddings=emb.astype(dtype), label="test", search=None)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_prediction_density_in_blocks_equals_the_full_matrix(dtype):
    gal = make_gallery(3000, dtype=dtype)
    rng = np.random.default_rng(5)
    q = rng.normal(size=(37, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scale = 30.0
    logits = scale * (q.astype(np.float64) @ gal.embeddings.astype(np.float64).T)
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    top1 = gal.latlon[np.argmax(logits, axis=1)]
    ref = numpy_pd(q, top1, gal.latlon, gal.embeddings, scale, lse)
    assert (ref > 0.01).sum() > 10  # the reference is not trivially zero
    whole = prediction_density(q, top1, gal, scale, lse, block_bytes=1 << 40)
    np.testing.assert_allclose(whole, ref, rtol=1e-5, atol=1e-9)
    for block in (1, 8 * 3000 * 5, 8 * 3000 * 36):  # one query, 5 queries, uneven last block
        np.testing.assert_array_equal(prediction_density(q, top1, gal, scale, lse, block_bytes=block), whole)


def test_prediction_density_memory_does_not_grow_with_the_batch():
    import tracemalloc

    gal = make_gallery(20_000)
    rng = np.random.default_rng(6)
    peaks = []
    for b in (50, 500):
        q = rng.normal(size=(b, 32)).astype(np.float32)
        top1 = gal.latlon[rng.integers(0, 20_000, b)]
        lse = np.full(b, 10.0)
        tracemalloc.start()
        prediction_density(q, top1, gal, 1.0, lse, block_bytes=8 * 20_000 * 16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # The unchunked matrix would be 8 MB for 50 queries and 80 MB for 500.
    assert peaks[1] < peaks[0] * 1.5 + (1 << 20)
    assert peaks[1] < 8 * 20_000 * 500 / 4


def test_verification_in_blocks_equals_float64_all_at_once():
    enc = SphereEncoder(dim=48, seed=2)
    rng = np.random.default_rng(3)
    inputs, per_image = [], []
    for i in range(40):
        n = int(rng.integers(0, 12))
        pts = random_latlon(n, 100 + i) if n else np.zeros((0, 2))
        per_image.append([Candidate(float(a), float(b)) for a, b in pts])
        e = rng.normal(size=48)
        inputs.append(RagInput(image=None, name=f"i{i}", embedding=(e / np.linalg.norm(e)).astype(np.float32)))  # type: ignore[arg-type]
    # Reference: every candidate of every image encoded at once, cosines in float64.
    flat = np.array([(c.lat, c.lon) for cands in per_image for c in cands])
    loc = enc.encode_locations(flat).astype(np.float64)
    ref, start = [], 0
    for inp, cands in zip(inputs, per_image):
        part = loc[start : start + len(cands)]
        start += len(cands)
        img = inp.embedding.astype(np.float64)
        ref.append(part @ img / (np.linalg.norm(part, axis=1) * np.linalg.norm(img)) if cands else None)
    sizes = []
    orig = enc.encode_locations

    def counting(x):
        sizes.append(len(x))
        return orig(x)

    enc.encode_locations = counting  # type: ignore[method-assign]
    for block in (1, 7, 25, 10_000):
        sizes.clear()
        got = verify_scores(inputs, per_image, enc, block=block)
        for g, r in zip(got, ref):
            if r is None:
                assert g is None
            else:
                np.testing.assert_allclose(g, r, rtol=0, atol=1e-6)
        # Never more than the block per call, unless a single image has more candidates.
        assert max(sizes) <= max(block, max(len(c) for c in per_image))
        assert sum(sizes) == len(flat)
