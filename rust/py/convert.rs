//! numpy in, numpy out. Inputs are borrowed zero-copy as float64 or float32 arrays of any
//! layout; anything else array-like (lists, integer arrays, other float types) is converted
//! once by `numpy.asarray(x, dtype=float64)`. Shapes are checked by the core, so a 1-D input
//! reaches the same one-line shape error as a wrong 2-D one.

use ndarray::ArrayView2;
use numpy::{PyArrayDyn, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::errors::{InputError, ShapeError};
use crate::core::coords::shape_str;

/// A 2-D float input borrowed from Python.
pub enum Float2<'py> {
    F64(PyReadonlyArray2<'py, f64>),
    F32(PyReadonlyArray2<'py, f32>),
}

/// A view of a [`Float2`], what the core takes.
pub enum View2<'a> {
    F64(ArrayView2<'a, f64>),
    F32(ArrayView2<'a, f32>),
}

impl<'py> Float2<'py> {
    /// Borrow `obj` as a 2-D float array; `name` is used in error messages.
    pub fn extract(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Float2::F64(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Float2::F32(a));
        }
        let py = obj.py();
        let np = py.import("numpy")?;
        let converted = np.call_method1("asarray", (obj, np.getattr("float64")?)).map_err(|e| {
            InputError::new_err(format!(
                "{name} must be a numeric array of shape (N, 2) or similar; numpy could not convert it: {e}"
            ))
        })?;
        let arr = converted.cast::<PyArrayDyn<f64>>()?;
        if arr.ndim() != 2 {
            return Err(ShapeError::new_err(format!("{name} must be a 2-D array, got shape {}", shape_str(arr.shape()))));
        }
        Ok(Float2::F64(converted.extract::<PyReadonlyArray2<'py, f64>>()?))
    }

    pub fn view(&self) -> View2<'_> {
        match self {
            Float2::F64(a) => View2::F64(a.as_array()),
            Float2::F32(a) => View2::F32(a.as_array()),
        }
    }
}

/// Dispatch a generic core call over the element type of one [`View2`]:
/// `with_view!(v, |a| core::f(a))`.
#[macro_export]
macro_rules! with_view {
    ($v:expr, |$a:ident| $body:expr) => {
        match $v {
            $crate::py::convert::View2::F64($a) => $body,
            $crate::py::convert::View2::F32($a) => $body,
        }
    };
}

/// Dispatch over the element types of two [`View2`]s (four combinations).
#[macro_export]
macro_rules! with_views {
    ($v:expr, $w:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($v, $w) {
            ($crate::py::convert::View2::F64($a), $crate::py::convert::View2::F64($b)) => $body,
            ($crate::py::convert::View2::F64($a), $crate::py::convert::View2::F32($b)) => $body,
            ($crate::py::convert::View2::F32($a), $crate::py::convert::View2::F64($b)) => $body,
            ($crate::py::convert::View2::F32($a), $crate::py::convert::View2::F32($b)) => $body,
        }
    };
}
