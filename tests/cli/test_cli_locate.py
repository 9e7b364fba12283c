"""`geofast locate` end to end: JSON/table/GeoJSON/map output, bad files, options, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import geofast as gf
from browser_support import embedded_data
from conftest import make_photo


def run_cli(*args, cache_dir, extra_env=None):
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    env.pop("GEOFAST_CLIP", None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", "locate", *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    make_photo(d / "good1.jpg", seed=10)
    make_photo(d / "good2.png", seed=11, size=(200, 300))
    Image.new("CMYK", (64, 64), (10, 200, 30, 5)).save(d / "cmyk.jpg")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(d / "gray16.png")
    Image.new("RGBA", (64, 64), (200, 10, 10, 128)).save(d / "alpha.png")
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    (d / "zero.jpg").write_bytes(b"")
    (d / "notimage.jpg").write_text("hello")
    data = (d / "good1.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    Image.new("L", (5000, 5000)).save(d / "bomb.png")
    return d


@pytest.mark.slow
def test_json_output_and_per_image_errors(geolocator, tiny_clip_dir, cache_dir, mixed_dir):
    r = run_cli(
        mixed_dir,
        "--clip",
        tiny_clip_dir,
        "--json",
        "--top-k",
        "3",
        cache_dir=cache_dir,
        extra_env={"GEOFAST_MAX_IMAGE_PIXELS": "20000000"},
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    rows = json.loads(r.stdout)
    by_name = {os.path.basename(x["image"]): x for x in rows}
    assert len(rows) == 11
    ok = ["good1.jpg", "good2.png", "cmyk.jpg", "gray16.png", "alpha.png", "anim.gif"]
    bad = {
        "zero.jpg": "empty file",
        "notimage.jpg": "not an image",
        "truncated.jpg": "truncated",
        "corrupt.png": "",
        "bomb.png": "decompression bomb",
    }
    for name in ok:
        x = by_name[name]
        assert set(x) == {"image", "predictions", "confidence", "localizable"}
        assert len(x["predictions"]) == 3
        probs = [p["prob"] for p in x["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert all(set(p) == {"lat", "lon", "prob", "place"} for p in x["predictions"])
        assert isinstance(x["predictions"][0]["place"], str) and x["predictions"][0]["place"]
        assert 0 <= x["confidence"] <= 1 and x["localizable"] == (x["confidence"] > 0.2)
    for name, text in bad.items():
        assert set(by_name[name]) == {"image", "error"}
        assert text in by_name[name]["error"]
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == len(bad)
    # The JSON equals the library's answer for the same image (the CLI ran it in a batch of six;
    # batch composition moves float32 CLIP outputs in the last bits, hence rtol on probabilities).
    lib = geolocator.predict([str(mixed_dir / "good1.jpg")], top_k=3)[0]
    got = by_name["good1.jpg"]["predictions"]
    np.testing.assert_array_equal([[p["lat"], p["lon"]] for p in got], [[c.lat, c.lon] for c in lib.candidates])
    np.testing.assert_allclose([p["prob"] for p in got], [c.prob for c in lib.candidates], rtol=1e-4)


@pytest.mark.slow
def test_table_geojson_map_region_gallery_and_swc(geolocator, tiny_clip_dir, cache_dir, photo_dir, tmp_path):
    img = sorted(photo_dir.iterdir())[0]
    gj, html = tmp_path / "out" / "p.geojson", tmp_path / "out" / "m.html"
    r = run_cli(img, "--clip", tiny_clip_dir, "--geojson", gj, "--map", html, cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "rank" in r.stdout and "probability" in r.stdout and "PD25" in r.stdout
    feats = json.loads(gj.read_text())["features"]
    lib = geolocator.predict([str(img)], top_k=5)[0]
    assert feats[0]["geometry"]["coordinates"] == [lib.lon, lib.lat]
    embedded = embedded_data(html.read_text())["results"][0]["predictions"]
    assert [[x["lat"], x["lon"]] for x in embedded] == [[c.lat, c.lon] for c in lib.candidates]

    # --region: every candidate inside the box.
    r = run_cli(img, "--clip", tiny_clip_dir, "--json", "--region", "35,-10,60,30", "--top-k", "10", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)[0]["predictions"]
    assert all(35 <= p["lat"] <= 60 and -10 <= p["lon"] <= 30 for p in preds)

    # --gallery: candidates come from the user's points.
    pts = gf.fibonacci_lattice(500.0, (30, -20, 60, 40))
    np.savetxt(tmp_path / "g.csv", pts, delimiter=",", header="lat,lon", comments="")
    r = run_cli(img, "--clip", tiny_clip_dir, "--json", "--gallery", tmp_path / "g.csv", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    got = np.array([[p["lat"], p["lon"]] for p in json.loads(r.stdout)[0]["predictions"]])
    assert np.min(np.abs(got[:, None, :] - pts[None]).max(axis=2), axis=1).max() < 1e-9

    # --method swc: the answer is the SwC centroid over the candidates.
    r = run_cli(img, "--clip", tiny_clip_dir, "--json", "--method", "swc", "--eps-km", "3000", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    x = json.loads(r.stdout)[0]
    assert x["method"] == "swc" and len(x["predictions"]) == 6
    lat, lon, members = gf.swc(
        np.array([[c.lat, c.lon] for c in lib.candidates]),
        np.array([c.prob for c in lib.candidates]),
        eps_km=3000,
        weight_exponent=1.0,
    )
    assert abs(x["predictions"][0]["lat"] - lat) < 1e-9 and abs(x["predictions"][0]["lon"] - lon) < 1e-9


@pytest.mark.slow
def test_missing_backbone_and_bad_options(tmp_path, photo_dir):
    img = sorted(photo_dir.iterdir())[0]
    env = {"HF_HOME": str(tmp_path / "hf")}
    r = run_cli(img, cache_dir=tmp_path, extra_env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("error: no CLIP backbone")
    assert lines[-1].startswith("hint:") and "--clip DIR" in lines[-1]
    r = run_cli(img, "--method", "magic", cache_dir=tmp_path, extra_env=env)
    assert r.returncode == 1 and "unknown --method 'magic'" in r.stderr
    r = run_cli(tmp_path / "nope.jpg", "--clip", tmp_path / "nodir", cache_dir=tmp_path)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(img, "--region", "1,2,3", cache_dir=tmp_path)
    assert r.returncode == 1 and "four numbers" in r.stderr
