//! AVX2 + FMA + F16C kernels. The 16 canonical lanes of a (query, row) pair live in two ymm
//! accumulators (lanes 0-7 and 8-15). Register blocking: 2 queries × 3 rows (12 accumulators,
//! 2 query registers, 1 row register); 1 query × 6 rows for single queries. int8 codes are
//! widened to i16 (`vpmovsxbw`) and multiplied with the i16 query by `vpmaddwd` into i32 lanes.
//! Also the per-tile helpers (threshold scan, log-sum-exp) used by both SIMD levels.
//! Bit-identical to `scalar.rs`.
//!
//! # Safety (all `unsafe fn` here)
//! Every function is compiled with `avx2,fma,f16c`: calling one on a CPU without those features
//! is undefined behaviour. Callers prove the features with a `core::simd::Isa` whose `avx2()` is
//! true. Pointer arguments must be valid for the reads and writes each function documents; the
//! safe wrappers in `kernels/mod.rs` check those bounds first.

// Register-blocked loops index accumulator arrays by (query, row): clearer than iterators.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::scalar::{EXP_MIN_ARG, EXP_P, LN2_HI, LN2_LO, LOG2E};
use super::PF_ROWS;
use crate::core::topk::select::QState;

/// The canonical tree over lanes `lo` (0-7) and `hi` (8-15).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce16(lo: __m256, hi: __m256) -> f32 {
    let v8 = _mm256_add_ps(lo, hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    let v1 = _mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 0b01));
    _mm_cvtss_f32(v1)
}

/// Mask selecting the first `n` (0..=8) of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_mask(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

/// Eight f32 from `p`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `p` is valid for reading 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// Lanes `h*8 .. h*8+8` of a tail chunk holding `rem` valid values, zeros elsewhere.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `rem <= 16` and `p` is valid for reading `rem` f32 (the
/// masked loads touch no lane beyond `rem`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_f32_tail(p: *const f32, rem: usize) -> [__m256; 2] {
    let lo = _mm256_maskload_ps(p, lane_mask(rem.min(8)));
    let hi = if rem > 8 { _mm256_maskload_ps(p.add(8), lane_mask(rem - 8)) } else { _mm256_setzero_ps() };
    [lo, hi]
}

/// Eight halves from `p`, widened to f32.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `p` is valid for reading 8 u16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// The `rem` halves at `p` widened to f32, zeros beyond.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `rem <= 16` and `p` is valid for reading `rem` u16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_f16_tail(p: *const u16, rem: usize) -> [__m256; 2] {
    let mut buf = [0u16; 16];
    std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem);
    [ld_f16(buf.as_ptr()), ld_f16(buf.as_ptr().add(8))]
}

