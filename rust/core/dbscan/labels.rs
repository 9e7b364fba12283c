//! Cluster numbering and the union-find structures the engines label with.
//!
//! Numbering (sklearn's): `sklearn.cluster.DBSCAN` labels clusters depth-first, visiting points
//! in index order (`sklearn/cluster/_dbscan_inner.pyx`), so cluster c is the component of core
//! points whose lowest index is the c-th smallest such index, and a border point reached by
//! several clusters takes the lowest-numbered one. [`number_roots`] turns "component root →
//! lowest core index" into those numbers.
//!
//! Components: union-find with path halving (Tarjan & van Leeuwen, "Worst-case analysis of set
//! union algorithms", JACM 1984), always linking the larger root under the smaller, so a
//! component's root is its smallest id. [`find_root`] is the sequential form (sweep engine);
//! [`UnionFind`] a lock-free form over atomics for the parallel grid engine, in the style of
//! Anderson & Woll ("Wait-free parallel algorithms for the union-find problem", STOC 1991):
//! links and path-halving steps are compare-and-swaps that only ever move a parent to an
//! ancestor, so the final partition does not depend on the interleaving. No constants.

use std::sync::atomic::{AtomicU32, Ordering};

/// Marker for "no point" in `u32` position arrays.
pub(super) const NONE: u32 = u32::MAX;

/// Lock-free union-find over `u32` ids: a root is linked under a smaller root by compare-and-swap,
/// `find` halves paths. Parents only ever move to ancestors, so concurrent use is safe; the final
/// partition does not depend on the interleaving.
pub(super) struct UnionFind {
    parent: Vec<AtomicU32>,
}

impl UnionFind {
    pub(super) fn new(n: usize) -> Self {
        UnionFind { parent: (0..n as u32).map(AtomicU32::new).collect() }
    }

    pub(super) fn find(&self, mut x: u32) -> u32 {
        loop {
            let p = self.parent[x as usize].load(Ordering::Acquire);
            if p == x {
                return x;
            }
            let gp = self.parent[p as usize].load(Ordering::Acquire);
            if gp != p {
                let _ = self.parent[x as usize].compare_exchange_weak(p, gp, Ordering::AcqRel, Ordering::Acquire);
            }
            x = gp;
        }
    }

    pub(super) fn union(&self, a: u32, b: u32) {
        let (mut a, mut b) = (a, b);
        loop {
            a = self.find(a);
            b = self.find(b);
            if a == b {
                return;
            }
            let (hi, lo) = if a > b { (a, b) } else { (b, a) };
            if self.parent[hi as usize].compare_exchange(hi, lo, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return;
            }
        }
    }
}

/// Cluster numbers from `root_min` (component root → lowest original index of its core points,
/// `NONE` for non-roots): components numbered 0, 1, … in order of that index, as sklearn's
/// labelling does. Returns root → label, reusing the buffer.
pub(super) fn number_roots(mut root_min: Vec<u32>) -> Vec<u32> {
    let mut roots: Vec<(u32, u32)> =
        root_min.iter().enumerate().filter(|(_, &v)| v != NONE).map(|(r, &v)| (v, r as u32)).collect();
    roots.sort_unstable();
    for (label, &(_, r)) in roots.iter().enumerate() {
        root_min[r as usize] = label as u32;
    }
    root_min
}

/// Sequential union-find with path halving, linking the larger root under the smaller.
pub(super) fn find_root(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let gp = parent[parent[x as usize] as usize];
        parent[x as usize] = gp;
        x = gp;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::parallel;
    use rayon::prelude::*;

    #[test]
    fn union_find_concurrent() {
        let uf = UnionFind::new(1000);
        parallel::install(|| {
            (0..999u32).into_par_iter().for_each(|i| uf.union(i, i + 1));
        });
        let r = uf.find(0);
        assert!((0..1000).all(|i| uf.find(i) == r));
        assert_eq!(r, 0);
    }

    #[test]
    fn roots_numbered_by_lowest_core_index() {
        // Roots 1, 4 and 6 with lowest core indices 9, 2 and 5: labels 2, 0 and 1.
        let root_min = vec![NONE, 9, NONE, NONE, 2, NONE, 5];
        let labels = number_roots(root_min);
        assert_eq!((labels[1], labels[4], labels[6]), (2, 0, 1));
        let mut parent = vec![0, 0, 1, 3];
        assert_eq!(find_root(&mut parent, 2), 0);
        assert_eq!(parent[2], 0, "path halved");
        assert_eq!(find_root(&mut parent, 3), 3);
    }
}
