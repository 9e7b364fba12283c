//! Score kernels and their run-time dispatch.
//!
//! Three implementations of the same canonical arithmetic (defined in [`scalar`]): portable
//! scalar code, AVX2 + FMA + F16C (`avx2.rs`), and AVX-512F (`avx512.rs`). They return identical
//! bits, so results never depend on the machine, the batch size or the thread count. Each entry
//! point takes an [`Isa`], the token of `core::simd` that only CPU detection creates, so a caller
//! cannot select instructions the CPU lacks; kernels use `Isa::active()` (detected once, capped
//! by `GEOFAST_SIMD`), core tests pass every level of `Isa::all_available()` to compare them.
//!
//! The SIMD functions take raw pointers; the safe functions here check every bound they rely on
//! (`check_block`) before calling them. Level `avx512` runs `avx512.rs` for the f32/f16 scores
//! and the AVX2 code for everything else (both feature sets are part of the level).

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::marker::PhantomData;

use ndarray::ArrayView2;

pub use crate::core::simd::Isa;
#[cfg(target_arch = "x86_64")]
use crate::core::simd::Level;
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

/// `n` rows of `d` f32 values, row `r` at `ptr + r * ld`. The elements between rows (when
/// `ld > d`) are never read and need not be valid: a column slice of a wider array is read in
/// place without asserting anything about the columns it leaves out.
#[derive(Clone, Copy)]
pub struct F32Rows<'a> {
    ptr: *const f32,
    pub n: usize,
    pub d: usize,
    pub ld: usize,
    _rows: PhantomData<&'a [f32]>,
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

// SAFETY: an `F32Rows<'a>` gives exactly the access a set of `&'a [f32]` row slices gives (shared,
// read-only, for 'a); `&[f32]` is Send and Sync, so sharing or sending the rows is sound too.
unsafe impl Send for F32Rows<'_> {}
// SAFETY: as for `Send` above.
unsafe impl Sync for F32Rows<'_> {}

impl<'a> F32Rows<'a> {
    /// Rows of a slice: row `r` is `data[r * ld..r * ld + d]`.
    pub fn new(data: &'a [f32], n: usize, d: usize, ld: usize) -> Self {
        assert!(ld >= d && (n == 0 || (n - 1) * ld + d <= data.len()), "F32Rows out of bounds");
        F32Rows { ptr: data.as_ptr(), n, d, ld, _rows: PhantomData }
    }

    /// The rows of a view whose rows are contiguous (column stride 1), read in place; `None` for
    /// other layouts and for empty views.
    pub fn from_view(v: &ArrayView2<'a, f32>) -> Option<Self> {
        let (n, d) = v.dim();
        if n == 0 || d == 0 {
            return None;
        }
        let s = v.strides();
        if d > 1 && s[1] != 1 {
            return None;
        }
        let ld = if n == 1 { d } else { usize::try_from(s[0]).ok()? };
        if ld < d {
            return None;
        }
        // Element (r, j) of the view is at `as_ptr() + r * ld + j` for r < n, j < d.
        Some(F32Rows { ptr: v.as_ptr(), n, d, ld, _rows: PhantomData })
    }

