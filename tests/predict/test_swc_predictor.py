"""The Search-within-Cell predictor over an image database.

References: SwC written here with sklearn DBSCAN (haversine, R = 6371 km) + numpy on the same
neighbours; neighbours against numpy brute force; PD confidence against a numpy softmax over the
GeoCLIP gallery; the cell of ``geoclip+swc`` against numpy haversine.
"""

from __future__ import annotations

import numpy as np
import pytest
from benches.reference import ref_swc

from conftest import make_photo, make_tiny_clip
from geofast.db import Database
from geofast.errors import DatabaseError, InputError, ParameterError
from geofast.predict.swc import SwcPredictor

R_SWC = 6371.0


def np_haversine(a, b, r=6371.0088):
    a, b = np.radians(np.atleast_2d(a)), np.radians(np.atleast_2d(b))
    h = np.sin((b[:, 0] - a[:, 0]) / 2) ** 2 + np.cos(a[:, 0]) * np.cos(b[:, 0]) * np.sin((b[:, 1] - a[:, 1]) / 2) ** 2
    return 2 * r * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def jitter(center, rng, max_km):
    """A point within about max_km of center (small offsets in a local tangent plane)."""
    d = rng.uniform(0, max_km)
    az = rng.uniform(0, 2 * np.pi)
    dlat = d * np.cos(az) / 111.195
    dlon = d * np.sin(az) / (111.195 * np.cos(np.radians(center[0])))
    return center[0] + dlat, center[1] + dlon


@pytest.fixture(scope="module")
def backbone(tiny_clip_dir):
    from geofast.models.clip import load_backbone

    return load_backbone(tiny_clip_dir, "cpu")


@pytest.fixture(scope="module")
def site_db(tmp_path_factory, backbone):
    """60 photos at 5 sites (within 400 m of each site's centre) and 12 scattered ones."""
    root = tmp_path_factory.mktemp("swcdb")
    rng = np.random.default_rng(11)
    sites = np.array([[48.8566, 2.3522], [48.8600, 2.3400], [-33.8688, 151.2093], [35.6762, 139.6503], [-0.1807, -78.4678]])
    lines = ["image,lat,lon"]
    for i in range(72):
        make_photo(root / f"s{i:02d}.jpg", seed=300 + i, size=(128, 96))
        if i < 60:
            lat, lon = jitter(sites[i % 5], rng, 0.4)
        else:
            lat, lon = rng.uniform(-60, 60), rng.uniform(-180, 180)
        lines.append(f"s{i:02d}.jpg,{float(lat)!r},{float(lon)!r}")
    (root / "db.csv").write_text("\n".join(lines) + "\n")
    for j in range(6):
        make_photo(root / f"query{j}.jpg", seed=700 + j, size=(150, 100))
    Database.build(root / "db.csv", root / "db", backbone=backbone)
    return root


def test_swc_equals_sklearn_reference_on_same_neighbours(site_db, backbone):
    db = Database.open(site_db / "db")
    pred = SwcPredictor(db, backbone)  # no GeoCLIP heads: no confidence
    queries = [site_db / f"query{j}.jpg" for j in range(6)] + [site_db / "s03.jpg", site_db / "s61.jpg"]
    preds = pred.predict(queries, places=False)
    assert [p.method for p in preds] == ["swc"] * 8
    sizes = []
    for p in preds:
        assert p.ok and p.confidence is None and p.localizable is None
        nbs = p.neighbours
        assert len(nbs) == 10 == len(p.candidates)
        ids = np.array([n.id for n in nbs])
        sims = np.array([n.similarity for n in nbs])
        latlon = np.asarray(db.latlon)[ids]
        np.testing.assert_array_equal(np.array([[n.lat, n.lon] for n in nbs]), latlon)
        lat, lon, members = ref_swc(latlon, sims)
        assert p.lat == pytest.approx(lat, abs=1e-9) and p.lon == pytest.approx(lon, abs=1e-9)
        assert p.members == members.tolist()
        sizes.append(len(members))
    assert max(sizes) >= 2  # the data really clusters
    # A database photo is its own nearest neighbour.
    assert preds[6].neighbours[0].id == 3 and preds[7].neighbours[0].id == 61


