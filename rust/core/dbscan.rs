//! Exact DBSCAN on the sphere (haversine distance), with scikit-learn's semantics.
//!
//! Semantics (Ester et al., KDD 1996, as implemented by `sklearn.cluster.DBSCAN`):
//! - q is an ε-neighbour of p iff d(p, q) ≤ ε; every point is its own neighbour.
//! - p is a core point iff Σ w(q) over its ε-neighbourhood (itself included) ≥ `min_samples`
//!   (w = 1 without `sample_weight`; weights may be zero or negative).
//! - Core points within ε of each other are in the same cluster; a non-core point within ε of a
//!   core point is a border point of (one of) that core point's clusters; the rest is noise (−1).
//! - Clusters are numbered in order of their lowest-index core point, and a border point goes to
//!   the lowest-numbered cluster that reaches it — exactly what sklearn's depth-first labelling
//!   does when it visits points in index order.
//!
//! Geometry. Points become 3-D unit vectors p = (cos φ cos λ, cos φ sin λ, sin φ). A great-circle
//! radius ε on a sphere of radius R is the Euclidean chord e = 2 sin(ε / 2R); chords are computed
//! as sums of squared coordinate differences (`sphere::chord2`), never as 2 − 2 p·q.
//!
//! The boundary. sklearn (`metric="haversine"`, ball tree) decides a pair by its reduced
//! distance rdist = sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2) ≤ sin²(ε_rad / 2), evaluated in float64
//! on `np.radians(latlon)` with ε_rad = ε_km / R. In exact arithmetic chord² = 4·rdist, and both
//! float evaluations are accurate to about 1e-15·e in chord² units. A pair whose chord² lies
//! outside a band of half-width 1e-12·e + 1e-14·e² around e² is decided by the chord alone; a pair
//! inside the band (a distance within a few parts in 1e9 of ε) is re-decided with sklearn's own
//! formula and operation order, so points at exactly ε (or ε ± 1e-9 km) get sklearn's answer.
//! With fractional weights, a neighbourhood whose total lies within rounding of `min_samples` may
//! be decided differently from sklearn, which sums in its ball-tree order (integer and dyadic
//! weights sum exactly either way).
//! For ε ≥ πR (half the circumference) every pair is a neighbour (sklearn's sin² conversion
//! folds back there and drops far pairs; geofast does not copy that).
//!
//! Algorithm: grid-based exact DBSCAN (Gunawan 2013; Gan & Tao, SIGMOD 2015) in 3-D. Points are
//! hashed into cubes of side s slightly below √((e² − band)/3), so any two points of one cube are
//! certainly neighbours (a cube is a clique). Neighbours of a point lie in the 5×5×5 block of
//! cubes around its own (e/s < 2); each cube's list of occupied cubes whose bounding boxes come
//! within ε is built once by sorted merging (no hashing). Then
//! 1. core points: a cube whose total weight reaches `min_samples` (non-negative weights) is all
//!    core with no distance computed; other points count their neighbours cube by cube, skipping
//!    cubes whose bounding box is farther than ε, and stop as soon as the count suffices;
//! 2. clusters: the core points of a cube form one component; two cubes are joined when some
//!    core pair across them is within ε (early exit; pairs already joined are skipped), with a
//!    lock-free union-find shared by the threads;
//! 3. border points take the lowest cluster label among the cubes holding a core neighbour.
//!
//! Small inputs (N ≤ 4096) whose points are sparse along their widest axis take a simpler,
//! sequential engine instead: sort by that coordinate and sweep a window of width e (at most 16
//! candidate pairs per point, else the grid is used); it is 2–4× faster there and gives the same
//! labels (both engines are tested against the O(n²) oracle and sklearn).
//!
//! Memory is O(N): no point-level neighbour list is ever built; at most about 150 bytes per point
//! plus 4 bytes per pair of neighbouring cubes are live (1M clustered points: the Python process
//! peaks at ≈ 150 MiB RSS, ≈ 110 MiB of it during the call; `geofast bench --area cluster`).
//! For ε below about 4.4 cm on Earth (a clique cube would be under 4e-9 in chord units, where cube
//! indices would overflow their key fields), cubes of side 4e-9 are used without the clique shortcut, and every
//! pair in a cube is checked (quadratic in the number of points of one 2.5 cm cube).

