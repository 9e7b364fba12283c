"""Merging gallery points that share coordinates.

GeoCLIP's 100K gallery lists 5 877 of its 94 123 distinct coordinates more than once (up to 37
times; 5.9 % of the rows are repeats). Repeats have the same location embedding, hence the same
score, so the reference's raw top-k often names one place twice. geofast merges them: every
distinct coordinate is one candidate whose probability is the sum of its rows' softmax
probabilities, and candidates are ranked by that sum.

:class:`DuplicateGroups` is computed once per gallery (``np.unique`` over the coordinates): for
each gallery row its canonical row (the group's first row) and the group's size. Merging a
scan's top-K is then O(K) per query. The merged top-k is exact, not approximate:

* a group none of whose rows is among the scanned top-K has a summed probability of at most
  ``largest group size × p_K`` (``p_K`` the K-th raw probability); when the k-th merged
  probability is at least that, nothing outside the scan can enter the top-k;
* otherwise the summed probabilities of *all* multi-row groups are computed exactly (one small
  matrix product over their canonical embeddings) and only unscanned single rows remain
  bounded by ``p_K``; if even that bound fails the scan is repeated with a larger K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Extra raw candidates fetched beyond top_k so that merging rarely needs a second scan.
MERGE_MARGIN = 16


@dataclass(frozen=True)
class DuplicateGroups:
    """Exact-duplicate coordinate groups of one gallery."""

    canon: np.ndarray  # (N,) int64: row → canonical row (first row of its group)
    size: np.ndarray  # (N,) int64: row → number of rows in its group
    multi: np.ndarray  # (M,) int64: canonical rows of groups with more than one row
    n_distinct: int
    max_size: int

    @classmethod
    def build(cls, latlon: np.ndarray) -> DuplicateGroups:
        ll = np.ascontiguousarray(latlon, dtype=np.float64)
        n = ll.shape[0]
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, 0, 0)
        _, first, inverse, counts = np.unique(ll, axis=0, return_index=True, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        canon = first.astype(np.int64)[inverse]
        size = counts.astype(np.int64)[inverse]
        multi = np.sort(first[counts > 1]).astype(np.int64)
        return cls(canon, size, multi, int(first.shape[0]), int(counts.max()))

    @property
    def has_duplicates(self) -> bool:
        return self.max_size > 1


def merge_scanned(
    idx: np.ndarray, probs: np.ndarray, groups: DuplicateGroups, top_k: int, complete: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Merge one query's raw top-K (``idx``, ``probs``, sorted by decreasing probability).

    Returns (canonical rows, summed probabilities, certain) ranked by summed probability;
    ``certain`` says that no coordinate outside the scan can enter the top ``top_k``
    (``complete``: the scan covered the whole gallery). When not certain, call
    :func:`merge_exact`.
    """
    want = min(top_k, groups.n_distinct)
    canon = groups.canon[idx]
    # Rows of one group have one embedding, hence one probability: the group's sum is
    # size × the mean of the probabilities of its scanned rows.
    uniq, first, inverse = np.unique(canon, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    mean = np.bincount(inverse, weights=probs, minlength=uniq.shape[0]) / np.bincount(inverse, minlength=uniq.shape[0])
    summed = mean * groups.size[uniq]
    order = np.lexsort((first, -summed))  # by summed probability, ties in scan order
    rows, vals = uniq[order], summed[order]
    certain = complete or (rows.shape[0] >= want and vals[want - 1] >= groups.max_size * float(probs[-1]))
    return rows, vals, bool(certain)


def merge_exact(
    rows: np.ndarray, vals: np.ndarray, p_last: float, groups: DuplicateGroups, top_k: int, multi_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Complete :func:`merge_scanned`'s answer with ``multi_probs``, the exact summed probability
    of every group in ``groups.multi``: only unscanned single rows remain, each at most
    ``p_last`` (the scan's last raw probability). ``None``: scan deeper."""
    want = min(top_k, groups.n_distinct)
    single = groups.size[rows] == 1
    all_rows = np.concatenate([rows[single], groups.multi])
    all_vals = np.concatenate([vals[single], multi_probs])
    if all_rows.shape[0] < want:
        return None
    if all_rows.shape[0] > want:  # the best ``want`` without sorting them all
        top = np.argpartition(-all_vals, want - 1)[:want]
        all_rows, all_vals = all_rows[top], all_vals[top]
    order = np.lexsort((all_rows, -all_vals))
    all_rows, all_vals = all_rows[order], all_vals[order]
    if all_vals[want - 1] >= p_last:
        return all_rows, all_vals
    return None


__all__ = ["MERGE_MARGIN", "DuplicateGroups", "merge_exact", "merge_scanned"]