def test_neighbours_match_brute_force(site_db, backbone):
    db = Database.open(site_db / "db")
    pred = SwcPredictor(db, backbone, k=7)
    from geofast.images import load_image

    ims = [load_image(site_db / f"query{j}.jpg") for j in range(6)]
    q, g = pred.embed(ims)
    assert g is None and q.shape == (6, 768)
    preds = pred.predict_embeddings(q, None, [f"q{j}" for j in range(6)], places=False)
    s = np.asarray(db.embeddings, dtype=np.float64) @ q.T.astype(np.float64)
    for j, p in enumerate(preds):
        ref = np.argsort(-s[:, j], kind="stable")[:7]
        got = [n.id for n in p.neighbours]
        gaps = np.abs(np.diff(s[ref, j]))
        if gaps.min() > 1e-5:
            assert got == ref.tolist()
        np.testing.assert_allclose([n.similarity for n in p.neighbours], s[got, j], atol=1e-5)


@pytest.mark.parametrize(("eps_km", "weight_exponent", "k"), [(5.0, 0.0, 10), (1.0, 1.0, 10), (0.3, 2.0, 15), (2000.0, 1.0, 20)])
def test_swc_parameters(site_db, backbone, eps_km, weight_exponent, k):
    db = Database.open(site_db / "db")
    pred = SwcPredictor(db, backbone, k=k, eps_km=eps_km, weight_exponent=weight_exponent)
    for p in pred.predict([site_db / "query1.jpg", site_db / "query4.jpg"], places=False):
        nbs = p.neighbours
        assert len(nbs) == k
        latlon = np.array([[n.lat, n.lon] for n in nbs])
        lat, lon, members = ref_swc(latlon, [n.similarity for n in nbs], eps_km=eps_km, weight_exponent=weight_exponent)
        assert p.lat == pytest.approx(lat, abs=1e-9) and p.lon == pytest.approx(lon, abs=1e-9)
        assert p.members == members.tolist()


def test_unreadable_image_and_errors(site_db, backbone, tmp_path):
    db = Database.open(site_db / "db")
    pred = SwcPredictor(db, backbone)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    out = pred.predict([site_db / "query0.jpg", tmp_path / "bad.jpg", site_db / "query1.jpg"], places=False)
    assert [p.ok for p in out] == [True, False, True]
    assert "not an image" in out[1].error
    with pytest.raises(ParameterError):
        SwcPredictor(db, backbone, k=0)
    with pytest.raises(ParameterError):
        SwcPredictor(db, backbone, eps_km=0)
    with pytest.raises(InputError, match="GeoCLIP"):
        pred.predict([site_db / "query0.jpg"], method="geoclip+swc")
    with pytest.raises(InputError, match="unknown method"):
        pred.predict([site_db / "query0.jpg"], method="nope")


def test_wrong_backbone_refused(site_db, tmp_path):
    from geofast.models.clip import load_backbone

    other = load_backbone(make_tiny_clip(tmp_path / "c", seed=9), "cpu")
    with pytest.raises(DatabaseError, match="wrong backbone"):
        SwcPredictor(Database.open(site_db / "db"), other)


def test_k_larger_than_database(tmp_path, backbone):
    for i in range(3):
        make_photo(tmp_path / f"a{i}.jpg", seed=i)
    (tmp_path / "a.csv").write_text("image,lat,lon\n" + "".join(f"a{i}.jpg,{i}.0,{i}.0\n" for i in range(3)))
    Database.build(tmp_path / "a.csv", tmp_path / "db", backbone=backbone)
    p = SwcPredictor(Database.open(tmp_path / "db"), backbone, k=10).predict([tmp_path / "a1.jpg"], places=False)[0]
    assert len(p.neighbours) == 3 and p.neighbours[0].id == 1


# ----------------------------------------------------------------------------------------------
# with GeoCLIP's heads: PD confidence and geoclip+swc
# ----------------------------------------------------------------------------------------------


def ref_pd(geolocator, image, answer, radius_km=25.0):
    g = geolocator.encode_images([image]).astype(np.float64)[0]
    logits = geolocator.logit_scale * (np.asarray(geolocator.gallery.embeddings, dtype=np.float64) @ g)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    near = np_haversine(np.asarray(answer)[None, :], geolocator.gallery.latlon) <= radius_km
    return min(float(p[near].sum()), 1.0), int(np.argmax(logits))