use std::sync::atomic::{AtomicU32, Ordering};

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::core::coords::{check_latlon, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::geo::sphere::{chord2, chord_from_km, unit_vector};
use crate::core::parallel;

/// Smallest cube side used (chord units); keeps cube indices within ±2.5e8 (they are packed in
/// 29–32-bit fields of the sort keys).
const MIN_SIDE: f64 = 4e-9;

/// Marker for "no point" in `u32` position arrays.
const NONE: u32 = u32::MAX;

/// ⌊x⌋ for |x| < 2⁶³ without a libm call (x86-64 before SSE4.1 has no rounding instruction).
#[inline(always)]
fn floor_i64(x: f64) -> i64 {
    let t = x as i64;
    t - ((t as f64) > x) as i64
}

/// Validate the scalar DBSCAN parameters shared by [`dbscan`] and Search-within-Cell.
pub fn check_params(eps_km: f64, min_samples: i64, radius_km: f64) -> GeoResult<()> {
    if !(eps_km.is_finite() && eps_km > 0.0) {
        return Err(GeoError::parameter("eps_km", "a finite distance > 0 in km", eps_km));
    }
    if min_samples < 1 {
        return Err(GeoError::parameter("min_samples", ">= 1 (it counts the point itself)", min_samples));
    }
    if !(radius_km.is_finite() && radius_km > 0.0) {
        return Err(GeoError::parameter("radius_km", "a finite radius > 0 in km", radius_km));
    }
    Ok(())
}

/// The ε-neighbour predicate on unit-vector chords, with sklearn's own formula at the boundary.
#[derive(Clone, Copy, Debug)]
pub struct EpsTest {
    /// Chord² below which a pair is certainly a neighbour.
    pub lo: f64,
    /// Chord² above which a pair is certainly not a neighbour.
    pub hi: f64,
    /// sklearn's reduced radius sin²(ε_rad / 2).
    reduced_r: f64,
    /// ε ≥ πR: every pair is a neighbour.
    pub all: bool,
}

impl EpsTest {
    pub fn new(eps_km: f64, radius_km: f64) -> Self {
        let eps_rad = eps_km / radius_km;
        if eps_rad >= std::f64::consts::PI {
            return EpsTest { lo: f64::INFINITY, hi: f64::INFINITY, reduced_r: 1.0, all: true };
        }
        let e = chord_from_km(eps_km, radius_km);
        let e2 = e * e;
        let band = 1e-12 * e + 1e-14 * e2;
        let t = (0.5 * eps_rad).sin();
        EpsTest { lo: e2 - band, hi: e2 + band, reduced_r: t * t, all: false }
    }

    /// Is a pair with squared chord `c2` a neighbour? `rad` gives both points' (lat, lon) in
    /// radians, needed only for pairs in the boundary band.
    #[inline(always)]
    pub fn within(&self, c2: f64, rad: impl FnOnce() -> ([f64; 2], [f64; 2])) -> bool {
        if c2 < self.lo {
            true
        } else if c2 > self.hi {
            false
        } else {
            let (a, b) = rad();
            sklearn_rdist(a, b) <= self.reduced_r
        }
    }
}

/// scikit-learn's haversine reduced distance, with its operation order
/// (`sklearn/metrics/_dist_metrics.pyx.tp`, `HaversineDistance.rdist`).
#[inline(never)]
fn sklearn_rdist(a: [f64; 2], b: [f64; 2]) -> f64 {
    let sin_0 = (0.5 * (a[0] - b[0])).sin();
    let sin_1 = (0.5 * (a[1] - b[1])).sin();
    sin_0 * sin_0 + a[0].cos() * b[0].cos() * sin_1 * sin_1
}

/// (lat, lon) in radians as `np.radians` computes them.
#[inline]
pub fn radians(lat_deg: f64, lon_deg: f64) -> [f64; 2] {
    [lat_deg.to_radians(), lon_deg.to_radians()]
}

/// Lock-free union-find over `u32` ids: a root is linked under a smaller root by compare-and-swap,
/// `find` halves paths. Parents only ever move to ancestors, so concurrent use is safe; the final
/// partition does not depend on the interleaving.
struct UnionFind {
    parent: Vec<AtomicU32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind { parent: (0..n as u32).map(AtomicU32::new).collect() }
    }

    fn find(&self, mut x: u32) -> u32 {
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

    fn union(&self, a: u32, b: u32) {
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

/// One occupied cube: its points' range in sorted order and their bounding box.
#[derive(Clone, Copy, Debug)]
struct Cell {
    start: u32,
    end: u32,
    bmin: [f64; 3],
    bmax: [f64; 3],
}

impl Cell {
    #[inline(always)]
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Squared distance from `p` to a cell's bounding box: a lower bound of `chord2(p, q)` for every
/// q in the box that holds in floating point too (rounding is monotone).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn box_d2(p: &[f64; 3], c: &Cell) -> f64 {
    let mut o = [0.0f64; 3];
    for d in 0..3 {
        o[d] = if p[d] < c.bmin[d] {
            c.bmin[d] - p[d]
        } else if p[d] > c.bmax[d] {
            p[d] - c.bmax[d]
        } else {
            0.0
        };
    }
    o[0] * o[0] + o[1] * o[1] + o[2] * o[2]
}

/// Squared gap between two cells' bounding boxes: a float-safe lower bound of `chord2(p, q)` for
/// every p in `a` and q in `b`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn box_box_d2(a: &Cell, b: &Cell) -> f64 {
    let mut o = [0.0f64; 3];
    for d in 0..3 {
        o[d] = if b.bmin[d] > a.bmax[d] {
            b.bmin[d] - a.bmax[d]
        } else if a.bmin[d] > b.bmax[d] {
            a.bmin[d] - b.bmax[d]
        } else {
            0.0
        };
    }
    o[0] * o[0] + o[1] * o[1] + o[2] * o[2]
}

/// For every cube, the cubes whose bounding boxes come within ε of its own (itself included),
/// as CSR (`offsets`, `list`).
///
/// Cubes are grouped in 2×2×2 super-cubes, and everything is sorted by (super key, cube key), so
/// a super-cube's cubes are contiguous and the super-cubes are in (X, Y, Z) order. A cube's
/// neighbours (within ±2 cubes per axis) lie in the 3×3×3 super-cubes around its own; for a fixed
/// column offset (dX, dY) those with Z − 1 ≤ Z' ≤ Z + 1 are contiguous and their start moves
/// monotonically with the super-cube, so 9 merge pointers per chunk find the candidates with no
/// hashing or searching; the bounding-box test then keeps the real candidates.
fn neighbour_lists(cells: &[Cell], supers: &[(u128, u32, u32)], hi: f64) -> (Vec<usize>, Vec<u32>) {
    let ns = supers.len();
    let per = parallel::chunk_len(ns, 256);
    let starts: Vec<usize> = (0..ns).step_by(per.max(1)).collect();
    // (dX, dY) offsets as additions to the packed key (X in bits 64.., Y in bits 32..).
    let offs: [u128; 9] = {
        let mut o = [0u128; 9];
        let mut i = 0;
        for dx in -1i128..=1 {
            for dy in -1i128..=1 {
                o[i] = ((dx << 64) + (dy << 32) - 1) as u128;
                i += 1;
            }
        }
        o
    };
    let parts: Vec<(Vec<u32>, Vec<u32>)> = starts
        .par_iter()
        .map(|&s0| {
            let s1 = (s0 + per).min(ns);
            let mut ptr = [0usize; 9];
            for (o, &off) in offs.iter().enumerate() {
                let target = supers[s0].0.wrapping_add(off);
                ptr[o] = supers.partition_point(|sp| sp.0 < target);
            }
            let mut counts = Vec::new();
            let mut list = Vec::new();
            let mut ranges = [(0usize, 0usize); 9];
            for &(key, cs, ce) in &supers[s0..s1] {
                for (o, &off) in offs.iter().enumerate() {
                    let lo = key.wrapping_add(off);
                    let mut q = ptr[o];
                    while q < ns && supers[q].0 < lo {
                        q += 1;
                    }
                    ptr[o] = q;
                    let mut r = q;
                    while r < ns && supers[r].0 <= lo + 2 {
                        r += 1;
                    }
                    ranges[o] = if r > q { (supers[q].1 as usize, supers[r - 1].2 as usize) } else { (0, 0) };
                }
                for a in &cells[cs as usize..ce as usize] {
                    let before = list.len();
                    for &(b0, b1) in &ranges {
                        for (b, cb) in cells[b0..b1].iter().enumerate() {
                            if box_box_d2(a, cb) <= hi {
                                list.push((b0 + b) as u32);
                            }
                        }
                    }
                    counts.push((list.len() - before) as u32);
                }
            }
            (counts, list)
        })
        .collect();
    let total: usize = parts.iter().map(|p| p.1.len()).sum();
    let mut offsets = Vec::with_capacity(cells.len() + 1);
    let mut list = Vec::with_capacity(total);
    offsets.push(0usize);
    for (counts, l) in parts {
        for cnt in counts {
            offsets.push(offsets.last().copied().unwrap_or(0) + cnt as usize);
        }
        list.extend_from_slice(&l);
    }
    (offsets, list)
}

/// Points sorted by cube, the occupied cubes, and the neighbouring cubes of each cube.
struct Grid<'a, T: Real> {
    latlon: ArrayView2<'a, T>,
    test: EpsTest,
    clique: bool,
    /// Unit vectors in sorted (cube) order.
    pts: Vec<[f64; 3]>,
    /// Original index of each sorted position.
    ids: Vec<u32>,
    /// Cube of each sorted position.
    cell_of: Vec<u32>,
    cells: Vec<Cell>,
    /// Neighbouring cells of each cell (CSR, see [`neighbour_lists`]).
    nb_offsets: Vec<usize>,
    nb_list: Vec<u32>,
}

impl<'a, T: Real> Grid<'a, T> {
    fn build(latlon: ArrayView2<'a, T>, test: EpsTest) -> Self {
        let n = latlon.nrows();
        let clique_side = ((test.lo.max(0.0) / 3.0).sqrt() - 1e-15) * (1.0 - 1e-9);
        let (side, clique) = if clique_side >= MIN_SIDE { (clique_side, true) } else { (MIN_SIDE, false) };
        let inv = 1.0 / side;

        // Unit vectors and sort keys, in parallel: (super column, super z | octant | index).
        // Super-cube (X, Y, Z) = (x, y, z) >> 1; |x| ≤ 5e8 so X, Y fit 32 bits and Z 29 bits
        // with their biases.
        let chunk = parallel::chunk_len(n, 4096);
        let mut vecs = vec![[0.0f64; 3]; n];
        let mut keys: Vec<(u64, u64)> = vec![(0, 0); n];
        vecs.par_chunks_mut(chunk).zip(keys.par_chunks_mut(chunk)).enumerate().for_each(|(ci, (vs, ks))| {
            let base = ci * chunk;
            for (j, (v, k)) in vs.iter_mut().zip(ks.iter_mut()).enumerate() {
                let i = base + j;
                let u = unit_vector(latlon[[i, 0]].to_f64(), latlon[[i, 1]].to_f64());
                *v = u;
                let ix = floor_i64(u[0] * inv);
                let iy = floor_i64(u[1] * inv);
                let iz = floor_i64(u[2] * inv);
                let col = (((ix >> 1) + (1 << 31)) as u64) << 32 | ((iy >> 1) + (1 << 31)) as u64;
                let oct = ((ix & 1) << 2 | (iy & 1) << 1 | (iz & 1)) as u64;
                let zz = ((iz >> 1) + (1 << 28)) as u64;
                *k = (col, zz << 35 | oct << 32 | i as u64);
            }
        });
        keys.par_sort_unstable();

        // Sorted positions → original ids and vectors.
        let ids: Vec<u32> = keys.iter().map(|k| k.1 as u32).collect();
        let mut pts = vec![[0.0f64; 3]; n];
        pts.par_iter_mut().zip(ids.par_iter()).for_each(|(p, &i)| *p = vecs[i as usize]);
        drop(vecs);

        // Runs of equal keys are cubes; runs of equal super keys are super-cubes.
        let mut cells: Vec<Cell> = Vec::new();
        let mut supers: Vec<(u128, u32, u32)> = Vec::new();
        let mut cell_of = vec![0u32; n];
        let mut s = 0usize;
        while s < n {
            let (col, rest) = keys[s];
            let mut e = s + 1;
            while e < n && keys[e].0 == col && keys[e].1 >> 32 == rest >> 32 {
                e += 1;
            }
            let mut bmin = pts[s];
            let mut bmax = pts[s];
            for p in &pts[s + 1..e] {
                for d in 0..3 {
                    bmin[d] = bmin[d].min(p[d]);
                    bmax[d] = bmax[d].max(p[d]);
                }
            }
            let c = cells.len() as u32;
            cell_of[s..e].fill(c);
            cells.push(Cell { start: s as u32, end: e as u32, bmin, bmax });
            let skey = (col as u128) << 32 | (rest >> 35) as u128;
            match supers.last_mut() {
                Some(last) if last.0 == skey => last.2 = c + 1,
                _ => supers.push((skey, c, c + 1)),
            }
            s = e;
        }
        drop(keys);

        let (nb_offsets, nb_list) = neighbour_lists(&cells, &supers, test.hi);

        Grid { latlon, test, clique, pts, ids, cell_of, cells, nb_offsets, nb_list }
    }

    #[inline]
    fn rad(&self, s: usize) -> [f64; 2] {
        let i = self.ids[s] as usize;
        radians(self.latlon[[i, 0]].to_f64(), self.latlon[[i, 1]].to_f64())
    }

    /// Are sorted positions `s` and `t` ε-neighbours?
    #[inline(always)]
    fn within(&self, s: usize, t: usize) -> bool {
        let c2 = chord2(&self.pts[s], &self.pts[t]);
        self.test.within(c2, || (self.rad(s), self.rad(t)))
    }

    /// Cells whose points may be within ε of cell `c`'s (itself included).
    #[inline]
    fn neighbours(&self, c: usize) -> &[u32] {
        &self.nb_list[self.nb_offsets[c]..self.nb_offsets[c + 1]]
    }

    /// Split `out` (indexed by sorted position) into chunks aligned with cube boundaries.
    fn cell_chunks<'o, O>(&self, out: &'o mut [O]) -> Vec<(std::ops::Range<usize>, usize, &'o mut [O])> {
        let nc = self.cells.len();
        let per = parallel::chunk_len(nc, 64);
        let mut res = Vec::with_capacity(nc.div_ceil(per));
        let mut rest = out;
        let mut c0 = 0;
        while c0 < nc {
            let c1 = (c0 + per).min(nc);
            let start = self.cells[c0].start as usize;
            let len = self.cells[c1 - 1].end as usize - start;
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            res.push((c0..c1, start, head));
            rest = tail;
            c0 = c1;
        }
        res
    }
}

