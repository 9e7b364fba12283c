//! `Gallery`: gallery vectors stored once, searched by exact maximum inner product.
//!
//! Storage (`dtype`) and what is held:
//! * `f32`: the f32 rows (borrowed from the caller when possible, else one copy).
//! * `f16` from half-precision input: the f16 rows are the data; scores are canonical f32 dot
//!   products of the query with the rows converted to f32 (exact, no re-rank).
//! * `f16` from f32 input: f16 codes (N·D·2 bytes) + the f32 rows as the exact re-rank source.
//! * `i8`: per-row symmetric codes `c = round(x / s)`, `s = max|x| / 127` (N·Dp bytes, Dp = D
//!   rounded up to 16, + 4 bytes a row) + the input rows (f32 or f16) as the exact source.
//!
//! Exact re-rank, recall 1 by construction. Let `s̃_i` be the canonical f32 score of the exact
//! row and `ã_i` the score the quantized scan computes. For every row
//!   |s̃_i − ã_i| ≤ m = ‖q‖·E + ε_q·X̂ + (γ_n + 2⁻²⁰)·(‖q‖ + ε_q)·(X̂ + X) + 10⁻³⁰   (× (1 + 10⁻⁶))
//! with E = max_i ‖x_i − x̂_i‖ (quantization error), X = max_i ‖x_i‖, X̂ = max_i ‖x̂_i‖,
//! ε_q = ‖q − q̂‖ the i16 query quantization error (0 for f16 codes), and
//! γ_n = n·u / (1 − n·u), u = 2⁻²⁴, n = Dp/16 + 6 the longest chain of roundings in a canonical
//! dot product (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; Cauchy–Schwarz
//! bounds Σ|q_j x_j| ≤ ‖q‖‖x‖). The 2⁻²⁰ term covers the three roundings of the int8 score.
//! The scan keeps every row with ã_i > h − 2m (h: k-th best ã so far); the true top k have
//! ã ≥ s̃ − m ≥ τ − m ≥ h_final − 2m (τ: k-th best exact score ≥ h_final − m), so they are all
//! kept. Candidates are then scored exactly in decreasing ã; once a candidate's ã + m falls
//! below the k-th exact score no later one can enter. A query whose candidates would not fit in
//! memory bounds (near-duplicate galleries) is rescanned exactly instead.
//!
//! Log-sum-exp of quantized scans is computed from ã in the scan and then corrected with the
//! exact scores of every re-ranked candidate (the terms that dominate the sum); the remaining
//! error is at most |scale|·m times the probability mass outside the re-ranked candidates.

use std::any::Any;

use ndarray::{Array1, Array2, ArrayView2};
use rayon::prelude::*;

use super::kernels::{self, padded, F16Rows, F32Rows, I8Rows};
use super::scan::{scan, Gathered, PackedF32, PackedI16, QueryScan, ScanSpec};
use super::select::{best_k, cut_below, Hit, Lse, TopK};
use super::{check_k, check_magnitude, pack_queries, Neighbors, Vector};
use crate::core::coords::shape_str;
use crate::core::coords::Real;
use crate::core::error::{GeoError, GeoResult};
use crate::core::parallel;
use crate::core::simd::Isa;

/// Storage type of a gallery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    I8,
}

