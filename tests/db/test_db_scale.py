"""Scale paths of the image database: the streamed CSV plan, the spatial grid behind
``within``/``search_rows`` (geoclip+swc), the meta row-offset index and the appending ``add``.

References: Python's ``csv`` module and ``float`` for the plan, numpy haversine and numpy
brute-force scoring for the cell search, a from-scratch build of the same rows for ``add``.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest

from geofast.db import Database, read_csv_source

R_KM = 6371.0088


def np_haversine_km(latlon: np.ndarray, center: np.ndarray) -> np.ndarray:
    lat1, lon1 = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    lat2, lon2 = np.radians(center[0]), np.radians(center[1])
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * R_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


# ----------------------------------------------------------------------------------------------
# the spatial grid: within() and search_rows() against brute force
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustered_db(tmp_path_factory):
    """20K rows: uniform on the sphere, a dense cluster across the antimeridian, points at the
    poles and on lon = ±180 exactly."""
    rng = np.random.default_rng(3)
    n_uni, n_pole, n_clu = 8000, 400, 11600
    uni = np.column_stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n_uni))), rng.uniform(-180, 180, n_uni)])
    pole = np.column_stack(
        [np.where(np.arange(n_pole) % 2, 1, -1) * (90 - rng.uniform(0, 0.05, n_pole)), rng.uniform(-180, 180, n_pole)]
    )
    clu = np.column_stack([rng.normal(-16.5, 0.08, n_clu), 179.97 + rng.normal(0, 0.08, n_clu)])
    ll = np.concatenate([uni, pole, clu])
    ll[:, 1] = (ll[:, 1] + 180) % 360 - 180
    ll[:4, 1] = 180.0
    ll[4:8, 1] = -180.0
    ll[8:10, 0] = 90.0
    emb = rng.standard_normal((ll.shape[0], 32)).astype(np.float32)
    db = Database.from_arrays(tmp_path_factory.mktemp("grid") / "db", emb, ll)
    return db, ll


def test_within_matches_brute_force_everywhere(clustered_db):
    db, ll = clustered_db
    rng = np.random.default_rng(11)
    centers = [(90.0, 0.0), (-90.0, 10.0), (89.9, -179.9), (-16.5, 180.0), (-16.5, -179.99), (0.0, 0.0)]
    centers += [tuple(ll[i]) for i in rng.integers(0, ll.shape[0], 40)]
    centers += [(float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), float(rng.uniform(-180, 180))) for _ in range(40)]
    checked = 0
    for i, c in enumerate(centers):
        for r in (0.5, 25.0, 400.0, 5000.0, 21000.0):
            d = np_haversine_km(ll, np.asarray(c))
            # skip rows within 1 mm of the edge: float rounding of two formulas may differ there
            edge = np.abs(d - r) < 1e-6
            got = db.within(c, r)
            ref = np.flatnonzero(d <= r)
            np.testing.assert_array_equal(np.setdiff1d(got, np.flatnonzero(edge)), np.setdiff1d(ref, np.flatnonzero(edge)))
            assert np.all(np.diff(got) > 0)
            checked += ref.shape[0]
    assert checked > 100_000  # the cases are not empty


def test_search_rows_matches_numpy(clustered_db):
    db, ll = clustered_db
    rng = np.random.default_rng(5)
    rows = db.within((-16.5, 179.97), 25.0)
    assert rows.shape[0] > 5000
    emb = np.asarray(db.embeddings, dtype=np.float32)
    for k in (1, 10, 100):
        q = rng.standard_normal(32).astype(np.float32)
        q /= np.linalg.norm(q)
        res = db.search_rows(q, rows, k)
        sims = emb[rows] @ q
        order = np.lexsort((rows, -sims))[:k]
        np.testing.assert_array_equal(res.ids[0], rows[order])
        np.testing.assert_allclose(res.sims[0], sims[order], atol=1e-5)
        np.testing.assert_array_equal(res.latlon[0], ll[rows[order]])
    # duplicated and unsorted row ids, k larger than the rows
    few = rows[:7][::-1]
    res = db.search_rows(rng.standard_normal(32), np.concatenate([few, few]), 50)
    assert sorted(res.ids[0].tolist()) == sorted(few.tolist())


# ----------------------------------------------------------------------------------------------
# the streamed CSV plan against Python's csv module
# ----------------------------------------------------------------------------------------------


def reference_plan(path):
    """(images, latlon, values, n_rejected) by the csv module and float(), no file-system access."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]]
    base = os.path.dirname(os.path.realpath(path))
    images, latlon, values, rejected = [], [], [], 0
    for row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            rejected += 1
            continue
        d = dict(zip(header, row))
        name = d["image"].strip()
        try:
            lat, lon = float(d["lat"]), float(d["lon"])
        except ValueError:
            rejected += 1
            continue
        if not name or not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            rejected += 1
            continue
        images.append(os.path.normpath(name if os.path.isabs(name) else os.path.join(base, name)))
        latlon.append((lat, lon))
        values.append((d["city"], d["note"]))
    return images, np.array(latlon), values, rejected


