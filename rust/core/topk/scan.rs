//! The scan driver: every query against every gallery row, in cache-sized tiles, on
//! geofast's thread pool, without ever holding a B × N score matrix.
//!
//! Layout of the work (all sizes depend only on N, D and the storage type, never on the thread
//! count or the batch, so results are reproducible bit for bit):
//! * a tile is ~256 KiB of gallery rows (16..=1024 rows): it is scored against a super-block of
//!   queries (~512 KiB of packed queries, at most 256) while it sits in L2, into a score buffer
//!   of super-block × tile floats;
//! * each query's tile scores then go through the threshold scan (`kernels::scan_tile`) and,
//!   when asked, the tile log-sum-exp;
//! * tiles are grouped into at most 64 chunks; chunks × super-blocks run in parallel; each chunk
//!   keeps its own per-query state and chunks are merged in index order.

use rayon::prelude::*;
use std::cell::RefCell;

use super::kernels::{self, F16Rows, F32Rows, I8Rows};
use super::select::{best_k, Hit, Lse, QState};
use crate::core::parallel;
use crate::core::simd::Isa;

/// Packed f32 queries: `n` rows of `dp` floats (zero-padded from `d`).
pub struct PackedF32 {
    pub data: Vec<f32>,
    pub n: usize,
    pub d: usize,
    pub dp: usize,
}

impl PackedF32 {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dp..(i + 1) * self.dp]
    }
}

/// Packed i16 queries for int8 codes, with one f32 scale per query.
pub struct PackedI16 {
    pub data: Vec<i16>,
    pub scale: Vec<f32>,
    pub n: usize,
    pub dp: usize,
}

/// Something that scores blocks of queries against blocks of gallery rows.
pub trait Scorer: Sync {
    type Q: Sync;
    fn n_rows(&self) -> usize;
    /// Bytes per stored row (sizes tiles).
    fn row_bytes(&self) -> usize;
    /// Bytes per packed query (sizes super-blocks).
    fn query_bytes(&self, q: &Self::Q) -> usize;
    /// Scores of queries `q0..q1` against rows `r0..r1` into `out[(i - q0) * ldo + (r - r0)]`.
    #[allow(clippy::too_many_arguments)]
    fn score(&self, isa: Isa, q: &Self::Q, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize);
}

impl Scorer for F32Rows<'_> {
    type Q = PackedF32;
    fn n_rows(&self) -> usize {
        self.n
    }
    fn row_bytes(&self) -> usize {
        self.d * 4
    }
    fn query_bytes(&self, q: &PackedF32) -> usize {
        q.dp * 4
    }
    fn score(&self, isa: Isa, q: &PackedF32, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
        kernels::score_f32(isa, &q.data[q0 * q.dp..q1 * q.dp], q1 - q0, q.dp, self, r0, r1, out, ldo);
    }
}

impl Scorer for F16Rows<'_> {
    type Q = PackedF32;
    fn n_rows(&self) -> usize {
        self.n
    }
    fn row_bytes(&self) -> usize {
        self.d * 2
    }
    fn query_bytes(&self, q: &PackedF32) -> usize {
        q.dp * 4
    }
    fn score(&self, isa: Isa, q: &PackedF32, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
        kernels::score_f16(isa, &q.data[q0 * q.dp..q1 * q.dp], q1 - q0, q.dp, self, r0, r1, out, ldo);
    }
}

impl Scorer for I8Rows<'_> {
    type Q = PackedI16;
    fn n_rows(&self) -> usize {
        self.n
    }
    fn row_bytes(&self) -> usize {
        self.dp
    }
    fn query_bytes(&self, q: &PackedI16) -> usize {
        q.dp * 2
    }
    fn score(&self, isa: Isa, q: &PackedI16, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
        kernels::score_i8(isa, &q.data[q0 * q.dp..q1 * q.dp], &q.scale[q0..q1], q1 - q0, self, r0, r1, out, ldo);
    }
}

/// A subset of an exact row set (`ids`, strictly increasing row ids of `rows`), scored as if it
/// were a gallery of its own: each tile's rows are first gathered into a thread-local contiguous
/// buffer (one `memcpy` per row) and then scored by the same kernels as a full scan, so scores
/// are bit for bit those of a full scan. Hit indices are positions in `ids`; since `ids` is
/// increasing, ties still resolve to the lower row id. (Search-within-Cell: the rows of one
/// 25 km cell, read straight from the memory-mapped database.)
pub struct Gathered<'a, R> {
    pub rows: R,
    pub ids: &'a [usize],
}