impl Dtype {
    pub fn parse(s: &str) -> GeoResult<Dtype> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "i8" | "int8" => Ok(Dtype::I8),
            other => Err(GeoError::parameter("dtype", "one of 'f32', 'f16', 'i8'", format!("{other:?}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::I8 => "i8",
        }
    }
}

/// A read-only buffer: owned by Rust, or memory owned elsewhere and kept alive by `keep`.
pub struct Buf<T> {
    inner: BufInner<T>,
}

enum BufInner<T> {
    Owned(Vec<T>),
    External { ptr: *const T, len: usize, counted: bool, _keep: Box<dyn Any + Send + Sync> },
}

// SAFETY: a `Buf<T>` only ever hands out `&[T]` (it is never written through). Owned, it is a
// `Vec<T>`; external, the contract of `Buf::external` makes it equivalent to a `&'static [T]`
// that lives as long as `_keep` (itself `Send + Sync`). Either is Send and Sync when `T: Sync`.
unsafe impl<T: Sync> Send for Buf<T> {}
// SAFETY: as for `Send` above.
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T> Buf<T> {
    pub fn owned(v: Vec<T>) -> Self {
        Buf { inner: BufInner::Owned(v) }
    }

    /// Memory owned by someone else.
    ///
    /// # Safety
    /// `ptr` must point to `len` initialised, aligned `T` that stay valid, and that nobody
    /// writes (from any thread, through any alias), as long as `keep` is alive: the buffer hands
    /// out `&[T]` over them at any time from any thread. A read-only flag on someone else's
    /// array is not enough (it can be switched back, and other views may be writable); the
    /// bindings pass only memory no code in the process can write (`py::convert::immutable_memory`)
    /// or memory only the gallery references. `counted` says whether `nbytes` reports it (memory
    /// the gallery itself allocated through another owner, e.g. a private converted array).
    pub unsafe fn external(ptr: *const T, len: usize, counted: bool, keep: Box<dyn Any + Send + Sync>) -> Self {
        Buf { inner: BufInner::External { ptr, len, counted, _keep: keep } }
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.inner {
            BufInner::Owned(v) => v,
            // SAFETY: the contract of `external`: `len` valid, initialised `T` at `ptr`, never
            // written while `_keep` (owned by `self`) lives, which outlives the returned borrow.
            BufInner::External { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }

    /// Bytes this buffer holds on the gallery's behalf (0 for borrowed memory).
    pub fn held_bytes(&self) -> usize {
        match &self.inner {
            BufInner::Owned(v) => std::mem::size_of_val(v.as_slice()),
            BufInner::External { len, counted: true, .. } => len * std::mem::size_of::<T>(),
            BufInner::External { .. } => 0,
        }
    }
}

enum Codes {
    F32(Buf<f32>),
    F16(Buf<u16>),
    I8 { codes: Vec<i8>, scales: Vec<f32> },
}

enum Exact {
    /// The codes are the data.
    Codes,
    F32(Buf<f32>),
    F16(Buf<u16>),
}

/// Gallery vectors stored once for repeated exact top-k search.
pub struct Gallery {
    n: usize,
    d: usize,
    dp: usize,
    dtype: Dtype,
    codes: Codes,
    exact: Exact,
    /// max ‖x_i‖ of the exact rows.
    x_max: f64,
    /// max ‖x̂_i‖ of the codes (= x_max when exact).
    xhat_max: f64,
    /// max ‖x_i − x̂_i‖.
    e_max: f64,
}

/// Exact source rows as the kernels see them.
enum ExactRows<'a> {
    F32(F32Rows<'a>),
    F16(F16Rows<'a>),
}

fn check_dims(n: usize, d: usize, len: usize) -> GeoResult<()> {
    if n == 0 {
        return Err(GeoError::Empty { name: "vectors", hint: "pass at least one gallery vector" });
    }
    if d == 0 {
        return Err(GeoError::Shape { name: "vectors", expected: "(N, D) with D >= 1".into(), got: shape_str(&[n, d]) });
    }
    if n > u32::MAX as usize - 1 {
        return Err(GeoError::TooLarge { what: "gallery", detail: format!("{n} vectors; at most 4294967294 are supported") });
    }
    let need = n.checked_mul(d).ok_or_else(|| GeoError::TooLarge { what: "gallery", detail: format!("{n} × {d}") })?;
    assert!(len >= need, "gallery buffer shorter than n × d");
    Ok(())
}

/// An upper bound on ‖x‖² and the first non-finite value of a row. Squares are summed in 16
/// independent f32 lanes (vectorized), then inflated by the rounding bound of that sum
/// (≤ (⌈D/16⌉ + 1) roundings of relative size 2⁻²⁴ each) plus an allowance for underflow.
fn row_check(x: &[f32]) -> (f64, Option<f64>) {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] += c[l] * c[l];
        }
    }
    let mut s: f64 = acc.iter().map(|&v| v as f64).sum();
    for &v in it.remainder() {
        s += v as f64 * v as f64;
    }
    if !s.is_finite() {
        if let Some(v) = first_nonfinite(x) {
            return (s, Some(v));
        }
        // Finite values whose squares overflow float32: sum in f64.
        s = x.iter().map(|&v| v as f64 * v as f64).sum();
    }
    let n = (x.len() / 16 + 2) as f64;
    (s * (1.0 + 2.0 * n * f64::powi(2.0, -24)) + x.len() as f64 * 1e-38, None)
}

/// Σ (x − x̂)² and Σ x̂² in f64 over four independent lanes (vectorized).
fn err_stats(x: &[f32], xh: impl Fn(usize) -> f64) -> (f64, f64) {
    let mut e = [0f64; 4];
    let mut h = [0f64; 4];
    for (j, &v) in x.iter().enumerate() {
        let r = xh(j);
        let t = v as f64 - r;
        e[j % 4] += t * t;
        h[j % 4] += r * r;
    }
    ((e[0] + e[1]) + (e[2] + e[3]), (h[0] + h[1]) + (h[2] + h[3]))
}

#[derive(Clone, Copy)]
struct RowStats {
    x2: f64,
    xh2: f64,
    e2: f64,
    /// First offending (row, value).
    bad: Option<(usize, f64)>,
}

impl RowStats {
    const ZERO: RowStats = RowStats { x2: 0.0, xh2: 0.0, e2: 0.0, bad: None };
    fn join(a: RowStats, b: RowStats) -> RowStats {
        RowStats {
            x2: a.x2.max(b.x2),
            xh2: a.xh2.max(b.xh2),
            e2: a.e2.max(b.e2),
            bad: match (a.bad, b.bad) {
                (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
                (x, y) => x.or(y),
            },
        }
    }
}

/// Rows of `n` × `d` in parallel, with a per-thread f32 row buffer; reduces [`RowStats`].
fn rows_stats(n: usize, d: usize, f: impl Fn(usize, &mut Vec<f32>) -> RowStats + Sync) -> RowStats {
    parallel::install(|| {
        (0..n)
            .into_par_iter()
            .with_min_len(256)
            .fold(
                || (Vec::<f32>::with_capacity(d), RowStats::ZERO),
                |(mut buf, acc), r| {
                    let s = f(r, &mut buf);
                    (buf, RowStats::join(acc, s))
                },
            )
            .map(|(_, s)| s)
            .reduce(|| RowStats::ZERO, RowStats::join)
    })
}

fn first_nonfinite(x: &[f32]) -> Option<f64> {
    x.iter().find(|v| !v.is_finite()).map(|&v| v as f64)
}

impl Gallery {
    /// Build from `n` × `d` f32 rows (C order).
    pub fn from_f32(src: Buf<f32>, n: usize, d: usize, dtype: Dtype) -> GeoResult<Gallery> {
        check_dims(n, d, src.as_slice().len())?;
        let data = &src.as_slice()[..n * d];
        let stats = rows_stats(n, d, |r, _| {
            let (x2, bad) = row_check(&data[r * d..(r + 1) * d]);
            RowStats { x2, bad: bad.map(|v| (r, v)), ..RowStats::ZERO }
        });
        if let Some((row, value)) = stats.bad {
            return Err(GeoError::NonFinite { name: "vectors", row, value });
        }
        let x_max = stats.x2.sqrt();
        let copy_row = |r: usize, buf: &mut Vec<f32>| {
            buf.clear();
            buf.extend_from_slice(&data[r * d..(r + 1) * d]);
        };
        let mut g = Gallery::empty(n, d, dtype, x_max);
        match dtype {
            Dtype::F32 => g.codes = Codes::F32(src),
            Dtype::F16 => {
                let (codes, st) = quantize_f16(n, d, copy_row)?;
                g.set_quant(Codes::F16(Buf::owned(codes)), Exact::F32(src), st);
            }
            Dtype::I8 => {
                let (codes, scales, st) = quantize_i8(n, d, copy_row);
                g.set_quant(Codes::I8 { codes, scales }, Exact::F32(src), st);
            }
        }
        Ok(g)
    }

