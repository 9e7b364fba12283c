//! Score kernels and their run-time dispatch.
//!
//! Three implementations of the same canonical arithmetic (defined in [`scalar`]): portable
//! scalar code, AVX2 + FMA + F16C, and AVX-512F. They return identical bits, so results never
//! depend on the machine, the batch size or the thread count. The level is detected once at run
//! time (`is_x86_feature_detected!`); the environment variable `GEOFAST_SIMD` (`off`/`scalar`,
//! `avx2`, `avx512`, `auto`) caps it, read the first time a kernel runs. Core tests pass an
//! explicit [`Isa`] to compare the paths.

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::sync::OnceLock;

use crate::core::topk::select::QState;

/// Lanes of the canonical dot product and log-sum-exp sums.
pub const LANES: usize = 16;

/// `d` rounded up to a multiple of [`LANES`]: the padded length of packed queries and codes.
pub fn padded(d: usize) -> usize {
    d.div_ceil(LANES) * LANES
}

/// Rows per L1-resident panel in the multi-query kernels: ~24 KiB of rows, a multiple of the
/// row block `nr` (at least one block).
pub(crate) fn panel_rows(row_bytes: usize, nr: usize) -> usize {
    ((24 * 1024) / row_bytes.max(1) / nr).max(1) * nr
}

/// Rows per panel of the multi-query loop `for panel { for query block { for row block } }`.
/// Few queries (all of them fit in L1): one row block per panel, so each row is fetched once
/// and immediately reused by every query while the prefetcher streams the next rows. Many
/// queries: ~24 KiB of rows stay in L1 while all query blocks pass over them.
pub(crate) fn panel_for(nq: usize, dp: usize, nrows: usize, row_bytes: usize, nr: usize) -> usize {
    if nq == 1 {
        nrows
    } else if nq * dp * 4 <= 32 * 1024 {
        nr
    } else {
        panel_rows(row_bytes, nr)
    }
}

/// Software prefetch distance of the SIMD kernels, in rows: the first query block over a row
/// block fetches the rows this far ahead, one cache line per row and step, spread over the
/// pass. (The hardware prefetchers alone keep only ~half the DRAM bandwidth busy when 4–8
/// rows are streamed side by side.)
pub(crate) const PF_ROWS: usize = 8;

/// Whether a kernel step at element offset `off` (of `elem` bytes each) starts a cache line.
#[inline(always)]
pub(crate) fn line_start(off: usize, elem: usize) -> bool {
    (off * elem).is_multiple_of(64)
}

/// Environment variable capping the SIMD level.
pub const SIMD_ENV: &str = "GEOFAST_SIMD";

/// Instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// Name as `GEOFAST_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.available() && is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best level this CPU supports.
    pub fn detected() -> Isa {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.available()).unwrap_or(Isa::Scalar)
    }

    /// Every level this CPU supports, lowest first (for tests and benchmarks).
    pub fn all_available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.available()).collect()
    }

    /// The level selected by `value` (a `GEOFAST_SIMD` setting), never above what the CPU has.
    pub fn from_setting(value: Option<&str>) -> Isa {
        let best = Isa::detected();
        let wanted = match value.map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if matches!(v.as_str(), "off" | "0" | "false" | "no" | "none" | "scalar") => Isa::Scalar,
            Some(v) if v == "avx2" => Isa::Avx2,
            _ => best,
        };
        wanted.min(best)
    }
}

/// The level kernels use in this process (detected once; capped by `GEOFAST_SIMD`).
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| Isa::from_setting(std::env::var(SIMD_ENV).ok().as_deref()))
}

/// `n` rows of `d` f32 values, row `r` at `data[r * ld..r * ld + d]`.
#[derive(Clone, Copy)]
pub struct F32Rows<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub d: usize,
    pub ld: usize,
}

/// `n` rows of `d` IEEE half-precision values (raw bits), row `r` at `data[r * ld..]`.
#[derive(Clone, Copy)]
pub struct F16Rows<'a> {
    pub data: &'a [u16],
    pub n: usize,
    pub d: usize,
    pub ld: usize,
}

/// `n` rows of int8 codes zero-padded to `dp` (a multiple of 16), with one f32 scale per row.
#[derive(Clone, Copy)]
pub struct I8Rows<'a> {
    pub codes: &'a [i8],
    pub scales: &'a [f32],
    pub n: usize,
    pub dp: usize,
}

impl<'a> F32Rows<'a> {
    pub fn new(data: &'a [f32], n: usize, d: usize, ld: usize) -> Self {
        assert!(ld >= d && (n == 0 || (n - 1) * ld + d <= data.len()), "F32Rows out of bounds");
        F32Rows { data, n, d, ld }
    }
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.ld..r * self.ld + self.d]
    }
}

impl<'a> F16Rows<'a> {
    pub fn new(data: &'a [u16], n: usize, d: usize, ld: usize) -> Self {
        assert!(ld >= d && (n == 0 || (n - 1) * ld + d <= data.len()), "F16Rows out of bounds");
        F16Rows { data, n, d, ld }
    }
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u16] {
        &self.data[r * self.ld..r * self.ld + self.d]
    }
}

