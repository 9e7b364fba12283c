//! Bindings for `rust/core/geo`: convert, release the GIL, call the core, return numpy.

use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;

use super::convert::{arg, Float2};
use super::errors::IntoPyResult;
use crate::core::geo::equal_earth as ee;
use crate::core::geo::geodesic as gd;
use crate::core::geo::haversine as hv;
use crate::core::geo::sphere::MEAN_EARTH_RADIUS_KM;
use crate::{with_view, with_views};

// The Python default `radius_km = 6371.0088` in the signatures below must be this constant.
const _: () = assert!(MEAN_EARTH_RADIUS_KM == 6371.0088);

/// GeoCLIP's Equal Earth projection (with its SF/180 scaling) of `(N, 2)` lat/lon degrees.
#[pyfunction]
#[pyo3(signature = (latlon, /))]
fn equal_earth<'py>(py: Python<'py>, latlon: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let input = Float2::extract(latlon, "latlon")?;
    let view = input.view();
    let out = py.detach(|| with_view!(view, |a| ee::equal_earth(a))).py_err()?;
    Ok(out.into_pyarray(py))
}

/// Elementwise great-circle distances (km) between `(N, 2)` lat/lon degree arrays; either may
/// be one point `(1, 2)`.
#[pyfunction]
#[pyo3(signature = (a, b, *, radius_km = 6371.0088))]
fn haversine<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::radius_km)] radius_km: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (a, b) = (Float2::extract(a, "a")?, Float2::extract(b, "b")?);
    let (va, vb) = (a.view(), b.view());
    let out = py.detach(|| with_views!(va, vb, |x, y| hv::haversine(x, y, radius_km))).py_err()?;
    Ok(out.into_pyarray(py))
}

/// All pairwise great-circle distances (km), `(N, M)`.
#[pyfunction]
#[pyo3(signature = (a, b, *, radius_km = 6371.0088))]
fn haversine_matrix<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::radius_km)] radius_km: f64,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (a, b) = (Float2::extract(a, "a")?, Float2::extract(b, "b")?);
    let (va, vb) = (a.view(), b.view());
    let out = py.detach(|| with_views!(va, vb, |x, y| hv::haversine_matrix(x, y, radius_km))).py_err()?;
    Ok(out.into_pyarray(py))
}

/// Elementwise WGS-84 geodesic distances (km, Karney's algorithm) as geopy's `geodesic`.
#[pyfunction]
#[pyo3(signature = (a, b))]
fn geodesic<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (a, b) = (Float2::extract(a, "a")?, Float2::extract(b, "b")?);
    let (va, vb) = (a.view(), b.view());
    let out = py.detach(|| with_views!(va, vb, |x, y| gd::geodesic(x, y))).py_err()?;
    Ok(out.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(equal_earth, m)?)?;
    m.add_function(wrap_pyfunction!(haversine, m)?)?;
    m.add_function(wrap_pyfunction!(haversine_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(geodesic, m)?)?;
    Ok(())
}
