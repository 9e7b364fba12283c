"""``--ray``: database builds and evaluations encoded on a (local) Ray cluster.

One local Ray cluster for the module (4 logical CPUs, 150 MB object store, no dashboard, bound to
127.0.0.1), ~200 generated JPEGs and the tiny random CLIP. The reference is always the
single-machine build or eval of the same inputs with the same backbone: every file must have the
same sha256 (the manifest: the same JSON once its timestamps are removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# A local cluster binds to 127.0.0.1 only (read when ray is imported); no usage reporting.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import numpy as np
import pytest

import geofast
from conftest import make_photo, make_tiny_clip
from geofast.db import Database
from geofast.db.ray_executor import RayExecutor, RayOptions
from geofast.errors import ClusterError

pytestmark = pytest.mark.slow

N_PHOTOS = 200
TEST_TIMEOUT_S = 480
CHUNK, BATCH = 16, 6  # batches of 6 inside chunks of 16: partial batches at every chunk end


@pytest.fixture(autouse=True)
def _hard_timeout():
    """A test that hangs (a stuck cluster) dumps its stacks and ends the run instead of blocking CI."""
    faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def ray_address():
    import ray

    package_root = str(Path(geofast.__file__).resolve().parents[1])
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([package_root] + ([old_path] if old_path else []))  # workers import this geofast
    old_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ctx = ray.init(
            address="local",
            num_cpus=4,
            object_store_memory=150 << 20,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    finally:
        for var, old in (("PYTHONPATH", old_path), ("OMP_NUM_THREADS", old_threads)):
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
    address = ctx.address_info["gcs_address"]
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


@pytest.fixture(scope="module")
def backbone(tiny_clip_dir):
    from geofast.models.clip import load_backbone

    return load_backbone(str(tiny_clip_dir), "cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """~200 JPEGs in a CSV (plus a corrupt file and a missing one), and 20 more for db add."""
    root = tmp_path_factory.mktemp("ray-photos")
    (root / "img").mkdir()
    sizes = [(160, 120), (120, 160), (200, 90), (96, 96)]
    lines = ["image,lat,lon,city"]
    for i in range(N_PHOTOS):
        make_photo(root / "img" / f"p{i:03d}.jpg", seed=5000 + i, size=sizes[i % 4])
        lines.append(f"img/p{i:03d}.jpg,{(i * 0.731) % 170 - 85:.6f},{(i * 1.37) % 350 - 175:.6f},c{i % 7}")
        if i == 37:
            (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
            lines.append("img/broken.jpg,1,2,x")
        if i == 90:
            lines.append("img/missing.jpg,3,4,y")
    (root / "photos.csv").write_text("\n".join(lines) + "\n")
    (root / "more").mkdir()
    more = ["image,lat,lon,city"]
    for i in range(20):
        make_photo(root / "more" / f"m{i:02d}.jpg", seed=9000 + i, size=(140, 100))
        more.append(f"more/m{i:02d}.jpg,{-40 + i},{100 - 3 * i},m")
    (root / "more.csv").write_text("\n".join(more) + "\n")
    return root


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Local encoding with one torch thread, like each encoder actor (1 CPU): on CPU the bytes of
    a forward pass may depend on the thread count, so the reference uses the same."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def reference(backbone, photos, tmp_path_factory):
    """The single-machine build of ``photos.csv`` (the reference of every --ray build)."""
    out = tmp_path_factory.mktemp("ray-reference") / "ref.db"
    with _torch_threads(1):
        report = Database.build(photos / "photos.csv", out, backbone=backbone, chunk_size=CHUNK, batch_size=BATCH)
    return out, report


def _main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (its Ray connection is the module's cluster): (code, stdout, stderr)."""
    from geofast.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


_TIMESTAMPS = ("created", "updated", "date")


def _strip_times(x):
    if isinstance(x, dict):
        return {k: _strip_times(v) for k, v in x.items() if k not in _TIMESTAMPS}
    if isinstance(x, list):
        return [_strip_times(v) for v in x]
    return x


