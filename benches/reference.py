"""Reference implementations, written once, that the tests and the benchmarks compare geofast
against: textbook float64 numpy formulas, scikit-learn's DBSCAN and brute-force search.

They are deliberately plain (no tricks, float64 throughout) so that a disagreement points at
geofast. Imported by ``tests/`` (pytest puts the checkout on ``sys.path``) and by
``benches/workloads`` (``geofast bench`` does the same).
"""

from __future__ import annotations

import numpy as np

#: visloc's sphere (SwC, OSV-5M's haversine); geofast's default haversine radius is IUGG's 6371.0088.
VISLOC_RADIUS_KM = 6371.0
IUGG_RADIUS_KM = 6371.0088


# --- geometry ---------------------------------------------------------------------------------


def numpy_haversine(a: np.ndarray, b: np.ndarray, radius_km: float = IUGG_RADIUS_KM) -> np.ndarray:
    """Textbook float64 haversine: 2R·asin(√h)."""
    lat1, lon1, lat2, lon2 = (np.radians(c) for c in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    h = np.sin((lat2 - lat1) / 2.0) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2.0) ** 2
    return 2.0 * radius_km * np.arcsin(np.sqrt(h))


def numpy_equal_earth(latlon: np.ndarray) -> np.ndarray:
    """Equal Earth (Šavrič et al. 2018) scaled by GeoCLIP's SF/180, in float64."""
    a1, a2, a3, a4, sf = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336
    lat = np.radians(latlon[:, 0])
    lon = np.radians(latlon[:, 1])
    theta = np.arcsin(np.sqrt(3.0) / 2.0 * np.sin(lat))
    x = 2 * np.sqrt(3.0) * lon * np.cos(theta) / (3 * (9 * a4 * theta**8 + 7 * a3 * theta**6 + 3 * a2 * theta**2 + a1))
    y = a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta
    return np.column_stack([x, y]) * sf / 180.0


def float64_features(xy: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Random Fourier features in float64: [cos(2π·xy·bᵀ) | sin(2π·xy·bᵀ)]."""
    x = 2.0 * np.pi * (np.asarray(xy, np.float64) @ np.asarray(b, np.float64).T)
    return np.concatenate([np.cos(x), np.sin(x)], axis=1)


def unit_vectors(latlon: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors of (N, 2) lat/lon degrees."""
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


# --- Search-within-Cell -----------------------------------------------------------------------


def ref_swc(latlon, sim, eps_km=1.0, min_samples=1, weight_exponent=0.0, radius_km=VISLOC_RADIUS_KM):
    """visloc's Search-within-Cell for one query: sklearn ``DBSCAN(metric="haversine")``, the
    largest cluster (ties: the cluster holding the most similar neighbour; all noise: the most
    similar neighbour alone), then the re-normalised mean of unit vectors weighted by
    ``sim ** weight_exponent``. Returns (lat, lon, sorted member indices)."""
    from sklearn.cluster import DBSCAN

    latlon = np.asarray(latlon, dtype=np.float64)
    sim = np.asarray(sim, dtype=np.float64)
    labels = (
        DBSCAN(eps=eps_km / radius_km, min_samples=min_samples, metric="haversine", algorithm="ball_tree")
        .fit(np.radians(latlon))
        .labels_
    )
    if (labels == -1).all():
        members = np.array([int(np.argmax(sim))])
    else:
        ids, counts = np.unique(labels[labels >= 0], return_counts=True)
        tied = np.isin(labels, ids[counts == counts.max()])
        best = np.flatnonzero(tied)[np.argmax(sim[tied])]
        members = np.flatnonzero(labels == labels[best])
    if len(members) == 1:
        lat, lon = latlon[members[0]]
        return float(lat), float(lon), members
    w = np.ones(len(members)) if weight_exponent == 0 else sim[members] ** weight_exponent
    v = (w[:, None] * unit_vectors(latlon[members])).sum(axis=0)
    norm = np.linalg.norm(v)
    if norm <= 1e-12 * np.abs(w).sum():
        lat, lon = latlon[members[np.argmax(sim[members])]]
        return float(lat), float(lon), members
    v /= norm
    return float(np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1])))), float(np.degrees(np.arctan2(v[1], v[0]))), members


# --- search -----------------------------------------------------------------------------------


def unit_rows(n: int, d: int, seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)


