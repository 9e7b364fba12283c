"""Gallery files, regions and the embedding cache (atomic, verified, rebuilt when corrupt)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import geofast as gf
from geofast.gallery import EmbeddingCache, parse_region, read_gallery_file, region_mask


def test_read_csv_and_npy(tmp_path):
    pts = np.array([[48.85, 2.35], [-33.9, 151.2], [40.7, -74.0]])
    (tmp_path / "a.csv").write_text("name,Latitude,Longitude\nparis,48.85,2.35\nsydney,-33.9,151.2\nnyc,40.7,-74.0\n")
    np.testing.assert_array_equal(read_gallery_file(tmp_path / "a.csv"), pts)
    (tmp_path / "b.csv").write_text("LAT,LON\n48.85,2.35\n-33.9,151.2\n40.7,-74.0\n")
    np.testing.assert_array_equal(read_gallery_file(tmp_path / "b.csv"), pts)
    np.save(tmp_path / "c.npy", pts)
    np.testing.assert_array_equal(read_gallery_file(tmp_path / "c.npy"), pts)


@pytest.mark.parametrize(
    "content,match",
    [
        ("x,y\n1,2\n", "needs latitude and longitude columns"),
        ("lat,lon\n", "no rows"),
        ("lat,lon\n95,0\n", "row 0 is out of range"),
        ("lat,lon\n1,2\nabc,3\n", "non-numeric"),
        ("lat,lon\n1,2\n,3\n", "row 1 is not finite"),
    ],
)
def test_bad_gallery_files(tmp_path, content, match):
    (tmp_path / "g.csv").write_text(content)
    with pytest.raises(gf.InputError, match=match):
        read_gallery_file(tmp_path / "g.csv")


def test_regions():
    assert parse_region(None) is None
    assert parse_region("35,-10,60,30") == (35.0, -10.0, 60.0, 30.0)
    for bad in ("1,2,3", "a,b,c,d", "60,0,35,10", "0,-200,10,10"):
        with pytest.raises(gf.InputError):
            parse_region(bad)
    pts = np.array([[0.0, 179.5], [0.0, -179.5], [0.0, 0.0], [10.0, 179.9]])
    np.testing.assert_array_equal(region_mask(pts, (-5, 170, 5, -170)), [True, True, False, False])
    np.testing.assert_array_equal(region_mask(pts, (-5, -1, 5, 1)), [False, False, True, False])


def _fake_encode(pts, advance):
    """A deterministic encoder for cache mechanics (the real one is tested against GeoCLIP elsewhere)."""
    rng = np.random.default_rng(int(abs(pts).sum() * 1000) % 2**32)
    out = rng.standard_normal((pts.shape[0], 512)).astype(np.float32)
    advance(pts.shape[0])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_cache_builds_once_verifies_and_rebuilds_when_corrupt(tmp_path):
    cache = EmbeddingCache(tmp_path / "galleries")
    pts = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    calls = []

    def enc(p, advance):
        calls.append(len(p))
        return _fake_encode(p, advance)

    a, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    assert built and calls == [3]
    assert not a.flags.writeable  # a read-only memory map
    a = np.array(a)  # the test rewrites the file in place below
    b, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    assert not built and calls == [3]
    np.testing.assert_array_equal(a, b)
    data, meta = cache.paths("m", cache.key("m", "w", pts, "f32"))
    assert json.loads(meta.read_text())["shape"] == [3, 512]
    assert not list(data.parent.glob(".*.tmp"))

    # Flip one byte in the data: verification fails, the entry is rebuilt.
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    c, built = cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)
    assert built and calls == [3, 3]
    np.testing.assert_array_equal(c, a)
    # Truncated file, missing sidecar: rebuilt too.
    data.write_bytes(data.read_bytes()[:100])
    assert cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)[1]
    meta.unlink()
    assert cache.get_or_build("m", "w", pts, "f32", enc, label="t", progress=False)[1]
    # Other weights, gallery or dtype: another entry.
    assert cache.get_or_build("m", "w2", pts, "f32", enc, label="t", progress=False)[1]
    d, built = cache.get_or_build("m", "w", pts, "f16", enc, label="t", progress=False)
    assert built and d.dtype == np.float16


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = EmbeddingCache(blocker / "galleries")
    with pytest.raises(gf.CacheError, match="cannot write the gallery cache"):
        cache.get_or_build("m", "w", np.array([[0.0, 0.0]]), "f32", _fake_encode, label="t", progress=False)


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "g")
    pts = np.array([[0.0, 0.0]])

    def boom(p, advance):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build("m", "w", pts, "f32", boom, label="t", progress=False)
    assert not (tmp_path / "g").exists() or not list((tmp_path / "g").iterdir())
