"""``geofast db build|info|add`` and ``geofast locate --method swc --db`` end to end (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from browser_support import embedded_data
from conftest import make_photo
from geofast.db import MANIFEST, Database


def run_cli(*args, cache_dir=None, extra_env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    if cache_dir is not None:
        env["GEOFAST_CACHE"] = str(cache_dir)
    env.pop("GEOFAST_CLIP", None)
    env.pop("GEOFAST_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


def assert_clean_error(r, *needles):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), r.stderr
    assert any(ln.startswith("hint:") for ln in lines), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("clidb")
    (root / "img").mkdir()
    lines = ["image,lat,lon,caption"]
    for i in range(12):
        make_photo(root / "img" / f"p{i}.jpg", seed=40 + i, size=(120, 90))
        lines.append(f"img/p{i}.jpg,{45.0 + 0.001 * (i % 4)},{7.0 + 0.001 * (i % 3)},photo {i}")
    (root / "img" / "broken.jpg").write_bytes(b"broken")
    lines.append("img/broken.jpg,1,1,broken")
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    (root / "more").mkdir()
    for i in range(3):
        make_photo(root / "more" / f"m{i}.jpg", seed=90 + i)
    (root / "b.csv").write_text("image,lat,lon\n" + "".join(f"more/m{i}.jpg,{-30.0 - i},{-60.0 + i}\n" for i in range(3)))
    return root


@pytest.fixture(scope="module")
def cli_db(photos, tiny_clip_dir):
    out = photos / "db"
    r = run_cli(
        "db",
        "build",
        photos / "a.csv",
        "--out",
        out,
        "--clip",
        tiny_clip_dir,
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--chunk-size",
        "5",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


@pytest.mark.slow
def test_build_json_report(cli_db, photos):
    out, report = cli_db
    assert (report["rows"], report["added"], report["failed"], report["no_gps"]) == (12, 12, 1, 0)
    assert report["chunks"] == 3 and report["path"] == str(out)
    db = Database.open(out)
    assert len(db) == 12
    np.testing.assert_allclose(np.asarray(db.latlon)[:4, 0], [45.0, 45.001, 45.002, 45.003])
    assert db.meta([2])[0]["caption"] == "photo 2"
    assert "broken.jpg" in (out / "failed.csv").read_text()


def test_info_json_and_table_and_map(cli_db, tmp_path):
    out, _ = cli_db
    r = run_cli("db", "info", out, "--json", "--verify")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    ref = Database.open(out).info()
    for key in ("rows", "dim", "dtype", "files", "bytes", "coverage", "failed", "index"):
        assert info[key] == ref[key]
    assert info["verified"] is True and info["rows"] == 12
    r = run_cli("db", "info", out, "--map", tmp_path / "cov.html")
    assert r.returncode == 0, r.stderr
    assert "rows" in r.stdout and "12" in r.stdout
    html = (tmp_path / "cov.html").read_text()
    cov = embedded_data(html)["coverage"]
    assert cov["rows"] == 12 and sum(c[2] for c in cov["cells"]) == 12


@pytest.mark.slow
def test_add_grows(cli_db, photos, tmp_path, tiny_clip_dir):
    import shutil

    out = tmp_path / "db"
    shutil.copytree(cli_db[0], out)
    r = run_cli("db", "add", out, photos / "b.csv", "--json", "--no-progress")  # backbone taken from the manifest
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["added"], report["rows"]) == (3, 15)
    db = Database.open(out)
    np.testing.assert_array_equal(np.asarray(db.latlon)[12:], [[-30.0, -60.0], [-31.0, -59.0], [-32.0, -58.0]])


@pytest.mark.slow
def test_locate_swc_db_matches_library(cli_db, photos, tiny_clip_dir):
    from geofast.models.clip import load_backbone
    from geofast.predict.swc import SwcPredictor

    out, _ = cli_db
    image = photos / "img" / "p5.jpg"
    r = run_cli(
        "locate",
        image,
        photos / "img" / "p7.jpg",
        "--method",
        "swc",
        "--db",
        out,
        "--clip",
        tiny_clip_dir,
        "--swc-k",
        "4",
        "--no-confidence",
        "--no-places",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    lib = SwcPredictor(Database.open(out), load_backbone(tiny_clip_dir, "cpu"), k=4).predict(
        [image, photos / "img" / "p7.jpg"], places=False
    )
    for row, p in zip(rows, lib):
        assert row["method"] == "swc"
        assert row["predictions"][0]["lat"] == pytest.approx(p.lat, abs=1e-9)
        assert row["predictions"][0]["lon"] == pytest.approx(p.lon, abs=1e-9)
        assert row["confidence"] is None
        assert [n["id"] for n in row["neighbours"]] == [n.id for n in p.neighbours]
        assert len(row["neighbours"]) == 4
    assert rows[0]["neighbours"][0]["image"] == str(image.resolve())


@pytest.mark.slow
def test_locate_geoclip_plus_swc_cli(cli_db, photos, tiny_clip_dir, cache_dir, geolocator):
    out, _ = cli_db
    r = run_cli(
        "locate",
        photos / "img" / "p1.jpg",
        "--method",
        "geoclip+swc",
        "--db",
        out,
        "--clip",
        tiny_clip_dir,
        "--no-places",
        "--json",
        "--top-k",
        "2",
        cache_dir=cache_dir,
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["method"] == "geoclip+swc"
    assert 0.0 <= row["confidence"] <= 1.0
    assert len(row["predictions"]) == 3  # the answer + GeoCLIP's top-2
    assert "cell" in row
    r = run_cli(
        "locate",
        photos / "img" / "p1.jpg",
        "--method",
        "swc",
        "--db",
        out,
        "--clip",
        tiny_clip_dir,
        "--no-places",
        cache_dir=cache_dir,
    )
    assert r.returncode == 0, r.stderr
    assert "cluster centroid" in r.stdout


@pytest.mark.slow
def test_cli_errors(cli_db, photos, tmp_path, tiny_clip_dir):
    out, _ = cli_db
    assert_clean_error(run_cli("db", "info", tmp_path / "nowhere"), "does not exist", "geofast db build")
    assert_clean_error(
        run_cli("db", "build", photos / "a.csv", "--out", tmp_path / "x", "--clip", tiny_clip_dir, "--dtype", "f8"), "dtype"
    )
    assert_clean_error(
        run_cli("db", "build", photos / "a.csv", "--out", tmp_path / "x", "--clip", tiny_clip_dir, "--index", "Bogus9"), "FAISS"
    )
    assert_clean_error(
        run_cli("db", "build", tmp_path / "none.csv", "--out", tmp_path / "x", "--clip", tiny_clip_dir), "does not exist"
    )
    assert_clean_error(run_cli("locate", photos / "img" / "p1.jpg", "--method", "geoclip+swc"), "--db")
    assert_clean_error(run_cli("locate", photos / "img" / "p1.jpg", "--db", out), "--method swc")
    # A damaged database: one line, a repair hint, no traceback.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    m = json.loads((bad / MANIFEST).read_text())
    m["count"] = 99
    (bad / MANIFEST).write_text(json.dumps(m))
    assert_clean_error(run_cli("db", "info", bad), "manifest says", "geofast db build")
    assert_clean_error(
        run_cli("locate", photos / "img" / "p1.jpg", "--method", "swc", "--db", bad, "--clip", tiny_clip_dir), "geofast db build"
    )


def test_db_help():
    r = run_cli("db", "--help")
    assert r.returncode == 0
    for cmd in ("build", "add", "info"):
        assert cmd in r.stdout
    r = run_cli("db", "build", "--help")
    assert "--index" in r.stdout and "--dtype" in r.stdout


# ----------------------------------------------------------------------------------------------
# Traps: a failed build or add says what to do and leaves nothing half-written beside DIR
# ----------------------------------------------------------------------------------------------


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def test_add_to_a_database_that_was_never_built(photos, tmp_path):
    out = tmp_path / "never-built.db"
    r = run_cli("db", "add", out, photos / "a.csv", "--no-progress")
    assert_clean_error(r, "does not exist", f"geofast db build {photos / 'a.csv'} --out {out}")
    assert "interrupted" not in r.stderr
    assert _leftovers(out) == []


def test_index_the_source_cannot_train_is_refused_before_writing(photos, tmp_path, tiny_clip_dir):
    out = tmp_path / "big.db"
    r = run_cli(
        "db", "build", photos / "a.csv", "--out", out, "--index", "IVF4096,SQ8", "--clip", tiny_clip_dir, "--device", "cpu"
    )
    assert_clean_error(r, "--index IVF4096,SQ8", "4,096", "--index Flat")
    assert len(r.stderr.strip().splitlines()) == 2, r.stderr  # error + hint; no progress bar: nothing was encoded
    assert _leftovers(out) == []


@pytest.mark.slow
def test_index_untrainable_after_failed_photos_leaves_nothing(photos, tmp_path, tiny_clip_dir):
    """13 photos planned (IVF13 passes the check), 12 encoded (one is broken): refused after encoding,
    and the work folder is removed (fewer photos than lists: cheap to encode again)."""
    out = tmp_path / "ivf.db"
    r = run_cli(
        "db", "build", photos / "a.csv", "--out", out, "--index", "IVF13,Flat", "--clip", tiny_clip_dir, "--device", "cpu",
        "--no-progress", "--chunk-size", "5",
    )  # fmt: skip
    assert_clean_error(r, "--index IVF13,Flat", "1 of the source's photos failed", "--index Flat")
    assert _leftovers(out) == []


@pytest.mark.slow
def test_source_with_no_usable_photo_leaves_nothing(photos, tmp_path, tiny_clip_dir):
    src = photos / "broken-only.csv"
    src.write_text("image,lat,lon\nimg/broken.jpg,1,1\nimg/absent.jpg,2,2\n")
    out = tmp_path / "empty.db"
    r = run_cli("db", "build", src, "--out", out, "--clip", tiny_clip_dir, "--device", "cpu", "--no-progress")
    assert_clean_error(r, "no photo of", "check the source")
    assert _leftovers(out) == []


def test_build_never_replaces_a_folder_that_is_not_a_database(photos, tmp_path, tiny_clip_dir):
    """`--out` naming a folder of the user's (here a copy of the photos) is refused, its files kept;
    `db info` on it does not suggest building into it."""
    import shutil

    mine = tmp_path / "my-photos"
    shutil.copytree(photos / "more", mine)
    before = sorted(p.name for p in mine.iterdir())
    r = run_cli("db", "build", photos / "b.csv", "--out", mine, "--clip", tiny_clip_dir, "--device", "cpu", "--no-progress")
    assert_clean_error(r, f"--out {mine}", "holds no geofast database", f"--out {mine}.db")
    assert sorted(p.name for p in mine.iterdir()) == before
    assert _leftovers(mine) == ["my-photos"]
    r = run_cli("db", "info", mine)
    assert_clean_error(r, "not a geofast database", "pass the folder given to geofast db build --out")
    assert f"--out {mine}" not in r.stderr
    # A plain file as --out: refused, kept.
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    assert_clean_error(run_cli("db", "build", photos / "b.csv", "--out", f, "--clip", tiny_clip_dir), "is a file")
    assert f.read_text() == "keep me" and _leftovers(f) == ["notes.txt"]
