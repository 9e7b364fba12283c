"""Training runs end to end on a synthetic world: learning, fine-tuning, resume, the run folder as a model.

The world (geofast.train.synthetic) gives each photo a CLIP-like feature that is a fixed random
smooth function of its location plus noise; independent checks recompute predictions with the
plain-torch reference heads (benches/reference.py) and distances with numpy.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from benches.reference import numpy_haversine, reference_location, reference_logits, reference_params

import geofast as gf
from geofast.train import TrainConfig, synthetic, train
from geofast.train.data import load_data
from geofast.train.module import TrainableHeads, initial_model
from geofast.train.run import evaluate

EUROPE = (35.0, -10.0, 60.0, 30.0)
WORLD = synthetic.World(seed=7)


def reference_predictions(state: dict, gallery: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Top-1 gallery point of each feature row with the plain-torch reference heads."""
    with torch.no_grad():
        logits = reference_logits(reference_params(state), torch.from_numpy(feats), gallery)
    return gallery[logits.argmax(dim=1).numpy()]


def make_db(path: Path, latlon: np.ndarray, seed: int) -> Path:
    synthetic.make_database(path, latlon, world=WORLD, seed=seed)
    return path


@pytest.fixture(scope="module")
def world_dbs(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    train_ll = synthetic.sample_points(2400, 1)
    val_ll = synthetic.sample_points(300, 2)
    return {
        "root": root,
        "train": make_db(root / "train.db", train_ll, 11),
        "val": make_db(root / "val.db", val_ll, 12),
        "small": make_db(root / "small.db", synthetic.sample_points(480, 6), 13),
    }


@pytest.mark.slow
def test_training_from_scratch_learns_the_world(world_dbs, tmp_path):
    result = train(
        db=world_dbs["train"],
        val=world_dbs["val"],
        out=tmp_path / "run",
        init="scratch",
        epochs=4,
        batch_size=64,
        queue_size=32,
        lr=1e-3,
    )
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    last = rows[-1]
    # Chance: a random gallery point is within 750 km of a random point on Earth ~1% of the time.
    assert last["acc_750km"] >= 50.0, last
    assert last["median_km"] < 1000.0, last
    # The reported metrics are what the saved model predicts (independent reference heads + numpy).
    from safetensors.torch import load_file

    model = result.run_dir / "model"
    state = load_file(str(model / "model.safetensors"))
    gallery = np.loadtxt(model / "gallery.csv", delimiter=",", skiprows=1)
    db = gf.Database.open(world_dbs["val"])
    feats = np.asarray(db.embeddings, dtype=np.float32) * np.asarray(db.norms)[:, None]
    pred = reference_predictions(state, gallery, feats)
    d = numpy_haversine(np.asarray(db.latlon), pred)
    best = result.best
    assert abs(100.0 * np.mean(d <= 750.0) - best["acc_750km"]) <= 1.0
    assert abs(np.median(d) - best["median_km"]) / best["median_km"] < 0.05
    # The untrained model (epoch 0) is far worse: the improvement is learned, not given.
    untrained = TrainableHeads(*_scratch())
    before = evaluate(untrained, gallery, feats, np.asarray(db.latlon))
    assert before["accuracy"]["750"] < 15.0 and before["median_km"] > 3 * last["median_km"]


def _scratch():
    start = initial_model("scratch", (), seed=0)
    return start.state, start.sigmas


@pytest.mark.slow
def test_fine_tuning_geoclip_on_a_region_beats_untrained_geoclip(tmp_path):
    inside = synthetic.sample_points(1500, 3, region=EUROPE)
    world_ll = np.concatenate([inside, synthetic.sample_points(1500, 4)])
    train_db = make_db(tmp_path / "train.db", world_ll, 21)
    val_db = make_db(tmp_path / "val.db", synthetic.sample_points(300, 5, region=EUROPE), 22)
    result = train(
        db=train_db,
        val=val_db,
        out=tmp_path / "run",
        init="geoclip",
        region=EUROPE,
        epochs=3,
        batch_size=64,
        queue_size=64,
        lr=2e-4,
    )
    data = load_data(TrainConfig(db=train_db, val=val_db, out=tmp_path / "x", region=EUROPE))
    lat, lon = world_ll[:, 0], world_ll[:, 1]
    assert (
        len(data.train)
        == result.data["train_rows"]
        == int(np.count_nonzero((lat >= 35) & (lat <= 60) & (lon >= -10) & (lon <= 30)))
    )
    gallery = data.gallery
    assert np.all((gallery[:, 0] >= 35) & (gallery[:, 0] <= 60) & (gallery[:, 1] >= -10) & (gallery[:, 1] <= 30))
    feats = data.val.features(np.arange(len(data.val)))
    start = initial_model("geoclip", (), seed=0)
    untrained = evaluate(TrainableHeads(start.state, start.sigmas), gallery, feats, data.val.latlon)
    tuned = result.best
    assert tuned["median_km"] < 0.6 * untrained["median_km"], (tuned, untrained)
    assert tuned["acc_200km"] > untrained["accuracy"]["200"] + 10.0, (tuned, untrained)


def test_new_capsules_start_silent_and_frozen_parts_stay_fixed(world_dbs, tmp_path):
    start = initial_model("geoclip", (4096.0,), seed=0)
    assert start.sigmas == (1.0, 16.0, 256.0, 4096.0)
    plain = initial_model("geoclip", (), seed=0)
    pts = synthetic.sample_points(50, 9)
    grown, base = TrainableHeads(start.state, start.sigmas), TrainableHeads(plain.state, plain.sigmas)
    np.testing.assert_array_equal(grown.location.encode(pts), base.location.encode(pts))  # zero output layer at first
    b = start.state["location_encoder.LocEnc3.capsule.0.b"].numpy()
    assert 0.7 * 4096 < b.std() < 1.3 * 4096  # B ~ N(0, σ²)

    result = train(
        db=world_dbs["small"],
        out=tmp_path / "run",
        init="geoclip",
        add_sigmas=(4096.0,),
        freeze_image=True,
        freeze_capsules=(0, 2),
        epochs=1,
        batch_size=240,
        queue_size=32,
        lr=1e-3,
        val_fraction=0.0,
    )
    rel = gf.LocationEncoder.from_pretrained(result.run_dir)
    assert rel.sigmas == (1.0, 16.0, 256.0, 4096.0)
    from safetensors.torch import load_file

    after = load_file(str(result.run_dir / "model" / "model.safetensors"))
    for key, before in start.state.items():
        same = torch.equal(after[key], before.float())
        frozen = key.startswith("image_encoder.") or ".LocEnc0." in key or ".LocEnc2." in key or key.endswith("capsule.0.b")
        assert same == frozen, key


def _run(out: Path, db: Path, **extra):
    cfg = dict(
        db=db,
        out=out,
        init="geoclip",
        epochs=2,
        batch_size=100,
        queue_size=150,
        lr=1e-4,
        val_fraction=0.1,
        checkpoint_every_steps=2,
    )
    cfg.update(extra)
    return train(**cfg)


def _same_run(a: Path, b: Path) -> None:
    ca = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert ca["global_step"] == cb["global_step"] and (ca["epoch"], ca["batch"]) == (cb["epoch"], cb["batch"])
    for k in ca["model"]:
        np.testing.assert_allclose(ca["model"][k].numpy(), cb["model"][k].numpy(), rtol=0, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(ca["queue"]["gps"].numpy(), cb["queue"]["gps"].numpy())
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        np.testing.assert_allclose(sa["exp_avg_sq"].numpy(), sb["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-14)
    keys = ("epoch", "step", "loss", "lr", "val_n", "acc_750km", "median_km", "geoscore")
    for ra, rb in zip(ca["metrics"], cb["metrics"]):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-9), k


@pytest.mark.slow
def test_resume_after_a_crash_continues_as_if_never_stopped(world_dbs, tmp_path):
    db = world_dbs["small"]
    whole = _run(tmp_path / "whole", db)
    n_train = len(load_data(TrainConfig(db=db, out=tmp_path / "x", val_fraction=0.1, batch_size=100)).train)
    assert n_train == 432 and whole.global_step == 2 * math.ceil(n_train / 100) == 10

    class Crash(Exception):
        pass

    def crash(info):
        if info.global_step == 9:  # epoch 2, batch 4, after the checkpoint of step 8
            raise Crash

    with pytest.raises(Crash):
        _run(tmp_path / "cut", db, on_step=crash)
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["batch"]) == (8, 1, 3)
    with pytest.raises(gf.TrainingError, match="already holds a training run"):
        _run(tmp_path / "cut", db)
    resumed = _run(tmp_path / "cut", db, resume=True)
    assert resumed.resumed and resumed.global_step == whole.global_step
    _same_run(tmp_path / "whole", tmp_path / "cut")
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 2
    # More epochs on resume: continues from the end; other settings are refused.
    with pytest.raises(gf.TrainingError, match="other settings"):
        _run(tmp_path / "cut", db, resume=True, lr=1e-3)
    more = _run(tmp_path / "cut", db, resume=True, epochs=3)
    assert more.epochs == 3 and more.global_step == 15


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from geofast.train import train
    def die(info):
        if info.global_step == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    train(db=sys.argv[1], out=sys.argv[2], init="geoclip", epochs=2, batch_size=100, queue_size=150, lr=1e-4,
          val_fraction=0.1, checkpoint_every_steps=2, on_step=die)
    """
)


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(world_dbs, tmp_path):
    db = world_dbs["small"]
    _run(tmp_path / "whole", db)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(gf.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(db), str(tmp_path / "cut"), "7"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # killed after step 7, before its checkpoint: step 7 is replayed
    _run(tmp_path / "cut", db, resume=True)
    _same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.fixture(scope="module")
def small_run(world_dbs, tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "run"
    result = train(
        db=world_dbs["small"],
        val=world_dbs["val"],
        out=out,
        init="geoclip",
        epochs=2,
        batch_size=160,
        queue_size=32,
        lr=1e-4,
        gallery_size=400,
    )
    return result


def test_run_folder_layout_metrics_and_gallery(small_run, world_dbs):
    run = small_run.run_dir
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["config"]["batch_size"] == 160 and info["data"]["train_rows"] == 480
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    import csv

    with open(run / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in table] == [1, 2]
    assert float(table[1]["geoscore"]) == pytest.approx(rows[1]["geoscore"])
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "geoclip-geolocation" and config["format_version"] == 1 and config["sigma"] == [1, 16, 256]
    assert config["backbone"] == {"repo_id": "openai/clip-vit-large-patch14", "revision": "main"}
    gallery = np.loadtxt(run / "model" / "gallery.csv", delimiter=",", skiprows=1)
    assert gallery.shape == (400, 2) and np.unique(gallery, axis=0).shape[0] == 400
    train_ll = np.asarray(gf.Database.open(world_dbs["small"]).latlon)
    assert {tuple(p) for p in gallery.tolist()} <= {tuple(p) for p in train_ll.tolist()}
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.old"))


def test_the_run_is_a_model_for_locate_and_location_encoding(small_run, tiny_clip_dir, photo_dir, tmp_path):
    from safetensors.torch import load_file

    run = small_run.run_dir
    params = reference_params(load_file(str(run / "model" / "model.safetensors")))
    pts = synthetic.sample_points(20, 31)
    with torch.no_grad():
        raw = reference_location(params, pts)
    enc = gf.LocationEncoder.from_pretrained(run)
    np.testing.assert_allclose(enc.encode(pts), torch.nn.functional.normalize(raw, dim=1).numpy(), atol=2e-5)
    np.testing.assert_allclose(enc.encode(pts, normalize=False), raw.numpy(), rtol=1e-4, atol=1e-4)

    from PIL import Image

    loc = gf.Geolocator.from_pretrained(run, clip=tiny_clip_dir, cache_dir=tmp_path / "cache", progress=False)
    gallery = np.loadtxt(run / "model" / "gallery.csv", delimiter=",", skiprows=1)
    paths = sorted(str(p) for p in photo_dir.iterdir())[:4]
    preds = loc.predict(paths, top_k=3, places=False)
    emb = loc.backbone.encode(loc.backbone.preprocess([Image.open(p).convert("RGB") for p in paths]))
    with torch.no_grad():
        logits = reference_logits(params, emb, gallery)
    top = logits.softmax(dim=1).topk(3, dim=1)
    for p, idx, prob in zip(preds, top.indices.numpy(), top.values.numpy()):
        np.testing.assert_allclose([[c.lat, c.lon] for c in p.candidates], gallery[idx], atol=1e-9)
        np.testing.assert_allclose([c.prob for c in p.candidates], prob, atol=1e-4)


# -- bad input: one line each, nothing half-written -----------------------------------------------


def _cfg(db, out, **kw):
    base = dict(db=db, out=out, init="geoclip", epochs=1, batch_size=16, queue_size=16, val_fraction=0.0)
    base.update(kw)
    return base


def test_bad_databases(tmp_path, world_dbs):
    rng = np.random.default_rng(0)
    ll = synthetic.sample_points(40, 1)
    gf.Database.from_arrays(tmp_path / "d512", rng.standard_normal((40, 512)), ll)
    with pytest.raises(gf.DatabaseError, match="512-d embeddings; GeoCLIP's image head takes 768-d"):
        train(**_cfg(tmp_path / "d512", tmp_path / "r1"))
    gf.Database.from_arrays(tmp_path / "one", rng.standard_normal((1, 768)), ll[:1])
    with pytest.raises(gf.EmptyInputError, match="1 training row"):
        train(**_cfg(tmp_path / "one", tmp_path / "r2", batch_size=1))
    with pytest.raises(gf.EmptyInputError, match="too few"):
        train(**_cfg(tmp_path / "one", tmp_path / "r2", batch_size=1, val_fraction=0.5))
    emb = rng.standard_normal((40, 768)).astype(np.float32)
    emb[17, 3] = np.nan
    gf.Database.from_arrays(tmp_path / "nan", emb, ll, normalize=False, dtype="f32")
    with pytest.raises(gf.DatabaseError, match="row 17 is NaN"):
        train(**_cfg(tmp_path / "nan", tmp_path / "r3"))
    gf.Database.from_arrays(tmp_path / "ok", rng.standard_normal((40, 768)), ll)
    with pytest.raises(gf.ParameterError, match="batch size 41 is larger than the 40 training rows"):
        train(**_cfg(tmp_path / "ok", tmp_path / "r4", batch_size=41))
    with pytest.raises(gf.EmptyInputError, match="no rows inside the region"):
        train(**_cfg(tmp_path / "ok", tmp_path / "r5", region=(10.0, 10.0, 10.001, 10.001)))
    for name in ("r1", "r2", "r3", "r4", "r5"):
        assert not (tmp_path / name).exists() or not any((tmp_path / name).rglob("*.*")), name


def test_coordinates_out_of_range_are_refused(tmp_path):
    """A database whose coordinates were changed behind geofast's back (checksums updated too)."""
    from geofast.db.format import _npy_file_record

    ll = synthetic.sample_points(30, 1)
    gf.Database.from_arrays(tmp_path / "db", np.random.default_rng(0).standard_normal((30, 768)), ll)
    bad = ll.copy()
    bad[4, 0] = 95.0
    np.save(tmp_path / "db" / "coords.npy", bad)
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    manifest["files"]["coords.npy"] = _npy_file_record(tmp_path / "db" / "coords.npy")
    (tmp_path / "db" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(gf.DatabaseError, match="coordinates of row 4 are invalid"):
        train(**_cfg(tmp_path / "db", tmp_path / "run"))


def test_backbone_mismatch_is_refused(tmp_path, tiny_clip_dir, photo_dir):
    paths = sorted(photo_dir.iterdir())[:6]
    (tmp_path / "photos.csv").write_text("image,lat,lon\n" + "".join(f"{p},{10 + i},{20 + i}\n" for i, p in enumerate(paths)))
    gf.Database.build(tmp_path / "photos.csv", tmp_path / "db", clip=tiny_clip_dir, device="cpu")
    with pytest.raises(gf.DatabaseError, match="is not CLIP ViT-L/14"):
        train(**_cfg(tmp_path / "db", tmp_path / "run", batch_size=2))
    # From scratch any backbone is fine; a model trained on it then refuses another backbone.
    result = train(**_cfg(tmp_path / "db", tmp_path / "run2", init="scratch", batch_size=2))
    ll = synthetic.sample_points(8, 2)
    gf.Database.from_arrays(tmp_path / "other", np.random.default_rng(1).standard_normal((8, 768)), ll)
    m = json.loads((tmp_path / "other" / "manifest.json").read_text())
    m["backbone"]["probe"] = list(np.random.default_rng(2).standard_normal(768))
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(gf.DatabaseError, match="not with the backbone"):
        train(**_cfg(tmp_path / "other", tmp_path / "run3", init=str(result.run_dir), batch_size=2))


def test_run_folder_problems(tmp_path, world_dbs):
    (tmp_path / "file").write_text("x")
    with pytest.raises(gf.TrainingError, match="cannot write to the run folder"):
        train(**_cfg(world_dbs["val"], tmp_path / "file" / "run"))
    with pytest.raises(gf.TrainingError, match="is a file"):
        train(**_cfg(world_dbs["val"], tmp_path / "file"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(gf.TrainingError, match="not empty"):
        train(**_cfg(world_dbs["val"], tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_corrupt_checkpoint_on_resume(tmp_path, world_dbs):
    train(**_cfg(world_dbs["val"], tmp_path / "run", batch_size=100))
    model_before = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(gf.TrainingError, match="cannot read the checkpoint") as e:
        train(**_cfg(world_dbs["val"], tmp_path / "run", batch_size=100, resume=True, epochs=2))
    assert "delete" in e.value.hint and "\n" not in str(e.value)
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == model_before
    torch.save({"format": "something else"}, ckpt)
    with pytest.raises(gf.TrainingError, match="not a geofast training checkpoint"):
        train(**_cfg(world_dbs["val"], tmp_path / "run", batch_size=100, resume=True, epochs=2))


def test_lightning_missing(monkeypatch, tmp_path, world_dbs):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.fabric", None)
    with pytest.raises(gf.TrainingError, match="needs PyTorch Lightning") as e:
        train(**_cfg(world_dbs["val"], tmp_path / "run"))
    assert e.value.hint == "pip install 'geofast[train]'"
    assert not (tmp_path / "run").exists()


def test_bad_settings_fail_before_anything_is_opened(tmp_path):
    for kw, match in (
        ({"batch_size": 0}, "batch_size must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"add_sigmas": (-1.0,)}, "sigma"),
        ({"accelerator": "tpu"}, "accelerator"),
    ):
        with pytest.raises(gf.InputError, match=match):
            train(**_cfg(tmp_path / "nothing", tmp_path / "run", **kw))
    with pytest.raises(gf.InputError, match="capsule 5 does not exist"):
        from geofast.train.module import TrainableHeads as T

        s = initial_model("geoclip", (), 0)
        T(s.state, s.sigmas).freeze(capsules=(5,))
