//! Bindings for the thread pool of `rust/core/parallel.rs`.

use pyo3::exceptions::PyRuntimeWarning;
use pyo3::prelude::*;

use super::convert::arg;
use super::errors::IntoPyResult;
use crate::core::parallel;

/// Set the number of threads geofast's kernels use, ``1 <= n <= max(64, 4 × CPUs)``; larger
/// counts raise ``ParameterError``. Overrides ``GEOFAST_NUM_THREADS``.
#[pyfunction]
#[pyo3(signature = (n, /))]
fn set_num_threads(py: Python<'_>, #[pyo3(from_py_with = arg::num_threads)] n: i64) -> PyResult<()> {
    let n = parallel::check_threads("num_threads", n).py_err()?;
    py.detach(|| parallel::set_num_threads(n)).py_err()
}

/// Number of threads geofast's kernels use.
#[pyfunction]
fn get_num_threads(py: Python<'_>) -> usize {
    py.detach(parallel::num_threads)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    // An invalid GEOFAST_NUM_THREADS is ignored (the pool uses every CPU); say so once, at import.
    if let Err(e) = parallel::env_threads() {
        let msg = format!("{e}; using {} threads (the CPUs this process may use)", parallel::cpus());
        PyErr::warn(m.py(), &m.py().get_type::<PyRuntimeWarning>(), &std::ffi::CString::new(msg)?, 1)?;
    }
    Ok(())
}