def assert_same_bytes(a: Path, b: Path) -> None:
    """Every file of two databases has the same sha256; the manifests are the same JSON apart
    from their timestamps (and so record the same sha256 for every file)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name == "manifest.json":
            ma, mb = (json.loads((d / name).read_text()) for d in (a, b))
            assert _strip_times(ma) == _strip_times(mb)
        else:
            ha = hashlib.sha256((a / name).read_bytes()).hexdigest()
            hb = hashlib.sha256((b / name).read_bytes()).hexdigest()
            assert ha == hb, name


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


# ----------------------------------------------------------------------------------------------
# build and add: the same bytes
# ----------------------------------------------------------------------------------------------


def test_ray_build_and_add_write_the_same_bytes(
    ray_address, backbone, photos, reference, tiny_clip_dir, tmp_path, capsys, monkeypatch, one_thread
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GEOFAST_CLIP", raising=False)
    local, remote = tmp_path / "local.db", tmp_path / "ray.db"
    shutil.copytree(reference[0], local)
    ref = reference[1]
    with RayExecutor(RayOptions(actors=2)) as ex:
        got = Database.build(photos / "photos.csv", remote, backbone=backbone, chunk_size=CHUNK, batch_size=BATCH, executor=ex)
        assert ex.describe() == "2 encoder actors × 1 CPU on a local Ray cluster"
    assert (got.rows, got.failed, got.encoded) == (ref.rows, ref.failed, ref.encoded) == (N_PHOTOS, 2, N_PHOTOS)
    assert_same_bytes(local, remote)
    # The embeddings are the backbone's (independent check: a plain forward of one photo).
    db = Database.open(remote)
    import torch
    from PIL import Image

    with Image.open(photos / "img" / "p005.jpg") as im:
        pixels = backbone.processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        feats = backbone.model(pixel_values=pixels).image_embeds.double().numpy()[0]
    row = [m["image"] for m in db.meta(range(len(db)))].index(str(photos / "img" / "p005.jpg"))
    np.testing.assert_allclose(np.asarray(db.embeddings[row], dtype=np.float64), feats / np.linalg.norm(feats), atol=2e-3)

    # db add through the CLI (in this process: the module's cluster, one torch thread).
    Database.add(local, photos / "more.csv", backbone=backbone, chunk_size=CHUNK, batch_size=BATCH)
    code, stdout, stderr = _main(
        capsys, "db", "add", remote, photos / "more.csv", "--clip", tiny_clip_dir, "--device", "cpu", "--chunk-size", CHUNK,
        "--batch-size", BATCH, "--no-progress", "--json", "--ray", ray_address, "--ray-actors", "1",
    )  # fmt: skip
    assert code == 0, stderr[-2000:]
    rep = json.loads(stdout)
    assert (rep["added"], rep["rows"]) == (20, N_PHOTOS + 20)
    assert_same_bytes(local, remote)


def _cli_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GEOFAST_NUM_THREADS": "1"}
    env.pop("GEOFAST_CLIP", None)
    package_root = str(Path(geofast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _build_cmd(csv_path: Path, out: Path, clip: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "geofast",
        "db",
        "build",
        str(csv_path),
        "--out",
        str(out),
        "--clip",
        str(clip),
        "--device",
        "cpu",
        "--chunk-size",
        str(CHUNK),
        "--batch-size",
        str(BATCH),
        "--no-progress",
        *extra,
    ]


def test_cli_ray_build_killed_driver_resumes_to_the_same_bytes(
    ray_address, photos, reference, tiny_clip_dir, tmp_path, capsys, one_thread
):
    out = tmp_path / "db"
    chunks = tmp_path / "db.partial" / "chunks"
    n_chunks = (N_PHOTOS + 2 + CHUNK - 1) // CHUNK  # 200 photos + the broken and the missing one

    def committed() -> int:
        return len([p for p in chunks.iterdir() if p.suffix == ".npz"]) if chunks.is_dir() else 0

    cmd = _build_cmd(photos / "photos.csv", out, tiny_clip_dir, "--ray", ray_address, "--ray-actors", "1")
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and committed() < 2:
            if proc.poll() is not None:
                pytest.fail(f"the build ended before it could be killed: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    done = committed()
    assert 2 <= done < n_chunks, done

    # The same command again (in this process: same cluster, one torch thread like the reference).
    code, stdout, stderr = _main(capsys, *cmd[3:-4], "--ray", ray_address, "--json")
    assert code == 0, stderr[-2000:]
    report = json.loads(stdout)
    assert report["resumed_chunks"] == done
    bad_rows = (38, 92)  # plan rows of broken.jpg and missing.jpg
    resumed_photos = done * CHUNK - sum(1 for r in bad_rows if r < done * CHUNK)
    assert report["encoded"] == N_PHOTOS - resumed_photos  # only the rest was encoded
    assert report["rows"] == N_PHOTOS
    assert_same_bytes(reference[0], out)


def _encoder_pids() -> list[int]:
    """PIDs of the encoder actors' processes (Ray titles them ``ray::...(_Encoder)``; Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and "_Encoder" in cmd:
            pids.append(int(proc.name))
    return pids


def test_killed_encoder_actor_is_restarted_and_nothing_is_doubled_or_lost(
    ray_address, backbone, photos, reference, tmp_path, one_thread
):
    out = tmp_path / "db"
    chunks = tmp_path / "db.partial" / "chunks"
    result: dict[str, object] = {}

    def run() -> None:
        try:
            with RayExecutor(RayOptions(actors=1)) as ex:
                result["report"] = Database.build(
                    photos / "photos.csv", out, backbone=backbone, chunk_size=CHUNK, batch_size=BATCH, executor=ex
                )
        except BaseException as e:  # pragma: no cover - reported below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    killed = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not killed and t.is_alive():
        n = len(list(chunks.glob("*.npz"))) if chunks.is_dir() else 0
        pids = _encoder_pids() if n >= 2 else []
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.01)
    assert killed, "no encoder actor was found to kill while the build ran"
    assert not (out / "manifest.json").exists()  # killed mid-build
    t.join(timeout=240)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["report"].rows == N_PHOTOS  # type: ignore[attr-defined]
    assert_same_bytes(reference[0], out)