/// DBSCAN labels (−1 = noise) of `(N, 2)` lat/lon degrees with haversine radius `eps_km` on a
/// sphere of radius `radius_km`. `sample_weight` (length N, finite, any sign) replaces the count
/// of neighbours by their total weight.
pub fn dbscan<T: Real>(
    latlon: ArrayView2<T>,
    eps_km: f64,
    min_samples: i64,
    sample_weight: Option<ArrayView1<f64>>,
    radius_km: f64,
) -> GeoResult<Vec<i64>> {
    let n = check_latlon("latlon", &latlon)?;
    check_params(eps_km, min_samples, radius_km)?;
    if let Some(w) = &sample_weight {
        if w.len() != n {
            return Err(GeoError::Mismatch {
                what: "len(sample_weight) must equal the number of points".into(),
                left: w.len(),
                right: n,
            });
        }
        for (row, &v) in w.iter().enumerate() {
            if !v.is_finite() {
                return Err(GeoError::NonFinite { name: "sample_weight", row, value: v });
            }
        }
    }
    if n >= NONE as usize {
        return Err(GeoError::TooLarge { what: "latlon", detail: format!("{n} points; dbscan handles fewer than 2^32 - 1") });
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let m = min_samples as f64;
    let test = EpsTest::new(eps_km, radius_km);

    if test.all {
        // Every point's neighbourhood is the whole set.
        let total: f64 = match &sample_weight {
            Some(w) => w.iter().sum(),
            None => n as f64,
        };
        return Ok(vec![if total >= m { 0 } else { -1 }; n]);
    }

    if n <= SWEEP_MAX_N {
        if let Some(labels) = sweep(latlon, m, sample_weight, &test) {
            return Ok(labels);
        }
    }
    // One crossing into the pool; the phases below run inline on its workers.
    Ok(parallel::install(|| cluster(latlon, m, sample_weight, test)))
}

/// Largest input the sort-and-sweep path takes.
const SWEEP_MAX_N: usize = 1 << 12;
/// The sweep path gives up beyond this many candidate pairs per point (dense data: the grid's
/// clique cubes are then cheaper).
const SWEEP_MAX_PAIRS_PER_POINT: usize = 16;

/// Cluster numbers from `root_min` (component root → lowest original index of its core points,
/// `NONE` for non-roots): components numbered 0, 1, … in order of that index, as sklearn's
/// labelling does. Returns root → label, reusing the buffer.
fn number_roots(mut root_min: Vec<u32>) -> Vec<u32> {
    let mut roots: Vec<(u32, u32)> =
        root_min.iter().enumerate().filter(|(_, &v)| v != NONE).map(|(r, &v)| (v, r as u32)).collect();
    roots.sort_unstable();
    for (label, &(_, r)) in roots.iter().enumerate() {
        root_min[r as usize] = label as u32;
    }
    root_min
}

/// Sequential union-find with path halving, linking the larger root under the smaller.
fn find_root(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let gp = parent[parent[x as usize] as usize];
        parent[x as usize] = gp;
        x = gp;
    }
    x
}

