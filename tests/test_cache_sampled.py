"""The gallery cache's sampled verification on load and the full check on request."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from geofast.gallery import SAMPLE_BLOCK_BYTES, EmbeddingCache, sample_offsets, sample_sha256


def _encode(pts, advance):
    rng = np.random.default_rng(int(pts.shape[0]))
    out = rng.normal(size=(pts.shape[0], 512)).astype(np.float32)
    advance(pts.shape[0])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_sample_digest_is_sha256_of_the_listed_blocks(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3_000_001, dtype=np.uint8).tobytes()
    p = tmp_path / "f"
    p.write_bytes(data)
    offs = sample_offsets(len(data))
    assert offs[0] == 0 and offs[-1] == len(data) - SAMPLE_BLOCK_BYTES and len(offs) == 18
    ref = hashlib.sha256(str(len(data)).encode() + b"\0")
    for o in offs:
        ref.update(data[o : o + SAMPLE_BLOCK_BYTES])
    assert sample_sha256(p) == ref.hexdigest()
    small = tmp_path / "s"
    small.write_bytes(data[:1000])
    assert sample_sha256(small) == hashlib.sha256(b"1000\0" + data[:1000]).hexdigest()


def test_load_checks_the_sample_and_verify_checks_everything(tmp_path):
    cache = EmbeddingCache(tmp_path / "galleries")
    pts = np.column_stack([np.linspace(-60, 60, 3000), np.linspace(-170, 170, 3000)])  # 6 MB of f32
    calls = []

    def enc(p, advance):
        calls.append(1)
        return _encode(p, advance)

    ref, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    ref = np.array(ref)
    key = cache.key("m", "w", pts, "f32")
    data, meta = cache.paths("m", key)
    size = data.stat().st_size
    assert json.loads(meta.read_text())["sample_sha256"] == sample_sha256(data)
    offs = sample_offsets(size)

    # A byte in a sampled interior block: detected on a plain load, rebuilt.
    _flip(data, offs[5] + 123)
    assert cache.load("m", key, 3000, 512, "f32") is None
    got, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    assert built and len(calls) == 2
    np.testing.assert_array_equal(got, ref)

    # A byte in the .npy header: detected, rebuilt.
    _flip(data, 20)
    got, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    assert built and len(calls) == 3
    np.testing.assert_array_equal(got, ref)

    # A byte outside every sampled block: a plain load does not see it (documented); the full
    # verification does and rebuilds.
    gap = next(o + SAMPLE_BLOCK_BYTES + 1000 for o, nxt in zip(offs, offs[1:]) if nxt - o > 2 * SAMPLE_BLOCK_BYTES)
    assert all(not (o <= gap < o + SAMPLE_BLOCK_BYTES) for o in offs)
    _flip(data, gap)
    assert cache.load("m", key, 3000, 512, "f32") is not None
    assert cache.load("m", key, 3000, 512, "f32", verify=True) is None
    got, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False, verify=True)
    assert built and len(calls) == 4
    np.testing.assert_array_equal(got, ref)
    assert cache.load("m", key, 3000, 512, "f32", verify=True) is not None


def test_legacy_entry_without_sample_digest_is_fully_checked(tmp_path):
    cache = EmbeddingCache(tmp_path / "galleries")
    pts = np.column_stack([np.linspace(-60, 60, 3000), np.linspace(-170, 170, 3000)])
    cache.get_or_build("m", "w", pts, "f32", _encode, label="t", progress=False)
    key = cache.key("m", "w", pts, "f32")
    data, meta = cache.paths("m", key)
    m = json.loads(meta.read_text())
    del m["sample_sha256"]
    meta.write_text(json.dumps(m))
    assert cache.load("m", key, 3000, 512, "f32") is not None
    offs = sample_offsets(data.stat().st_size)
    gap = next(o + SAMPLE_BLOCK_BYTES + 10 for o, nxt in zip(offs, offs[1:]) if nxt - o > 2 * SAMPLE_BLOCK_BYTES)
    _flip(data, gap)
    assert cache.load("m", key, 3000, 512, "f32") is None
