//! AVX-512F kernels: one zmm accumulator per (query, row) pair holds the 16 canonical lanes.
//! Register blocking: 4 queries × 6 rows (24 accumulators + 6 row registers + 1 query register
//! of the 32 zmm); 1 query × 8 rows for single queries. Bit-identical to `scalar.rs`.
//!
//! # Safety (all `unsafe fn` here)
//! Every function is compiled with `avx512f,avx2,fma,f16c`: calling one on a CPU without those
//! features is undefined behaviour. Callers prove them with a `core::simd::Isa` whose `avx512()`
//! is true. Pointer arguments must be valid for the reads and writes each function documents; the
//! safe wrappers in `kernels/mod.rs` check those bounds first.

// Register-blocked loops index accumulator arrays by (query, row): clearer than iterators.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

/// The canonical tree over the 16 lanes of `v`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn reduce16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    let v8 = _mm256_add_ps(lo, hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    let v1 = _mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 0b01));
    _mm_cvtss_f32(v1)
}

/// The canonical tree of 16 accumulators at once (the same pairwise sums as [`reduce16`],
/// batched by shuffles): `a[4r + m]` holds (query m, row r); writes `out[m * ldo + r]`.
///
/// # Safety
/// The CPU supports AVX-512F, AVX2, FMA and F16C; `out` is valid for writing 4 rows of 4 f32 at
/// stride `ldo`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn store_reduced_4x4(a: &[__m512; 16], out: *mut f32, ldo: usize) {
    // v8: lanes l + (l + 8); two accumulators per vector.
    let mut p = [_mm512_setzero_ps(); 8];
    for t in 0..8 {
        let (x, y) = (a[2 * t], a[2 * t + 1]);
        p[t] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    // v4: lanes l + (l + 4); four accumulators per vector, one per 128-bit lane.
    let mut q = [_mm512_setzero_ps(); 4];
    for u in 0..4 {
        let (x, y) = (p[2 * u], p[2 * u + 1]);
        q[u] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
    }
    // v2: lanes l + (l + 2), within 128-bit lanes.
    let r0 = _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], 0x44), _mm512_shuffle_ps(q[0], q[1], 0xEE));
    let r1 = _mm512_add_ps(_mm512_shuffle_ps(q[2], q[3], 0x44), _mm512_shuffle_ps(q[2], q[3], 0xEE));
    // s = v2[0] + v2[1]; lane 4j + p holds a[4p + j].
    let s = _mm512_add_ps(_mm512_shuffle_ps(r0, r1, 0x88), _mm512_shuffle_ps(r0, r1, 0xDD));
    _mm_storeu_ps(out, _mm512_extractf32x4_ps(s, 0));
    _mm_storeu_ps(out.add(ldo), _mm512_extractf32x4_ps(s, 1));
    _mm_storeu_ps(out.add(2 * ldo), _mm512_extractf32x4_ps(s, 2));
    _mm_storeu_ps(out.add(3 * ldo), _mm512_extractf32x4_ps(s, 3));
}

/// Sixteen f32 from `p`.
///
/// # Safety
/// The CPU supports AVX-512F; `p` is valid for reading 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ld_f32(p: *const f32) -> __m512 {
    _mm512_loadu_ps(p)
}

/// The `rem` f32 at `p`, zeros beyond (a masked load touches no other lane).
///
/// # Safety
/// The CPU supports AVX-512F; `rem < 16` and `p` is valid for reading `rem` f32.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ld_f32_tail(p: *const f32, rem: usize) -> __m512 {
    _mm512_maskz_loadu_ps(((1u32 << rem) - 1) as __mmask16, p)
}

/// Sixteen halves from `p`, widened to f32.
///
/// # Safety
/// The CPU supports AVX-512F; `p` is valid for reading 16 u16.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ld_f16(p: *const u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// The `rem` halves at `p` widened to f32, zeros beyond.
///
/// # Safety
/// The CPU supports AVX-512F; `rem <= 16` and `p` is valid for reading `rem` u16.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ld_f16_tail(p: *const u16, rem: usize) -> __m512 {
    let mut buf = [0u16; 16];
    std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem);
    _mm512_cvtph_ps(_mm256_loadu_si256(buf.as_ptr() as *const __m256i))
}

/// `micro::<M, nr>(args...)` for a run-time `nr` among the listed constants.
macro_rules! dispatch {
    ($micro:ident, $m:literal, $nr:expr, [$($n:literal),*], $args:expr) => {{
        let (a0, a1, a2, a3, a4, a5, a6, a7) = $args;
        match $nr {
            $($n => $micro::<$m, $n>(a0, a1, a2, a3, a4, a5, a6, a7),)*
            _ => unreachable!("row block wider than the kernel"),
        }
    }};
}