/// Small inputs: sort the unit vectors along their widest axis and sweep a window of width e
/// (pairs farther apart along one axis are farther apart in 3-D). Three passes over the window
/// pairs count neighbourhood weights, join core pairs and label border points; no pair list is
/// stored. Returns `None` (use the grid) when the windows hold more than
/// [`SWEEP_MAX_PAIRS_PER_POINT`] candidates per point. Same predicate and semantics as the grid.
#[allow(clippy::needless_range_loop)]
fn sweep<T: Real>(latlon: ArrayView2<T>, m: f64, sample_weight: Option<ArrayView1<f64>>, test: &EpsTest) -> Option<Vec<i64>> {
    let n = latlon.nrows();
    let vecs: Vec<[f64; 3]> = latlon.outer_iter().map(|r| unit_vector(r[0].to_f64(), r[1].to_f64())).collect();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for v in &vecs {
        for d in 0..3 {
            lo[d] = lo[d].min(v[d]);
            hi[d] = hi[d].max(v[d]);
        }
    }
    let ext = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let axis = if ext[0] >= ext[1] && ext[0] >= ext[2] {
        0
    } else if ext[1] >= ext[2] {
        1
    } else {
        2
    };
    let mut ids: Vec<u32> = (0..n as u32).collect();
    ids.sort_unstable_by(|&a, &b| vecs[a as usize][axis].total_cmp(&vecs[b as usize][axis]));
    let pts: Vec<[f64; 3]> = ids.iter().map(|&i| vecs[i as usize]).collect();
    drop(vecs);

    // Window ends: the first t > s with (c_t − c_s)² > hi, non-decreasing in s. Any pair within
    // ε has chord² ≤ hi and so (c_t − c_s)² ≤ hi (rounding is monotone).
    let mut end = vec![0u32; n];
    let mut t = 0usize;
    let mut pairs = 0usize;
    let budget = SWEEP_MAX_PAIRS_PER_POINT * n;
    for s in 0..n {
        t = t.max(s + 1);
        while t < n && {
            let d = pts[t][axis] - pts[s][axis];
            d * d <= test.hi
        } {
            t += 1;
        }
        end[s] = t as u32;
        pairs += t - s - 1;
        if pairs > budget {
            return None;
        }
    }
    let rad = |s: usize| {
        let i = ids[s] as usize;
        radians(latlon[[i, 0]].to_f64(), latlon[[i, 1]].to_f64())
    };
    let within = |s: usize, t: usize| test.within(chord2(&pts[s], &pts[t]), || (rad(s), rad(t)));
    let w = |s: usize| sample_weight.as_ref().map_or(1.0, |w| w[ids[s] as usize]);

    // 1. Neighbourhood weights (itself included).
    let mut acc: Vec<f64> = (0..n).map(w).collect();
    for s in 0..n {
        for t in s + 1..end[s] as usize {
            if within(s, t) {
                acc[s] += w(t);
                acc[t] += w(s);
            }
        }
    }
    let core: Vec<bool> = acc.iter().map(|&a| a >= m).collect();

    // 2. Components of core pairs.
    let mut parent: Vec<u32> = (0..n as u32).collect();
    for s in 0..n {
        if !core[s] {
            continue;
        }
        for t in s + 1..end[s] as usize {
            if core[t] {
                let (a, b) = (find_root(&mut parent, s as u32), find_root(&mut parent, t as u32));
                if a != b && within(s, t) {
                    let (h, l) = if a > b { (a, b) } else { (b, a) };
                    parent[h as usize] = l;
                }
            }
        }
    }
    let mut root_min = vec![NONE; n];
    for s in 0..n {
        if core[s] {
            let r = find_root(&mut parent, s as u32) as usize;
            root_min[r] = root_min[r].min(ids[s]);
        }
    }
    let root_label = number_roots(root_min);
    let mut label: Vec<i64> =
        (0..n).map(|s| if core[s] { root_label[find_root(&mut parent, s as u32) as usize] as i64 } else { -1 }).collect();

    // 3. Border points: the lowest label among core neighbours.
    for s in 0..n {
        for t in s + 1..end[s] as usize {
            if core[s] != core[t] && within(s, t) {
                let (c, b) = if core[s] { (s, t) } else { (t, s) };
                if label[b] == -1 || label[c] < label[b] {
                    label[b] = label[c];
                }
            }
        }
    }
    let mut out = vec![-1i64; n];
    for (s, &l) in label.iter().enumerate() {
        out[ids[s] as usize] = l;
    }
    Some(out)
}

