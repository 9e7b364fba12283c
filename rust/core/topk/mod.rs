//! Exact top-k maximum inner product search, optionally with the log-sum-exp of the scaled scores
//! over the whole gallery in the same pass (softmax without a second pass).
//!
//!   score(q, x_i) = Σ_j q_j · x_ij,   top-k by score (ties: lower index first),
//!   lse(q) = log Σ_i exp(scale · score(q, x_i)).
//!
//! Every score is the *canonical* f32 dot product (`kernels::scalar`): 16 lanes, one fused
//! multiply-add per element, lane l taking elements j ≡ l (mod 16), then a fixed pairwise tree.
//! Scalar, AVX2 and AVX-512 kernels produce the same bits, so results do not depend on the CPU,
//! the batch size or the thread count. Its rounding error is at most γ_n·‖q‖·‖x‖ with
//! n = ⌈D/16⌉ + 4 and γ_n = n·2⁻²⁴ / (1 − n·2⁻²⁴) (Higham 2002, §3.1), i.e. ~2·10⁻⁶ relative to
//! ‖q‖‖x‖ for D = 512.
//!
//! The log-sum-exp accumulates per tile: r = the tile's max score (min for scale < 0),
//! S_tile = Σ exp(scale·(s − r)) with a Cephes-style `expf` (≤ 2 ulp), combined in f64 as the
//! running pair (M, S): lse = M + ln S (the standard online log-sum-exp, as in Milakov &
//! Gimelshein 2018, "Online normalizer calculation for softmax").
//!
//! Quantized galleries (f16, int8) and their exact re-rank are described in `gallery.rs`; the
//! scan driver (tiling, threads, never a B × N score matrix) in `scan.rs`.

pub mod gallery;
pub mod kernels;
pub mod scan;
pub mod select;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

pub use gallery::{Buf, Dtype, Gallery};

use crate::core::coords::{shape_str, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::parallel;
use crate::core::simd::Isa;
use kernels::{padded, F32Rows};
use scan::{scan, PackedF32, ScanSpec};

/// Result of a search: `(B, k)` scores (descending) and gallery indices, and the per-query
/// log-sum-exp when asked for.
#[derive(Debug, Clone)]
pub struct Neighbors {
    pub scores: Array2<f32>,
    pub indices: Array2<i64>,
    pub lse: Option<Array1<f64>>,
}

/// Float element types accepted for queries and gallery vectors.
pub trait Vector: Real {
    fn to_f32(self) -> f32;
    /// The rows of `v`, when they can be read in place (f32 with contiguous rows).
    fn f32_rows<'a>(_v: &ArrayView2<'a, Self>) -> Option<F32Rows<'a>> {
        None
    }
}

impl Vector for f64 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Vector for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn f32_rows<'a>(v: &ArrayView2<'a, f32>) -> Option<F32Rows<'a>> {
        F32Rows::from_view(v)
    }
}

