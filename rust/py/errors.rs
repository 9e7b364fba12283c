//! The one mapping from the core's `GeoError` to Python exceptions.
//!
//! The classes live in `python/geofast/errors.py` (one hierarchy rooted at
//! `geofast.GeofastError`); every argument problem is also a `ValueError`.

use pyo3::import_exception;
use pyo3::PyErr;

use crate::core::error::GeoError;

import_exception!(geofast.errors, InputError);
import_exception!(geofast.errors, ShapeError);
import_exception!(geofast.errors, CoordinateError);
import_exception!(geofast.errors, EmptyInputError);
import_exception!(geofast.errors, ParameterError);
import_exception!(geofast.errors, TooLargeError);

/// Convert a core error into the matching `geofast.errors` exception.
pub fn to_pyerr(e: GeoError) -> PyErr {
    let msg = e.to_string();
    match e {
        GeoError::Shape { .. } | GeoError::Mismatch { .. } => ShapeError::new_err(msg),
        GeoError::NonFinite { .. } | GeoError::Latitude { .. } | GeoError::Longitude { .. } => CoordinateError::new_err(msg),
        GeoError::Empty { .. } => EmptyInputError::new_err(msg),
        GeoError::K { .. } | GeoError::Parameter { .. } => ParameterError::new_err(msg),
        GeoError::TooLarge { .. } => TooLargeError::new_err(msg),
    }
}

/// `?`-friendly conversion for binding code: `core_call(...).map_err(to_pyerr)?`.
pub trait IntoPyResult<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, GeoError> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_pyerr)
    }
}