/// The grid algorithm on validated input (inside geofast's pool).
#[allow(clippy::needless_range_loop)]
fn cluster<T: Real>(latlon: ArrayView2<T>, m: f64, sample_weight: Option<ArrayView1<f64>>, test: EpsTest) -> Vec<i64> {
    let n = latlon.nrows();
    let grid = Grid::build(latlon, test);
    let weights: Option<Vec<f64>> = sample_weight.map(|w| grid.ids.iter().map(|&i| w[i as usize]).collect());
    let nonneg = weights.as_ref().is_none_or(|w| w.iter().all(|&x| x >= 0.0));
    let weight = |s: usize| weights.as_ref().map_or(1.0, |w| w[s]);
    let cells = &grid.cells;
    let cell_w: Vec<f64> = match &weights {
        None => cells.iter().map(|c| (c.end - c.start) as f64).collect(),
        Some(w) => cells.iter().map(|c| w[c.range()].iter().sum()).collect(),
    };

    // 1. Core points.
    let mut core = vec![false; n];
    parallel::install(|| {
        grid.cell_chunks(&mut core).into_par_iter().for_each(|(crange, start, out)| {
            for c in crange {
                let cell = &cells[c];
                let mine = &mut out[cell.start as usize - start..cell.end as usize - start];
                if grid.clique && nonneg && cell_w[c] >= m {
                    mine.fill(true);
                    continue;
                }
                let nb = grid.neighbours(c);
                for (s, flag) in cell.range().zip(mine.iter_mut()) {
                    let p = &grid.pts[s];
                    let mut acc = if grid.clique { cell_w[c] } else { 0.0 };
                    'cells: for &b in nb {
                        let b = b as usize;
                        if grid.clique && b == c {
                            continue;
                        }
                        let bc = &cells[b];
                        if box_d2(p, bc) > test.hi {
                            continue;
                        }
                        for t in bc.range() {
                            if grid.within(s, t) {
                                acc += weight(t);
                                if nonneg && acc >= m {
                                    break 'cells;
                                }
                            }
                        }
                    }
                    *flag = acc >= m;
                }
            }
        });
    });

    // First core position of each cube (lowest original index among its cores).
    let first_core: Vec<u32> =
        parallel::install(|| cells.par_iter().map(|c| c.range().find(|&s| core[s]).map_or(NONE, |s| s as u32)).collect());

    // 2. Connect core points.
    let uf = UnionFind::new(n);
    parallel::install(|| {
        let per = parallel::chunk_len(cells.len(), 64);
        (0..cells.len()).into_par_iter().with_min_len(per).for_each_init(
            || (Vec::new(), Vec::new()),
            |(ca, cb): &mut (Vec<u32>, Vec<u32>), a| {
                let ra = first_core[a];
                if ra == NONE {
                    return;
                }
                let cell_a = &cells[a];
                let nb = grid.neighbours(a);
                if grid.clique {
                    for &b in nb {
                        let b = b as usize;
                        let rb = first_core[b];
                        if b <= a || rb == NONE {
                            continue;
                        }
                        if uf.find(ra) == uf.find(rb) {
                            continue;
                        }
                        let cell_b = &cells[b];
                        ca.clear();
                        ca.extend(
                            (ra as usize..cell_a.end as usize)
                                .filter(|&s| core[s] && box_d2(&grid.pts[s], cell_b) <= test.hi)
                                .map(|s| s as u32),
                        );
                        if ca.is_empty() {
                            continue;
                        }
                        cb.clear();
                        cb.extend(
                            (rb as usize..cell_b.end as usize)
                                .filter(|&t| core[t] && box_d2(&grid.pts[t], cell_a) <= test.hi)
                                .map(|t| t as u32),
                        );
                        let joined = ca.iter().any(|&s| cb.iter().any(|&t| grid.within(s as usize, t as usize)));
                        if joined {
                            uf.union(ra, rb);
                        }
                    }
                } else {
                    for s in ra as usize..cell_a.end as usize {
                        if !core[s] {
                            continue;
                        }
                        for &b in nb {
                            let b = b as usize;
                            if b < a || first_core[b] == NONE {
                                continue;
                            }
                            let cell_b = &cells[b];
                            if box_d2(&grid.pts[s], cell_b) > test.hi {
                                continue;
                            }
                            let from = if b == a { s + 1 } else { first_core[b] as usize };
                            for t in from..cell_b.end as usize {
                                if core[t] && uf.find(s as u32) != uf.find(t as u32) && grid.within(s, t) {
                                    uf.union(s as u32, t as u32);
                                }
                            }
                        }
                    }
                }
            },
        );
    });

    // Cluster numbers: components ordered by their lowest original core index.
    let rep = |s: usize| -> u32 {
        if grid.clique {
            first_core[grid.cell_of[s] as usize]
        } else {
            s as u32
        }
    };
    let mut root_min = vec![NONE; n];
    for s in 0..n {
        if core[s] {
            let r = uf.find(rep(s)) as usize;
            root_min[r] = root_min[r].min(grid.ids[s]);
        }
    }
    let root_label = number_roots(root_min);
    let mut label_sorted = vec![-1i64; n];
    for s in 0..n {
        if core[s] {
            label_sorted[s] = root_label[uf.find(rep(s)) as usize] as i64;
        }
    }
    // In clique mode every core of a cube has the cube's label.
    let cell_label: Vec<i64> = first_core.iter().map(|&f| if f == NONE { -1 } else { label_sorted[f as usize] }).collect();

    // 3. Border points: the lowest label among reachable clusters.
    let core_label = label_sorted.clone();
    parallel::install(|| {
        grid.cell_chunks(&mut label_sorted).into_par_iter().for_each(|(crange, start, out)| {
            for c in crange {
                let cell = &cells[c];
                if cell.range().all(|s| core[s]) {
                    continue;
                }
                let nb = grid.neighbours(c);
                for s in cell.range() {
                    if core[s] {
                        continue;
                    }
                    let p = &grid.pts[s];
                    let mut best = i64::MAX;
                    if grid.clique && cell_label[c] >= 0 {
                        best = cell_label[c];
                    }
                    for &b in nb {
                        let b = b as usize;
                        let lb = cell_label[b];
                        if lb < 0 || (grid.clique && (b == c || lb >= best)) {
                            continue;
                        }
                        let bc = &cells[b];
                        if box_d2(p, bc) > test.hi {
                            continue;
                        }
                        for t in first_core[b] as usize..bc.end as usize {
                            let lt = core_label[t];
                            if core[t] && lt < best && grid.within(s, t) {
                                best = lt;
                                if grid.clique {
                                    break;
                                }
                            }
                        }
                    }
                    if best != i64::MAX {
                        out[s - start] = best;
                    }
                }
            }
        });
    });

    let mut labels = vec![-1i64; n];
    for (s, &l) in label_sorted.iter().enumerate() {
        labels[grid.ids[s] as usize] = l;
    }
    labels
}

