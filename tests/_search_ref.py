"""Reference helpers for the search tests: float64 numpy brute force and faiss comparisons."""

from __future__ import annotations

import numpy as np


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
