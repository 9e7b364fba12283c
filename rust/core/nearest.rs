//! Exact k-nearest-neighbour search over points on the sphere.
//!
//! Points become 3-D unit vectors p = (cos φ cos λ, cos φ sin λ, sin φ); on the sphere the
//! great-circle order is the chord order, and a chord c maps to the distance d = 2R asin(c/2)
//! (R = 6371.0088 km by default). Chords are compared squared, as sums of squared coordinate
//! differences (`sphere::chord2`).
//!
//! Index: a static, balanced k-d tree over the unit vectors, stored implicitly (node h has
//! children 2h and 2h + 1; a node covering points [lo, hi) splits at mid = lo + (hi − lo)/2 on
//! the axis of largest extent; leaves hold ≤ 16 points). Hand-written rather than a crate such
//! as `kiddo` because the contract needs exactly what a generic crate leaves open: ties broken by
//! the lower original index, results in (chord², index) order, and a pruning bound that is
//! provably safe in floating point — the bound Σ offᵢ² (offᵢ = |qᵢ − splitᵢ| of the nearest
//! separating planes) is evaluated with the same operations as chord², so rounding is monotone
//! and never prunes a true neighbour; a subtree is skipped only when its bound exceeds the
//! current k-th chord² (ties are visited). Build O(N log N) (in parallel), ~28 bytes per point.
//! Queries run in parallel, each O(log N) for small k on typical data.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::core::coords::{check_latlon, check_latlon_nonempty, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::geo::sphere::{chord2, km_from_chord, unit_vector};
use crate::core::parallel;

const LEAF: usize = 16;
/// Subtrees at least this large are built in parallel.
const PAR_BUILD: usize = 1 << 14;

/// A k-nearest-neighbour index over lat/lon points.
#[derive(Debug)]
pub struct PointIndex {
    radius_km: f64,
    /// Unit vectors in tree order.
    pts: Vec<[f64; 3]>,
    /// Original index of each tree position.
    ids: Vec<u32>,
    /// Split value and axis of internal node h (1-based heap order).
    split_val: Vec<f64>,
    split_dim: Vec<u8>,
}

struct Splits {
    val: Vec<AtomicU64>,
    dim: Vec<AtomicU8>,
}