macro_rules! kernels {
    ($micro:ident, $block:ident, $t:ty, $ld:ident, $ldt:ident) => {
        /// MR queries × NR rows over the full dimension; writes MR × NR canonical scores.
        ///
        /// # Safety
        /// The CPU supports AVX2, FMA and F16C; `q` is valid for reading MR rows of `dp` f32
        /// (stride `dp`, `dp` a multiple of 16 and `>= d`), `x` for reading NR rows of `d`
        /// elements (stride `ld`), `out` for writing MR rows of NR f32 (stride `ldo`). Rows
        /// `pf` ahead are only prefetched (a hint, never a read).
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $micro<const MR: usize, const NR: usize>(
            q: *const f32,
            dp: usize,
            x: *const $t,
            ld: usize,
            d: usize,
            out: *mut f32,
            ldo: usize,
            pf: usize,
        ) {
            let mut acc = [[[_mm256_setzero_ps(); 2]; NR]; MR];
            let full = d / 16;
            let mut off = 0usize;
            for _ in 0..full {
                if pf != 0 && super::line_start(off, std::mem::size_of::<$t>()) {
                    for r in 0..NR {
                        _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add((r + pf) * ld + off) as *const i8);
                    }
                }
                for h in 0..2 {
                    let mut qv = [_mm256_setzero_ps(); MR];
                    for m in 0..MR {
                        qv[m] = _mm256_loadu_ps(q.add(m * dp + off + 8 * h));
                    }
                    for r in 0..NR {
                        let xv = $ld(x.add(r * ld + off + 8 * h));
                        for m in 0..MR {
                            acc[m][r][h] = _mm256_fmadd_ps(qv[m], xv, acc[m][r][h]);
                        }
                    }
                }
                off += 16;
            }
            let rem = d - off;
            if rem > 0 {
                for r in 0..NR {
                    let xv = $ldt(x.add(r * ld + off), rem);
                    for m in 0..MR {
                        for h in 0..2 {
                            let qv = _mm256_loadu_ps(q.add(m * dp + off + 8 * h));
                            acc[m][r][h] = _mm256_fmadd_ps(qv, xv[h], acc[m][r][h]);
                        }
                    }
                }
            }
            for m in 0..MR {
                for r in 0..NR {
                    *out.add(m * ldo + r) = reduce16(acc[m][r][0], acc[m][r][1]);
                }
            }
        }

        /// All `nq` queries against `nrows` rows starting at `x`.
        ///
        /// # Safety
        /// The CPU supports AVX2, FMA and F16C; `q` is valid for reading `nq` rows of `dp` f32
        /// (`dp` a multiple of 16, `>= d`), `x` for reading `nrows` rows of `d` elements at
        /// stride `ld`, and `out` for writing `nq` rows of `nrows` f32 at stride `ldo`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $block(
            q: *const f32,
            nq: usize,
            dp: usize,
            x: *const $t,
            nrows: usize,
            ld: usize,
            d: usize,
            out: *mut f32,
            ldo: usize,
        ) {
            let (mr_max, nr_max) = if nq == 1 { (1, 6) } else { (2, 3) };
            // Rows in panels that stay in L1 while every query block passes over them.
            let panel = super::panel_for(nq, dp, nrows, ld * std::mem::size_of::<$t>(), nr_max);
            let mut p0 = 0;
            while p0 < nrows {
                let p1 = (p0 + panel).min(nrows);
                let mut i = 0;
                while i < nq {
                    let mr = mr_max.min(nq - i);
                    let qi = q.add(i * dp);
                    let oi = out.add(i * ldo);
                    let mut r = p0;
                    while r < p1 {
                        let nr = nr_max.min(p1 - r);
                        let (xr, or) = (x.add(r * ld), oi.add(r));
                        let pf = if i == 0 && r + PF_ROWS + nr <= nrows { PF_ROWS } else { 0 };
                        macro_rules! go {
                            ($m:literal) => {
                                match nr {
                                    1 => $micro::<$m, 1>(qi, dp, xr, ld, d, or, ldo, pf),
                                    2 => $micro::<$m, 2>(qi, dp, xr, ld, d, or, ldo, pf),
                                    3 => $micro::<$m, 3>(qi, dp, xr, ld, d, or, ldo, pf),
                                    4 => $micro::<$m, 4>(qi, dp, xr, ld, d, or, ldo, pf),
                                    5 => $micro::<$m, 5>(qi, dp, xr, ld, d, or, ldo, pf),
                                    _ => $micro::<$m, 6>(qi, dp, xr, ld, d, or, ldo, pf),
                                }
                            };
                        }
                        match mr {
                            1 => go!(1),
                            _ => go!(2),
                        }
                        r += nr;
                    }
                    i += mr;
                }
                p0 = p1;
            }
        }
    };
}