    /// Row `r < n`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        assert!(r < self.n, "F32Rows row out of bounds");
        let start = self.row_ptr(r);
        // SAFETY: both constructors guarantee that rows 0..n, `d` elements each at `ptr + r * ld`,
        // are initialised f32 values borrowed (shared) for 'a: `new` checks them against the slice
        // and `from_view` takes them from a view with row stride `ld` and unit column stride.
        unsafe { std::slice::from_raw_parts(start, self.d) }
    }

    /// Pointer to the first element of row `r` (`r <= n`; not dereferenceable when `r == n`).
    #[inline]
    pub fn row_ptr(&self, r: usize) -> *const f32 {
        self.ptr.wrapping_add(r * self.ld)
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
    #[cfg(target_arch = "x86_64")]
    match isa.level() {
        Level::Avx512 => {
            // SAFETY: the `Isa` token proves AVX-512F, AVX2, FMA and F16C (all `avx512.rs`
            // enables). Bounds, as `avx512::score_f32` requires: `check_block` verified that `q`
            // holds `nq` rows of `dp >= d` floats, that rows `r0..r1` of `x` exist (each `d`
            // floats at stride `ld`, valid for the lifetime of `x`), and that `out` holds `nq`
            // rows of `r1 - r0` scores at stride `ldo`.
            return unsafe { avx512::score_f32(q.as_ptr(), nq, dp, x.row_ptr(r0), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo) };
        }
        Level::Avx2 => {
            // SAFETY: the token proves AVX2, FMA and F16C (all `avx2.rs` enables); bounds as in
            // the AVX-512 arm.
            return unsafe { avx2::score_f32(q.as_ptr(), nq, dp, x.row_ptr(r0), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo) };
        }
        Level::Portable => {}
    }
    let _ = isa;
    scalar::score_f32(q, nq, dp, x, r0, r1, out, ldo)
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
    if nq > 1 && isa.avx2() {
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
    #[cfg(target_arch = "x86_64")]
    match isa.level() {
        Level::Avx512 => {
            // SAFETY: the token proves every feature `avx512.rs` enables; `check_block` verified
            // the bounds `avx512::score_f16` requires (as in `score_f32`), and `F16Rows::new`
            // that rows `r0..r1` lie inside `x.data`.
            return unsafe {
                avx512::score_f16(q.as_ptr(), nq, dp, x.data[r0 * x.ld..].as_ptr(), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
            };
        }
        Level::Avx2 => {
            // SAFETY: the token proves every feature `avx2.rs` enables; bounds as above.
            return unsafe {
                avx2::score_f16(q.as_ptr(), nq, dp, x.data[r0 * x.ld..].as_ptr(), r1 - r0, x.ld, x.d, out.as_mut_ptr(), ldo)
            };
        }
        Level::Portable => {}
    }
    scalar::score_f16(q, nq, dp, x, r0, r1, out, ldo)
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
    if isa.avx2() {
        #[cfg(target_arch = "x86_64")]
        {
            let (codes, scales) = (x.codes[r0 * x.dp..].as_ptr(), x.scales[r0..].as_ptr());
            // SAFETY: the token proves AVX2, FMA and F16C (every level with `avx2()` has them).
            // Bounds, as `avx2::score_i8` requires: `check_block` verified `nq` query rows of
            // `dp` i16 and the `out` block; `I8Rows::new` that rows `r0..r1` of `dp` codes and
            // their scales exist; `qscale` holds `nq` scales (asserted above).
            return unsafe {
                avx2::score_i8(q.as_ptr(), qscale.as_ptr(), nq, x.dp, codes, scales, r1 - r0, out.as_mut_ptr(), ldo)
            };
        }
    }
    scalar::score_i8(q, qscale, nq, x, r0, r1, out, ldo)
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
    if isa.avx2() {
        // SAFETY: the token proves AVX2, FMA and F16C, all `avx2::tile_lse` enables; it reads
        // only within `s`.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::tile_lse(s, scale) };
    }
    let r = scalar::tile_ref(s, scale);
    (r, scalar::tile_expsum(s, r, scale))
}

/// Offer the tile's scores above the state's cut (indices `base + j`); true if any is not finite.
pub fn scan_tile(isa: Isa, s: &[f32], base: u32, st: &mut QState) -> bool {
    if isa.avx2() {
        // SAFETY: the token proves the features `avx2::scan_tile` enables; it reads only within `s`.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::scan_tile(s, base, st) };
    }
    scalar::scan_tile(s, base, st)
}

/// Convert half-precision bits to f32 (exact).
pub fn f16_to_f32(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert!(dst.len() >= src.len());
    if isa.avx2() {
        // SAFETY: the token proves the features `avx2::f16_to_f32` enables; `dst` is at least as
        // long as `src` (asserted above), as it requires.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::f16_to_f32(src, dst) };
    }
    scalar::f16_to_f32(src, dst)
}

/// Round f32 values to IEEE half precision (nearest, ties to even; overflow gives ±inf).
pub fn f32_to_f16(isa: Isa, src: &[f32], dst: &mut [u16]) {
    assert!(dst.len() >= src.len());
    if isa.avx2() {
        // SAFETY: the token proves the features `avx2::f32_to_f16` enables; `dst` is at least as
        // long as `src` (asserted above), as it requires.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::f32_to_f16(src, dst) };
    }
    scalar::f32_to_f16(src, dst)
}
