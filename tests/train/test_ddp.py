"""Data-parallel training: 2 CPU processes (gloo, launched by Lightning Fabric) equal 1 process.

The global batch is split over the ranks; the batch GPS of every rank are all-gathered before
they enter the queue. Checked: both ranks end with the same queue (its digest per rank is recorded
in run.json), that queue holds the last coordinates of every global batch (rank 1's half included,
computed independently from the batch order), and the weights equal a 1-process run of the same
global batches within float tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geofast.train import TrainConfig, synthetic, train
from geofast.train.data import epoch_order, global_batch, load_data

SETTINGS = dict(init="geoclip", epochs=2, batch_size=64, queue_size=96, lr=1e-4, val_fraction=0.0, seed=3)


def run_two_processes(db: Path, out: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "geofast", "train", "--db", str(db), "--out", str(out), "--devices", "2", "--accelerator", "cpu",
        "--init", "geoclip", "--epochs", "2", "--batch-size", "64", "--queue-size", "96", "--lr", "1e-4", "--val-fraction", "0",
        "--seed", "3", "--no-progress", "--json",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("GEOFAST_DEBUG", None)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out_s, err_s = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank it launched
        proc.communicate()
        pytest.fail(f"the 2-process run did not finish in {timeout_s} s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing may outlive the test
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, proc.returncode, out_s, err_s)


@pytest.mark.slow
def test_two_processes_equal_one_and_share_every_rank_s_samples(tmp_path):
    latlon = synthetic.sample_points(481, 8)  # 7 global batches of 64 + one of 33 (ranks get 16 and 17)
    db = tmp_path / "db"
    synthetic.make_database(db, latlon, seed=4)
    one = train(db=db, out=tmp_path / "one", **SETTINGS)
    r = run_two_processes(db, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # one JSON document: rank 1 prints nothing
    assert summary["world_size"] == 2 and summary["global_step"] == one.global_step == 16

    info_two = json.loads((tmp_path / "two" / "run.json").read_text())
    info_one = json.loads((tmp_path / "one" / "run.json").read_text())
    digests = info_two["queue_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1] == info_one["queue_sha256_per_rank"][0]

    c1 = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    c2 = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    # The queue holds the last 96 coordinates of the global batch sequence, both ranks' halves.
    data = load_data(TrainConfig(db=db, out=tmp_path / "x", **SETTINGS))
    seen = np.concatenate([data.train.latlon[global_batch(epoch_order(481, 3, e), b, 64)] for e in range(2) for b in range(8)])
    ring = c2["queue"]["gps"].numpy()
    ptr = c2["queue"]["ptr"]
    np.testing.assert_array_equal(np.roll(ring, -ptr, axis=0), seen[-96:])
    last = seen[-33:]
    assert len(last) == 33 and {tuple(p) for p in last[16:].tolist()} <= {tuple(p) for p in ring.tolist()}  # rank 1's slice
    np.testing.assert_array_equal(ring, c1["queue"]["gps"].numpy())
    # Same losses (all-reduced over the ranks) and the same weights up to float rounding, which
    # AdamW magnifies only on elements whose gradients are ~its eps: a small share of the movement.
    for a, b in zip(c1["metrics"], c2["metrics"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    from geofast.train.module import initial_model

    s0 = initial_model("geoclip", (), 3).state
    for k in c1["model"]:
        a, b = c1["model"][k].numpy(), c2["model"][k].numpy()
        moved = float(np.abs(a - s0[k].numpy()).mean())
        assert float(np.abs(a - b).mean()) <= 0.02 * moved + 1e-12, (k, float(np.abs(a - b).mean()), moved)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