kernels!(micro_f32, score_f32, f32, ld_f32, ld_f32_tail);
kernels!(micro_f16, score_f16, u16, ld_f16, ld_f16_tail);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// MR i16 queries × NR int8 code rows: writes MR × NR approximate scores.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `q` is valid for reading MR rows of `dp` i16 (stride
/// `dp`, a multiple of 16), `qscale` MR f32, `x` NR rows of `dp` i8 (stride `dp`), `xscale` NR
/// f32, and `out` for writing MR rows of NR f32 (stride `ldo`).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_i8<const MR: usize, const NR: usize>(
    q: *const i16,
    qscale: *const f32,
    dp: usize,
    x: *const i8,
    xscale: *const f32,
    out: *mut f32,
    ldo: usize,
    pf: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); NR]; MR];
    let mut off = 0usize;
    while off < dp {
        if pf != 0 && super::line_start(off, 1) {
            for r in 0..NR {
                _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add((r + pf) * dp + off));
            }
        }
        let mut xv = [_mm256_setzero_si256(); NR];
        for r in 0..NR {
            xv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(r * dp + off) as *const __m128i));
        }
        for m in 0..MR {
            let qv = _mm256_loadu_si256(q.add(m * dp + off) as *const __m256i);
            for r in 0..NR {
                acc[m][r] = _mm256_add_epi32(acc[m][r], _mm256_madd_epi16(qv, xv[r]));
            }
        }
        off += 16;
    }
    for m in 0..MR {
        let qs = *qscale.add(m);
        for r in 0..NR {
            let dot = hsum_epi32(acc[m][r]);
            *out.add(m * ldo + r) = (dot as f32) * (qs * *xscale.add(r));
        }
    }
}

/// Approximate int8 scores of `nq` i16 queries against `nrows` code rows starting at `x`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `q` is valid for reading `nq` rows of `dp` i16 (`dp` a
/// multiple of 16), `qscale` `nq` f32, `x` `nrows` rows of `dp` i8, `xscale` `nrows` f32, and
/// `out` for writing `nq` rows of `nrows` f32 at stride `ldo`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn score_i8(
    q: *const i16,
    qscale: *const f32,
    nq: usize,
    dp: usize,
    x: *const i8,
    xscale: *const f32,
    nrows: usize,
    out: *mut f32,
    ldo: usize,
) {
    let (mr_max, nr_max) = if nq == 1 { (1, 8) } else { (4, 3) };
    let mut i = 0;
    while i < nq {
        let mr = mr_max.min(nq - i);
        let (qi, qsi, oi) = (q.add(i * dp), qscale.add(i), out.add(i * ldo));
        let mut r = 0;
        while r < nrows {
            let nr = nr_max.min(nrows - r);
            let (xr, xs, or) = (x.add(r * dp), xscale.add(r), oi.add(r));
            let pf = if i == 0 && r + PF_ROWS + nr <= nrows { PF_ROWS } else { 0 };
            macro_rules! go {
                ($m:literal) => {
                    match nr {
                        1 => micro_i8::<$m, 1>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        2 => micro_i8::<$m, 2>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        3 => micro_i8::<$m, 3>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        4 => micro_i8::<$m, 4>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        5 => micro_i8::<$m, 5>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        6 => micro_i8::<$m, 6>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        7 => micro_i8::<$m, 7>(qi, qsi, dp, xr, xs, or, ldo, pf),
                        _ => micro_i8::<$m, 8>(qi, qsi, dp, xr, xs, or, ldo, pf),
                    }
                };
            }
            match mr {
                1 => go!(1),
                2 => go!(2),
                3 => go!(3),
                _ => go!(4),
            }
            r += nr;
        }
        i += mr;
    }
}

/// Canonical exp (see `scalar::exp_canon`) of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN_ARG));
    let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

