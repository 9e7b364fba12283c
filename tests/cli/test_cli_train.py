"""``geofast train`` / ``geofast export`` and ``--model RUN_DIR`` in ``locate`` / ``eval``, as users run them."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cli.test_cli_db import assert_clean_error, run_cli
from geofast.cli import main
from geofast.train import synthetic


@pytest.fixture(scope="module")
def small_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("clitrain")
    synthetic.make_database(root / "db", synthetic.sample_points(200, 1), seed=3)
    return root / "db"


@pytest.mark.slow
def test_train_export_locate_eval_from_the_command_line(small_db, tmp_path, tiny_clip_dir, photo_dir):
    run = tmp_path / "run"
    r = run_cli("train", "--db", small_db, "--out", run, "--epochs", "2", "--batch-size", "60", "--queue-size", "32",
                "--val-fraction", "0.1", "--lr", "1e-4", "--gallery-size", "100", "--json", cache_dir=tmp_path / "cache")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["epochs"] == 2 and summary["global_step"] == 6 and summary["world_size"] == 1
    assert [m["epoch"] for m in summary["metrics"]] == [1, 2] and summary["metrics"][0]["val_n"] == 20

    r = run_cli("export", run, "--out", tmp_path / "release", "--backbone", "openai/clip-vit-large-patch14@abc123", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["gallery_points"] == 100 and report["backbone"] == {
        "repo_id": "openai/clip-vit-large-patch14",
        "revision": "abc123",
    }
    config = json.loads((tmp_path / "release" / "config.json").read_text())
    assert config["backbone"]["revision"] == "abc123"

    image = sorted(photo_dir.iterdir())[0]
    r = run_cli("locate", image, "--model", run, "--clip", tiny_clip_dir, "--json", "--no-places", cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)[0]["predictions"][0]
    gallery = np.loadtxt(run / "model" / "gallery.csv", delimiter=",", skiprows=1)
    assert np.min(np.abs(gallery - [pred["lat"], pred["lon"]]).max(axis=1)) < 1e-9  # a point of the run's gallery

    names = sorted(p.name for p in photo_dir.iterdir())[:4]
    (tmp_path / "bench.csv").write_text("image,lat,lon\n" + "".join(f"{n},{10 * i},{20 * i}\n" for i, n in enumerate(names)))
    r = run_cli("eval", tmp_path / "bench.csv", "--images", photo_dir, "--model", run, "--clip", tiny_clip_dir,
                "--out", tmp_path / "pred.csv", "--json", cache_dir=tmp_path / "cache")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 4


@pytest.mark.slow
def test_cli_errors_are_one_line(small_db, tmp_path):
    r = run_cli("train", "--db", small_db, "--out", tmp_path / "run", "--batch-size", "5000")
    assert_clean_error(r, "batch size 5000 is larger than the 190 training rows")
    r = run_cli("train", "--db", tmp_path / "nope", "--out", tmp_path / "run")
    assert_clean_error(r, "does not exist")
    assert not (tmp_path / "run").exists()
    r = run_cli("export", tmp_path / "nothing-here", "--out", tmp_path / "x")
    assert_clean_error(r, "unknown model")


def test_lightning_missing_is_one_line(small_db, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.fabric", None)
    monkeypatch.delenv("GEOFAST_DEBUG", raising=False)
    code = main(["train", "--db", str(small_db), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["error: training needs PyTorch Lightning, which is not installed", "hint: pip install 'geofast[train]'"]


def test_bad_numbers_in_lists(small_db, tmp_path, capsys):
    code = main(["train", "--db", str(small_db), "--out", str(tmp_path / "run"), "--freeze-capsules", "0,x"])
    assert code == 1 and "--freeze-capsules '0,x' must be whole numbers" in capsys.readouterr().err