    /// Build from `n` × `d` IEEE half-precision rows (raw bits, C order).
    pub fn from_f16(src: Buf<u16>, n: usize, d: usize, dtype: Dtype) -> GeoResult<Gallery> {
        check_dims(n, d, src.as_slice().len())?;
        let isa = Isa::active()?;
        let data = &src.as_slice()[..n * d];
        let to_f32 = |r: usize, buf: &mut Vec<f32>| {
            buf.resize(d, 0.0);
            kernels::f16_to_f32(isa, &data[r * d..(r + 1) * d], buf);
        };
        let stats = rows_stats(n, d, |r, buf| {
            to_f32(r, buf);
            let (x2, bad) = row_check(buf);
            RowStats { x2, bad: bad.map(|v| (r, v)), ..RowStats::ZERO }
        });
        if let Some((row, value)) = stats.bad {
            return Err(GeoError::NonFinite { name: "vectors", row, value });
        }
        let x_max = stats.x2.sqrt();
        let mut g = Gallery::empty(n, d, dtype, x_max);
        match dtype {
            Dtype::F16 => g.codes = Codes::F16(src),
            Dtype::F32 => {
                let mut out = vec![0f32; n * d];
                parallel::install(|| {
                    out.par_chunks_mut(d * 256).enumerate().for_each(|(c, o)| {
                        let s = &data[c * d * 256..c * d * 256 + o.len()];
                        kernels::f16_to_f32(isa, s, o);
                    })
                });
                g.codes = Codes::F32(Buf::owned(out));
            }
            Dtype::I8 => {
                let (codes, scales, st) = quantize_i8(n, d, to_f32);
                g.set_quant(Codes::I8 { codes, scales }, Exact::F16(src), st);
            }
        }
        Ok(g)
    }