/// Reference score (max for scale >= 0, min otherwise) and canonical Σ exp((s - ref) · scale).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (all reads stay inside `s`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_lse(s: &[f32], scale: f32) -> (f32, f32) {
    let n = s.len();
    let p = s.as_ptr();
    let up = scale >= 0.0;
    // Reference: exact max/min (ignoring lanes past the end).
    let fill = _mm256_set1_ps(if up { f32::NEG_INFINITY } else { f32::INFINITY });
    let mut m = fill;
    let mut j = 0;
    while j + 8 <= n {
        let v = _mm256_loadu_ps(p.add(j));
        m = if up { _mm256_max_ps(m, v) } else { _mm256_min_ps(m, v) };
        j += 8;
    }
    if j < n {
        let mask = lane_mask(n - j);
        let v = _mm256_blendv_ps(fill, _mm256_maskload_ps(p.add(j), mask), _mm256_castsi256_ps(mask));
        m = if up { _mm256_max_ps(m, v) } else { _mm256_min_ps(m, v) };
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let r = if up {
        lanes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    } else {
        lanes.iter().fold(f32::INFINITY, |a, &b| if b < a { b } else { a })
    };
    // Σ exp in 16 canonical lanes: element j goes to lane j % 16.
    let rv = _mm256_set1_ps(r);
    let sv = _mm256_set1_ps(scale);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut j = 0;
    while j + 16 <= n {
        for h in 0..2 {
            let v = _mm256_loadu_ps(p.add(j + 8 * h));
            acc[h] = _mm256_add_ps(acc[h], exp8(_mm256_mul_ps(_mm256_sub_ps(v, rv), sv)));
        }
        j += 16;
    }
    for h in 0..2 {
        let start = j + 8 * h;
        if start < n {
            let mask = lane_mask((n - start).min(8));
            let v = _mm256_maskload_ps(p.add(start), mask);
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(v, rv), sv));
            acc[h] = _mm256_add_ps(acc[h], _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
        }
    }
    (r, reduce16(acc[0], acc[1]))
}

/// Offer every score above the state's (rising) cut; true if any score is not finite.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (all reads stay inside `s`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scan_tile(s: &[f32], base: u32, st: &mut QState) -> bool {
    let n = s.len();
    let p = s.as_ptr();
    let mut bad = _mm256_setzero_ps();
    let mut j = 0;
    while j + 16 <= n {
        let a = _mm256_loadu_ps(p.add(j));
        let b = _mm256_loadu_ps(p.add(j + 8));
        let za = _mm256_sub_ps(a, a);
        let zb = _mm256_sub_ps(b, b);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(za, zb, _CMP_UNORD_Q));
        let cut = _mm256_set1_ps(st.cut);
        let hit =
            _mm256_movemask_ps(_mm256_cmp_ps(a, cut, _CMP_GT_OQ)) | (_mm256_movemask_ps(_mm256_cmp_ps(b, cut, _CMP_GT_OQ)) << 8);
        if hit != 0 {
            let mut bits = hit as u32;
            while bits != 0 {
                let t = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let v = *p.add(j + t);
                if v > st.cut {
                    st.accept(v, base + (j + t) as u32);
                }
            }
        }
        j += 16;
    }
    let mut tail_bad = false;
    for (t, &v) in s[j..].iter().enumerate() {
        tail_bad |= !v.is_finite();
        if v > st.cut {
            st.accept(v, base + (j + t) as u32);
        }
    }
    tail_bad || _mm256_movemask_ps(bad) != 0
}

/// Half-precision bits to f32 (exact), 8 at a time.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C, and `dst.len() >= src.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len();
    let mut j = 0;
    while j + 8 <= n {
        _mm256_storeu_ps(dst.as_mut_ptr().add(j), ld_f16(src.as_ptr().add(j)));
        j += 8;
    }
    super::scalar::f16_to_f32(&src[j..], &mut dst[j..]);
}

/// f32 to half-precision bits (round to nearest, ties to even), 8 at a time.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C, and `dst.len() >= src.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len();
    let mut j = 0;
    while j + 8 <= n {
        let h = _mm256_cvtps_ph(_mm256_loadu_ps(src.as_ptr().add(j)), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(dst.as_mut_ptr().add(j) as *mut __m128i, h);
        j += 8;
    }
    super::scalar::f32_to_f16(&src[j..], &mut dst[j..]);
}