impl<'a> I8Rows<'a> {
    pub fn new(codes: &'a [i8], scales: &'a [f32], n: usize, dp: usize) -> Self {
        assert!(dp.is_multiple_of(LANES) && codes.len() >= n * dp && scales.len() >= n, "I8Rows out of bounds");
        I8Rows { codes, scales, n, dp }
    }
    #[inline]
    pub fn row(&self, r: usize) -> &'a [i8] {
        &self.codes[r * self.dp..(r + 1) * self.dp]
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
fn check_block(qlen: usize, nq: usize, dp: usize, d: usize, n: usize, r0: usize, r1: usize, out: usize, ldo: usize) {
    assert!(
        dp.is_multiple_of(LANES)
            && dp >= d
            && qlen >= nq * dp
            && r0 <= r1
            && r1 <= n
            && ldo >= r1 - r0
            && (nq == 0 || out >= (nq - 1) * ldo + (r1 - r0)),
        "score block out of bounds"
    );
}

/// Canonical scores of `nq` packed queries (`dp` floats each, zero-padded) against rows
/// `r0..r1`: `out[i * ldo + (r - r0)]`.
#[allow(clippy::too_many_arguments)]
pub fn score_f32(isa: Isa, q: &[f32], nq: usize, dp: usize, x: &F32Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    check_block(q.len(), nq, dp, x.d, x.n, r0, r1, out.len(), ldo);
    if nq == 0 || r0 == r1 {
        return;
    }
    match isa {
        // SAFETY: bounds checked above; the level is only chosen when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            avx512::score_f32(q.as_ptr(), nq, dp, x.data.as_ptr().add(r0 * x.ld), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            avx2::score_f32(q.as_ptr(), nq, dp, x.data.as_ptr().add(r0 * x.ld), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
        },
        _ => scalar::score_f32(q, nq, dp, x, r0, r1, out, ldo),
    }
}

thread_local! {
    static F16_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// As [`score_f32`] for half-precision rows.
#[allow(clippy::too_many_arguments)]
pub fn score_f16(isa: Isa, q: &[f32], nq: usize, dp: usize, x: &F16Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    check_block(q.len(), nq, dp, x.d, x.n, r0, r1, out.len(), ldo);
    if nq == 0 || r0 == r1 {
        return;
    }
    if nq > 1 && isa != Isa::Scalar {
        // Several queries: widen the rows once (exact) and run the f32 kernel, instead of
        // converting every row again for each query block.
        F16_SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            const STEP: usize = 64;
            let mut r = r0;
            while r < r1 {
                let e = (r + STEP).min(r1);
                buf.resize((e - r) * x.d, 0.0);
                for (i, row) in (r..e).enumerate() {
                    f16_to_f32(isa, x.row(row), &mut buf[i * x.d..(i + 1) * x.d]);
                }
                let rows = F32Rows::new(&buf, e - r, x.d, x.d);
                score_f32(isa, q, nq, dp, &rows, 0, e - r, &mut out[r - r0..], ldo);
                r = e;
            }
        });
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            avx512::score_f16(q.as_ptr(), nq, dp, x.data.as_ptr().add(r0 * x.ld), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            avx2::score_f16(q.as_ptr(), nq, dp, x.data.as_ptr().add(r0 * x.ld), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
        },
        _ => scalar::score_f16(q, nq, dp, x, r0, r1, out, ldo),
    }
}

/// Approximate scores from int8 codes for `nq` i16 queries (`x.dp` values each) with scales
/// `qscale`: `(dot as f32) * (qscale[i] * x.scales[r])`.
#[allow(clippy::too_many_arguments)]
pub fn score_i8(isa: Isa, q: &[i16], qscale: &[f32], nq: usize, x: &I8Rows, r0: usize, r1: usize, out: &mut [f32], ldo: usize) {
    check_block(q.len(), nq, x.dp, x.dp, x.n, r0, r1, out.len(), ldo);
    assert!(qscale.len() >= nq);
    if nq == 0 || r0 == r1 {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe {
            avx2::score_i8(
                q.as_ptr(),
                qscale.as_ptr(),
                nq,
                x.dp,
                x.codes.as_ptr().add(r0 * x.dp),
                x.scales.as_ptr().add(r0),
                r1 - r0,
                out.as_mut_ptr(),
                ldo,
            )
        },
        _ => scalar::score_i8(q, qscale, nq, x, r0, r1, out, ldo),
    }
}

/// Canonical dot product of one packed query with one f32 row.
pub fn dot_f32(isa: Isa, q: &[f32], x: &[f32]) -> f32 {
    let mut out = [0f32];
    let rows = F32Rows::new(x, 1, x.len(), x.len());
    score_f32(isa, q, 1, q.len(), &rows, 0, 1, &mut out, 1);
    out[0]
}

/// Canonical dot product of one packed query with one half-precision row.
pub fn dot_f16(isa: Isa, q: &[f32], x: &[u16]) -> f32 {
    let mut out = [0f32];
    let rows = F16Rows::new(x, 1, x.len(), x.len());
    score_f16(isa, q, 1, q.len(), &rows, 0, 1, &mut out, 1);
    out[0]
}

/// The tile's log-sum-exp reference score and Σ exp((s - ref) · scale).
pub fn tile_lse(isa: Isa, s: &[f32], scale: f32) -> (f32, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::tile_lse(s, scale) },
        _ => {
            let r = scalar::tile_ref(s, scale);
            (r, scalar::tile_expsum(s, r, scale))
        }
    }
}

/// Offer the tile's scores above the state's cut (indices `base + j`); true if any is not finite.
pub fn scan_tile(isa: Isa, s: &[f32], base: u32, st: &mut QState) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::scan_tile(s, base, st) },
        _ => scalar::scan_tile(s, base, st),
    }
}

/// Convert half-precision bits to f32 (exact).
pub fn f16_to_f32(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert!(dst.len() >= src.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::f16_to_f32(src, dst) },
        _ => scalar::f16_to_f32(src, dst),
    }
}

/// Round f32 values to IEEE half precision (nearest, ties to even; overflow gives ±inf).
pub fn f32_to_f16(isa: Isa, src: &[f32], dst: &mut [u16]) {
    assert!(dst.len() >= src.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::f32_to_f16(src, dst) },
        _ => scalar::f32_to_f16(src, dst),
    }
}
