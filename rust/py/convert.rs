//! numpy in, numpy out, and what a borrowed array guarantees.
//!
//! Inputs are borrowed zero-copy as float64 or float32 arrays of any layout; anything else
//! array-like (lists, integer arrays, other float types) is converted once by
//! `numpy.asarray(x, dtype=float64)`. Shapes are checked by the core, so a 1-D input reaches the
//! same one-line shape error as a wrong 2-D one.
//!
//! ## Borrowed memory (the soundness contract of every binding)
//! An input is read in place through rust-numpy's `PyReadonlyArray`, for the duration of one call
//! (the GIL is released while the core runs). What that does and does not guarantee:
//! * rust-numpy records a shared borrow of the array's memory in its process-wide borrow table
//!   for as long as the `PyReadonlyArray` lives: no Rust code using rust-numpy (in this or any
//!   other extension) can take a mutable borrow of it meanwhile.
//! * Nothing stops Python code, numpy itself (whose loops write without holding the GIL) or other
//!   native code from writing the same memory from another thread while the call runs: the
//!   `writeable` flag can be set back to `True` on an array that owns its data, and any other
//!   view of the memory stays writeable. rust-numpy's safety model therefore assumes, as ours
//!   does, that the Python side does not write an array while a call that received it runs
//!   (its documentation: "unchecked code - which includes unsafe Rust and Python - is validated
//!   by its author"). A program that does has a data race, which Rust's memory model (C++'s)
//!   leaves undefined, for reads through raw pointers as much as through `&[f32]`; numpy's own C
//!   loops give such programs no guarantee either. No extension can exclude such writers while
//!   reading memory it does not own, so geofast keeps the window small and never lets a borrow
//!   outlive its call:
//!   - borrowed memory is only ever read, only during the call, and through views of exactly
//!     the elements the array holds (never a slice spanning the gaps of a strided view, which
//!     other views may legitimately write);
//!   - queries of `topk` and `Gallery.search` are copied into Rust-owned memory before the GIL
//!     is released (they are small), so a scan reads no Python memory except `topk`'s `gallery`
//!     argument, which is borrowed for the call only;
//!   - a `Gallery` keeps no borrow beyond its construction: it copies the vectors, except when
//!     [`immutable_memory`] shows that nothing in the process can write them through numpy (a
//!     read-only memory map from `numpy.load(..., mmap_mode="r")`, or `bytes`). The one way left
//!     to change such memory is to write the mapped file itself (another process, or a writable
//!     mapping of the same file): the precondition every reader of memory-mapped files has, e.g.
//!     `memmap2::Mmap::map` in Rust, documented on the class.

use ndarray::ArrayView2;
use numpy::{PyArrayDyn, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

use super::errors::{InputError, ParameterError, ShapeError};
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

/// True when nothing in this process can write `arr`'s memory through numpy or Python: following
/// `.base` through arrays and `.obj` through memoryviews ends at `bytes` (immutable) or at an
/// `mmap.mmap` whose buffer is read-only (`ACCESS_READ`; numpy refuses `writeable = True` on
/// every array over such a buffer). An array that owns its memory, or whose chain ends anywhere
/// else (a writable buffer, a torch tensor, ...), can be written and is not immutable.
pub fn immutable_memory(arr: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = arr.py();
    let mut obj = arr.clone();
    // Bounded walk: numpy collapses base chains, so real chains are a few links long.
    for _ in 0..64 {
        if obj.cast::<PyUntypedArray>().is_ok() {
            let base = obj.getattr("base")?;
            if base.is_none() {
                return Ok(false);
            }
            obj = base;
        } else if let Ok(mv) = obj.cast::<PyMemoryView>() {
            let exporter = mv.getattr("obj")?;
            if exporter.is_none() {
                return Ok(false);
            }
            obj = exporter;
        } else if obj.is_instance_of::<PyBytes>() {
            return Ok(true);
        } else {
            let mmap_type = py.import("mmap")?.getattr("mmap")?;
            if !obj.is_instance(&mmap_type)? {
                return Ok(false);
            }
            // A closed map raises here; it is not borrowable either.
            let Ok(view) = PyMemoryView::from(&obj) else { return Ok(false) };
            let readonly = view.getattr("readonly")?.extract::<bool>()?;
            view.call_method0("release")?;
            return Ok(readonly);
        }
    }
    Ok(false)
}

/// Render an argument for a message, cut to a readable length (`10**400` has 401 digits).
fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    let r = obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<unprintable>".into());
    if r.chars().count() > 40 {
        let head: String = r.chars().take(24).collect();
        format!("{head}… ({} characters)", r.chars().count())
    } else {
        r
    }
}

/// An integer argument; an int beyond 64 bits is geofast's `ParameterError` instead of
/// Python's `OverflowError` (other types stay a `TypeError`).
pub fn int_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    obj.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(obj.py()) {
            ParameterError::new_err(format!("{name} must be an integer within ±2**63, got {}", short_repr(obj)))
        } else {
            e
        }
    })
}

/// A float argument; an int beyond the float range is `ParameterError`, not `OverflowError`.
pub fn float_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    obj.extract::<f64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(obj.py()) {
            ParameterError::new_err(format!("{name} must be a finite number, got {}", short_repr(obj)))
        } else {
            e
        }
    })
}

/// Named extractors for `#[pyo3(from_py_with = ...)]` (pyo3 passes no argument name).
pub mod arg {
    use pyo3::prelude::*;

    macro_rules! named {
        ($($f:ident: $t:ty = $via:ident;)*) => {$(
            #[doc = concat!("The `", stringify!($f), "` argument (see [`super::", stringify!($via), "`]).")]
            pub fn $f(obj: &Bound<'_, PyAny>) -> PyResult<$t> {
                super::$via(obj, stringify!($f))
            }
        )*};
    }

    named! {
        k: i64 = int_arg;
        min_samples: i64 = int_arg;
        num_threads: i64 = int_arg;
        radius_km: f64 = float_arg;
        eps_km: f64 = float_arg;
        weight_exponent: f64 = float_arg;
        spacing_km: f64 = float_arg;
    }

    /// The optional `lse_scale` argument (`None` allowed).
    pub fn lse_scale(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        if obj.is_none() {
            Ok(None)
        } else {
            super::float_arg(obj, "lse_scale").map(Some)
        }
    }
}