    /// Build by copying any 2-D float view (f32 or f64, any layout) into Rust-owned f32 rows.
    pub fn from_view<T: Vector>(v: ArrayView2<T>, dtype: Dtype) -> GeoResult<Gallery> {
        let (n, d) = v.dim();
        let mut data = vec![0f32; n * d];
        if d > 0 {
            parallel::install(|| {
                data.par_chunks_mut(d).zip(v.axis_iter(ndarray::Axis(0)).into_par_iter()).with_min_len(256).for_each(
                    |(out, row)| {
                        for (o, &x) in out.iter_mut().zip(row.iter()) {
                            *o = x.to_f32();
                        }
                    },
                )
            });
        }
        Gallery::from_f32(Buf::owned(data), n, d, dtype)
    }

    /// Build by copying a 2-D view of half-precision bits (any layout) into Rust-owned rows.
    pub fn from_f16_view(v: ArrayView2<u16>, dtype: Dtype) -> GeoResult<Gallery> {
        let (n, d) = v.dim();
        let mut data = vec![0u16; n * d];
        if d > 0 {
            parallel::install(|| {
                data.par_chunks_mut(d).zip(v.axis_iter(ndarray::Axis(0)).into_par_iter()).with_min_len(256).for_each(
                    |(out, row)| {
                        for (o, &x) in out.iter_mut().zip(row.iter()) {
                            *o = x;
                        }
                    },
                )
            });
        }
        Gallery::from_f16(Buf::owned(data), n, d, dtype)
    }

    /// The header of a gallery whose codes are set next (exact storage until `set_quant`).
    fn empty(n: usize, d: usize, dtype: Dtype, x_max: f64) -> Gallery {
        Gallery {
            n,
            d,
            dp: padded(d),
            dtype,
            codes: Codes::F32(Buf::owned(Vec::new())),
            exact: Exact::Codes,
            x_max,
            xhat_max: x_max,
            e_max: 0.0,
        }
    }