/// Register block for several queries: MR_MAX queries × NR_MAX rows.
const MR_MAX: usize = 4;
const NR_MAX: usize = 4;
use super::PF_ROWS;

macro_rules! kernels {
    ($micro:ident, $block:ident, $t:ty, $ld:ident, $ldt:ident) => {
        /// MR queries × NR rows over the full dimension; writes MR × NR canonical scores.
        ///
        /// # Safety
        /// The CPU supports AVX-512F, AVX2, FMA and F16C; `q` is valid for reading MR rows of
        /// `dp` f32 (stride `dp`, a multiple of 16 and `>= d`), `x` for reading NR rows of `d`
        /// elements (stride `ld`), `out` for writing MR rows of NR f32 (stride `ldo`). Rows `pf`
        /// ahead are only prefetched (a hint, never a read).
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
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
            let mut acc = [[_mm512_setzero_ps(); NR]; MR];
            let full = d / 16;
            let mut off = 0usize;
            for _ in 0..full {
                let mut xv = [_mm512_setzero_ps(); NR];
                for r in 0..NR {
                    xv[r] = $ld(x.add(r * ld + off));
                }
                if pf != 0 && super::line_start(off, std::mem::size_of::<$t>()) {
                    // Rows `pf` ahead: one line per row and step, spread over the whole pass.
                    for r in 0..NR {
                        _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add((r + pf) * ld + off) as *const i8);
                    }
                }
                for m in 0..MR {
                    let qv = _mm512_loadu_ps(q.add(m * dp + off));
                    for r in 0..NR {
                        acc[m][r] = _mm512_fmadd_ps(qv, xv[r], acc[m][r]);
                    }
                }
                off += 16;
            }
            let rem = d - off;
            if rem > 0 {
                let mut xv = [_mm512_setzero_ps(); NR];
                for r in 0..NR {
                    xv[r] = $ldt(x.add(r * ld + off), rem);
                }
                for m in 0..MR {
                    let qv = _mm512_loadu_ps(q.add(m * dp + off));
                    for r in 0..NR {
                        acc[m][r] = _mm512_fmadd_ps(qv, xv[r], acc[m][r]);
                    }
                }
            }
            if MR == 4 && NR == 4 {
                let mut a = [_mm512_setzero_ps(); 16];
                for m in 0..4 {
                    for r in 0..4 {
                        a[4 * r + m] = acc[m][r];
                    }
                }
                store_reduced_4x4(&a, out, ldo);
            } else {
                for m in 0..MR {
                    for r in 0..NR {
                        *out.add(m * ldo + r) = reduce16(acc[m][r]);
                    }
                }
            }
        }

        /// All `nq` queries against `nrows` rows starting at `x`.
        ///
        /// # Safety
        /// The CPU supports AVX-512F, AVX2, FMA and F16C; `q` is valid for reading `nq` rows of
        /// `dp` f32 (`dp` a multiple of 16, `>= d`), `x` for reading `nrows` rows of `d` elements
        /// at stride `ld`, and `out` for writing `nq` rows of `nrows` f32 at stride `ldo`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
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
            // One query: a long row block (memory-bound). Several: MR × NR accumulators.
            let (mr_max, nr_max) = if nq == 1 { (1, 8) } else { (MR_MAX, NR_MAX) };
            // Rows in panels that stay in L1 while every query block passes over them.
            let panel = if nq == 1 { nrows } else { super::panel_rows(ld * std::mem::size_of::<$t>(), nr_max) };
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
                        // The first query block prefetches the rows a few row blocks ahead.
                        let pf = if i == 0 && r + PF_ROWS + nr <= nrows { PF_ROWS } else { 0 };
                        let args = (qi, dp, xr, ld, d, or, ldo, pf);
                        if nq == 1 {
                            dispatch!($micro, 1, nr, [1, 2, 3, 4, 5, 6, 7, 8], args)
                        } else {
                            match mr {
                                1 => dispatch!($micro, 1, nr, [1, 2, 3, 4], args),
                                2 => dispatch!($micro, 2, nr, [1, 2, 3, 4], args),
                                3 => dispatch!($micro, 3, nr, [1, 2, 3, 4], args),
                                _ => dispatch!($micro, 4, nr, [1, 2, 3, 4], args),
                            }
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