/// A number for a message: plain for ordinary magnitudes, exponent form otherwise (`1e300`).
pub(crate) fn num(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Validate `1 <= k <= n`.
pub(crate) fn check_k(k: i64, n: usize) -> GeoResult<usize> {
    if k < 1 || k as u64 > n as u64 {
        return Err(GeoError::K { k, n, what: "gallery vectors" });
    }
    Ok(k as usize)
}

/// Pack queries (any layout, f32 or f64) into zero-padded f32 rows; validates the dimension and
/// finiteness; returns the packed queries and their norms.
pub(crate) fn pack_queries<Q: Real>(q: &ArrayView2<Q>, d: usize) -> GeoResult<(PackedF32, Vec<f64>)> {
    let (b, qd) = q.dim();
    if qd != d {
        return Err(GeoError::Shape {
            name: "queries",
            expected: format!("(B, {d}) or ({d},) to match the gallery dimension {d}"),
            got: shape_str(q.shape()),
        });
    }
    let dp = padded(d);
    let mut data = vec![0f32; b * dp];
    let mut norms = vec![0f64; b];
    // Per row: first offending value, if any.
    let mut bad: Vec<Option<f64>> = vec![None; b];
    parallel::install(|| {
        data.par_chunks_mut(dp.max(1))
            .zip(norms.par_iter_mut())
            .zip(bad.par_iter_mut())
            .zip(q.axis_iter(Axis(0)).into_par_iter())
            .with_min_len(64)
            .for_each(|(((out, nrm), bad), row)| {
                let mut s = 0f64;
                for (o, &v) in out.iter_mut().zip(row.iter()) {
                    let v64 = v.to_f64();
                    let f = v64 as f32;
                    if !f.is_finite() && bad.is_none() {
                        *bad = Some(v64);
                    }
                    *o = f;
                    s += f as f64 * f as f64;
                }
                *nrm = s.sqrt() * (1.0 + 1e-12);
            })
    });
    if let Some((row, value)) = bad.iter().enumerate().find_map(|(i, b)| b.map(|v| (i, v))) {
        if value.is_finite() {
            return Err(GeoError::parameter("queries", "within the float32 range", format!("{} in row {row}", num(value))));
        }
        return Err(GeoError::NonFinite { name: "queries", row, value });
    }
    Ok((PackedF32 { data, n: b, d, dp }, norms))
}

/// Reject queries whose scores (or scaled scores) could overflow float32.
pub(crate) fn check_magnitude(norms: &[f64], x_max: f64, lse_scale: Option<f64>) -> GeoResult<()> {
    const LIMIT: f64 = 1e37;
    for (row, &qn) in norms.iter().enumerate() {
        let bound = qn * x_max;
        if bound > LIMIT {
            return Err(GeoError::parameter(
                "queries",
                "small enough that |q|·|x| stays below 1e37 (float32 scores would overflow); scale the vectors down",
                format!("|q|·max|x| = {bound:.3e} in row {row}"),
            ));
        }
        if let Some(s) = lse_scale {
            if s.abs() * bound > LIMIT {
                return Err(GeoError::parameter("lse_scale", "small enough that |lse_scale|·|q|·|x| stays below 1e37", num(s)));
            }
        }
    }
    Ok(())
}

/// Exact top-`k` gallery rows by inner product for each query row, best first.
pub fn topk<Q: Real, G: Vector>(queries: ArrayView2<Q>, gallery: ArrayView2<G>, k: i64) -> GeoResult<Neighbors> {
    topk_with(Isa::active()?, queries, gallery, k)
}

/// [`topk`] on an explicit SIMD level (any [`Isa`] is one this CPU supports).
pub fn topk_with<Q: Real, G: Vector>(isa: Isa, queries: ArrayView2<Q>, gallery: ArrayView2<G>, k: i64) -> GeoResult<Neighbors> {
    let (n, d) = gallery.dim();
    if n == 0 {
        return Err(GeoError::Empty { name: "gallery", hint: "pass at least one gallery vector" });
    }
    if d == 0 {
        return Err(GeoError::Shape { name: "gallery", expected: "(N, D) with D >= 1".into(), got: shape_str(&[n, d]) });
    }
    if n > u32::MAX as usize - 1 {
        return Err(GeoError::TooLarge { what: "gallery", detail: format!("{n} vectors; at most 4294967294 are supported") });
    }
    let k = check_k(k, n)?;
    let (packed, _) = pack_queries(&queries, d)?;
    let owned: Vec<f32>;
    let rows = match G::f32_rows(&gallery) {
        Some(rows) => rows,
        None => {
            owned = gallery.iter().map(|&v| v.to_f32()).collect();
            // `iter` walks in logical (row-major) order.
            F32Rows::new(&owned, n, d, d)
        }
    };
    let scans = scan(isa, &rows, &packed, packed.n, &ScanSpec { k, lse_scale: None, margins2: None });
    if scans.iter().any(|s| s.bad) {
        // A non-finite score: NaN/inf in the gallery (queries were checked), or an overflow.
        for r in 0..n {
            if let Some(&v) = rows.row(r).iter().find(|v| !v.is_finite()) {
                let orig = gallery[[r, rows.row(r).iter().position(|x| x.to_bits() == v.to_bits()).unwrap_or(0)]].to_f64();
                if orig.is_finite() {
                    return Err(GeoError::parameter("gallery", "within the float32 range", format!("{} in row {r}", num(orig))));
                }
                return Err(GeoError::NonFinite { name: "gallery", row: r, value: orig });
            }
        }
    }
    let (hits, _) = gallery::finish_exact(scans)?;
    Ok(Neighbors::assemble(hits, k, None))
}

#[cfg(test)]
mod tests;
