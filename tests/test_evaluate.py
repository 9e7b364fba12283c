"""Evaluation metrics against an independent geopy/numpy computation; resumable evaluation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from geopy.distance import geodesic as geopy_geodesic

import geofast as gf
from conftest import random_latlon
from geofast import evaluate as ev


def reference_metrics(truth, pred, radii, distance, strict):
    if distance == "geodesic":
        d = np.array([geopy_geodesic(tuple(t), tuple(p)).km for t, p in zip(truth, pred)])
    else:
        lat1, lon1, lat2, lon2 = map(np.radians, (truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1]))
        h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
        d = 2 * 6371.0 * np.arcsin(np.sqrt(h))
    acc = {f"{r:g}": 100.0 * np.mean(d < r if strict else d <= r) for r in radii}
    return d, acc, float(np.median(d)), float(np.mean(d)), float(np.mean(5000 * np.exp(-d / 1492.7)))


@pytest.mark.parametrize("distance", ["geodesic", "haversine"])
@pytest.mark.parametrize("strict", [False, True])
def test_metrics_equal_independent_reference(distance, strict):
    rng = np.random.default_rng(0)
    truth = random_latlon(600, 1)
    # Predictions at a spread of errors: metres to the antipode.
    scale = 10 ** rng.uniform(-3, 1.3, 600)
    pred = np.clip(truth + rng.normal(0, 1, truth.shape) * scale[:, None], [-90, -180], [90, 180])
    radii = (1, 25, 200, 750, 2500)
    m = ev.score(truth, pred, radii=radii, distance=distance, strict=strict)
    d, acc, med, mean, gs = reference_metrics(truth, pred, radii, distance, strict)
    assert m["n"] == 600 and m["distance"] == distance and m["strict"] is strict
    for k, v in acc.items():
        assert m["accuracy"][k] == pytest.approx(v, abs=1e-12)
    assert m["median_km"] == pytest.approx(med, rel=1e-9)
    assert m["mean_km"] == pytest.approx(mean, rel=1e-9)
    assert m["geoscore"] == pytest.approx(gs, rel=1e-9)


def test_points_exactly_on_a_radius():
    truth = random_latlon(50, 2)
    pred = random_latlon(50, 3)
    d = gf.geodesic(truth, pred)
    radii = sorted(d[:5].tolist())
    le = ev.score(truth, pred, radii=radii, strict=False)
    lt = ev.score(truth, pred, radii=radii, strict=True)
    for r in radii:
        k = f"{r:g}"
        assert le["counts"][k] == int(np.count_nonzero(d <= r))
        assert lt["counts"][k] == int(np.count_nonzero(d < r))
        assert le["counts"][k] == lt["counts"][k] + int(np.count_nonzero(d == r))
    # Identical points: error 0 counts within every radius, also strictly.
    same = ev.score(truth, truth, radii=(1,), strict=True)
    assert same["accuracy"]["1"] == 100.0 and same["median_km"] == 0.0


def test_localizable_split():
    truth = random_latlon(100, 4)
    pred = truth + 0.01
    pred[:, 0] = np.clip(pred[:, 0], -90, 90)
    pred[:, 1] = np.where(pred[:, 1] > 180, pred[:, 1] - 360, pred[:, 1])
    conf = np.linspace(0, 1, 100)
    conf[:3] = np.nan
    m = ev.score(truth, pred, confidence=conf)
    assert m["localizable"]["n"] == int(np.sum(conf[3:] > 0.2))
    assert m["non_localizable"]["n"] == 97 - m["localizable"]["n"]


def test_dataset_layouts(tmp_path):
    (tmp_path / "im2gps3k.csv").write_text("IMG_ID,AUTHOR,LAT,LON,S3_Label\n1_a.jpg,x,48.85,2.35,3\n2_b.jpg,y,-33.9,151.2,5\n")
    ds = ev.read_dataset(tmp_path / "im2gps3k.csv")
    assert ds.images == ["1_a.jpg", "2_b.jpg"]
    np.testing.assert_array_equal(ds.latlon, [[48.85, 2.35], [-33.9, 151.2]])
    (tmp_path / "plain.csv").write_text("image,lat,lon\na.jpg,1,2\n")
    assert ev.read_dataset(tmp_path / "plain.csv").images == ["a.jpg"]
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(gf.InputError, match="needs an image column"):
        ev.read_dataset(tmp_path / "bad.csv")
    (tmp_path / "range.csv").write_text("image,lat,lon\na.jpg,100,2\n")
    with pytest.raises(gf.CoordinateError):
        ev.read_dataset(tmp_path / "range.csv")


def test_prediction_log_drops_a_partial_last_line(tmp_path):
    log = ev.PredictionLog.open(tmp_path / "p.csv")
    log.append([{"image": "a", "lat": 1, "lon": 2, "pred_lat": 1, "pred_lon": 2}])
    with open(tmp_path / "p.csv", "a") as f:
        f.write("b,3,4,3.0")  # a crash mid-row
    again = ev.PredictionLog.open(tmp_path / "p.csv")
    assert "a" in again.done and len(again.done) == 1
    assert (tmp_path / "p.csv").read_text().endswith("\n")


def _cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "geofast", "eval", *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


def test_cli_scores_a_predictions_file(tmp_path):
    truth = random_latlon(40, 5)
    pred = random_latlon(40, 6)
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "lat", "lon", "pred_lat", "pred_lon", "error"])
        for i, (t, p) in enumerate(zip(truth, pred)):
            w.writerow([f"i{i}", *t, *p, ""])
        w.writerow(["broken", 1, 2, "", "", "unreadable"])
    r = _cli("--predictions", tmp_path / "p.csv", "--json", "--radii", "100,5000", "--plot", tmp_path / "cdf.png")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    ref = ev.score(truth, pred, radii=(100, 5000))
    assert m["accuracy"] == ref["accuracy"] and m["n"] == 40 and m["failed"] == 1
    assert (tmp_path / "cdf.png").read_bytes()[:4] == b"\x89PNG"
    r = _cli("--predictions", tmp_path / "p.csv")
    assert r.returncode == 0 and "GeoScore" in r.stdout
    r = _cli("--predictions", tmp_path / "nope.csv")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--predictions", tmp_path / "p.csv", "--radii", "a,b")
    assert r.returncode == 1 and "--radii" in r.stderr


@pytest.mark.slow
def test_resumed_eval_equals_uninterrupted(tmp_path, tiny_clip_dir, cache_dir, photo_dir, geolocator):
    names = sorted(p.name for p in photo_dir.iterdir())[:10]
    truth = random_latlon(10, 7)
    rows = [f"{n},{t[0]},{t[1]}" for n, t in zip(names, truth)] + ["missing.jpg,0,0"]
    (tmp_path / "full.csv").write_text("image,lat,lon\n" + "\n".join(rows) + "\n")
    (tmp_path / "half.csv").write_text("image,lat,lon\n" + "\n".join(rows[:5]) + "\n")
    env = {"GEOFAST_CACHE": str(cache_dir)}
    common = ["--images", photo_dir, "--clip", tiny_clip_dir, "--json", "--batch-size", "4"]
    r1 = _cli(tmp_path / "half.csv", "--out", tmp_path / "resumed.csv", *common, env_extra=env)
    assert r1.returncode == 0, r1.stderr
    r2 = _cli(tmp_path / "full.csv", "--out", tmp_path / "resumed.csv", *common, env_extra=env)
    r3 = _cli(tmp_path / "full.csv", "--out", tmp_path / "straight.csv", *common, env_extra=env)
    assert r2.returncode == 0 and r3.returncode == 0, r2.stderr + r3.stderr
    a, b = json.loads(r2.stdout), json.loads(r3.stdout)
    assert a == b
    assert a["n"] == 10 and a["failed"] == 1 and "missing.jpg" in a["failed_images"][0]["image"]
    # The predictions equal the library's.
    preds = geolocator.predict([str(photo_dir / n) for n in names], top_k=5, places=False)
    rows = list(csv.DictReader(open(tmp_path / "straight.csv")))
    got = {r["image"]: (float(r["pred_lat"]), float(r["pred_lon"])) for r in rows if not r["error"]}
    for n, p in zip(names, preds):
        assert got[n] == pytest.approx((p.lat, p.lon), abs=1e-12)
