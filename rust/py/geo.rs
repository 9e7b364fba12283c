//! Bindings for `rust/core/geo`: convert, release the GIL, call the core, return numpy.

use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;

use super::convert::Float2;
use super::errors::IntoPyResult;
use crate::core::geo::equal_earth as ee;
use crate::with_view;

/// GeoCLIP's Equal Earth projection (with its SF/180 scaling) of `(N, 2)` lat/lon degrees.
#[pyfunction]
#[pyo3(signature = (latlon, /))]
fn equal_earth<'py>(py: Python<'py>, latlon: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let input = Float2::extract(latlon, "latlon")?;
    let view = input.view();
    let out = py.detach(|| with_view!(view, |a| ee::equal_earth(a))).py_err()?;
    Ok(out.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(equal_earth, m)?)?;
    Ok(())
}
