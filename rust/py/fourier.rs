//! Bindings for `rust/core/fourier.rs`: convert, release the GIL, call the core, return numpy.

use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;

use super::convert::Float2;
use super::errors::IntoPyResult;
use crate::core::fourier as ff;
use crate::with_views;

/// Random Fourier features `[cos(2π·xy·bᵀ) | sin(2π·xy·bᵀ)]`, `(N, 2m)` float32.
#[pyfunction]
#[pyo3(signature = (xy, b))]
fn fourier_features<'py>(py: Python<'py>, xy: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (xy, b) = (Float2::extract(xy, "xy")?, Float2::extract(b, "b")?);
    let (vx, vb) = (xy.view(), b.view());
    let out = py.detach(|| with_views!(vx, vb, |x, y| ff::fourier_features(x, y))).py_err()?;
    Ok(out.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fourier_features, m)?)?;
    Ok(())
}
