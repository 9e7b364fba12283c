//! Portable reference kernels. They *define* the canonical arithmetic that the SIMD kernels
//! (`avx2.rs`, `avx512.rs`) reproduce bit for bit:
//!
//! * dot product: 16 lanes, lane `l` accumulates `q[16c + l] · x[16c + l]` over chunks `c` with
//!   one fused multiply-add per element (zero padding beyond `d`), then the tree
//!   `v8[l] = a[l] + a[l+8]`, `v4[l] = v8[l] + v8[l+4]`, `v2[l] = v4[l] + v4[l+2]`, `s = v2[0] + v2[1]`;
//! * int8 codes: exact i32 integer dot product, then `(dot as f32) * (q_scale * x_scale)`;
//! * exp: Cephes-style `expf` (range reduction by ln 2 split in two, degree-5 polynomial),
//!   arguments clamped below at -87.33654 so that 2^n stays a normal number;
//! * tile log-sum-exp sums: 16 lanes in order, same reduction tree.
//!
//! `f32::mul_add` is a true fused multiply-add on every platform (a libm call without FMA
//! hardware), so these functions return the same bits as the vector code everywhere.

use super::{F16Rows, F32Rows, I8Rows, LANES};
use crate::core::topk::select::QState;

/// The canonical reduction of 16 lane accumulators.
#[inline(always)]
pub fn reduce16(a: &[f32; 16]) -> f32 {
    let mut v8 = [0f32; 8];
    for l in 0..8 {
        v8[l] = a[l] + a[l + 8];
    }
    let v4 = [v8[0] + v8[4], v8[1] + v8[5], v8[2] + v8[6], v8[3] + v8[7]];
    let v2 = [v4[0] + v4[2], v4[1] + v4[3]];
    v2[0] + v2[1]
}

/// Canonical dot product of a zero-padded query row (`q.len()` a multiple of 16, `>= x.len()`)
/// with one gallery row given element-wise by `x(j)` for `j < d`.
#[inline(always)]
fn dot_with(q: &[f32], d: usize, x: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    for (c, qc) in q.chunks_exact(LANES).enumerate() {
        let base = c * LANES;
        for l in 0..LANES {
            let j = base + l;
            let xv = if j < d { x(j) } else { 0.0 };
            acc[l] = qc[l].mul_add(xv, acc[l]);
        }
    }
    reduce16(&acc)
}

/// Canonical f32 dot product (`q` zero-padded to a multiple of 16, `x` of length `d`).
pub fn dot_f32(q: &[f32], x: &[f32]) -> f32 {
    dot_with(q, x.len(), |j| x[j])
}

/// Canonical dot product of an f32 query with an IEEE half-precision row (as raw bits).
pub fn dot_f16(q: &[f32], x: &[u16]) -> f32 {
    dot_with(q, x.len(), |j| half::f16::from_bits(x[j]).to_f32())
}

/// Scores of queries `q` (`nq` rows of `dp` floats) against rows `r0..r1` of `x`:
/// `out[i * ldo + (r - r0)]`.
#[allow(clippy::too_many_arguments)]
pub fn score_f32(q: &[f32], nq: usize, dp: usize, x: &F32Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    for i in 0..nq {
        let qi = &q[i * dp..(i + 1) * dp];
        for r in r0..r1 {
            out[i * ldo + (r - r0)] = dot_f32(qi, x.row(r));
        }
    }
}

/// As [`score_f32`] for half-precision rows.
#[allow(clippy::too_many_arguments)]
pub fn score_f16(q: &[f32], nq: usize, dp: usize, x: &F16Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    for i in 0..nq {
        let qi = &q[i * dp..(i + 1) * dp];
        for r in r0..r1 {
            out[i * ldo + (r - r0)] = dot_f16(qi, x.row(r));
        }
    }
}

/// Exact integer dot product of an i16 query with an i8 code row (both zero-padded to `dp`).
#[inline]
pub fn dot_i8(q: &[i16], x: &[i8]) -> i32 {
    // The caller chooses the query scale so that the sum of |products| fits in i32.
    q.iter().zip(x).fold(0i32, |acc, (&a, &b)| acc.wrapping_add(a as i32 * b as i32))
}

/// Approximate scores from int8 codes: `(dot as f32) * (qscale[i] * x.scales[r])`.
#[allow(clippy::too_many_arguments)]
pub fn score_i8(q: &[i16], qscale: &[f32], nq: usize, x: &I8Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    let dp = x.dp;
    for i in 0..nq {
        let qi = &q[i * dp..(i + 1) * dp];
        for r in r0..r1 {
            let dot = dot_i8(qi, x.row(r));
            out[i * ldo + (r - r0)] = (dot as f32) * (qscale[i] * x.scales[r]);
        }
    }
}

pub const EXP_MIN_ARG: f32 = -87.336_54;
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO with LN2_HI exact in a few bits (Cephes `C1`, `-C2`).
pub const LN2_HI: f32 = 0.693_359_4; // exactly 0.693359375 = 355/512
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial: exp(r) ≈ 1 + r + r² P(r) on |r| <= ln2 / 2.
pub const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes 5.0000001201e-1 rounds to 0.5 in f32
];

/// Canonical exp for arguments <= 0 (larger arguments are not used by the kernels).
#[inline(always)]
pub fn exp_canon(x: f32) -> f32 {
    let x = if x > EXP_MIN_ARG { x } else { EXP_MIN_ARG };
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p.mul_add(r, c);
    }
    let r2 = r * r;
    let y = p.mul_add(r2, r) + 1.0;
    let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * pow2
}

/// Reference score of a tile for log-sum-exp: the score `r` maximising `scale · s` (the max for
/// scale >= 0, the min otherwise).
pub fn tile_ref(s: &[f32], scale: f32) -> f32 {
    if scale >= 0.0 {
        s.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    } else {
        s.iter().fold(f32::INFINITY, |m, &v| if v < m { v } else { m })
    }
}

/// Canonical Σ exp((s_j - r) · scale) over a tile.
pub fn tile_expsum(s: &[f32], r: f32, scale: f32) -> f32 {
    let mut acc = [0f32; LANES];
    for (j, &v) in s.iter().enumerate() {
        acc[j % LANES] += exp_canon((v - r) * scale);
    }
    reduce16(&acc)
}

/// Offer every score above the query's current cut to its state; returns true when a score is
/// not finite (NaN/inf in the data, or a float32 overflow).
pub fn scan_tile(s: &[f32], base: u32, st: &mut QState) -> bool {
    let mut bad = false;
    for (j, &v) in s.iter().enumerate() {
        bad |= !v.is_finite();
        if v > st.cut {
            st.accept(v, base + j as u32);
        }
    }
    bad
}

/// Half-precision bits to f32 (exact).
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// f32 to half-precision bits (round to nearest, ties to even).
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(s).to_bits();
    }
}
