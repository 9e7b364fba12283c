"""Scale paths of the image database: the streamed CSV plan, the spatial grid behind
``within``/``search_rows`` (geoclip+swc), the meta row-offset index and the appending ``add``.

References: Python's ``csv`` module and ``float`` for the plan, numpy haversine and numpy
brute-force scoring for the cell search, a from-scratch build of the same rows for ``add``.
"""

from __future__ import annotations

import numpy as np
import pytest

from geofast.db import Database

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
