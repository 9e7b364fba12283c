"""The image database: build from CSV/EXIF folders, search, resume, add, corruption checks.

References: embeddings against transformers' own CLIP vision model + processor (not geofast's
loader), search against numpy brute force and faiss ``IndexFlatIP``, EXIF GPS against values
written with PIL, coordinates against the CSV.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

import geofast as gf
from conftest import make_photo, make_tiny_clip
from geofast.db import (
    COORDS,
    EMBEDDINGS,
    FAILED,
    MANIFEST,
    META,
    NO_GPS_REASON,
    Database,
    gps_to_degrees,
    read_csv_source,
    read_exif_gps,
)
from geofast.errors import DatabaseError, InputError, ParameterError, ShapeError

# ----------------------------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------------------------


def dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Unsigned degrees → EXIF (deg, min, sec) rationals (seconds with 1/10000 resolution)."""
    v = abs(value)
    d = int(v)
    m = int((v - d) * 60)
    s = round(((v - d) * 60 - m) * 60 * 10000)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 10000)


def save_with_gps(path, seed, lat=None, lon=None, *, size=(160, 120), fmt=None, extra_gps=None):
    """A synthetic photo with an EXIF GPS IFD written by PIL (no GPS when lat is None)."""
    make_photo(path, seed=seed, size=size, fmt=fmt)
    im = Image.open(path)
    im.load()
    exif = Image.Exif()
    if lat is not None:
        gps = {1: "S" if lat < 0 else "N", 2: dms(lat), 3: "W" if lon < 0 else "E", 4: dms(lon)}
        gps.update(extra_gps or {})
        exif[0x8825] = gps
    im.save(path, format=fmt or im.format, exif=exif)
    return path


