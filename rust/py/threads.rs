//! Bindings for the thread pool of `rust/core/parallel.rs`.

use pyo3::prelude::*;

use super::errors::IntoPyResult;
use crate::core::parallel;

/// Set the number of threads geofast's kernels use (>= 1). Overrides `GEOFAST_NUM_THREADS`.
#[pyfunction]
#[pyo3(signature = (n, /))]
fn set_num_threads(py: Python<'_>, n: i64) -> PyResult<()> {
    let n = usize::try_from(n).map_err(|_| crate::core::error::GeoError::parameter("num_threads", ">= 1", n)).py_err()?;
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
    Ok(())
}