def numpy_topk(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 scores, sorted descending with ties broken by the lower index."""
    s = np.atleast_2d(np.asarray(queries, np.float64)) @ np.asarray(gallery, np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def assert_same_topk(
    scores: np.ndarray,
    indices: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    ref_indices: np.ndarray,
    *,
    tol: float = 1e-5,
) -> None:
    """Our (scores, indices) against reference indices: identical where score gaps exceed
    rounding, equal-score swaps allowed, scores within ``tol`` of the float64 scores."""
    q = np.atleast_2d(np.asarray(queries, np.float64))
    g = np.asarray(gallery, np.float64)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    assert scores.shape == indices.shape == ref_indices.shape
    exact = np.einsum("bd,bkd->bk", q, g[indices])
    ref_exact = np.einsum("bd,bkd->bk", q, g[ref_indices])
    scale = np.maximum(1.0, np.abs(ref_exact).max())
    np.testing.assert_allclose(scores, exact, rtol=0, atol=tol * scale)
    assert np.all(np.diff(scores, axis=1) <= 0), "scores must be sorted descending"
    # The k-th best values agree (so the selected sets agree up to near-ties) ...
    np.testing.assert_allclose(exact, ref_exact, rtol=0, atol=tol * scale)
    # ... and indices are identical wherever the reference has a clear gap around them.
    full = q @ g.T
    for b in range(q.shape[0]):
        for j in range(indices.shape[1]):
            if indices[b, j] == ref_indices[b, j]:
                continue
            near = np.abs(full[b] - ref_exact[b, j]) <= tol * scale
            assert near[indices[b, j]] and near.sum() > 1, (
                f"query {b} rank {j}: got {indices[b, j]}, expected {ref_indices[b, j]} with no near-tie"
            )
        assert len(set(indices[b].tolist())) == indices.shape[1], "duplicate indices"


def logsumexp64(queries: np.ndarray, gallery: np.ndarray, scale: float) -> np.ndarray:
    s = scale * (np.atleast_2d(np.asarray(queries, np.float64)) @ np.asarray(gallery, np.float64).T)
    m = s.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]


# --- GeoCLIP training (plain torch) -----------------------------------------------------------
# The objective of geoclip 1.3.0's train() loop body, written from the released code's semantics,
# independently of geofast: parameters as plain leaf tensors under the release names, the queue as
# GeoCLIP's (2, Q) buffer updated by ``geoclip.GeoCLIP.dequeue_and_enqueue`` itself, mean
# cross-entropy against [batch GPS; queue]. ``reference_logits`` evaluates Equal Earth and the
# Fourier features in float64 (then float32 into the MLPs) so it is exact to float32 rounding;
# the released float32 torch code carries ~2e-3 rad phase errors at σ = 256.

_CAPSULE_LAYERS = ("capsule.1", "capsule.3", "capsule.5", "head.0")


def reference_params(state):  # -> dict[str, torch.Tensor]
    """GeoCLIP's heads from a release-layout state dict: float32 leaves that require grad
    (the B matrices float64, fixed)."""
    import torch

    out = {}
    for k, v in state.items():
        if k.endswith("capsule.0.b"):
            out[k] = v.detach().to(torch.float64).clone()
        else:
            out[k] = v.detach().to(torch.float32).clone().reshape(v.shape).requires_grad_(True)
    return out


def reference_location(params, latlon: np.ndarray):  # -> torch.Tensor (N, 512)
    import torch
    import torch.nn.functional as F

    xy = numpy_equal_earth(np.asarray(latlon, np.float64))
    n_caps = sum(1 for k in params if k.endswith("capsule.0.b"))
    total = None
    for i in range(n_caps):
        p = f"location_encoder.LocEnc{i}."
        h = torch.from_numpy(float64_features(xy, params[p + "capsule.0.b"].numpy())).float()
        for j, name in enumerate(_CAPSULE_LAYERS):
            h = F.linear(h, params[f"{p}{name}.weight"], params[f"{p}{name}.bias"])
            if j < 3:
                h = F.relu(h)
        total = h if total is None else total + h
    return total


def reference_logits(params, feats, latlon: np.ndarray):  # -> torch.Tensor (B, N)
    """GeoCLIP.forward on cached CLIP features: logit_scale.exp() · cos(MLP(feats), L(latlon))."""
    import torch.nn.functional as F

    p = "image_encoder.mlp."
    img = F.linear(
        F.relu(F.linear(feats, params[p + "0.weight"], params[p + "0.bias"])), params[p + "2.weight"], params[p + "2.bias"]
    )
    img = F.normalize(img, dim=1)
    loc = F.normalize(reference_location(params, latlon), dim=1)
    return params["logit_scale"].exp() * (img @ loc.t())


def released_queue(initial_gps):  # -> types.SimpleNamespace
    """Stand-in for a ``GeoCLIP`` object's queue attributes, holding ``initial_gps`` (Q, 2)."""
    from types import SimpleNamespace

    import torch

    gps = torch.as_tensor(initial_gps)
    return SimpleNamespace(
        queue_size=gps.shape[0], gps_queue=gps.t().float().clone(), gps_queue_ptr=torch.zeros(1, dtype=torch.long)
    )


def released_train_step(logits_fn, queue, optimizer, feats, gps) -> float:
    """One iteration of ``geoclip.train``'s loop on cached features: ``logits_fn(feats, gps_all)``
    is the model's forward without the CLIP backbone; the queue is updated by geoclip's own
    ``GeoCLIP.dequeue_and_enqueue`` between building ``gps_all`` and the forward, as released."""
    import torch
    import torch.nn.functional as F
    from geoclip import GeoCLIP

    gps = torch.as_tensor(gps).float()
    targets = torch.arange(feats.shape[0])
    optimizer.zero_grad()
    gps_all = torch.cat([gps, queue.gps_queue.t()], dim=0)
    GeoCLIP.dequeue_and_enqueue(queue, gps)
    loss = F.cross_entropy(logits_fn(feats, gps_all.double().numpy()), targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
