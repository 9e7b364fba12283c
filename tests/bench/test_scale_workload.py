"""The growth benchmark's data generator, files and growth arithmetic (the measurements
themselves run under ``geofast bench --area scale``)."""

from __future__ import annotations

import numpy as np
from benches.harness import DEFAULT_AREAS
from benches.workloads import scale

from geofast import evaluate as ev


def test_synthetic_data_is_deterministic_clustered_and_normalised():
    gen = scale.Synthetic(0)
    e1, ll1 = gen.block(0, 5000)
    e2, ll2 = scale.Synthetic(0).block(0, 5000)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(ll1, ll2)
    assert e1.dtype == np.float16 and e1.shape == (5000, scale.DIM)
    np.testing.assert_allclose(np.linalg.norm(e1.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # Clustered content: every embedding is close to one of the centres (random 768-d vectors
    # would have a best cosine of about 0.15).
    best = (e1.astype(np.float32) @ gen.centres.T).max(axis=1)
    assert np.median(best) > 0.5
    # Clustered places: about 85 % within 100 km of a city centre (haversine, numpy).
    lat1, lon1 = np.radians(ll1[:, 0])[:, None], np.radians(ll1[:, 1])[:, None]
    lat2, lon2 = np.radians(gen.cities[:, 0])[None, :], np.radians(gen.cities[:, 1])[None, :]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    near = (2 * 6371.0 * np.arcsin(np.sqrt(h))).min(axis=1) < 100
    assert 0.8 < near.mean() < 0.92
    assert np.all(np.abs(ll1[:, 0]) <= 90) and np.all(np.abs(ll1[:, 1]) <= 180)


def test_predictions_file_reads_back(tmp_path):
    gen = scale.Synthetic(1)
    _, ll = gen.block(0, 70_000)  # more than one block
    scale.write_predictions_csv(tmp_path / "p.csv", ll)
    sf = ev.read_predictions(tmp_path / "p.csv")
    assert len(sf.images) + len(sf.failed) == 70_000 and 20 < len(sf.failed) < 150
    keep = np.ones(70_000, dtype=bool)
    keep[[int(name[7:15]) for name, _ in sf.failed]] = False
    np.testing.assert_array_equal(sf.truth, ll[keep])
    scale.write_source_csv(tmp_path / "s.csv", ll[:1000])
    assert (tmp_path / "s.csv").read_text().count("\n") == 1001


def test_growth_is_time_ratio_over_n_ratio(monkeypatch):
    monkeypatch.setattr(
        scale,
        "MEASURED",
        {
            1000: {
                "eval_scoring": {"seconds": 2.0, "maxrss_kb": 10},
                "ivf": {"4": {"per_image_s": 1e-3, "maxrss_kb": 5, "recall_at_10": 0.9}},
            },
            10_000: {
                "eval_scoring": {"seconds": 5.0, "maxrss_kb": 20},
                "ivf": {"4": {"per_image_s": 3e-3, "maxrss_kb": 5, "recall_at_10": 0.8}},
            },
        },
    )
    rows = {r["key"]: r for r in scale.growth_rows()}
    assert rows["eval_scoring"]["growth_vs_n"] == [(5.0 / 2.0) / 10]
    assert rows["ivf:4"]["growth_vs_n"][0] == (3e-3 / 1e-3) / 10
    assert rows["db_plan"]["growth_vs_n"] == [None]
    assert rows["eval_scoring"]["cells"][1]["peak_rss_bytes"] == 20 * 1024


def test_scale_runs_only_when_asked():
    assert "scale" not in DEFAULT_AREAS