# ----------------------------------------------------------------------------------------------
# eval: the same predictions and metrics
# ----------------------------------------------------------------------------------------------


def test_cli_eval_with_ray_gives_the_same_predictions_and_metrics(
    ray_address, backbone, photos, tiny_clip_dir, tmp_path, capsys, one_thread, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GEOFAST_CLIP", raising=False)
    db = tmp_path / "db"
    Database.build(photos / "more.csv", db, backbone=backbone)
    names = [f"p{i:03d}.jpg" for i in range(0, 60, 2)] + ["nothere.jpg"]
    (tmp_path / "bench.csv").write_text(
        "image,lat,lon\n" + "".join(f"{n},{(i * 3.1) % 80 - 40},{(i * 7.7) % 300 - 150}\n" for i, n in enumerate(names))
    )
    common = [
        "eval", tmp_path / "bench.csv", "--images", photos / "img", "--method", "swc", "--db", db, "--no-confidence",
        "--clip", tiny_clip_dir, "--device", "cpu", "--batch-size", "7", "--json",
    ]  # fmt: skip
    code, plain, err = _main(capsys, *common, "--out", tmp_path / "plain.csv")
    assert code == 0, err[-2000:]
    code, on_ray, err = _main(capsys, *common, "--out", tmp_path / "ray.csv", "--ray", ray_address, "--ray-actors", "2")
    assert code == 0, err[-2000:]
    assert "encoding on Ray: 2 encoder actors × 1 CPU on the Ray cluster at 127.0.0.1:" in " ".join(err.split())
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "ray.csv").read_bytes()
    assert json.loads(plain) == json.loads(on_ray)
    assert json.loads(on_ray)["n"] == 30 and json.loads(on_ray)["failed"] == 1


# ----------------------------------------------------------------------------------------------
# bad input: one line each, nothing written
# ----------------------------------------------------------------------------------------------


def _one_line_error(code: int, err: str) -> str:
    assert code == 1, err[-2000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    return " ".join(err.split())


def test_ray_not_installed_names_the_extra(photos, tiny_clip_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "db"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as without Ray
    err = _one_line_error(*_main(capsys, *_build_cmd(photos / "more.csv", out, tiny_clip_dir, "--ray")[3:])[::2])
    assert "Ray is not installed" in err and "hint: pip install 'geofast[scale]'" in err
    _nothing_written(out)


def test_unreachable_address_and_missing_gpus_are_one_line(ray_address, photos, tiny_clip_dir, tmp_path, capsys):
    with socket.socket() as s:  # a free local port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "db"
    # A fresh driver (this process is connected to the module's cluster already).
    r = subprocess.run(
        _build_cmd(photos / "more.csv", out, tiny_clip_dir, "--ray", f"127.0.0.1:{port}"),
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = _one_line_error(r.returncode, r.stderr)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err and "ray start --head" in err
    _nothing_written(out)
    # A driver already connected elsewhere does not silently use that other cluster.
    err = _one_line_error(
        *_main(capsys, *_build_cmd(photos / "more.csv", out, tiny_clip_dir, "--ray", f"127.0.0.1:{port}")[3:])[::2]
    )
    assert f"already connected to the Ray cluster at {ray_address}, not 127.0.0.1:{port}" in err
    _nothing_written(out)

    args = _build_cmd(
        photos / "more.csv", out, tiny_clip_dir, "--ray", ray_address, "--ray-gpus-per-actor", "1", "--ray-actors", "2"
    )
    err = _one_line_error(*_main(capsys, *args[3:])[::2])
    assert "the Ray cluster has 0 GPUs; 2 encoder actors with 1 GPUs each need 2" in err
    _nothing_written(out)


def test_worker_with_another_version_or_backbone_is_refused(ray_address, backbone, photos, tmp_path, monkeypatch):
    import geofast.db.ray_executor as rx

    out = tmp_path / "db"
    # The driver claims another version: the workers (this geofast) disagree and are refused.
    monkeypatch.setattr(rx, "__version__", "0.0.0+other")
    with pytest.raises(ClusterError, match=r"runs geofast .*; this driver runs geofast 0\.0\.0\+other") as e:
        with RayExecutor(RayOptions(actors=1)) as ex:
            Database.build(photos / "more.csv", out, backbone=backbone, executor=ex)
    assert "install geofast 0.0.0+other on every node" in (e.value.hint or "")
    _nothing_written(out)
    monkeypatch.undo()

    # Same path, other weights: the workers load the backbone from a folder holding another
    # CLIP than the driver's (as a node with other files under the same path would).
    other = make_tiny_clip(tmp_path / "other-clip", seed=1)
    lying = dataclasses.replace(backbone, source=str(other))
    with pytest.raises(ClusterError, match="runs another backbone than the driver"):
        with RayExecutor(RayOptions(actors=1)) as ex:
            Database.build(photos / "more.csv", out, backbone=lying, executor=ex)
    _nothing_written(out)
