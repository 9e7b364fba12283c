//! The grid engine: exact DBSCAN on 3-D unit vectors in O(N) memory, in parallel.
//!
//! Grid-based exact DBSCAN (Gunawan, "A faster algorithm for DBSCAN", master's thesis, TU
//! Eindhoven 2013; Gan & Tao, "DBSCAN revisited", SIGMOD 2015), in 3-D. With e the chord of ε and
//! `lo` = e² − band the chord² below which a pair is certainly a neighbour ([`EpsTest`]):
//! - points are hashed into cubes of side s = (√(lo/3) − 1e-15)·(1 − 1e-9), slightly below the
//!   side whose diagonal is √lo, so any two points of one cube are certainly neighbours (a cube
//!   is a clique);
//! - since e/s < 2, a point's neighbours lie in the 5×5×5 block of cubes around its own; each
//!   cube's list of occupied cubes whose bounding boxes come within ε is built once by sorted
//!   merging over 2×2×2 super-cubes ([`neighbour_lists`]; no hashing, no searching);
//! 1. core points: a cube whose total weight reaches `min_samples` (non-negative weights) is all
//!    core with no distance computed; other points count their neighbours cube by cube, skipping
//!    cubes whose bounding box is farther than ε, and stop as soon as the count suffices;
//! 2. clusters: the core points of a cube form one component; two cubes are joined when some
//!    core pair across them is within ε (early exit; pairs already joined are skipped), with the
//!    lock-free [`UnionFind`] shared by the threads;
//! 3. border points take the lowest cluster label among the cubes holding a core neighbour.
//!
//! Constants: `MIN_SIDE` = 4e-9 (chord units) is the smallest cube side, which keeps cube indices
//! within ±2.5e8 so that they pack into the 29–32-bit fields of the sort keys. For ε below about
//! 4.4 cm on Earth (a clique cube would be smaller than that), cubes of side 4e-9 are used without
//! the clique shortcut and every pair in a cube is checked (quadratic in the number of points of
//! one 2.5 cm cube).
//!
//! Memory is O(N): no point-level neighbour list is ever built; at most about 150 bytes per point
//! plus 4 bytes per pair of neighbouring cubes are live (1M clustered points: the Python process
//! peaks at ≈ 150 MiB RSS, ≈ 110 MiB of it during the call; `geofast bench --area cluster`).

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;

use super::eps::{radians, EpsTest};
use super::labels::{number_roots, UnionFind, NONE};
use crate::core::coords::Real;
use crate::core::geo::sphere::{chord2, unit_vector};
use crate::core::parallel;

/// Smallest cube side used (chord units); keeps cube indices within ±2.5e8 (they are packed in
/// 29–32-bit fields of the sort keys).
const MIN_SIDE: f64 = 4e-9;

/// ⌊x⌋ for |x| < 2⁶³ without a libm call (x86-64 before SSE4.1 has no rounding instruction).
#[inline(always)]
fn floor_i64(x: f64) -> i64 {
    let t = x as i64;
    t - ((t as f64) > x) as i64
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

/// The grid algorithm on validated input (inside geofast's pool).
#[allow(clippy::needless_range_loop)]
pub(super) fn cluster<T: Real>(latlon: ArrayView2<T>, m: f64, sample_weight: Option<ArrayView1<f64>>, test: EpsTest) -> Vec<i64> {
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
