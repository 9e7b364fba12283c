"""The linear predictions reader, the name-only resume log and the hash join of eval, against
the straightforward per-row implementations they replace (csv module, geopy per row)."""

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


def reference_read(path):
    """The per-row reader: csv.DictReader, one float() per cell (the semantics of the old reader)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0]) if rows else []
    lower = {c.strip().lower(): c for c in cols}

    def col(*names):
        return next((lower[n] for n in names if n in lower), None)

    lat, lon = col("lat", "latitude", "gps_lat"), col("lon", "lng", "long", "longitude", "gps_lon")
    plat, plon = col("pred_lat", "predicted_lat", "lat_pred"), col("pred_lon", "predicted_lon", "lon_pred")
    img = col("image", "img_id", "img", "image_id", "filename", "file", "path", "id")
    conf, err = col("confidence", "pd25", "pd_25"), col("error")
    truth, pred, confs, images, failed = [], [], [], [], []
    for i, r in enumerate(rows):
        name = r[img] if img else str(i)
        e = r[err] if err else ""
        if e or r[plat] == "" or r[plon] == "":
            failed.append((name, e or "no prediction"))
            continue
        truth.append((float(r[lat]), float(r[lon])))
        pred.append((float(r[plat]), float(r[plon])))
        if conf:
            confs.append(float(r[conf]) if r[conf].strip() else float("nan"))
        images.append(name)
    return np.array(truth).reshape(-1, 2), np.array(pred).reshape(-1, 2), (np.array(confs) if conf else None), images, failed


def write_mixed(
    path, n, seed, *, header=("image", "lat", "lon", "pred_lat", "pred_lon", "prob", "confidence", "method", "error")
):
    rng = np.random.default_rng(seed)
    truth, pred = random_latlon(n, seed), random_latlon(n, seed + 1)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            kind = rng.integers(0, 10)
            row = {
                "image": f"dir/img {i},x.jpg" if kind == 1 else f"img{i}.jpg",
                "lat": repr(float(truth[i, 0])),
                "lon": f" {float(truth[i, 1])!r} " if kind == 2 else repr(float(truth[i, 1])),
                "pred_lat": repr(float(pred[i, 0])),
                "pred_lon": repr(float(pred[i, 1])),
                "prob": repr(float(rng.random())),
                "confidence": "" if kind == 3 else repr(float(rng.random())),
                "method": "geoclip",
                "error": "",
            }
            if kind == 4:
                row["error"] = f'img{i}.jpg: corrupt image (bad, "quoted"\nsecond line)'
                row["pred_lat"] = row["pred_lon"] = ""
            if kind == 5:
                row["pred_lon"] = ""
            w.writerow([row[h.lower()] if h.lower() in row else row[{"LAT": "lat", "LON": "lon"}.get(h, h)] for h in header])


@pytest.mark.parametrize("seed", [0, 1])
def test_reader_equals_per_row_reference(tmp_path, seed):
    path = tmp_path / "p.csv"
    write_mixed(path, 3000, seed)
    new = ev.read_predictions(path)
    truth, pred, conf, images, failed = reference_read(path)
    np.testing.assert_array_equal(new.truth, truth)
    np.testing.assert_array_equal(new.pred, pred)
    np.testing.assert_array_equal(new.confidence, conf)  # NaN == NaN for assert_array_equal
    assert new.images.tolist() == images
    assert new.failed == failed and len(failed) > 200
    m_new = ev.score(new.truth, new.pred, confidence=new.confidence)
    m_ref = ev.score(truth, pred, confidence=conf)
    assert m_new == m_ref


def test_reader_without_image_or_confidence_column(tmp_path):
    truth, pred = random_latlon(50, 7), random_latlon(50, 8)
    path = tmp_path / "p.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["LAT", "LON", "pred_lat", "pred_lon"])
        w.writerows([[*t, *p] for t, p in zip(truth.tolist(), pred.tolist())])
        w.writerow([1, 2, "", ""])
    new = ev.read_predictions(path)
    np.testing.assert_array_equal(new.truth, truth)
    np.testing.assert_array_equal(new.pred, pred)
    assert new.confidence is None and new.images.tolist() == [str(i) for i in range(50)]
    assert new.failed == [("50", "no prediction")]


def test_reader_names_a_non_numeric_cell(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image,lat,lon,pred_lat,pred_lon\na,1,2,3,4\nb,1,2,north,4\n")
    with pytest.raises(gf.InputError, match=r"non-numeric value 'north' in row 1"):
        ev.read_predictions(path)
    path.write_text("image,lat,lon,pred_lat,pred_lon\na,1,2,3,4\nb,1,2,95,4\n")
    with pytest.raises(gf.CoordinateError, match="row 1 is out of range"):
        ev.read_predictions(path)
    path.write_text("")
    with pytest.raises(gf.InputError, match="empty"):
        ev.read_predictions(path)


def test_cli_metrics_equal_geopy_per_row(tmp_path):
    path = tmp_path / "p.csv"
    write_mixed(path, 300, 3)
    truth, pred, conf, _images, failed = reference_read(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "geofast", "eval", "--predictions", str(path), "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    d = np.array([geopy_geodesic(tuple(t), tuple(p)).km for t, p in zip(truth, pred)])
    assert m["n"] == len(d) and m["failed"] == len(failed)
    for rad in (1, 25, 200, 750, 2500):
        assert m["accuracy"][f"{rad:g}"] == pytest.approx(100.0 * np.mean(d <= rad), abs=1e-9)
    assert m["median_km"] == pytest.approx(float(np.median(d)), rel=1e-9)
    assert m["mean_km"] == pytest.approx(float(np.mean(d)), rel=1e-9)
    assert m["geoscore"] == pytest.approx(float(np.mean(5000 * np.exp(-d / 1492.7))), rel=1e-9)
    known = np.isfinite(conf)
    assert m["localizable"]["n"] == int(np.sum(known & (conf > 0.2)))
    assert [f["image"] for f in m["failed_images"]] == [f[0] for f in failed]


def test_subset_is_the_per_row_filter(tmp_path):
    path = tmp_path / "p.csv"
    write_mixed(path, 2000, 4)
    full = ev.read_predictions(path)
    rng = np.random.default_rng(0)
    names = [f"img{i}.jpg" for i in rng.choice(2500, 900, replace=False)] + ["not-there.jpg"]
    sub = full.subset(names)
    wanted = set(names)
    keep = [i for i, n in enumerate(full.images.tolist()) if n in wanted]
    np.testing.assert_array_equal(sub.truth, full.truth[keep])
    np.testing.assert_array_equal(sub.pred, full.pred[keep])
    np.testing.assert_array_equal(sub.confidence, full.confidence[keep])
    assert sub.images.tolist() == [full.images[i] for i in keep]
    assert sub.failed == [f for f in full.failed if f[0] in wanted]


def test_name_set_matches_a_python_set():
    rng = np.random.default_rng(1)
    names = [f"photos/{rng.integers(0, 10**9)}_{i}.jpg" for i in range(200_000)]
    s = ev.NameSet()
    ref: set[str] = set()
    for start in range(0, 150_000, 7_000):
        s.add_many(names[start : start + 7_000])
        ref.update(names[start : start + 7_000])
    probe = names[140_000:160_000] + ["", "photos/x.jpg"]
    np.testing.assert_array_equal(s.contains_many(probe), [p in ref for p in probe])
    assert ("photos/x.jpg" in s) is False and (names[3] in s) is True
    assert len(s) == len(ref)
    assert s.nbytes <= 8 * len(ref)


def test_prediction_log_keeps_names_only_and_resumes(tmp_path):
    log = ev.PredictionLog.open(tmp_path / "p.csv")
    log.append([{"image": f"a{i}", "lat": 1, "lon": 2, "pred_lat": 1, "pred_lon": 2} for i in range(10)])
    log.append([{"image": "b,with comma", "lat": 1, "lon": 2, "error": "x"}])
    assert "a3" in log.done and "b,with comma" in log.done and "a10" not in log.done
    with open(tmp_path / "p.csv", "a") as f:
        f.write("c,3,4,3.0")  # a crash mid-row
    again = ev.PredictionLog.open(tmp_path / "p.csv")
    assert len(again.done) == 11 and "c" not in again.done and "b,with comma" in again.done
    assert (tmp_path / "p.csv").read_text().endswith("\n")
    # A file cut inside its header line is started afresh, with a header.
    (tmp_path / "q.csv").write_text("image,la")
    ev.PredictionLog.open(tmp_path / "q.csv")
    assert (tmp_path / "q.csv").read_text() == ",".join(ev.PREDICTION_FIELDS) + "\n"


def test_reader_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfimage,lat,lon,pred_lat,pred_lon\na,1,2,1.5,2.5\n")
    sf = ev.read_predictions(path)
    assert sf.images.tolist() == ["a"] and sf.truth.tolist() == [[1.0, 2.0]] and sf.pred.tolist() == [[1.5, 2.5]]
    assert ev.read_dataset(path).images == ["a"]


def test_blank_and_spaced_cells(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image,lat,lon,pred_lat,pred_lon,confidence\na, 1 ,2,3, 4,\nb,1,2,3,4, 0.5\n")
    sf = ev.read_predictions(path)
    assert sf.truth.tolist() == [[1.0, 2.0]] * 2 and sf.pred.tolist() == [[3.0, 4.0]] * 2
    assert np.isnan(sf.confidence[0]) and sf.confidence[1] == 0.5
    path.write_text("image,lat,lon,pred_lat,pred_lon,confidence\na,1,2,3,4,high\n")
    with pytest.raises(gf.InputError, match="non-numeric value 'high' in row 0"):
        ev.read_predictions(path)
    path.write_text("image,lat,lon,pred_lat,pred_lon\na,1,2, ,4\n")
    with pytest.raises(gf.InputError, match="non-numeric value ' ' in row 0"):
        ev.read_predictions(path)