thread_local! {
    static GATHER16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    static GATHER32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies rows `ids` of a row set into `buf` (`ids.len()` × `d`, C order).
fn gather<'r, T: Copy + 'r>(buf: &mut Vec<T>, ids: &[usize], d: usize, row: impl Fn(usize) -> &'r [T]) {
    buf.clear();
    for &i in ids {
        buf.extend_from_slice(&row(i)[..d]);
    }
}

impl Scorer for Gathered<'_, F16Rows<'_>> {
    type Q = PackedF32;
    fn n_rows(&self) -> usize {
        self.ids.len()
    }
    fn row_bytes(&self) -> usize {
        self.rows.d * 2
    }
    fn query_bytes(&self, q: &PackedF32) -> usize {
        q.dp * 4
    }
    fn score(&self, isa: Isa, q: &PackedF32, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
        let d = self.rows.d;
        GATHER16.with(|cell| {
            let mut buf = cell.borrow_mut();
            gather(&mut buf, &self.ids[r0..r1], d, |i| self.rows.row(i));
            let tile = F16Rows::new(&buf, r1 - r0, d, d);
            kernels::score_f16(isa, &q.data[q0 * q.dp..q1 * q.dp], q1 - q0, q.dp, &tile, 0, r1 - r0, out, ldo);
        });
    }
}

impl Scorer for Gathered<'_, F32Rows<'_>> {
    type Q = PackedF32;
    fn n_rows(&self) -> usize {
        self.ids.len()
    }
    fn row_bytes(&self) -> usize {
        self.rows.d * 4
    }
    fn query_bytes(&self, q: &PackedF32) -> usize {
        q.dp * 4
    }
    fn score(&self, isa: Isa, q: &PackedF32, q0: usize, q1: usize, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
        let d = self.rows.d;
        GATHER32.with(|cell| {
            let mut buf = cell.borrow_mut();
            gather(&mut buf, &self.ids[r0..r1], d, |i| self.rows.row(i));
            let tile = F32Rows::new(&buf, r1 - r0, d, d);
            kernels::score_f32(isa, &q.data[q0 * q.dp..q1 * q.dp], q1 - q0, q.dp, &tile, 0, r1 - r0, out, ldo);
        });
    }
}

/// What a scan computes.
pub struct ScanSpec<'a> {
    pub k: usize,
    /// Log-sum-exp of `scale · score` over all rows, when set.
    pub lse_scale: Option<f64>,
    /// Per query 2m: quantized scan keeping candidates within 2m of the k-th best.
    pub margins2: Option<&'a [f64]>,
}

/// A scan's result for one query.
#[derive(Debug, Clone)]
pub struct QueryScan {
    /// The k best (by the scanned score), best first.
    pub top: Vec<Hit>,
    /// Quantized scans: every candidate collected (unfiltered; may repeat none of `top`'s rows
    /// twice: each row is collected at most once).
    pub cands: Vec<Hit>,
    /// Quantized scans: the bound was too loose somewhere; rescan exactly.
    pub overflow: bool,
    pub lse: Lse,
    /// A score was NaN or infinite.
    pub bad: bool,
}

/// Rows per tile: ~256 KiB of stored rows, a multiple of 16 in 16..=1024.
pub fn tile_rows(row_bytes: usize) -> usize {
    let t = (256 * 1024) / row_bytes.max(1);
    (t / 16 * 16).clamp(16, 1024)
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Scan all `nq` queries against every row of `scorer`.
pub fn scan<S: Scorer>(isa: Isa, scorer: &S, q: &S::Q, nq: usize, spec: &ScanSpec) -> Vec<QueryScan> {
    let n = scorer.n_rows();
    let t = tile_rows(scorer.row_bytes());
    let tiles = n.div_ceil(t);
    let chunk_rows = t * tiles.div_ceil(64).max(1);
    let nchunks = n.div_ceil(chunk_rows);
    let qsb = ((512 * 1024) / scorer.query_bytes(q).max(1)).clamp(4, 256);
    let nsb = nq.div_ceil(qsb);

    let scan_chunk = |sb: usize, c: usize| -> Vec<QState> {
        let (q0, q1) = (sb * qsb, ((sb + 1) * qsb).min(nq));
        let (r0, r1) = (c * chunk_rows, ((c + 1) * chunk_rows).min(n));
        let mut states: Vec<QState> = (q0..q1).map(|i| QState::new(spec.k, spec.margins2.map(|m| m[i]), r1 - r0)).collect();
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < (q1 - q0) * t {
                buf.resize((q1 - q0) * t, 0.0);
            }
            let mut tile = r0;
            while tile < r1 {
                let te = (tile + t).min(r1);
                scorer.score(isa, q, q0, q1, tile, te, &mut buf, t);
                for (j, st) in states.iter_mut().enumerate() {
                    let s = &buf[j * t..j * t + (te - tile)];
                    if let Some(scale) = spec.lse_scale {
                        let (r, sum) = kernels::tile_lse(isa, s, scale as f32);
                        st.lse.add(scale * r as f64, sum as f64);
                    }
                    st.bad |= kernels::scan_tile(isa, s, tile as u32, st);
                }
                tile = te;
            }
        });
        states
    };

    let merge = |chunks: Vec<Vec<QState>>, width: usize| -> Vec<QueryScan> {
        let mut out: Vec<QueryScan> = (0..width)
            .map(|_| QueryScan { top: Vec::new(), cands: Vec::new(), overflow: false, lse: Lse::default(), bad: false })
            .collect();
        let mut tops: Vec<Vec<Hit>> = vec![Vec::new(); width];
        for chunk in chunks {
            for (j, st) in chunk.into_iter().enumerate() {
                let o = &mut out[j];
                o.bad |= st.bad;
                o.overflow |= st.overflow;
                o.lse.add(st.lse.m, st.lse.s);
                if !o.overflow {
                    o.cands.extend_from_slice(&st.cands);
                }
                tops[j].extend(st.top.into_vec());
            }
        }
        for (o, hits) in out.iter_mut().zip(tops) {
            if o.overflow {
                o.cands = Vec::new();
            }
            o.top = best_k(hits, spec.k);
        }
        out
    };

    parallel::install(|| {
        let per_sb: Vec<Vec<QueryScan>> = (0..nsb)
            .into_par_iter()
            .map(|sb| {
                let width = ((sb + 1) * qsb).min(nq) - sb * qsb;
                let chunks: Vec<Vec<QState>> = (0..nchunks).into_par_iter().map(|c| scan_chunk(sb, c)).collect();
                merge(chunks, width)
            })
            .collect();
        per_sb.into_iter().flatten().collect()
    })
}
