//! The thread pool every kernel runs in.
//!
//! One rayon pool owned by geofast (never rayon's global pool, which can be sized only once and
//! may be shared with other extensions). Its size comes from, in order: the last
//! [`set_num_threads`] call, the `GEOFAST_NUM_THREADS` environment variable, the number of CPUs
//! the process may use. Kernels call [`install`] around their parallel section.
//!
//! Thread counts are limited to [`max_threads`] = max(64, 4 × the CPUs the process may use):
//! the kernels are CPU-bound, so threads beyond a few per CPU only add overhead, and a runaway
//! count (`10**6`) would otherwise try to start that many OS threads and stall the process.
//! The floor of 64 keeps small fixed counts (tests, benchmarks) valid in containers limited to
//! one or two CPUs. [`set_num_threads`] refuses a count outside `1..=max_threads()` with
//! `GeoError::Parameter`; an invalid `GEOFAST_NUM_THREADS` (not a whole number, 0, or above the
//! limit) is ignored in favour of the CPU count, and [`env_threads`] reports why so that the
//! bindings can warn.

use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::error::{GeoError, GeoResult};

/// Environment variable read when the pool is first needed.
pub const THREADS_ENV: &str = "GEOFAST_NUM_THREADS";

/// The smallest value [`max_threads`] takes, whatever the CPU count.
pub const MIN_THREAD_LIMIT: usize = 64;

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// The number of CPUs this process may use (affinity and cgroup quota; 1 if unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The largest thread count accepted: max(64, 4 × [`cpus`]), computed once.
pub fn max_threads() -> usize {
    limits().0
}

/// (max_threads, the requirement as error messages state it).
fn limits() -> &'static (usize, String) {
    static LIMITS: OnceLock<(usize, String)> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let cpus = cpus();
        let max = MIN_THREAD_LIMIT.max(4 * cpus);
        (max, format!("between 1 and {max} (4 × the {cpus} CPUs this process may use, at least {MIN_THREAD_LIMIT})"))
    })
}

/// Check a requested thread count against `1..=max_threads()`; `name` is used in the error.
pub fn check_threads(name: &'static str, n: impl TryInto<usize> + std::fmt::Display + Copy) -> GeoResult<usize> {
    let (max, requirement) = limits();
    match n.try_into() {
        Ok(k) if (1..=*max).contains(&k) => Ok(k),
        _ => Err(GeoError::parameter(name, requirement.as_str(), n)),
    }
}

/// The thread count `GEOFAST_NUM_THREADS` asks for: `Ok(None)` when unset or empty, an error
/// naming the variable when it is not a whole number in `1..=max_threads()`.
pub fn env_threads() -> GeoResult<Option<usize>> {
    match std::env::var(THREADS_ENV) {
        Ok(v) => parse_threads_setting(Some(&v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => parse_threads_setting(Some(&v.to_string_lossy())),
    }
}

/// [`env_threads`] for a given value of the variable (`None`: unset).
pub fn parse_threads_setting(value: Option<&str>) -> GeoResult<Option<usize>> {
    let Some(raw) = value else { return Ok(None) };
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match t.parse::<u128>() {
        Ok(n) => check_threads(THREADS_ENV, n).map(Some).map_err(|e| with_value(e, format!("{raw:?}"))),
        Err(_) => Err(GeoError::parameter(THREADS_ENV, limits().1.as_str(), format!("{raw:?}"))),
    }
}

/// `e` with its reported value replaced (to quote an environment variable as it was written).
fn with_value(e: GeoError, value: String) -> GeoError {
    match e {
        GeoError::Parameter { name, requirement, .. } => GeoError::Parameter { name, requirement, value },
        other => other,
    }
}

fn default_threads() -> usize {
    env_threads().ok().flatten().unwrap_or_else(cpus)
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

/// Resize the pool used by all kernels: `1 <= n <= max_threads()`.
pub fn set_num_threads(n: usize) -> GeoResult<()> {
    let n = check_threads("num_threads", n)?;
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
        let max = max_threads();
        assert!(max >= MIN_THREAD_LIMIT && max >= 4 * cpus());
        let e = set_num_threads(max + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "num_threads must be between 1 and {max} (4 × the {} CPUs this process may use, at least 64), got {}",
                cpus(),
                max + 1
            )
        );
        assert!(set_num_threads(1_000_000).is_err() && set_num_threads(usize::MAX).is_err());
        assert_eq!(check_threads("n", -3i64).unwrap_err().to_string().split(", got ").nth(1), Some("-3"));
        assert_eq!(check_threads("n", 2u128.pow(100)).map_err(|_| ()), Err(()));
        assert_eq!(check_threads("n", max as i64), Ok(max));
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        let seen = install(rayon::current_num_threads);
        assert_eq!(seen, 3);
        let total: u64 = install(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(total, 999 * 1000 / 2);
        set_num_threads(2).unwrap();
        assert_eq!(num_threads(), 2);
    }

    #[test]
    fn environment_values() {
        let max = max_threads();
        assert_eq!(parse_threads_setting(None), Ok(None));
        assert_eq!(parse_threads_setting(Some(" ")), Ok(None));
        assert_eq!(parse_threads_setting(Some("3")), Ok(Some(3)));
        assert_eq!(parse_threads_setting(Some(" 2\n")), Ok(Some(2)));
        assert_eq!(parse_threads_setting(Some(&max.to_string())), Ok(Some(max)));
        for bad in ["0", "-1", "1000000", "99999999999999999999999999999999999999999", "two", "1.5", "4 threads"] {
            let e = parse_threads_setting(Some(bad)).unwrap_err();
            assert!(e.to_string().starts_with("GEOFAST_NUM_THREADS must be between 1 and "), "{e}");
            assert!(e.to_string().ends_with(&format!("got {bad:?}")), "{e}");
        }
        assert!(parse_threads_setting(Some(&(max + 1).to_string())).is_err());
    }

    #[test]
    fn chunk_len_is_positive() {
        assert!(chunk_len(0, 1) >= 1);
        assert!(chunk_len(10, 64) >= 64);
    }
}