def test_pd_confidence_with_geoclip_heads(site_db, geolocator):
    db = Database.open(site_db / "db")
    pred = SwcPredictor(db, geolocator.backbone, geolocator=geolocator)
    images = [site_db / "query2.jpg", site_db / "s07.jpg"]
    for image, p in zip(images, pred.predict(images, places=False)):
        pd, _ = ref_pd(geolocator, image, (p.lat, p.lon))
        assert p.confidence == pytest.approx(pd, rel=1e-4, abs=1e-7)
        assert p.localizable == (pd > 0.2)


def test_geoclip_plus_swc_in_cell_and_fallback(tmp_path, geolocator):
    root = tmp_path
    make_photo(root / "query.jpg", seed=4321, size=(140, 100))
    _, top1 = ref_pd(geolocator, root / "query.jpg", (0.0, 0.0))
    center = geolocator.gallery.latlon[top1]
    rng = np.random.default_rng(5)
    lines = ["image,lat,lon"]
    for i in range(24):
        make_photo(root / f"c{i:02d}.jpg", seed=500 + i, size=(128, 96))
        if i < 14:  # inside the 25 km cell, in two tight groups and a few loose ones
            lat, lon = (
                jitter(center, rng, 0.3)
                if i < 5
                else (jitter((center[0] + 0.1, center[1]), rng, 0.3) if i < 9 else jitter(center, rng, 20.0))
            )
        else:  # far away
            lat, lon = (
                float(np.clip(-center[0] + rng.uniform(-5, 5), -89, 89)),
                float(((center[1] + 180 + rng.uniform(-5, 5)) + 180) % 360 - 180),
            )
        lines.append(f"c{i:02d}.jpg,{float(lat)!r},{float(lon)!r}")
    (root / "db.csv").write_text("\n".join(lines) + "\n")
    Database.build(root / "db.csv", root / "db", backbone=geolocator.backbone)
    db = Database.open(root / "db")
    pred = SwcPredictor(db, geolocator.backbone, geolocator=geolocator, k=6, cell_km=25.0)
    p = pred.predict([root / "query.jpg"], method="geoclip+swc", top_k=3, places=False)[0]
    assert p.method == "geoclip+swc" and not p.fallback
    assert p.cell.lat == pytest.approx(center[0]) and p.cell.lon == pytest.approx(center[1])
    assert len(p.candidates) == 3 and p.candidates[0].prob is not None
    # Reference: rows within the cell (numpy haversine), top-6 by similarity, SwC.
    ll = np.asarray(db.latlon)
    inside = np.flatnonzero(np_haversine(center[None, :], ll) <= 25.0)
    assert 10 <= len(inside) <= 14
    q, _ = pred.embed([__import__("geofast.images", fromlist=["load_image"]).load_image(root / "query.jpg")])
    s = np.asarray(db.embeddings[inside], dtype=np.float64) @ q[0].astype(np.float64)
    order = np.argsort(-s, kind="stable")[:6]
    ids = inside[order]
    assert [n.id for n in p.neighbours] == ids.tolist()
    lat, lon, members = ref_swc(ll[ids], s[order])
    assert p.lat == pytest.approx(lat, abs=1e-9) and p.lon == pytest.approx(lon, abs=1e-9)
    pd, _ = ref_pd(geolocator, root / "query.jpg", (p.lat, p.lon))
    assert p.confidence == pytest.approx(pd, rel=1e-4, abs=1e-7)
    # Fallback: a cell with no database photo inside → GeoCLIP's top-1, flagged.
    tiny_cell = SwcPredictor(db, geolocator.backbone, geolocator=geolocator, cell_km=1e-4)
    f = tiny_cell.predict([root / "query.jpg"], method="geoclip+swc", places=False)[0]
    assert f.fallback and "no database photo" in f.fallback_reason
    assert (f.lat, f.lon) == (pytest.approx(center[0]), pytest.approx(center[1]))
    assert f.prob == pytest.approx(f.candidates[0].prob)