    fn set_quant(&mut self, codes: Codes, exact: Exact, st: RowStats) {
        self.codes = codes;
        self.exact = exact;
        self.xhat_max = st.xh2.sqrt();
        self.e_max = st.e2.sqrt();
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Bytes of vector storage held by the gallery itself (borrowed memory excluded).
    pub fn nbytes(&self) -> usize {
        let codes = match &self.codes {
            Codes::F32(b) => b.held_bytes(),
            Codes::F16(b) => b.held_bytes(),
            Codes::I8 { codes, scales } => codes.len() + 4 * scales.len(),
        };
        let exact = match &self.exact {
            Exact::Codes => 0,
            Exact::F32(b) => b.held_bytes(),
            Exact::F16(b) => b.held_bytes(),
        };
        codes + exact
    }

    /// Bound on |exact − quantized score| for a query of norm `qn` and quantization error `eps`.
    fn margin(&self, qn: f64, eps: f64) -> f64 {
        let n_ops = (self.dp / 16 + 6) as f64;
        let u = f64::powi(2.0, -24);
        let gamma = n_ops * u / (1.0 - n_ops * u) + f64::powi(2.0, -20);
        let m = qn * self.e_max + eps * self.xhat_max + gamma * (qn + eps) * (self.xhat_max + self.x_max) + 1e-30;
        m * (1.0 + 1e-6)
    }

    fn exact_rows(&self) -> ExactRows<'_> {
        let (n, d) = (self.n, self.d);
        match (&self.exact, &self.codes) {
            (Exact::F32(b), _) | (Exact::Codes, Codes::F32(b)) => ExactRows::F32(F32Rows::new(b.as_slice(), n, d, d)),
            (Exact::F16(b), _) | (Exact::Codes, Codes::F16(b)) => ExactRows::F16(F16Rows::new(b.as_slice(), n, d, d)),
            (Exact::Codes, Codes::I8 { .. }) => unreachable!("int8 codes always keep an exact source"),
        }
    }

    /// Top-`k` rows by exact inner product for every query (rows of `queries`), best first, and
    /// optionally log Σ_j exp(lse_scale · score_j) over the whole gallery.
    pub fn search<Q: Real>(&self, queries: ArrayView2<Q>, k: i64, lse_scale: Option<f64>) -> GeoResult<Neighbors> {
        self.search_with(Isa::active()?, queries, k, lse_scale)
    }

    /// [`Gallery::search`] on an explicit SIMD level (tests compare levels; any [`Isa`] is one
    /// this CPU supports).
    pub fn search_with<Q: Real>(&self, isa: Isa, queries: ArrayView2<Q>, k: i64, lse_scale: Option<f64>) -> GeoResult<Neighbors> {
        let k = check_k(k, self.n)?;
        if let Some(s) = lse_scale {
            if !s.is_finite() {
                return Err(GeoError::parameter("lse_scale", "a finite number", super::num(s)));
            }
        }
        let (packed, norms) = pack_queries(&queries, self.d)?;
        let bound = self.x_max.max(self.xhat_max);
        check_magnitude(&norms, bound, lse_scale)?;
        let nq = packed.n;
        let lse_on = lse_scale.is_some();
        let spec = ScanSpec { k, lse_scale, margins2: None };

        let (hits, lse): (Vec<Vec<Hit>>, Vec<Lse>) = match &self.codes {
            Codes::F32(b) if matches!(self.exact, Exact::Codes) => {
                let rows = F32Rows::new(b.as_slice(), self.n, self.d, self.d);
                finish_exact(scan(isa, &rows, &packed, nq, &spec))?
            }
            Codes::F16(b) if matches!(self.exact, Exact::Codes) => {
                let rows = F16Rows::new(b.as_slice(), self.n, self.d, self.d);
                finish_exact(scan(isa, &rows, &packed, nq, &spec))?
            }
            Codes::F16(b) => {
                let rows = F16Rows::new(b.as_slice(), self.n, self.d, self.d);
                let margins2: Vec<f64> = norms.iter().map(|&qn| 2.0 * self.margin(qn, 0.0)).collect();
                let spec = ScanSpec { margins2: Some(&margins2), ..spec };
                let scans = scan(isa, &rows, &packed, nq, &spec);
                self.rerank(isa, &packed, scans, &margins2, k, lse_scale)?
            }
            Codes::I8 { codes, scales } => {
                let rows = I8Rows::new(codes, scales, self.n, self.dp);
                let (qi16, eps) = quantize_queries(&packed);
                let margins2: Vec<f64> = norms.iter().zip(&eps).map(|(&qn, &e)| 2.0 * self.margin(qn, e)).collect();
                let spec = ScanSpec { margins2: Some(&margins2), ..spec };
                let scans = scan(isa, &rows, &qi16, nq, &spec);
                self.rerank(isa, &packed, scans, &margins2, k, lse_scale)?
            }
            Codes::F32(_) => unreachable!("f32 codes are always exact"),
        };
        Ok(Neighbors::assemble(hits, k, lse_on.then_some(lse)))
    }

