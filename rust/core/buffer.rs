//! Output buffers that kernels fill in parallel, without a zeroing pass.
//!
//! [`uninit_vec`] reserves the output without touching it, so the first write to each page
//! happens in the worker thread that computes it (no single-threaded `memset` first, which
//! `calloc` performs whenever it recycles heap memory). Kernels write every element through
//! [`write_all`], then [`assume_init`] turns the buffer into a `Vec<T>`. A request the allocator
//! refuses (e.g. a 10⁶ × 10⁶ distance matrix) returns `GeoError::TooLarge` instead of aborting
//! the process.
//!
//! On Linux, buffers of 4 MiB and more are marked `MADV_HUGEPAGE` before their first write:
//! with transparent huge pages in `madvise` mode (a common default) one 2 MiB fault replaces
//! 512 small ones. Filling a fresh 200 MB feature matrix otherwise spends most of its time in
//! the kernel's page-fault path, not in the code that computes it.

use std::mem::MaybeUninit;

use crate::core::error::{GeoError, GeoResult};

/// `n` uninitialised elements; `what` names the output in the error message.
pub fn uninit_vec<T>(n: usize, what: &'static str) -> GeoResult<Vec<MaybeUninit<T>>> {
    let mut v: Vec<MaybeUninit<T>> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| GeoError::TooLarge {
        what,
        detail: format!(
            "{n} elements of {} bytes could not be allocated; split the input into smaller batches",
            std::mem::size_of::<T>()
        ),
    })?;
    // SAFETY: capacity >= n, and `MaybeUninit<T>` needs no initialisation.
    unsafe { v.set_len(n) };
    advise_huge_pages(v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>());
    Ok(v)
}

/// Initialise `dst` with a copy of `src` (equal lengths).
#[inline]
pub fn write_all<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// The initialised vector.
///
/// # Safety
/// Every element of `v` must have been written (e.g. with [`write_all`]).
pub unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; pointer, length and capacity come from a
    // live vector that is not dropped; the caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

/// Ask for transparent huge pages on the 2 MiB-aligned interior of a large fresh buffer.
/// Purely advisory: errors (e.g. THP disabled) are ignored.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    if len < 2 * HUGE {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: [start, end) lies inside the allocation just made; madvise with
        // MADV_HUGEPAGE changes no contents and no mapping, only how future faults are served.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_refusals() {
        let mut v = uninit_vec::<f64>(3000, "x").unwrap();
        let src: Vec<f64> = (0..3000).map(|i| i as f64).collect();
        for (d, s) in v.chunks_mut(512).zip(src.chunks(512)) {
            write_all(d, s);
        }
        // SAFETY: every chunk was written above.
        let v = unsafe { assume_init(v) };
        assert_eq!(v, src);
        let big = uninit_vec::<f32>(3 << 20, "x").unwrap();
        assert_eq!(big.len(), 3 << 20);
        assert!(uninit_vec::<f32>(0, "x").unwrap().is_empty());
        let err = uninit_vec::<f64>(usize::MAX / 4, "distance matrix").unwrap_err();
        assert!(matches!(err, GeoError::TooLarge { what: "distance matrix", .. }), "{err}");
    }
}