def test_csv_plan_matches_csv_module(tmp_path, monkeypatch):
    import geofast.db.sources as src

    monkeypatch.setattr(src, "_BLOCK_BYTES", 4096)  # many blocks: bad rows in some, not others
    rng = np.random.default_rng(9)
    lines = ["Image,LAT,lon,city,note"]
    for i in range(3000):
        lat, lon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        name = [f"photos/p{i}.jpg", f"./a/../b/p{i}.jpg", f"/abs/dir//p{i}.jpg", f"sub dir/ü{i}.png"][i % 4]
        kind = i % 97
        if kind == 5:
            lines.append(f"{name},north,{lon!r},c{i},x")
        elif kind == 6:
            lines.append(f"{name},{lat + 200!r},{lon!r},c{i},x")
        elif kind == 7:
            lines.append(f",{lat!r},{lon!r},c{i},x")
        elif kind == 8:
            lines.append(f"{name},{lat!r}")  # too few fields
        elif kind == 9:
            lines.append("")
        elif kind == 10:
            lines.append(f'"{name}", {lat!r} ,{lon!r},"c{i}, quoted","line one\nline two"')
        elif kind == 11:
            lines.append(f"{name},nan,{lon!r},c{i},x")
        else:
            lines.append(f"{name},{lat!r},{lon!r},c{i},n{i}")
    path = tmp_path / "big.csv"
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    seen = []
    plan = read_csv_source(path, on_progress=lambda done, total: seen.append((done, total)))
    images, latlon, values, rejected = reference_plan(path)
    assert plan.images == images
    np.testing.assert_array_equal(plan.latlon, latlon)
    assert plan.columns == ["city", "note"]
    assert [tuple(v) for v in plan.values] == values
    assert len(plan.rejected) == rejected > 100
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    # the plan digest follows the content
    again = read_csv_source(path)
    assert again.digest == plan.digest
    path.write_text("\ufeff" + "\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert read_csv_source(path).digest != plan.digest


# ----------------------------------------------------------------------------------------------
# add: appends in place, same content as a rebuild, crash-safe
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tiny_clip_dir):
    from geofast.models.clip import load_backbone

    return load_backbone(tiny_clip_dir, "cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from conftest import make_photo

    root = tmp_path_factory.mktemp("addphotos")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(36):
        make_photo(root / f"q{i:02d}.jpg", seed=500 + i, size=(96, 72))
        rows.append((f"q{i:02d}.jpg", float(rng.uniform(-60, 60)), float(rng.uniform(-170, 170)), f"t{i}"))

    def write(name, sel, extra=()):
        text = "image,lat,lon,tag\n" + "".join(f"{rows[i][0]},{rows[i][1]!r},{rows[i][2]!r},{rows[i][3]}\n" for i in sel)
        text += "".join(extra)
        (root / name).write_text(text)
        return root / name

    return {
        "root": root,
        "a": write("a.csv", range(0, 20)),
        "b": write("b.csv", [3] + list(range(20, 36)), extra=["missing.jpg,1,2,gone\n"]),
        "all": write("all.csv", range(0, 36), extra=["missing.jpg,1,2,gone\n"]),
        "c": write("c.csv", range(30, 36)),
    }


def _meta_lines(db):
    return (db.path / "meta.jsonl").read_text().splitlines()


def test_add_appends_in_place_and_equals_a_rebuild(photos, backbone, tmp_path):
    import hashlib
    import json

    db_dir = tmp_path / "db"
    Database.build(photos["a"], db_dir, backbone=backbone, chunk_size=8, batch_size=4)
    before = {n: (db_dir / n).read_bytes() for n in ("embeddings.npy", "coords.npy", "meta.jsonl")}
    ino = (db_dir / "embeddings.npy").stat().st_ino
    report = Database.add(db_dir, photos["b"], backbone=backbone, chunk_size=8, batch_size=4)
    assert (report.added, report.duplicates, report.failed, report.rows) == (16, 1, 1, 36)
    assert (db_dir / "embeddings.npy").stat().st_ino == ino  # grown in place, not rewritten
    for n, old in before.items():
        data = (db_dir / n).read_bytes()
        start = 128 if n.endswith(".npy") else 0
        assert data[start : len(old)] == old[start:]  # the old rows' bytes untouched
    ref_dir = tmp_path / "ref"
    Database.build(photos["all"], ref_dir, backbone=backbone, chunk_size=8, batch_size=4)
    db, ref = Database.open(db_dir, verify=True), Database.open(ref_dir, verify=True)
    db.verify()
    assert len(db) == len(ref) == 36
    np.testing.assert_array_equal(np.asarray(db.latlon), np.asarray(ref.latlon))
    np.testing.assert_allclose(np.asarray(db.embeddings, np.float32), np.asarray(ref.embeddings, np.float32), atol=2e-3)
    assert _meta_lines(db) == _meta_lines(ref)
    assert [f[0] for f in db.failures()] == [f[0] for f in ref.failures()]
    # the indexes against independent references
    offsets = np.load(db_dir / "meta.offsets.npy")
    raw = (db_dir / "meta.jsonl").read_bytes()
    np.testing.assert_array_equal(offsets, [0] + [i + 1 for i, b in enumerate(raw) if b == 10])
    keys = np.load(db_dir / "meta.keys.npy")
    images = [json.loads(x)["image"] for x in _meta_lines(db)]
    ref_keys = [int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "little") for x in images]
    np.testing.assert_array_equal(keys, np.array(ref_keys, dtype=np.uint64))
    rows = [35, 0, 20, 7]
    assert db.meta(rows) == [json.loads(_meta_lines(ref)[r]) for r in rows]
    # per-segment checksums: the build's segment plus the add's
    m = json.loads((db_dir / "manifest.json").read_text())
    assert "sha256" not in m["files"]["embeddings.npy"] and len(m["files"]["embeddings.npy"]["segments"]) == 2
    # the second add only finds duplicates; damage in an appended segment is detected
    again = Database.add(db_dir, photos["c"], backbone=backbone)
    assert again.added == 0 and again.duplicates == 6
    data = bytearray((db_dir / "embeddings.npy").read_bytes())
    data[-3] ^= 0x10
    (db_dir / "embeddings.npy").write_bytes(bytes(data))
    from geofast.errors import DatabaseError

    with pytest.raises(DatabaseError, match="sha256"):
        Database.open(db_dir, verify=True)