fn build(node: usize, items: &mut [([f64; 3], u32)], splits: &Splits) {
    let len = items.len();
    if len <= LEAF {
        return;
    }
    let mut lo = items[0].0;
    let mut hi = items[0].0;
    for (p, _) in items.iter() {
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let ext = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let dim = if ext[0] >= ext[1] && ext[0] >= ext[2] {
        0
    } else if ext[1] >= ext[2] {
        1
    } else {
        2
    };
    let mid = len / 2;
    items.select_nth_unstable_by(mid, |a, b| a.0[dim].total_cmp(&b.0[dim]));
    splits.val[node].store(items[mid].0[dim].to_bits(), Ordering::Relaxed);
    splits.dim[node].store(dim as u8, Ordering::Relaxed);
    let (left, right) = items.split_at_mut(mid);
    if len >= PAR_BUILD {
        rayon::join(|| build(2 * node, left, splits), || build(2 * node + 1, right, splits));
    } else {
        build(2 * node, left, splits);
        build(2 * node + 1, right, splits);
    }
}

/// (chord² bits, original index): for non-negative floats the bit order is the numeric order.
type Key = (u64, u32);

impl PointIndex {
    /// Index `(N, 2)` lat/lon degrees; distances will be reported on a sphere of `radius_km`.
    pub fn new<T: Real>(latlon: ArrayView2<T>, radius_km: f64) -> GeoResult<Self> {
        let n = check_latlon_nonempty("latlon", &latlon, "a PointIndex needs at least one point")?;
        if !(radius_km.is_finite() && radius_km > 0.0) {
            return Err(GeoError::parameter("radius_km", "a finite radius > 0 in km", radius_km));
        }
        if n >= u32::MAX as usize {
            return Err(GeoError::TooLarge {
                what: "latlon",
                detail: format!("{n} points; a PointIndex holds fewer than 2^32 - 1"),
            });
        }
        let mut depth = 0u32;
        let mut size = n;
        while size > LEAF {
            size = size.div_ceil(2);
            depth += 1;
        }
        let nodes = 1usize << depth;
        let splits =
            Splits { val: (0..nodes).map(|_| AtomicU64::new(0)).collect(), dim: (0..nodes).map(|_| AtomicU8::new(0)).collect() };
        let mut items: Vec<([f64; 3], u32)> = vec![([0.0; 3], 0); n];
        let chunk = parallel::chunk_len(n, 4096);
        parallel::install(|| {
            items.par_chunks_mut(chunk).enumerate().for_each(|(c, part)| {
                for (j, it) in part.iter_mut().enumerate() {
                    let i = c * chunk + j;
                    *it = (unit_vector(latlon[[i, 0]].to_f64(), latlon[[i, 1]].to_f64()), i as u32);
                }
            });
            build(1, &mut items, &splits);
        });
        Ok(PointIndex {
            radius_km,
            pts: items.iter().map(|x| x.0).collect(),
            ids: items.iter().map(|x| x.1).collect(),
            split_val: splits.val.into_iter().map(|v| f64::from_bits(v.into_inner())).collect(),
            split_dim: splits.dim.into_iter().map(|v| v.into_inner()).collect(),
        })
    }

    /// Number of indexed points.
    pub fn len(&self) -> usize {
        self.pts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    /// Radius of the sphere distances are reported on (km).
    pub fn radius_km(&self) -> f64 {
        self.radius_km
    }

    #[allow(clippy::too_many_arguments)]
    fn search(&self, node: usize, lo: usize, hi: usize, q: &[f64; 3], off: [f64; 3], k: usize, heap: &mut BinaryHeap<Key>) {
        if hi - lo <= LEAF {
            for s in lo..hi {
                let key = (chord2(q, &self.pts[s]).to_bits(), self.ids[s]);
                if heap.len() < k {
                    heap.push(key);
                } else if let Some(mut top) = heap.peek_mut() {
                    if key < *top {
                        *top = key;
                    }
                }
            }
            return;
        }
        let mid = lo + (hi - lo) / 2;
        let d = self.split_dim[node] as usize;
        let diff = q[d] - self.split_val[node];
        let (near, far) = if diff < 0.0 {
            ((2 * node, lo, mid), (2 * node + 1, mid, hi))
        } else {
            ((2 * node + 1, mid, hi), (2 * node, lo, mid))
        };
        self.search(near.0, near.1, near.2, q, off, k, heap);
        let mut off2 = off;
        off2[d] = diff.abs();
        let bound = off2[0] * off2[0] + off2[1] * off2[1] + off2[2] * off2[2];
        let visit = heap.len() < k || heap.peek().is_some_and(|top| bound <= f64::from_bits(top.0));
        if visit {
            self.search(far.0, far.1, far.2, q, off2, k, heap);
        }
    }

    /// The k nearest indexed points of each query `(Q, 2)`: great-circle distances in km
    /// `(Q, k)` ascending, and original indices `(Q, k)`; ties go to the lower index.
    pub fn query<T: Real>(&self, latlon: ArrayView2<T>, k: i64) -> GeoResult<(Array2<f64>, Array2<i64>)> {
        let q = check_latlon("latlon", &latlon)?;
        let n = self.len();
        if k < 1 || k as u64 > n as u64 {
            return Err(GeoError::K { k, n, what: "indexed points" });
        }
        let k = k as usize;
        let mut dist = Array2::<f64>::zeros((q, k));
        let mut idx = Array2::<i64>::zeros((q, k));
        let chunk = parallel::chunk_len(q, 64);
        parallel::install(|| {
            dist.axis_chunks_iter_mut(Axis(0), chunk)
                .into_par_iter()
                .zip(idx.axis_chunks_iter_mut(Axis(0), chunk).into_par_iter())
                .zip(latlon.axis_chunks_iter(Axis(0), chunk).into_par_iter())
                .for_each(|((mut dc, mut ic), qc)| {
                    let mut heap = BinaryHeap::with_capacity(k + 1);
                    for (r, row) in qc.outer_iter().enumerate() {
                        let u = unit_vector(row[0].to_f64(), row[1].to_f64());
                        heap.clear();
                        self.search(1, 0, n, &u, [0.0; 3], k, &mut heap);
                        let mut sorted = std::mem::take(&mut heap).into_vec();
                        sorted.sort_unstable();
                        for (j, &(bits, id)) in sorted.iter().enumerate() {
                            dc[[r, j]] = km_from_chord(f64::from_bits(bits).sqrt(), self.radius_km);
                            ic[[r, j]] = id as i64;
                        }
                        sorted.clear();
                        heap = BinaryHeap::from(sorted);
                    }
                });
        });
        Ok((dist, idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geo::sphere::MEAN_EARTH_RADIUS_KM;

    fn points(n: usize, seed: u64) -> Array2<f64> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut a = Array2::<f64>::zeros((n, 2));
        for i in 0..n {
            a[[i, 0]] = (2.0 * next() - 1.0).asin().to_degrees();
            a[[i, 1]] = 360.0 * next() - 180.0;
        }
        a
    }

    fn brute(pts: &Array2<f64>, q: [f64; 2], k: usize) -> Vec<(u64, u32)> {
        let u = unit_vector(q[0], q[1]);
        let mut all: Vec<(u64, u32)> =
            pts.outer_iter().enumerate().map(|(i, r)| (chord2(&u, &unit_vector(r[0], r[1])).to_bits(), i as u32)).collect();
        all.sort_unstable();
        all.truncate(k);
        all
    }

    #[test]
    fn matches_brute_force_with_ties() {
        let mut pts = points(5000, 1);
        // Duplicates: several copies of some points, so ties must go to the lower index.
        for i in 0..200 {
            pts[[4999 - i, 0]] = pts[[i, 0]];
            pts[[4999 - i, 1]] = pts[[i, 1]];
        }
        let index = PointIndex::new(pts.view(), MEAN_EARTH_RADIUS_KM).unwrap();
        let queries = points(300, 2);
        let mut qs = queries.clone();
        for i in 0..50 {
            qs[[i, 0]] = pts[[i, 0]];
            qs[[i, 1]] = pts[[i, 1]];
        }
        for k in [1usize, 3, 17] {
            let (d, ix) = index.query(qs.view(), k as i64).unwrap();
            for (r, q) in qs.outer_iter().enumerate() {
                let want = brute(&pts, [q[0], q[1]], k);
                for j in 0..k {
                    assert_eq!(ix[[r, j]], want[j].1 as i64, "query {r} k {k} rank {j}");
                    let km = km_from_chord(f64::from_bits(want[j].0).sqrt(), MEAN_EARTH_RADIUS_KM);
                    assert_eq!(d[[r, j]], km);
                }
            }
        }
    }

    #[test]
    fn whole_set_and_errors() {
        let pts = points(40, 3);
        let index = PointIndex::new(pts.view(), 6371.0).unwrap();
        assert_eq!(index.len(), 40);
        let (d, ix) = index.query(pts.slice(ndarray::s![..5, ..]), 40).unwrap();
        for r in 0..5 {
            assert_eq!(ix[[r, 0]], r as i64);
            assert_eq!(d[[r, 0]], 0.0);
            let mut seen: Vec<i64> = ix.row(r).to_vec();
            seen.sort_unstable();
            assert_eq!(seen, (0..40).collect::<Vec<_>>());
            assert!(d.row(r).windows(2).into_iter().all(|w| w[0] <= w[1]));
        }
        assert!(matches!(index.query(pts.view(), 41), Err(GeoError::K { .. })));
        assert!(matches!(index.query(pts.view(), 0), Err(GeoError::K { .. })));
        let empty = Array2::<f64>::zeros((0, 2));
        assert!(matches!(PointIndex::new(empty.view(), 6371.0), Err(GeoError::Empty { .. })));
        assert!(matches!(PointIndex::new(pts.view(), 0.0), Err(GeoError::Parameter { .. })));
        let (d0, _) = index.query(empty.view(), 2).unwrap();
        assert_eq!(d0.dim(), (0, 2));
    }
}
