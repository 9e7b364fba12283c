//! The thread pool every kernel runs in.
//!
//! One rayon pool owned by geofast (never rayon's global pool, which can be sized only once and
//! may be shared with other extensions). Its size comes from, in order: the last
//! [`set_num_threads`] call, the `GEOFAST_NUM_THREADS` environment variable, the number of CPUs
//! the process may use. Kernels call [`install`] around their parallel section.

use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::error::{GeoError, GeoResult};

/// Environment variable read when the pool is first needed.
pub const THREADS_ENV: &str = "GEOFAST_NUM_THREADS";

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

fn default_threads() -> usize {
    if let Ok(raw) = std::env::var(THREADS_ENV) {
        if let Ok(n) = raw.trim().parse::<usize>() {
            if n > 0 {
                return n;
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(n: usize) -> GeoResult<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("geofast-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| GeoError::parameter("num_threads", "a thread count the system can start", e))
}

fn pool() -> Arc<ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(p);
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = slot.as_ref() {
        return Arc::clone(p);
    }
    // Falling back to one thread keeps kernels usable if the OS refuses more threads.
    let p = build(default_threads()).or_else(|_| build(1)).expect("a one-thread rayon pool can always be built");
    *slot = Some(Arc::clone(&p));
    p
}

/// Resize the pool used by all kernels. `n` must be at least 1.
pub fn set_num_threads(n: usize) -> GeoResult<()> {
    if n == 0 {
        return Err(GeoError::parameter("num_threads", ">= 1", n));
    }
    let p = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// Number of threads kernels run on.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Run `f` inside geofast's pool: rayon parallel iterators inside `f` use its threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// A chunk length that gives each thread several chunks (for load balance) without making
/// chunks so small that per-chunk overhead shows. `min_len` is the smallest useful chunk.
pub fn chunk_len(n: usize, min_len: usize) -> usize {
    let per = n.div_ceil(num_threads().max(1) * 4);
    per.max(min_len).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn resize_and_run() {
        assert!(set_num_threads(0).is_err());
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        let seen = install(|| rayon::current_num_threads());
        assert_eq!(seen, 3);
        let total: u64 = install(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(total, 999 * 1000 / 2);
        set_num_threads(2).unwrap();
        assert_eq!(num_threads(), 2);
    }

    #[test]
    fn chunk_len_is_positive() {
        assert!(chunk_len(0, 1) >= 1);
        assert!(chunk_len(10, 64) >= 64);
    }
}