@pytest.mark.parametrize("crash_at", ["header", "manifest"])
def test_interrupted_add_rolls_back_or_completes(photos, backbone, tmp_path, monkeypatch, crash_at):
    import geofast.db.append as append

    db_dir = tmp_path / "db"
    Database.build(photos["a"], db_dir, backbone=backbone, chunk_size=8)
    snapshot = {p.name: p.read_bytes() for p in db_dir.iterdir()}

    class Crash(Exception):
        pass

    if crash_at == "header":  # data appended, headers half rewritten, manifest not committed
        calls = {"n": 0}
        real = append._write_npy_header

        def flaky(*args, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash
            return real(*args, **kw)

        monkeypatch.setattr(append, "_write_npy_header", flaky)
    else:  # manifest committed, journal not yet removed
        real_unlink = type(db_dir).unlink

        def unlink(self, *a, **kw):
            if self.name == append.JOURNAL:
                raise Crash
            return real_unlink(self, *a, **kw)

        monkeypatch.setattr(type(db_dir), "unlink", unlink)
    with pytest.raises(Crash):
        Database.add(db_dir, photos["b"], backbone=backbone, chunk_size=8)
    monkeypatch.undo()
    assert (db_dir / append.JOURNAL).exists()
    db = Database.open(db_dir, verify=True)  # recovers
    assert not (db_dir / append.JOURNAL).exists()
    if crash_at == "header":
        assert len(db) == 20
        assert {p.name: p.read_bytes() for p in db_dir.iterdir()} == snapshot  # byte-identical rollback
        report = Database.add(db_dir, photos["b"], backbone=backbone, chunk_size=8)
        assert report.added == 16
    else:
        assert len(db) == 36
    Database.open(db_dir, verify=True).verify()


def test_database_of_the_previous_layout_still_opens_and_grows(photos, backbone, tmp_path):
    """A database written before the offset/key indexes and segment checksums (simulated by
    removing them): opened with the old line scan, grown by a full rewrite, equal to a rebuild."""
    import json

    db_dir = tmp_path / "db"
    Database.build(photos["a"], db_dir, backbone=backbone, chunk_size=8)
    m = json.loads((db_dir / "manifest.json").read_text())
    for name in ("meta.offsets.npy", "meta.keys.npy"):
        del m["files"][name]
        (db_dir / name).unlink()
    for rec in m["files"].values():
        rec.pop("segments", None)
    (db_dir / "manifest.json").write_text(json.dumps(m))
    old = Database.open(db_dir, verify=True)
    lines = (db_dir / "meta.jsonl").read_text().splitlines()
    assert old.meta([19, 2]) == [json.loads(lines[19]), json.loads(lines[2])]
    report = Database.add(db_dir, photos["b"], backbone=backbone, chunk_size=8)
    assert (report.added, report.duplicates) == (16, 1)
    ref_dir = tmp_path / "ref"
    Database.build(photos["all"], ref_dir, backbone=backbone, chunk_size=8)
    db, ref = Database.open(db_dir, verify=True), Database.open(ref_dir, verify=True)
    assert _meta_lines(db) == _meta_lines(ref)
    np.testing.assert_array_equal(np.asarray(db.latlon), np.asarray(ref.latlon))
    assert (db_dir / "meta.offsets.npy").is_file()  # the rewrite brings the new layout