def reference_embeddings(clip_dir, paths) -> np.ndarray:
    """transformers' own CLIP vision tower + processor (independent of geofast's loader)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc = CLIPImageProcessor.from_pretrained(clip_dir)
    ims = []
    for p in paths:
        with Image.open(p) as im:
            ims.append(im.convert("RGB"))
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"])
    if not isinstance(feats, torch.Tensor):  # transformers >= 5 may return a model output
        feats = feats.pooler_output
    f = feats.numpy().astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def brute_force(db_emb: np.ndarray, q: np.ndarray, k: int):
    s = np.asarray(db_emb, dtype=np.float64) @ np.asarray(q, dtype=np.float64).T  # (N, B)
    idx = np.argsort(-s.T, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s.T, idx, axis=1), idx


@pytest.fixture(scope="module")
def backbone(tiny_clip_dir):
    from geofast.models.clip import load_backbone

    return load_backbone(tiny_clip_dir, "cpu")


N_GOOD = 30


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30 photos in a sub-folder with known coordinates, a CSV with extra columns and bad rows."""
    root = tmp_path_factory.mktemp("dbdata")
    (root / "photos").mkdir()
    rng = np.random.default_rng(7)
    lat = rng.uniform(-80, 80, N_GOOD)
    lon = rng.uniform(-179, 179, N_GOOD)
    lines = ["image,lat,lon,city,photographer"]
    for i in range(N_GOOD):
        ext = ["jpg", "png", "webp"][i % 3]
        make_photo(root / "photos" / f"p{i:02d}.{ext}", seed=100 + i, size=(160 + 8 * i, 120))
        lines.append(f'photos/p{i:02d}.{ext},{float(lat[i])!r},{float(lon[i])!r},city{i},"Doe, J."')
    (root / "photos" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines.insert(5, "photos/corrupt.jpg,10,10,bad,x")
    lines.insert(9, "photos/missing.jpg,11,11,gone,x")
    lines.insert(12, "photos/p01.png,95,10,badlat,x")
    lines.insert(14, "photos/p02.webp,abc,10,badnum,x")
    (root / "photos.csv").write_text("\n".join(lines) + "\n")
    good = [root / "photos" / f"p{i:02d}.{['jpg', 'png', 'webp'][i % 3]}" for i in range(N_GOOD)]
    return {"root": root, "csv": root / "photos.csv", "lat": lat, "lon": lon, "paths": good}


@pytest.fixture(scope="module")
def built(dataset, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "db"
    report = Database.build(dataset["csv"], out, backbone=backbone, chunk_size=8, batch_size=3)
    return out, report


# ----------------------------------------------------------------------------------------------
# build from CSV
# ----------------------------------------------------------------------------------------------


def test_build_from_csv_rows_coords_meta_failures(dataset, built):
    out, report = built
    assert report.rows == report.added == N_GOOD
    assert report.failed == 4 and report.no_gps == 0
    assert report.encoded == N_GOOD and report.resumed_chunks == 0
    assert report.chunks == (N_GOOD + 2 + 7) // 8  # 32 planned entries (corrupt + missing encoded too)
    db = Database.open(out)
    assert len(db) == N_GOOD and db.dim == 768 and db.dtype == "f16"
    assert db.embeddings.dtype == np.float16 and isinstance(db.embeddings, np.memmap)
    # Coordinates exactly as in the CSV, in CSV order.
    np.testing.assert_array_equal(np.asarray(db.latlon), np.column_stack([dataset["lat"], dataset["lon"]]))
    metas = db.meta(range(N_GOOD))
    assert [m["image"] for m in metas] == [str(p.resolve()) for p in dataset["paths"]]
    assert metas[3]["city"] == "city3" and metas[3]["photographer"] == "Doe, J."
    # Failures listed with reasons.
    failed = dict(db.failures())
    assert any("corrupt.jpg" in k for k in failed)
    assert any("missing.jpg" in k and "no such file" in v for k, v in failed.items())
    assert any("out of range" in v for v in failed.values())
    assert any("not numbers" in v for v in failed.values())
    assert (out / FAILED).read_text().splitlines()[0] == "image,reason"


def test_embeddings_match_transformers_reference(dataset, built, tiny_clip_dir):
    out, _ = built
    db = Database.open(out)
    ref = reference_embeddings(tiny_clip_dir, dataset["paths"])
    got = np.asarray(db.embeddings, dtype=np.float64)
    np.testing.assert_allclose(got, ref, atol=2e-3)  # f16 storage
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)


def test_relative_paths_independent_of_cwd(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = read_csv_source(os.path.relpath(dataset["csv"], tmp_path))
    assert plan.entries[0].image == str(dataset["paths"][0].resolve())
    assert plan.columns == ["city", "photographer"]
    assert len(plan.entries) == N_GOOD + 2 and len(plan.rejected) == 2


def test_csv_header_errors(tmp_path):
    (tmp_path / "a.csv").write_text("file_name,y,x\na.jpg,1,2\n")
    with pytest.raises(InputError, match="needs columns image, lat and lon"):
        read_csv_source(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("")
    with pytest.raises(InputError, match="empty"):
        read_csv_source(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("\ufeffPath,Latitude,Longitude\nx.jpg,1.5,-2.5\n")
    plan = read_csv_source(tmp_path / "c.csv")
    assert (plan.entries[0].lat, plan.entries[0].lon) == (1.5, -2.5)


def test_all_images_bad_is_an_error(tmp_path, backbone):
    (tmp_path / "bad.csv").write_text("image,lat,lon\nnope.jpg,1,2\n")
    with pytest.raises(DatabaseError, match="no photo"):
        Database.build(tmp_path / "bad.csv", tmp_path / "db", backbone=backbone)
    assert not (tmp_path / "db").exists()


def test_build_argument_errors(dataset, tmp_path, backbone):
    with pytest.raises(ParameterError, match="dtype"):
        Database.build(dataset["csv"], tmp_path / "db", backbone=backbone, dtype="f64")
    with pytest.raises(ParameterError, match="batch_size"):
        Database.build(dataset["csv"], tmp_path / "db", backbone=backbone, batch_size=0)
    with pytest.raises(ParameterError, match="FAISS index factory"):
        Database.build(dataset["csv"], tmp_path / "db", backbone=backbone, index="NotAnIndex42")
    with pytest.raises(InputError, match="does not exist"):
        Database.build(tmp_path / "nothing.csv", tmp_path / "db", backbone=backbone)
    assert not (tmp_path / "db").exists()


# ----------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------


def test_query_finds_itself_and_matches_brute_force(dataset, built, tiny_clip_dir):
    out, _ = built
    db = Database.open(out)
    q = reference_embeddings(tiny_clip_dir, dataset["paths"][:12]).astype(np.float32)
    res = db.search(q, 5)
    assert res.sims.shape == (12, 5) and res.latlon.shape == (12, 5, 2) and res.ids.shape == (12, 5)
    np.testing.assert_array_equal(res.ids[:, 0], np.arange(12))  # each photo finds itself first
    ref_s, ref_i = brute_force(db.embeddings, q / np.linalg.norm(q, axis=1, keepdims=True), 5)
    np.testing.assert_array_equal(res.ids, ref_i)
    np.testing.assert_allclose(res.sims, ref_s, atol=1e-5)
    np.testing.assert_array_equal(res.latlon, np.asarray(db.latlon)[res.ids])
    # A single (D,) query and an unnormalised one give the same answer.
    one = db.search(q[3] * 7.5, 5)
    np.testing.assert_array_equal(one.ids, res.ids[3:4])


def test_farthest_is_search_of_negated_query(built, dataset, tiny_clip_dir):
    out, _ = built
    db = Database.open(out)
    q = reference_embeddings(tiny_clip_dir, dataset["paths"][:3]).astype(np.float32)
    far = db.farthest(q, 4)
    s = np.asarray(db.embeddings, dtype=np.float64) @ q.T.astype(np.float64)
    ref = np.argsort(s.T, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(far.ids, ref)
    np.testing.assert_allclose(far.sims, np.take_along_axis(s.T, ref, axis=1), atol=1e-5)
    assert (np.diff(far.sims, axis=1) >= 0).all()


def test_search_errors(built):
    db = Database.open(built[0])
    q = np.ones(768, dtype=np.float32)
    with pytest.raises(ParameterError, match="k must be between 1"):
        db.search(q, 0)
    with pytest.raises(ParameterError, match="30 rows"):
        db.search(q, 31)
    with pytest.raises(ShapeError, match="768"):
        db.search(np.ones(512, dtype=np.float32), 3)
    with pytest.raises(InputError, match="zero or not finite"):
        db.search(np.zeros(768, dtype=np.float32), 3)
    with pytest.raises(InputError):
        db.search(np.full(768, np.nan, dtype=np.float32), 3)


def test_within_and_search_rows(built):
    db = Database.open(built[0])
    ll = np.asarray(db.latlon)
    center = ll[4]
    rows = db.within(center, 3000.0)
    ref = np.flatnonzero(gf.haversine(ll, center[None, :]) <= 3000.0)
    np.testing.assert_array_equal(rows, ref)
    assert 4 in rows
    q = np.asarray(db.embeddings[4], dtype=np.float32)
    res = db.search_rows(q, rows, 3)
    s = np.asarray(db.embeddings[rows], dtype=np.float64) @ (q / np.linalg.norm(q)).astype(np.float64)
    order = np.argsort(-s, kind="stable")[:3]
    np.testing.assert_array_equal(res.ids[0], rows[order])
    assert res.ids[0, 0] == 4


def test_from_arrays_matches_faiss(tmp_path):
    import faiss

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((5000, 96)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    latlon = np.column_stack([rng.uniform(-90, 90, 5000), rng.uniform(-180, 180, 5000)])
    db = Database.from_arrays(tmp_path / "arr", emb, latlon, dtype="f16", normalize=False)
    assert db.gallery().nbytes == 0  # gf.Gallery borrows the read-only memory map: no copy
    stored = np.asarray(db.embeddings, dtype=np.float32)
    np.testing.assert_array_equal(stored, emb.astype(np.float16).astype(np.float32))
    index = faiss.IndexFlatIP(96)
    index.add(stored)
    q = emb[:50] + 0.05 * rng.standard_normal((50, 96)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = db.search(q, 10, normalize=False)
    fs, fi = index.search(q, 10)
    np.testing.assert_allclose(res.sims, fs, atol=1e-5)
    gaps_ok = np.abs(np.diff(fs, axis=1)).min(axis=1) > 1e-5
    np.testing.assert_array_equal(res.ids[gaps_ok], fi[gaps_ok])
    np.testing.assert_array_equal(res.latlon, latlon[res.ids])


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16"])
def test_faiss_index_database(dataset, backbone, tmp_path, factory):
    out = tmp_path / "ivf"
    Database.build(dataset["csv"], out, backbone=backbone, index=factory, chunk_size=16)
    db = Database.open(out)
    assert db.index_factory == factory and (out / "index.faiss").is_file()
    flat = np.asarray(db.embeddings, dtype=np.float32)
    q = flat[[0, 7, 19]]
    res = db.search(q, 5)
    ref_s, ref_i = brute_force(flat, q / np.linalg.norm(q, axis=1, keepdims=True), 5)
    np.testing.assert_array_equal(res.ids, ref_i)  # tiny database: the shortlist covers everything
    np.testing.assert_allclose(res.sims, ref_s, atol=1e-5)
    assert db.faiss_index().ntotal == N_GOOD
    if factory.startswith("IVF"):
        assert db.manifest["index"]["search_params"] == "nprobe=4"
        db.set_search_params("nprobe=1")  # one list: a subset, still re-ranked exactly
        import faiss

        assert faiss.extract_index_ivf(db.faiss_index()).nprobe == 1
        one = db.search(q, 5)
        assert one.ids[:, 0].tolist() == [0, 7, 19]
        with pytest.raises(ParameterError, match="search parameters"):
            db.set_search_params("bogus=3")


def test_untrainable_index_is_refused_before_anything_is_written(dataset, backbone, tmp_path):
    """IVF64 over a source of fewer than 64 photos cannot be trained: refused after planning,
    before encoding (no work folder, no chunks), with a hint naming --index Flat."""
    out = tmp_path / "db"
    events: list[str] = []
    progress: list[tuple[int, int]] = []
    with pytest.raises(ParameterError, match="--index IVF64,Flat needs at least 64 photos") as e:
        Database.build(
            dataset["csv"], out, backbone=backbone, index="IVF64,Flat", chunk_size=8, on_event=events.append,
            on_progress=lambda d, t: progress.append((d, t)),
        )  # fmt: skip
    assert "--index Flat" in (e.value.hint or "")
    assert progress == [] and sorted(p.name for p in tmp_path.iterdir()) == []
    report = Database.build(dataset["csv"], out, backbone=backbone, index="Flat", chunk_size=8)
    assert report.resumed_chunks == 0 and len(Database.open(out)) == N_GOOD


# ----------------------------------------------------------------------------------------------
# EXIF GPS and folder sources
# ----------------------------------------------------------------------------------------------


def test_gps_to_degrees_values():
    assert gps_to_degrees((IFDRational(33), IFDRational(51), IFDRational(3564, 100)), "S") == pytest.approx(
        -(33 + 51 / 60 + 35.64 / 3600), abs=1e-12
    )
    assert gps_to_degrees(((151, 1), (12, 1), (3096, 100)), b"E\x00") == pytest.approx(151 + 12 / 60 + 30.96 / 3600, abs=1e-12)
    assert gps_to_degrees((IFDRational(40), IFDRational(26.767)), "N") == pytest.approx(40 + 26.767 / 60)  # decimal minutes
    assert gps_to_degrees((74.0, 0.0, 21.6), "W") == pytest.approx(-(74 + 21.6 / 3600))
    assert gps_to_degrees(48.8566, "N") == pytest.approx(48.8566)
    assert gps_to_degrees((IFDRational(1, 0), 0, 0), "N") is None  # 1/0
    assert gps_to_degrees((10, 61, 0), "N") is None
    assert gps_to_degrees(None, "N") is None


@pytest.mark.parametrize(
    ("lat", "lon", "fmt"),
    [
        (-33.8688, 151.2093, "JPEG"),
        (40.7128, -74.0060, "PNG"),
        (-22.9068, -43.1729, "WEBP"),
        (64.1466, -21.9426, "JPEG"),
        (35.6762, 139.6503, "JPEG"),
    ],
)
def test_read_exif_gps_hemispheres(tmp_path, lat, lon, fmt):
    path = save_with_gps(tmp_path / f"x.{fmt.lower()}", 1, lat, lon, fmt=fmt)
    got = read_exif_gps(path)
    assert got is not None
    assert got[0] == pytest.approx(lat, abs=1e-6) and got[1] == pytest.approx(lon, abs=1e-6)
    assert (got[0] < 0) == (lat < 0) and (got[1] < 0) == (lon < 0)


def test_read_exif_gps_missing_void_zero(tmp_path):
    assert read_exif_gps(save_with_gps(tmp_path / "none.jpg", 2)) is None
    assert read_exif_gps(save_with_gps(tmp_path / "void.jpg", 3, 10.0, 20.0, extra_gps={9: "V"})) is None
    assert read_exif_gps(save_with_gps(tmp_path / "zero.jpg", 4, 0.0, 0.0)) is None
    assert read_exif_gps(save_with_gps(tmp_path / "active.jpg", 5, 10.5, 20.25, extra_gps={9: "A"})) == pytest.approx(
        (10.5, 20.25)
    )
    (tmp_path / "junk.jpg").write_bytes(b"garbage")
    with pytest.raises(gf.ImageError, match="not an image"):
        read_exif_gps(tmp_path / "junk.jpg")


def test_build_from_folder_with_exif(tmp_path, backbone):
    folder = tmp_path / "trip"
    (folder / "day2").mkdir(parents=True)
    known = {
        "a.jpg": (48.8584, 2.2945),
        "b.jpg": (-33.8568, 151.2153),
        "day2/c.png": (40.6892, -74.0445),
        "day2/d.webp": (-13.1631, -72.5450),
    }
    for i, (name, (lat, lon)) in enumerate(known.items()):
        save_with_gps(folder / name, 10 + i, lat, lon, fmt={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.split(".")[1]])
    save_with_gps(folder / "nogps.jpg", 20)
    save_with_gps(folder / "day2" / "nogps2.jpg", 21)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    out = tmp_path / "db"
    report = Database.build(folder, out, backbone=backbone, chunk_size=3)
    assert (report.added, report.no_gps, report.failed) == (4, 2, 1)
    db = Database.open(out)
    by_image = {
        Path(m["image"]).relative_to(folder.resolve()).as_posix(): tuple(ll)
        for m, ll in zip(db.meta(range(len(db))), np.asarray(db.latlon))
    }
    assert set(by_image) == set(known)
    for name, (lat, lon) in known.items():
        assert by_image[name] == pytest.approx((lat, lon), abs=1e-6)
    failed = dict(db.failures())
    assert failed[str((folder / "nogps.jpg").resolve())] == NO_GPS_REASON
    assert "broken.jpg" in " ".join(failed)
    assert db.info()["no_gps"] == 2 and db.info()["failed"] == 1


# ----------------------------------------------------------------------------------------------
# resumable, safe builds
# ----------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def _stop_after(n_chunks: int, chunk_size: int):
    calls = {"n": 0}

    def on_progress(done: int, total: int) -> None:
        if done > 0 and done < total:
            calls["n"] += 1
            if calls["n"] >= n_chunks:
                raise Boom(f"injected stop after {done} of {total}")

    return on_progress


def _same_database(a: Path, b: Path) -> None:
    da, db_ = Database.open(a), Database.open(b)
    np.testing.assert_array_equal(np.asarray(da.embeddings), np.asarray(db_.embeddings))
    np.testing.assert_array_equal(np.asarray(da.latlon), np.asarray(db_.latlon))
    assert (a / META).read_bytes() == (b / META).read_bytes()
    assert (a / FAILED).read_bytes() == (b / FAILED).read_bytes()
    ma, mb = json.loads((a / MANIFEST).read_text()), json.loads((b / MANIFEST).read_text())
    for key in ("count", "dim", "dtype", "index"):
        assert ma[key] == mb[key]
    for name in (EMBEDDINGS, COORDS, META):
        assert ma["files"][name]["sha256"] == mb["files"][name]["sha256"]


def test_interrupted_build_resumes_and_equals_uninterrupted(dataset, built, backbone, tmp_path):
    out = tmp_path / "db"
    with pytest.raises(Boom):
        Database.build(dataset["csv"], out, backbone=backbone, chunk_size=8, batch_size=3, on_progress=_stop_after(2, 8))
    assert not out.exists()
    chunks = sorted((tmp_path / "db.partial" / "chunks").iterdir())
    assert len(chunks) == 2
    with pytest.raises(DatabaseError, match="interrupted"):
        Database.open(out)
    events: list[str] = []
    report = Database.build(dataset["csv"], out, backbone=backbone, chunk_size=8, batch_size=3, on_event=events.append)
    assert report.resumed_chunks == 2
    # 32 planned entries (30 photos + a corrupt and a missing one, both in the first 16): the
    # first two chunks were committed, only the 16 photos of the last two are encoded now.
    assert report.encoded == 16
    assert any("resuming" in e for e in events)
    assert not (tmp_path / "db.partial").exists()
    _same_database(out, built[0])


def test_parallel_loaders_give_the_same_database(dataset, built, backbone, tmp_path):
    report = Database.build(dataset["csv"], tmp_path / "db", backbone=backbone, chunk_size=8, batch_size=3, workers=3)
    assert report.rows == N_GOOD
    _same_database(tmp_path / "db", built[0])
    with pytest.raises(ParameterError, match="workers"):
        Database.build(dataset["csv"], tmp_path / "db2", backbone=backbone, workers=0)


def test_changed_source_starts_over(dataset, backbone, tmp_path):
    out = tmp_path / "db"
    with pytest.raises(Boom):
        Database.build(dataset["csv"], out, backbone=backbone, chunk_size=8, on_progress=_stop_after(1, 8))
    small = tmp_path / "small.csv"
    lines = dataset["csv"].read_text().splitlines()
    base = dataset["csv"].parent
    small.write_text(
        "\n".join([lines[0]] + [",".join([str(base / ln.split(",")[0])] + ln.split(",")[1:]) for ln in lines[1:6]]) + "\n"
    )
    events: list[str] = []
    report = Database.build(small, out, backbone=backbone, chunk_size=8, on_event=events.append)
    assert report.resumed_chunks == 0
    assert any("starting over" in e for e in events)
    assert len(Database.open(out)) == report.rows


def test_rebuild_keeps_old_database_until_complete(dataset, backbone, tmp_path):
    out = tmp_path / "db"
    csv1 = tmp_path / "one.csv"
    csv1.write_text(f"image,lat,lon\n{dataset['paths'][0]},1.0,2.0\n{dataset['paths'][1]},3.0,4.0\n")
    Database.build(csv1, out, backbone=backbone)
    with pytest.raises(Boom):
        Database.build(dataset["csv"], out, backbone=backbone, chunk_size=4, on_progress=_stop_after(2, 4))
    old = Database.open(out)  # the old database is untouched and valid
    assert len(old) == 2
    np.testing.assert_array_equal(np.asarray(old.latlon), [[1.0, 2.0], [3.0, 4.0]])
    report = Database.build(dataset["csv"], out, backbone=backbone, chunk_size=4)
    assert report.resumed_chunks == 2 and len(Database.open(out)) == N_GOOD
    assert not (tmp_path / "db.old").exists() and not (tmp_path / "db.partial").exists()


def test_interrupted_install_is_finished_by_the_next_run(built, dataset, backbone, tmp_path):
    out = tmp_path / "db"
    shutil.copytree(built[0], out)
    # Simulate a crash between the two renames of an install: DIR moved away, new one staged.
    staged = tmp_path / "db.partial" / "db"
    staged.parent.mkdir()
    os.replace(out, tmp_path / "db.old")
    shutil.copytree(built[0], staged)
    with pytest.raises(DatabaseError, match="interrupted while installing"):
        Database.open(out)
    csv1 = tmp_path / "one.csv"
    make_photo(tmp_path / "fresh.jpg", seed=4242)
    csv1.write_text("image,lat,lon\nfresh.jpg,1.0,2.0\n")
    report = Database.add(out, csv1, backbone=backbone)  # recovers the swap, then adds
    assert report.rows == N_GOOD + 1
    assert not (tmp_path / "db.old").exists()
    # Crash before the staged copy was complete: the old database comes back.
    os.replace(out, tmp_path / "db.old")
    (tmp_path / "db.partial").mkdir()
    report = Database.add(out, csv1, backbone=backbone)
    assert report.duplicates == 1 and len(Database.open(out)) == N_GOOD + 1


def test_concurrent_build_is_refused(dataset, backbone, tmp_path):
    from geofast.db.builder import _Builder

    out = tmp_path / "db"
    holder = _Builder(out, mode="build", on_event=None)
    with holder.locked():
        with pytest.raises(DatabaseError, match="another geofast process") as e:
            Database.build(dataset["csv"], out, backbone=backbone)
    assert "wait for it to finish" in (e.value.hint or "") and "remove" not in (e.value.hint or "")


@pytest.mark.slow
def test_sigkill_during_build_then_resume(tiny_clip_dir, backbone, tmp_path):
    """A real build process killed with SIGKILL after some chunks: the rerun encodes only the rest
    and gives the same database as an uninterrupted build."""
    (tmp_path / "big").mkdir()
    n = 48
    lines = ["image,lat,lon"]
    for i in range(n):  # larger photos: decoding keeps the build running long enough to be killed
        make_photo(tmp_path / "big" / f"b{i:02d}.jpg", seed=2000 + i, size=(1024, 768))
        lines.append(f"big/b{i:02d}.jpg,{i - 20.5},{2 * i - 50.25}")
    csv_path = tmp_path / "big.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("GEOFAST_CLIP", None)
    cmd = [
        sys.executable,
        "-m",
        "geofast",
        "db",
        "build",
        str(csv_path),
        "--out",
        str(out),
        "--clip",
        str(tiny_clip_dir),
        "--device",
        "cpu",
        "--chunk-size",
        "2",
        "--batch-size",
        "1",
        "--no-progress",
    ]
    chunks = tmp_path / "db.partial" / "chunks"

    def committed() -> int:
        return len([p for p in chunks.iterdir() if p.suffix == ".npz"]) if chunks.is_dir() else 0

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and committed() < 3:
            if proc.poll() is not None:
                pytest.fail(f"the build ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST).exists()
    done = committed()
    assert 3 <= done < n // 2, done
    report = Database.build(csv_path, out, backbone=backbone, chunk_size=2, batch_size=1)
    assert report.resumed_chunks == done
    assert report.encoded == n - 2 * done  # only the rest was encoded
    assert report.rows == n
    ref = tmp_path / "ref"
    Database.build(csv_path, ref, backbone=backbone, chunk_size=2, batch_size=1)
    _same_database(out, ref)


# ----------------------------------------------------------------------------------------------
# add
# ----------------------------------------------------------------------------------------------


def test_add_grows_database_and_search_finds_new_rows(built, backbone, tmp_path, tiny_clip_dir):
    out = tmp_path / "db"
    shutil.copytree(built[0], out)
    before = Database.open(out)
    old_emb = np.asarray(before.embeddings).copy()
    (tmp_path / "new").mkdir()
    new_paths = [make_photo(tmp_path / "new" / f"n{i}.jpg", seed=900 + i, size=(200, 150)) for i in range(5)]
    csv2 = tmp_path / "new.csv"
    csv2.write_text("image,lat,lon,city\n" + "".join(f"new/n{i}.jpg,{-10.0 - i},{20.0 + i},new{i}\n" for i in range(5)))
    report = Database.add(out, csv2, backbone=backbone)
    assert (report.added, report.rows, report.duplicates) == (5, N_GOOD + 5, 0)
    db = Database.open(out)
    assert len(db) == N_GOOD + 5
    np.testing.assert_array_equal(np.asarray(db.embeddings[:N_GOOD]), old_emb)  # old ids unchanged
    np.testing.assert_array_equal(np.asarray(db.latlon[N_GOOD:]), [[-10.0 - i, 20.0 + i] for i in range(5)])
    q = reference_embeddings(tiny_clip_dir, new_paths).astype(np.float32)
    res = db.search(q, 3)
    np.testing.assert_array_equal(res.ids[:, 0], np.arange(N_GOOD, N_GOOD + 5))
    assert db.meta([N_GOOD + 2])[0]["city"] == "new2"
    assert [s["kind"] for s in db.info()["sources"]] == ["csv", "csv"]
    # Adding the same photos again changes nothing.
    again = Database.add(out, csv2, backbone=backbone)
    assert again.added == 0 and again.duplicates == 5 and len(Database.open(out)) == N_GOOD + 5


def test_add_refuses_wrong_backbone(built, tmp_path):
    from geofast.models.clip import load_backbone

    out = tmp_path / "db"
    shutil.copytree(built[0], out)
    other = load_backbone(make_tiny_clip(tmp_path / "other-clip", seed=1), "cpu")
    csv2 = tmp_path / "x.csv"
    csv2.write_text("image,lat,lon\nx.jpg,1,2\n")
    with pytest.raises(DatabaseError, match="wrong backbone") as e:
        Database.add(out, csv2, backbone=other)
    assert "--clip" in (e.value.hint or "")
    assert len(Database.open(out)) == N_GOOD


# ----------------------------------------------------------------------------------------------
# corruption detected on open
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def copy_db(built, tmp_path):
    out = tmp_path / "db"
    shutil.copytree(built[0], out)
    return out


def _expect_damage(path, match, **kw):
    with pytest.raises(DatabaseError, match=match) as e:
        Database.open(path, **kw)
    assert "geofast db build" in (e.value.hint or "")
    assert "\n" not in str(e.value)
    return e.value


def test_truncated_embeddings(copy_db):
    data = (copy_db / EMBEDDINGS).read_bytes()
    (copy_db / EMBEDDINGS).write_bytes(data[:-1000])
    err = _expect_damage(copy_db, "truncated")
    assert EMBEDDINGS in str(err)
    assert str(Path(json.loads((copy_db / MANIFEST).read_text())["sources"][0]["source"])) in err.hint


def test_truncated_coords_with_consistent_manifest_size(copy_db):
    # Truncate and fix the recorded size: the .npy header check still catches it.
    data = (copy_db / COORDS).read_bytes()
    (copy_db / COORDS).write_bytes(data[:-16])
    m = json.loads((copy_db / MANIFEST).read_text())
    m["files"][COORDS]["bytes"] -= 16
    (copy_db / MANIFEST).write_text(json.dumps(m))
    _expect_damage(copy_db, "truncated")


def test_manifest_count_mismatch(copy_db):
    m = json.loads((copy_db / MANIFEST).read_text())
    m["count"] += 1
    (copy_db / MANIFEST).write_text(json.dumps(m))
    _expect_damage(copy_db, "manifest says")


def test_deleted_file(copy_db):
    (copy_db / COORDS).unlink()
    _expect_damage(copy_db, "coords.npy is missing")


def test_edited_checksum(copy_db):
    m = json.loads((copy_db / MANIFEST).read_text())
    m["files"][META]["sha256"] = "0" * 64
    (copy_db / MANIFEST).write_text(json.dumps(m))
    _expect_damage(copy_db, "sha256")


def test_flipped_byte_detected_full_and_sampled(copy_db, monkeypatch):
    data = bytearray((copy_db / EMBEDDINGS).read_bytes())
    data[-5] ^= 0x40
    (copy_db / EMBEDDINGS).write_bytes(bytes(data))
    _expect_damage(copy_db, "does not match its sha256")
    import geofast.db.format as dbmod

    monkeypatch.setattr(dbmod, "FULL_VERIFY_BYTES", 0)  # large-database mode: sampled blocks
    _expect_damage(copy_db, "sampled sha256")
    with pytest.raises(DatabaseError):
        Database.open(copy_db, verify=False).verify()


def test_meta_line_count_mismatch(copy_db):
    # One line too many, with size and checksums updated: only the line count can catch it.
    with open(copy_db / META, "ab") as f:
        f.write(b'{"image": "extra"}\n')
    from geofast.db.format import _file_record

    m = json.loads((copy_db / MANIFEST).read_text())
    m["files"][META] = _file_record(copy_db / META)
    (copy_db / MANIFEST).write_text(json.dumps(m))
    _expect_damage(copy_db, "lines but the manifest says")


def test_missing_or_garbled_manifest(copy_db, tmp_path):
    (copy_db / MANIFEST).write_text("{not json")
    _expect_damage(copy_db, "unreadable")
    (copy_db / MANIFEST).unlink()
    with pytest.raises(DatabaseError, match="not a geofast database") as e:
        Database.open(copy_db)
    assert "geofast db build" in e.value.hint
    with pytest.raises(DatabaseError, match="does not exist") as e:
        Database.open(tmp_path / "nowhere")
    assert "geofast db build" in e.value.hint


def test_wrong_backbone_detected(built, tmp_path, backbone):
    from geofast.models.clip import load_backbone

    Database.open(built[0], backbone=backbone)  # the right one passes
    other = load_backbone(make_tiny_clip(tmp_path / "clip2", seed=5), "cpu")
    with pytest.raises(DatabaseError, match="wrong backbone") as e:
        Database.open(built[0], backbone=other)
    assert "--clip" in e.value.hint and "rebuild" in e.value.hint


def test_info_fields(built, dataset):
    db = Database.open(built[0])
    info = db.info()
    assert info["rows"] == N_GOOD and info["failed"] == 4 and info["dim"] == 768 and info["dtype"] == "f16"
    assert info["index"]["factory"] == "Flat"
    assert info["files"][EMBEDDINGS] == (built[0] / EMBEDDINGS).stat().st_size
    assert info["bytes"] == sum((built[0] / n).stat().st_size for n in info["files"])
    cov = info["coverage"]
    assert cov["lat_min"] == pytest.approx(dataset["lat"].min()) and cov["lon_max"] == pytest.approx(dataset["lon"].max())
    cells = {(int(np.floor(a)), int(np.floor(b))) for a, b in zip(dataset["lat"], dataset["lon"])}
    assert cov["cells_1deg"] == len(cells)
    assert "probe" not in info["backbone"]
    json.dumps(info)


@pytest.mark.parametrize(
    ("factory", "rows"),
    [("IVF16,Flat", 15), ("IVF16,Flat", 16), ("IVF16,SQ8", 15), ("IVF4,PQ8", 255), ("IVF4,PQ8", 256), ("PQ8x4", 15),
     ("PQ8x4", 16), ("SQ8", 1), ("HNSW32", 1), ("IVF4_HNSW16,Flat", 3), ("IVF4_HNSW16,Flat", 4)],
)  # fmt: skip
def test_index_row_check_agrees_with_faiss_training(factory, rows):
    """check_index_rows refuses exactly the (factory, rows) pairs FAISS cannot train (reference:
    faiss's own ``train`` on that many random unit vectors)."""
    import faiss

    from geofast.db.index import check_index_rows

    dim = 32
    x = np.random.default_rng(rows).standard_normal((rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).train(x)
        trains = True
    except RuntimeError:
        trains = False
    if trains:
        check_index_rows(factory, dim, rows)
    else:
        with pytest.raises(ParameterError, match="--index") as e:
            check_index_rows(factory, dim, rows)
        assert "--index Flat" in (e.value.hint or "")


def test_index_row_check_suggests_lists_that_fit():
    from geofast.db.index import POINTS_PER_LIST, check_index_rows

    with pytest.raises(ParameterError, match="needs at least 4,096 photos") as e:
        check_index_rows("IVF4096,SQ8", 8, 1000)
    assert f"--index IVF{1000 // POINTS_PER_LIST},SQ8" in (e.value.hint or "")
    check_index_rows(f"IVF{1000 // POINTS_PER_LIST},SQ8", 8, 1000)  # the suggestion itself is accepted


def test_index_row_check_counts_the_training_sample():
    """train_size below the lists: FAISS would see only train_size rows (refused up front)."""
    from geofast.db.index import check_index_rows

    with pytest.raises(ParameterError, match="training sample is 100") as e:
        check_index_rows("IVF256,Flat", 8, 10_000, train_size=100)
    assert "at most 2" in (e.value.hint or "")
    check_index_rows("IVF2,Flat", 8, 10_000, train_size=100)


def test_missing_database_hints_name_what_happened(tmp_path):
    """A work folder holding only a lock (an add's, or a running process's) is no interrupted build;
    one with state.json is, and the hint names the SOURCE it recorded."""
    root = tmp_path / "photos.db"
    (tmp_path / "photos.db.partial").mkdir()
    (tmp_path / "photos.db.partial" / "lock").touch()
    with pytest.raises(DatabaseError, match="does not exist$") as e:
        Database.open(root)
    assert "interrupted" not in str(e.value) and "geofast db build SOURCE --out" in (e.value.hint or "")
    (tmp_path / "photos.db.partial" / "state.json").write_text(json.dumps({"source": "/data/trip.csv", "mode": "build"}))
    with pytest.raises(DatabaseError, match="build was interrupted") as e:
        Database.open(root)
    assert f"geofast db build /data/trip.csv --out {root}" in (e.value.hint or "")