/// Textbook DBSCAN by explicit neighbourhoods and sklearn's depth-first labelling, O(n²): for
/// the handful of points of one Search-within-Cell query, and as the oracle of the tests.
/// `pts` are unit vectors, `rad` the same points' (lat, lon) in radians.
pub fn dbscan_bruteforce(
    pts: &[[f64; 3]],
    rad: &[[f64; 2]],
    weights: Option<&[f64]>,
    min_samples: f64,
    test: &EpsTest,
) -> Vec<i64> {
    let n = pts.len();
    let neighbourhoods: Vec<Vec<usize>> = (0..n)
        .map(|i| (0..n).filter(|&j| test.all || test.within(chord2(&pts[i], &pts[j]), || (rad[i], rad[j]))).collect())
        .collect();
    let core: Vec<bool> = neighbourhoods
        .iter()
        .map(|nb| {
            let total: f64 = match weights {
                Some(w) => nb.iter().map(|&j| w[j]).sum(),
                None => nb.len() as f64,
            };
            total >= min_samples
        })
        .collect();
    let mut labels = vec![-1i64; n];
    let mut label = 0i64;
    let mut stack = Vec::new();
    for start in 0..n {
        if labels[start] != -1 || !core[start] {
            continue;
        }
        let mut i = start;
        loop {
            if labels[i] == -1 {
                labels[i] = label;
                if core[i] {
                    stack.extend(neighbourhoods[i].iter().copied().filter(|&v| labels[v] == -1));
                }
            }
            match stack.pop() {
                Some(v) => i = v,
                None => break,
            }
        }
        label += 1;
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geo::sphere::MEAN_EARTH_RADIUS_KM;
    use ndarray::Array2;

    /// Small deterministic generator (SplitMix64) so the tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self, a: f64, b: f64) -> f64 {
            a + (b - a) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    /// Blobs of points around random centres (lat/lon offsets of a few km), some near the poles
    /// and the antimeridian, plus uniform noise and exact duplicates.
    fn clustered(rng: &mut Rng, n: usize, blobs: usize, spread_deg: f64) -> Array2<f64> {
        let mut centres: Vec<(f64, f64)> = (0..blobs).map(|_| (rng.uniform(-80.0, 80.0), rng.uniform(-180.0, 180.0))).collect();
        centres.push((89.99, 0.0));
        centres.push((0.0, 179.999));
        let mut a = Array2::<f64>::zeros((n, 2));
        for i in 0..n {
            let r = rng.next() % 10;
            let (lat, lon) = if r == 0 {
                (rng.uniform(-90.0, 90.0), rng.uniform(-180.0, 180.0))
            } else if r == 1 && i > 0 {
                let j = (rng.next() % i as u64) as usize;
                (a[[j, 0]], a[[j, 1]])
            } else {
                let (clat, clon) = centres[(rng.next() % centres.len() as u64) as usize];
                let lat = (clat + rng.uniform(-spread_deg, spread_deg)).clamp(-90.0, 90.0);
                let mut lon = clon + rng.uniform(-spread_deg, spread_deg);
                if lon > 180.0 {
                    lon -= 360.0;
                }
                if lon < -180.0 {
                    lon += 360.0;
                }
                (lat, lon)
            };
            a[[i, 0]] = lat;
            a[[i, 1]] = lon;
        }
        a
    }

    fn oracle(a: &Array2<f64>, eps_km: f64, m: i64, w: Option<&[f64]>) -> Vec<i64> {
        let pts: Vec<[f64; 3]> = a.outer_iter().map(|r| unit_vector(r[0], r[1])).collect();
        let rad: Vec<[f64; 2]> = a.outer_iter().map(|r| radians(r[0], r[1])).collect();
        let test = EpsTest::new(eps_km, MEAN_EARTH_RADIUS_KM);
        dbscan_bruteforce(&pts, &rad, w, m as f64, &test)
    }

    #[test]
    fn grid_matches_bruteforce_on_clustered_data() {
        let mut rng = Rng(7);
        let mut swept_cases = 0;
        for trial in 0..40 {
            let n = 50 + (rng.next() % 400) as usize;
            let a = clustered(&mut rng, n, 1 + trial % 5, 0.05);
            let eps = [0.5, 2.0, 5.0, 20.0][trial % 4];
            let m = 1 + (rng.next() % 6) as i64;
            let weights: Option<Vec<f64>> = match trial % 3 {
                0 => None,
                1 => Some((0..n).map(|_| (rng.next() % 4) as f64 * 0.5).collect()),
                _ => Some((0..n).map(|_| (rng.next() % 5) as f64 - 1.0).collect()),
            };
            let wv = weights.as_ref().map(|w| ndarray::ArrayView1::from(w.as_slice()));
            let got = dbscan(a.view(), eps, m, wv, MEAN_EARTH_RADIUS_KM).unwrap();
            let want = oracle(&a, eps, m, weights.as_deref());
            assert_eq!(got, want, "trial {trial} n={n} eps={eps} m={m}");
            // Both engines, whichever `dbscan` picked.
            let test = EpsTest::new(eps, MEAN_EARTH_RADIUS_KM);
            let grid = parallel::install(|| cluster(a.view(), m as f64, wv, test));
            assert_eq!(grid, want, "grid: trial {trial}");
            if let Some(swept) = sweep(a.view(), m as f64, wv, &test) {
                assert_eq!(swept, want, "sweep: trial {trial}");
                swept_cases += 1;
            }
        }
        assert!(swept_cases > 5 && swept_cases < 40, "{swept_cases}");
    }

    #[test]
    fn tiny_eps_uses_checked_cells() {
        // ε of 1 cm: cubes are not cliques; results must still match.
        let mut rng = Rng(3);
        let mut a = clustered(&mut rng, 300, 2, 1e-7);
        a[[5, 0]] = a[[4, 0]];
        a[[5, 1]] = a[[4, 1]];
        for m in [1, 2, 3] {
            let got = dbscan(a.view(), 1e-5, m, None, MEAN_EARTH_RADIUS_KM).unwrap();
            assert_eq!(got, oracle(&a, 1e-5, m, None));
        }
    }

    #[test]
    fn boundary_pairs_follow_the_haversine_formula() {
        // Two points on a meridian at ε ± 1e-9 km and at exactly ε.
        let r = MEAN_EARTH_RADIUS_KM;
        let eps = 3.0;
        for (dist, expect_pair) in [(eps - 1e-9, true), (eps + 1e-9, false)] {
            let a = ndarray::array![[10.0, 20.0], [10.0 + (dist / r).to_degrees(), 20.0]];
            let got = dbscan(a.view(), eps, 2, None, r).unwrap();
            assert_eq!(got, if expect_pair { vec![0, 0] } else { vec![-1, -1] }, "{dist}");
        }
        let a = ndarray::array![[10.0, 20.0], [10.0 + (eps / r).to_degrees(), 20.0]];
        let got = dbscan(a.view(), eps, 2, None, r).unwrap();
        let rdist = sklearn_rdist(radians(10.0, 20.0), radians(a[[1, 0]], 20.0));
        let t = (0.5 * (eps / r)).sin();
        assert_eq!(got[0] == 0, rdist <= t * t);
    }

    #[test]
    fn labels_are_in_discovery_order_and_borders_take_the_lowest() {
        let r = MEAN_EARTH_RADIUS_KM;
        let d = |km: f64| (km / r).to_degrees();
        // Cluster B (indices 0..9) east of cluster A (10..19); point 9 lies within ε of one core
        // of each but is not core itself; point 19 is noise.
        let mut rows = Vec::new();
        for j in 0..9 {
            rows.push([0.0, d(2.47 + 0.01 * j as f64)]);
        }
        rows.push([0.0, d(1.275)]);
        for j in 0..9 {
            rows.push([0.0, d(0.01 * j as f64)]);
        }
        rows.push([50.0, 50.0]);
        let a = Array2::from(rows);
        let got = dbscan(a.view(), 1.2, 8, None, r).unwrap();
        let mut want = vec![0i64; 10];
        want.extend(vec![1i64; 9]);
        want.push(-1);
        assert_eq!(got, want);
        assert_eq!(oracle(&a, 1.2, 8, None), want);
    }

    #[test]
    fn errors_and_edges() {
        let a = ndarray::array![[0.0, 0.0]];
        let r = MEAN_EARTH_RADIUS_KM;
        assert!(matches!(dbscan(a.view(), 0.0, 1, None, r), Err(GeoError::Parameter { .. })));
        assert!(matches!(dbscan(a.view(), f64::NAN, 1, None, r), Err(GeoError::Parameter { .. })));
        assert!(matches!(dbscan(a.view(), 1.0, 0, None, r), Err(GeoError::Parameter { .. })));
        assert!(matches!(dbscan(a.view(), 1.0, 1, None, -1.0), Err(GeoError::Parameter { .. })));
        let w = [1.0, 2.0];
        assert!(matches!(dbscan(a.view(), 1.0, 1, Some(ArrayView1::from(&w[..])), r), Err(GeoError::Mismatch { .. })));
        let w = [f64::INFINITY];
        assert!(matches!(dbscan(a.view(), 1.0, 1, Some(ArrayView1::from(&w[..])), r), Err(GeoError::NonFinite { .. })));
        assert!(dbscan(Array2::<f64>::zeros((0, 2)).view(), 1.0, 1, None, r).unwrap().is_empty());
        // ε beyond half the circumference: one cluster of everything.
        let b = ndarray::array![[0.0, 0.0], [0.0, 180.0], [90.0, 0.0]];
        assert_eq!(dbscan(b.view(), 30_000.0, 3, None, r).unwrap(), vec![0, 0, 0]);
        assert_eq!(dbscan(b.view(), 30_000.0, 4, None, r).unwrap(), vec![-1, -1, -1]);
    }

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
}
