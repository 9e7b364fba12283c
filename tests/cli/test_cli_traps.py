"""The traps a newcomer hit (issue 18), each through ``python -m geofast`` on a 4-point gallery
(so no 100K-point gallery is encoded): errors that name the flag typed, file names printed as
they are, text queries that fail alone, eval never resuming another method's predictions,
files that respect the umask, progress bars that are not cut."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_photo, make_tiny_clip

GALLERY = [(48.8566, 2.3522), (35.6762, 139.6503), (-33.8688, 151.2093), (40.7128, -74.0060)]


def run_cli(*args, cache_dir, umask: int | None = None, env: dict[str, str] | None = None):
    full = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "COLUMNS": "120", **(env or {})}
    full.pop("GEOFAST_CLIP", None)
    full.pop("GEOFAST_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        timeout=900,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("traps")
    with open(root / "gallery.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lat", "lon"])
        w.writerows(GALLERY)
    photos = root / "photos"
    photos.mkdir()
    for i, name in enumerate(["a.jpg", "img[red].jpg", "c.png"]):
        make_photo(photos / name, seed=40 + i)
    with open(root / "ds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "lat", "lon"])
        w.writerows([["a.jpg", 48.85, 2.35], ["c.png", 35.0, 139.0]])
    return root


def base(small, tiny_clip_dir):
    return ["--clip", tiny_clip_dir, "--gallery", small / "gallery.csv", "--no-places"]


@pytest.mark.slow
def test_top_k_beyond_the_gallery_names_the_flag(small, tiny_clip_dir, tmp_path):
    r = run_cli("locate", small / "photos" / "a.jpg", *base(small, tiny_clip_dir), "--top-k", "10", cache_dir=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "error: --top-k 10 is more than the 4 points of the gallery" in lines, r.stderr
    assert "hint: set --top-k to 4 or less" in lines
    assert "k must be between" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_file_names_with_brackets_print_as_written_and_progress_is_not_cut(small, tiny_clip_dir, tmp_path):
    r = run_cli("locate", small / "photos" / "img[red].jpg", *base(small, tiny_clip_dir), "--top-k", "2", cache_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{small / 'photos' / 'img[red].jpg'}  —  PD25 confidence" in r.stdout  # Rich used to print img.jpg
    # The gallery is encoded on this first run (stderr is a pipe, COLUMNS=120): the whole bar is there.
    # A label longer than the line wraps onto the next; nothing is shortened with "…".
    words = " ".join(r.stderr.split())
    assert "encoding gallery" in words and "(once; cached)" in words and "4/4 points 0:00:00 eta 0:00:00" in words, r.stderr
    assert "…" not in r.stderr


@pytest.mark.slow
def test_text_queries_without_tokenizer_fail_alone(small, tmp_path):
    clip = make_tiny_clip(tmp_path / "clip-no-tokenizer", with_tokenizer=False)
    r = run_cli(
        "locate", small / "photos" / "a.jpg", "--text", "a harbour", "--clip", clip, "--gallery", small / "gallery.csv",
        "--no-places", "--top-k", "4", "--json", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert [o["image"] for o in out] == [str(small / "photos" / "a.jpg"), "text: a harbour"]
    assert "error" not in out[0] and len(out[0]["predictions"]) == 4  # the photo is located
    assert out[1]["error"].startswith("text: a harbour: the CLIP backbone in") and "no tokenizer" in out[1]["error"]
    lines = r.stderr.strip().splitlines()
    hint = lines[lines.index(f"error: {out[1]['error']}") + 1]
    assert hint.startswith("hint: ") and "hf download openai/clip-vit-large-patch14" in hint and "tokenizer.json" in hint


@pytest.mark.slow
def test_eval_refuses_to_resume_predictions_of_other_settings(small, tiny_clip_dir, tmp_path):
    out = tmp_path / "predictions.csv"
    args = ["eval", small / "ds.csv", "--images", small / "photos", *base(small, tiny_clip_dir)[:4], "--out", out, "--json"]
    r = run_cli(*args, "--top-k", "3", cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["fallback"] for row in rows] == ["false", "false"]
    assert len({row["run"] for row in rows}) == 1
    settings = json.loads((tmp_path / "predictions.csv.settings.json").read_text())
    assert settings["method"] == "geoclip" and settings["top_k"] == 3 and settings["run"] == rows[0]["run"]

    # The same settings resume (nothing left to predict: same metrics) ...
    r = run_cli(*args, "--top-k", "3", cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == first
    # ... other settings are refused, naming --out, and the file is left as it was.
    before = out.read_bytes()
    for other in (["--method", "swc", "--top-k", "3"], ["--top-k", "4"]):
        r = run_cli(*args, *other, cache_dir=tmp_path / "cache")
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"error: {out} holds predictions made with other settings (")
        assert "hint: pass a new --out FILE" in lines[1]
    assert (
        "method 'geoclip' then, 'swc' now"
        in run_cli(*args, "--method", "swc", "--top-k", "3", cache_dir=tmp_path / "cache").stderr
    )
    assert out.read_bytes() == before


@pytest.mark.slow
def test_maps_geojson_and_export_folders_follow_the_umask(small, tiny_clip_dir, tmp_path):
    r = run_cli(
        "locate", small / "photos" / "a.jpg", *base(small, tiny_clip_dir), "--top-k", "2",
        "--geojson", tmp_path / "out.geojson", "--map", tmp_path / "out.html", cache_dir=tmp_path / "cache", umask=0o027,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("out.geojson", "out.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # 0o666 & ~0o027; mkstemp gave 0o600
    r = run_cli("export", "geoclip", "--out", tmp_path / "release", cache_dir=tmp_path / "cache", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "release").stat().st_mode) == 0o755  # mkdtemp gave 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "release").iterdir()} == {0o644}


@pytest.mark.slow
def test_g3_without_db_sends_its_8_requests_and_the_table_names_each_source(tiny_clip_dir, small, tmp_path):
    from geofast.testing.openai_stub import StubChatServer

    rng = np.random.default_rng(7)
    gallery = tmp_path / "gallery20.csv"
    np.savetxt(gallery, np.c_[rng.uniform(-60, 70, 20), rng.uniform(-180, 180, 20)], delimiter=",", header="lat,lon", comments="")
    env = {k: "" for k in ("GEOFAST_LLM_API_KEY", "OPENAI_API_KEY", "GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL")}
    with StubChatServer(lambda req: '{"latitude": -33.8688, "longitude": 151.2093}') as server:
        args = ["locate", small / "photos" / "a.jpg", "--method", "rag", "--clip", tiny_clip_dir, "--gallery", gallery,
                "--no-places", "--llm-base-url", server.base_url, "--llm-model", "stub", "--top-k", "5"]  # fmt: skip
        r = run_cli(*args, cache_dir=tmp_path / "cache", env=env)
        assert r.returncode == 0, r.stderr
        # G3: prompts with 0, 5, 10 and 15 references, 2 samples each = 8 requests (4 before: only
        # 5 GeoCLIP candidates were retrieved, so the 10- and 15-reference prompts were dropped).
        assert len(server.requests) == 8
        assert len({q.prompt for q in server.requests}) == 4
        header = next(line for line in r.stdout.splitlines() if "rank" in line)
        assert "source" in header and "probability" in header and "verified similarity" in header
        for label in ["GeoCLIP"] + [f"LLM ({n} refs, sample {s})" for n in (0, 5, 10, 15) for s in (0, 1)]:
            assert label in r.stdout, label
        assert r.stdout.count(" GeoCLIP ") == 5  # the first --top-k GeoCLIP candidates compete as answers
        # One marker says whose answer won: the LLM's, or (tiny random model) a retrieval candidate's.
        assert ("—  LLM answer" in r.stdout) != ("—  FALLBACK, GeoCLIP/database fallback: a retrieval" in r.stdout)

        server.set_script(lambda req: "I cannot tell where this is.")
        r = run_cli(*args, "--no-llm-cache", cache_dir=tmp_path / "cache", env=env)
        assert r.returncode == 0, r.stderr
        assert "FALLBACK, GeoCLIP/database fallback: no usable LLM answer" in " ".join(r.stdout.split())


@pytest.mark.slow
def test_ctrl_c_in_train_writes_a_checkpoint_and_says_resume(tmp_path):
    import signal
    import time

    from geofast.train import synthetic

    synthetic.make_database(tmp_path / "db", synthetic.sample_points(400, 1), seed=3)
    run = tmp_path / "run"
    env = {**os.environ, "GEOFAST_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "geofast", "train", "--db", str(tmp_path / "db"), "--out", str(run), "--epochs", "500",
           "--batch-size", "20", "--queue-size", "32", "--val-fraction", "0", "--gallery-size", "50", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        line = ""
        while "epoch 1:" not in line and time.monotonic() < deadline:  # training has started
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "train ended before its first epoch"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert (
        lines[-2].startswith("error: training interrupted ")
        and f"checkpoint written to {run / 'checkpoints' / 'last.ckpt'}" in lines[-2]
    )
    assert lines[-1].startswith("hint: continue with: geofast train --db ") and lines[-1].endswith(" --resume"), lines[-1]
    assert "Traceback" not in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["global_step"] > 0
    # The hint's command continues the run from the checkpoint (fewer epochs: it stops at once).
    r = subprocess.run(
        [*cmd[:9], str(info["epochs_done"] + 1), *cmd[10:], "--resume", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["global_step"] > info["global_step"]
