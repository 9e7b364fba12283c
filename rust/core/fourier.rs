//! Gaussian random Fourier features, as GeoCLIP's location encoder uses them.
//!
//!   γ(v) = [cos(2π v·Bᵀ) | sin(2π v·Bᵀ)]      v: (N, 2), B: (m, 2)  →  (N, 2m) float32
//!
//! (Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions in Low
//! Dimensional Domains", NeurIPS 2020; GeoCLIP, Vivanco Cepeda et al., NeurIPS 2023, applies it
//! to Equal Earth coordinates with three stored B matrices of shape (256, 2), σ = 2⁰, 2⁴, 2⁸;
//! `geoclip.model.rff.functional.gaussian_encoding`.) The first m columns are the cosines.
//!
//! ## Accuracy
//! GeoCLIP evaluates 2π·v·Bᵀ in float32: at σ = 256 the argument reaches thousands of radians,
//! where a float32 ulp is ~2.4e-4 rad, so its features carry errors of that order. Here
//! x = v·bⱼ is formed in float64 with one multiply-add (in turns, no 2π factor), reduced
//! exactly to r = x − n/4 with |r| ≤ 1/8 ([`vmath`](crate::core::vmath)), and sin/cos 2πr come
//! from a minimax pair accurate to 4e-9; rounding to float32 adds at most 2⁻²⁵ ≈ 3e-8. The
//! total error against float64 `cos(2π·(v @ B.T))` is below 5e-8 for any |x| < 2⁴⁸ turns
//! (inputs beyond take an exact whole-turn reduction first, at a small cost).

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::core::buffer::{assume_init, uninit_vec, write_all};
use crate::core::coords::{check_cols, check_finite, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::parallel;
use crate::core::simd::Isa;
use crate::core::vmath::{sincos_turns_lp, sincos_turns_small_lp};
use crate::simd_kernel;

/// Largest |v·b| (turns) for the fast reduction; above, whole turns are removed first.
const SMALL_TURNS: f64 = 1.4e14; // just under 2⁴⁷, leaving a margin for rounding of the bound
/// Largest |v·b| (turns) accepted: far below f64::MAX, so no product or sum of the dot product
/// overflows to infinity (whose sine would be NaN).
const MAX_TURNS: f64 = 1e300;
/// Smallest number of output values worth a parallel task.
const MIN_VALUES_PER_TASK: usize = 32_768;
/// Largest number of output values per parallel task (whole rows, at least one), so that idle
/// threads can take over the work of a thread the OS pauses on a busy machine.
const MAX_VALUES_PER_TASK: usize = 262_144;

simd_kernel! {
    /// One output row: cos and sin of 2π(v₀ b₀ⱼ + v₁ b₁ⱼ), |v·b| < 2⁴⁷.
    fn row_small<M>(v0: f64, v1: f64, b0: &[f64], b1: &[f64], out_cos: &mut [f32], out_sin: &mut [f32]) {
        let m = out_cos.len();
        let (b0, b1, out_sin) = (&b0[..m], &b1[..m], &mut out_sin[..m]);
        for j in 0..m {
            let x = M::mul_add(v0, b0[j], v1 * b1[j]);
            let (s, c) = sincos_turns_small_lp::<M>(x);
            out_cos[j] = c as f32;
            out_sin[j] = s as f32;
        }
    }
}

simd_kernel! {
    /// One output row for any finite v·b.
    fn row_any<M>(v0: f64, v1: f64, b0: &[f64], b1: &[f64], out_cos: &mut [f32], out_sin: &mut [f32]) {
        let m = out_cos.len();
        let (b0, b1, out_sin) = (&b0[..m], &b1[..m], &mut out_sin[..m]);
        for j in 0..m {
            let x = M::mul_add(v0, b0[j], v1 * b1[j]);
            let (s, c) = sincos_turns_lp::<M>(x);
            out_cos[j] = c as f32;
            out_sin[j] = s as f32;
        }
    }
}

/// Random Fourier features of `xy` (`(N, 2)`, finite) for frequencies `b` (`(m, 2)`, finite,
/// m ≥ 1): `(N, 2m)` float32, cosines first. N = 0 gives a `(0, 2m)` array. Inputs whose
/// products could overflow (|v·b| above 1e300 turns) are a `Parameter` error, not NaN features.
pub fn fourier_features<X: Real, B: Real>(xy: ArrayView2<X>, b: ArrayView2<B>) -> GeoResult<Array2<f32>> {
    let n = check_cols("xy", &xy, 2)?;
    let m = check_cols("b", &b, 2)?;
    if m == 0 {
        return Err(GeoError::Empty { name: "b", hint: "pass at least one frequency row (m, 2) with m >= 1" });
    }
    check_finite("xy", &xy)?;
    check_finite("b", &b)?;
    let width = 2 * m;
    let len = n.checked_mul(width).ok_or_else(|| GeoError::TooLarge {
        what: "Fourier feature matrix",
        detail: format!("{n} × {width} entries overflow; split xy into smaller batches"),
    })?;
    let mut out = uninit_vec::<f32>(len, "Fourier feature matrix")?;
    if n > 0 {
        let b0: Vec<f64> = b.column(0).iter().map(|v| v.to_f64()).collect();
        let b1: Vec<f64> = b.column(1).iter().map(|v| v.to_f64()).collect();
        let max_abs = |col: &[f64]| col.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
        let v0_max = xy.column(0).iter().fold(0.0f64, |acc, v| acc.max(v.to_f64().abs()));
        let v1_max = xy.column(1).iter().fold(0.0f64, |acc, v| acc.max(v.to_f64().abs()));
        let bound = v0_max * max_abs(&b0) + v1_max * max_abs(&b1);
        if bound.is_nan() || bound > MAX_TURNS {
            return Err(GeoError::parameter(
                "xy",
                "small enough for b that every xy·bᵀ stays finite (max|x|·max|b₀| + max|y|·max|b₁| <= 1e300)",
                format!("a bound of {bound:e}"),
            ));
        }
        let small = bound < SMALL_TURNS;
        let isa = Isa::active()?;
        let rows_per_task =
            parallel::chunk_len(n, (MIN_VALUES_PER_TASK / width).max(1)).min((MAX_VALUES_PER_TASK / width).max(1));
        let (v0s, v1s) = (xy.column(0), xy.column(1));
        parallel::install(|| {
            out.par_chunks_mut(rows_per_task * width).enumerate().for_each(|(t, block)| {
                let r0 = t * rows_per_task;
                let mut row_buf = vec![0.0f32; width];
                for (r, row) in block.chunks_exact_mut(width).enumerate() {
                    let (v0, v1) = (v0s[r0 + r].to_f64(), v1s[r0 + r].to_f64());
                    let (cos_part, sin_part) = row_buf.split_at_mut(m);
                    if small {
                        row_small(isa, v0, v1, &b0, &b1, cos_part, sin_part);
                    } else {
                        row_any(isa, v0, v1, &b0, &b1, cos_part, sin_part);
                    }
                    write_all(row, &row_buf);
                }
            });
        });
    }
    // SAFETY: the blocks partition `out` into whole rows of `width` (len = n·width), and every
    // row was written by `write_all` above.
    let out = unsafe { assume_init(out) };
    Array2::from_shape_vec((n, width), out)
        .map_err(|e| GeoError::TooLarge { what: "Fourier feature matrix", detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::simd::Level;
    use ndarray::array;

    fn reference(v0: f64, v1: f64, b0: f64, b1: f64) -> (f64, f64) {
        // Exact-enough float64 reference: reduce the f64 product in turns with libm afterwards.
        let x = v0.mul_add(b0, v1 * b1);
        let f = x - x.round();
        let a = 2.0 * std::f64::consts::PI * f;
        (a.cos(), a.sin())
    }

    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    #[test]
    fn matches_float64_reference_at_all_scales() {
        let mut rnd = lcg(7);
        for sigma in [1.0, 16.0, 256.0, 4096.0] {
            let b = Array2::from_shape_fn((256, 2), |_| 3.0 * sigma * rnd());
            let xy = Array2::from_shape_fn((500, 2), |(_, j)| if j == 0 { 2.0 * rnd() } else { rnd() });
            let f = fourier_features(xy.view(), b.view()).unwrap();
            assert_eq!(f.dim(), (500, 512));
            let mut worst = 0.0f64;
            for i in 0..500 {
                for j in 0..256 {
                    let (c, s) = reference(xy[[i, 0]], xy[[i, 1]], b[[j, 0]], b[[j, 1]]);
                    worst = worst.max((f[[i, j]] as f64 - c).abs()).max((f[[i, 256 + j]] as f64 - s).abs());
                }
            }
            assert!(worst <= 5e-8, "sigma {sigma}: {worst:e}");
        }
    }

    #[test]
    fn huge_arguments_take_the_exact_path() {
        let xy = array![[1e11, 3.0], [-2e9, 0.5]];
        let b = array![[12345.678, 1.0], [-0.001, 7.0]];
        let f = fourier_features(xy.view(), b.view()).unwrap();
        for i in 0..2 {
            for j in 0..2 {
                let (c, s) = reference(xy[[i, 0]], xy[[i, 1]], b[[j, 0]], b[[j, 1]]);
                assert!((f[[i, j]] as f64 - c).abs() <= 5e-8 && (f[[i, 2 + j]] as f64 - s).abs() <= 5e-8);
            }
        }
    }

    #[test]
    fn reductions_and_versions_agree() {
        let mut rnd = lcg(9);
        let b0: Vec<f64> = (0..256).map(|_| 700.0 * rnd()).collect();
        let b1: Vec<f64> = (0..256).map(|_| 700.0 * rnd()).collect();
        let mut c = [vec![0f32; 256], vec![0f32; 256], vec![0f32; 256], vec![0f32; 256]];
        let [c1, c2, c3, c4] = &mut c;
        let mut s = [vec![0f32; 256], vec![0f32; 256], vec![0f32; 256], vec![0f32; 256]];
        let [s1, s2, s3, s4] = &mut s;
        row_small(Isa::detect(), 0.3, -0.2, &b0, &b1, c1, s1);
        row_small(Isa::capped(Level::Portable), 0.3, -0.2, &b0, &b1, c2, s2);
        row_any(Isa::detect(), 0.3, -0.2, &b0, &b1, c3, s3);
        row_any(Isa::capped(Level::Portable), 0.3, -0.2, &b0, &b1, c4, s4);
        let (mut c5, mut s5) = (vec![0f32; 256], vec![0f32; 256]);
        row_small(Isa::capped(Level::Avx2), 0.3, -0.2, &b0, &b1, &mut c5, &mut s5);
        assert_eq!(*c1, c5);
        assert_eq!(*s1, s5);
        // Both reductions agree exactly within a version ...
        assert_eq!(c1, c3);
        assert_eq!(s1, s3);
        assert_eq!(c2, c4);
        assert_eq!(s2, s4);
        // ... and the versions within the error bound (multiply-add rounding differs).
        for (p, q) in c1.iter().chain(s1.iter()).zip(c2.iter().chain(s2.iter())) {
            assert!((p - q).abs() <= 6e-8, "{p} vs {q}");
        }
    }

    #[test]
    fn validation_and_empty() {
        let b = array![[1.0, 2.0]];
        let xy = Array2::<f64>::zeros((0, 2));
        assert_eq!(fourier_features(xy.view(), b.view()).unwrap().dim(), (0, 2));
        let one = array![[0.0, 0.0]];
        let f = fourier_features(one.view(), b.view()).unwrap();
        assert_eq!(f.as_slice().unwrap(), &[1.0, 0.0]);
        let no_b = Array2::<f64>::zeros((0, 2));
        assert!(matches!(fourier_features(one.view(), no_b.view()), Err(GeoError::Empty { name: "b", .. })));
        let nan = array![[0.0, f64::NAN]];
        assert!(matches!(fourier_features(nan.view(), b.view()), Err(GeoError::NonFinite { name: "xy", row: 0, .. })));
        assert!(matches!(fourier_features(one.view(), nan.view()), Err(GeoError::NonFinite { name: "b", .. })));
        let wide = array![[0.0, 0.0, 0.0]];
        assert!(matches!(fourier_features(wide.view(), b.view()), Err(GeoError::Shape { name: "xy", .. })));
        assert!(matches!(fourier_features(one.view(), wide.view()), Err(GeoError::Shape { name: "b", .. })));
        // Finite inputs whose products overflow: an error, not NaN features.
        let big_b = array![[1e308, 0.0]];
        let e = fourier_features(array![[3.0, 0.0]].view(), big_b.view()).unwrap_err();
        assert!(matches!(e, GeoError::Parameter { name: "xy", .. }), "{e}");
        let f = fourier_features(array![[1e-8, 0.0]].view(), big_b.view()).unwrap();
        assert!(f.iter().all(|v| v.is_finite()));
    }
}