    /// [`Gallery::search`] restricted to the rows `ids` (strictly increasing row ids): the top
    /// `k` of those rows only, with the indices of the gallery (not of `ids`), and the
    /// log-sum-exp over those rows when asked. Scores come from the exact rows (for quantized
    /// storage: the exact source), read in place, so they equal a full exact scan's bit for bit.
    pub fn search_rows<Q: Real>(
        &self,
        queries: ArrayView2<Q>,
        ids: &[i64],
        k: i64,
        lse_scale: Option<f64>,
    ) -> GeoResult<Neighbors> {
        self.search_rows_with(Isa::active()?, queries, ids, k, lse_scale)
    }

    /// [`Gallery::search_rows`] on an explicit SIMD level.
    pub fn search_rows_with<Q: Real>(
        &self,
        isa: Isa,
        queries: ArrayView2<Q>,
        ids: &[i64],
        k: i64,
        lse_scale: Option<f64>,
    ) -> GeoResult<Neighbors> {
        let mut rows = Vec::with_capacity(ids.len());
        for (j, &i) in ids.iter().enumerate() {
            if i < 0 || i as u64 >= self.n as u64 || (j > 0 && i <= ids[j - 1]) {
                return Err(GeoError::parameter(
                    "rows",
                    "strictly increasing row ids below the gallery's length",
                    format!("{i} at position {j} (gallery of {} rows)", self.n),
                ));
            }
            rows.push(i as usize);
        }
        let k = check_k(k, rows.len())?;
        if let Some(s) = lse_scale {
            if !s.is_finite() {
                return Err(GeoError::parameter("lse_scale", "a finite number", super::num(s)));
            }
        }
        let (packed, norms) = pack_queries(&queries, self.d)?;
        check_magnitude(&norms, self.x_max, lse_scale)?;
        let spec = ScanSpec { k, lse_scale, margins2: None };
        let scans = match self.exact_rows() {
            ExactRows::F32(r) => scan(isa, &Gathered { rows: r, ids: &rows }, &packed, packed.n, &spec),
            ExactRows::F16(r) => scan(isa, &Gathered { rows: r, ids: &rows }, &packed, packed.n, &spec),
        };
        let (mut hits, lse) = finish_exact(scans)?;
        for h in hits.iter_mut().flatten() {
            // Positions in `rows` back to row ids (< n, which fits the u32 hit index).
            h.i = rows[h.i as usize] as u32;
        }
        Ok(Neighbors::assemble(hits, k, lse_scale.is_some().then_some(lse)))
    }

    /// Exact re-rank of quantized-scan candidates (and exact rescans of overflowed queries).
    fn rerank(
        &self,
        isa: Isa,
        packed: &PackedF32,
        scans: Vec<QueryScan>,
        margins2: &[f64],
        k: usize,
        lse_scale: Option<f64>,
    ) -> GeoResult<(Vec<Vec<Hit>>, Vec<Lse>)> {
        if scans.iter().any(|s| s.bad) {
            return Err(overflow_error());
        }
        let exact = self.exact_rows();
        let exact_dot = |q: &[f32], i: u32| -> f32 {
            match &exact {
                ExactRows::F32(r) => kernels::dot_f32(isa, q, r.row(i as usize)),
                ExactRows::F16(r) => kernels::dot_f16(isa, q, r.row(i as usize)),
            }
        };
        let mut results: Vec<(Vec<Hit>, Lse, bool)> = parallel::install(|| {
            scans
                .into_par_iter()
                .enumerate()
                .map(|(qi, sc)| {
                    if sc.overflow {
                        return (Vec::new(), sc.lse, true);
                    }
                    let m2 = margins2[qi];
                    let m = m2 / 2.0;
                    let cut = cut_below(sc.top[k - 1].s, m2);
                    let mut cands: Vec<Hit> = sc.cands.into_iter().filter(|c| c.s > cut).collect();
                    cands.sort_unstable_by(super::select::rank);
                    let q = packed.row(qi);
                    let mut top = TopK::new(k, k);
                    let mut lse = sc.lse;
                    let mut corr = 0.0f64;
                    for c in &cands {
                        if let Some(w) = top.worst() {
                            if (c.s as f64 + m) < w.s as f64 {
                                break;
                            }
                        }
                        let e = exact_dot(q, c.i);
                        top.offer(Hit { s: e, i: c.i });
                        if let Some(scale) = lse_scale {
                            corr += (scale * e as f64 - lse.m).exp() - (scale * c.s as f64 - lse.m).exp();
                        }
                    }
                    if lse_scale.is_some() && lse.s + corr > 0.0 {
                        lse.s += corr;
                    }
                    (best_k(top.into_vec(), k), lse, false)
                })
                .collect()
        });
        // Queries whose candidate sets overflowed: exact rescan over the exact rows.
        let redo: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.2).map(|(i, _)| i).collect();
        if !redo.is_empty() {
            #[cfg(test)]
            RESCANS.fetch_add(redo.len(), std::sync::atomic::Ordering::Relaxed);
            let dp = packed.dp;
            let mut sub = PackedF32 { data: Vec::with_capacity(redo.len() * dp), n: redo.len(), d: packed.d, dp };
            for &i in &redo {
                sub.data.extend_from_slice(packed.row(i));
            }
            let spec = ScanSpec { k, lse_scale, margins2: None };
            let scans = match &exact {
                ExactRows::F32(r) => scan(isa, r, &sub, sub.n, &spec),
                ExactRows::F16(r) => scan(isa, r, &sub, sub.n, &spec),
            };
            let (hits, lses) = finish_exact(scans)?;
            for ((&i, h), l) in redo.iter().zip(hits).zip(lses) {
                results[i] = (h, l, false);
            }
        }
        Ok(results.into_iter().map(|(h, l, _)| (h, l)).unzip())
    }
}

/// Queries rescanned exactly because their candidate sets overflowed (tests check the path runs).
#[cfg(test)]
pub(crate) static RESCANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn overflow_error() -> GeoError {
    GeoError::parameter(
        "queries",
        "small enough that every inner product fits in float32 (scale the vectors down)",
        "a score that overflowed to infinity",
    )
}

/// Hits and lse of an exact scan, or the overflow error.
pub(super) fn finish_exact(scans: Vec<QueryScan>) -> GeoResult<(Vec<Vec<Hit>>, Vec<Lse>)> {
    if scans.iter().any(|s| s.bad) {
        return Err(overflow_error());
    }
    Ok(scans.into_iter().map(|s| (s.top, s.lse)).unzip())
}

/// f16 codes of f32 rows (`fill(r, buf)` writes row r), with error statistics.
fn quantize_f16(n: usize, d: usize, fill: impl Fn(usize, &mut Vec<f32>) + Sync) -> GeoResult<(Vec<u16>, RowStats)> {
    let isa = Isa::active()?;
    let mut codes = vec![0u16; n * d];
    let st = parallel::install(|| {
        codes
            .par_chunks_mut(d)
            .enumerate()
            .with_min_len(256)
            .fold(
                || (Vec::<f32>::new(), Vec::<f32>::new(), RowStats::ZERO),
                |(mut buf, mut back, acc), (r, c)| {
                    fill(r, &mut buf);
                    let x = &buf[..d];
                    kernels::f32_to_f16(isa, x, c);
                    back.resize(d, 0.0);
                    kernels::f16_to_f32(isa, c, &mut back);
                    let mut s = RowStats::ZERO;
                    if let Some(j) = back.iter().position(|v| !v.is_finite()) {
                        s.bad = Some((r, x[j] as f64));
                    }
                    (s.e2, s.xh2) = err_stats(x, |j| back[j] as f64);
                    (buf, back, RowStats::join(acc, s))
                },
            )
            .map(|(_, _, s)| s)
            .reduce(|| RowStats::ZERO, RowStats::join)
    });
    if let Some((row, value)) = st.bad {
        return Err(GeoError::Parameter {
            name: "vectors",
            requirement: "within the float16 range ±65504 for dtype='f16' (use dtype='f32' or 'i8')",
            value: format!("{} in row {row}", super::num(value)),
        });
    }
    Ok((codes, st))
}

/// Round to the nearest integer, ties to even, for |y| < 2⁵¹ (vectorizes, unlike `round`).
#[inline(always)]
fn round_even(y: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2⁵²
    (y + MAGIC) - MAGIC
}

/// Per-row symmetric int8 codes (rows padded to 16) and scales, with error statistics.
fn quantize_i8(n: usize, d: usize, fill: impl Fn(usize, &mut Vec<f32>) + Sync) -> (Vec<i8>, Vec<f32>, RowStats) {
    let dp = padded(d);
    let mut codes = vec![0i8; n * dp];
    let mut scales = vec![0f32; n];
    let st = parallel::install(|| {
        codes
            .par_chunks_mut(dp)
            .zip(scales.par_iter_mut())
            .enumerate()
            .with_min_len(256)
            .fold(
                || (Vec::<f32>::new(), RowStats::ZERO),
                |(mut buf, acc), (r, (c, sc))| {
                    fill(r, &mut buf);
                    let x = &buf[..d];
                    let maxabs = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
                    let sx = (maxabs as f64 / 127.0) as f32;
                    *sc = sx;
                    let mut s = RowStats::ZERO;
                    if sx > 0.0 {
                        let inv = 1.0 / sx as f64;
                        for (cj, &xj) in c.iter_mut().zip(x) {
                            *cj = round_even(xj as f64 * inv).clamp(-127.0, 127.0) as i8;
                        }
                    }
                    (s.e2, s.xh2) = err_stats(x, |j| sx as f64 * c[j] as f64);
                    (buf, RowStats::join(acc, s))
                },
            )
            .map(|(_, s)| s)
            .reduce(|| RowStats::ZERO, RowStats::join)
    });
    (codes, scales, st)
}

/// i16 codes of packed queries for the int8 kernel, and each query's quantization error ‖q − q̂‖.
fn quantize_queries(p: &PackedF32) -> (PackedI16, Vec<f64>) {
    let dp = p.dp;
    // |Σ q̂_j c_j| <= dp · 127 · qmax must fit in i32.
    let qmax = ((i32::MAX as f64) / (127.0 * dp as f64)).floor().clamp(1.0, 32767.0);
    let mut data = vec![0i16; p.n * dp];
    let mut scale = vec![0f32; p.n];
    let mut eps = vec![0f64; p.n];
    for i in 0..p.n {
        let q = p.row(i);
        let maxabs = q.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let sq = (maxabs / qmax) as f32;
        let out = &mut data[i * dp..(i + 1) * dp];
        let mut e2 = 0f64;
        for (o, &v) in out.iter_mut().zip(q) {
            let code = if sq > 0.0 { (v as f64 / sq as f64).round().clamp(-qmax, qmax) } else { 0.0 };
            *o = code as i16;
            let r = v as f64 - sq as f64 * code;
            e2 += r * r;
        }
        scale[i] = sq;
        eps[i] = e2.sqrt();
    }
    (PackedI16 { data, scale, n: p.n, dp }, eps)
}

impl Neighbors {
    pub(super) fn assemble(hits: Vec<Vec<Hit>>, k: usize, lse: Option<Vec<Lse>>) -> Neighbors {
        let b = hits.len();
        let mut scores = Array2::<f32>::zeros((b, k));
        let mut indices = Array2::<i64>::zeros((b, k));
        for (i, h) in hits.iter().enumerate() {
            for (j, hit) in h.iter().enumerate().take(k) {
                scores[[i, j]] = hit.s;
                indices[[i, j]] = hit.i as i64;
            }
        }
        let lse = lse.map(|l| Array1::from_iter(l.iter().map(|x| x.value())));
        Neighbors { scores, indices, lse }
    }
}
