//! Bindings for `rust/core/topk`: `topk` and the `Gallery` class. Convert, release the GIL
//! around the core call, return numpy.
//!
//! Queries: float32 and float64 arrays of any layout, 1-D `(D,)` as `(1, D)`; anything else goes
//! through `numpy.asarray(x, float32)` once. Queries are copied into Rust-owned memory before the
//! GIL is released, so a scan never reads query memory that Python can reach. `topk`'s gallery
//! is read in place for the call (see `convert.rs` for what a borrow guarantees). `Gallery`
//! vectors are copied once into Rust-owned memory (float64 converted while copying), except a
//! C-contiguous, aligned float32/float16 array over memory nothing in the process can write
//! (`convert::immutable_memory`: a read-only memory map, `bytes`), which is borrowed for the
//! Gallery's lifetime.

use ndarray::{Array2, ArrayView2, Axis};
use numpy::{IntoPyArray, PyArrayDescrMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::convert::{arg, immutable_memory};
use super::errors::{InputError, IntoPyResult, ShapeError};
use crate::core::coords::shape_str;
use crate::core::topk::{self as core_topk, Buf, Dtype, Gallery as CoreGallery, Neighbors};

/// A 1-D or 2-D float input, borrowed (f32/f64) or converted once to f32.
enum Vecs<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
    F32Row(PyReadonlyArray1<'py, f32>),
    F64Row(PyReadonlyArray1<'py, f64>),
}

enum VecsView<'a> {
    F32(ArrayView2<'a, f32>),
    F64(ArrayView2<'a, f64>),
}

impl<'py> Vecs<'py> {
    /// `allow_1d`: a `(D,)` vector is one row.
    fn extract(obj: &Bound<'py, PyAny>, name: &str, allow_1d: bool) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Vecs::F32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Vecs::F64(a));
        }
        if allow_1d {
            if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, f32>>() {
                return Ok(Vecs::F32Row(a));
            }
            if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, f64>>() {
                return Ok(Vecs::F64Row(a));
            }
        }
        let converted = as_float32(obj, name)?;
        let arr = converted.cast::<PyUntypedArray>()?;
        match arr.ndim() {
            2 => Ok(Vecs::F32(converted.extract()?)),
            1 if allow_1d => Ok(Vecs::F32Row(converted.extract()?)),
            _ => Err(ShapeError::new_err(format!(
                "{name} must be a {}2-D (N, D) array, got shape {}",
                if allow_1d { "1-D (D,) or " } else { "" },
                shape_str(arr.shape())
            ))),
        }
    }

    fn view(&self) -> VecsView<'_> {
        match self {
            Vecs::F32(a) => VecsView::F32(a.as_array()),
            Vecs::F64(a) => VecsView::F64(a.as_array()),
            Vecs::F32Row(a) => VecsView::F32(a.as_array().insert_axis(Axis(0))),
            Vecs::F64Row(a) => VecsView::F64(a.as_array().insert_axis(Axis(0))),
        }
    }

    /// A Rust-owned copy (made while the caller holds the GIL, so no Python code runs meanwhile).
    fn to_owned(&self) -> OwnedVecs {
        match self.view() {
            VecsView::F32(a) => OwnedVecs::F32(a.to_owned()),
            VecsView::F64(a) => OwnedVecs::F64(a.to_owned()),
        }
    }
}

/// Queries copied out of Python memory.
enum OwnedVecs {
    F32(Array2<f32>),
    F64(Array2<f64>),
}

impl OwnedVecs {
    fn view(&self) -> VecsView<'_> {
        match self {
            OwnedVecs::F32(a) => VecsView::F32(a.view()),
            OwnedVecs::F64(a) => VecsView::F64(a.view()),
        }
    }
}

macro_rules! with_vecs {
    ($v:expr, |$a:ident| $body:expr) => {
        match $v {
            VecsView::F32($a) => $body,
            VecsView::F64($a) => $body,
        }
    };
}

/// `numpy.asarray(obj, dtype=float32)`, with a clear error when numpy cannot convert.
fn as_float32<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let np = obj.py().import("numpy")?;
    np.call_method1("asarray", (obj, np.getattr("float32")?)).map_err(|e| {
        InputError::new_err(format!("{name} must be a numeric array of shape (N, D); numpy could not convert it: {e}"))
    })
}

fn flag(arr: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    arr.getattr("flags")?.getattr(name)?.extract()
}

fn result<'py>(py: Python<'py>, r: Neighbors) -> PyResult<Bound<'py, PyTuple>> {
    let scores = r.scores.into_pyarray(py).into_any();
    let indices = r.indices.into_pyarray(py).into_any();
    match r.lse {
        Some(l) => PyTuple::new(py, [scores, indices, l.into_pyarray(py).into_any()]),
        None => PyTuple::new(py, [scores, indices]),
    }
}

/// Exact top-k maximum inner product search.
///
/// Returns ``(scores, indices)``: ``(B, k)`` float32 scores sorted descending (ties broken by
/// the lower gallery index) and ``(B, k)`` int64 gallery indices. ``queries`` is ``(B, D)`` or
/// one ``(D,)`` vector; ``gallery`` is ``(N, D)``; ``1 <= k <= N``. float32 arrays of any
/// layout are read in place (float64 converted while reading; other types converted once).
/// ``gallery`` is read in place while the call runs without the GIL: do not write to it from
/// another thread meanwhile.
///
/// Scores are float32 dot products with one fixed summation order, computed by AVX-512, AVX2
/// or portable kernels chosen at run time (``GEOFAST_SIMD`` caps the choice): results
/// are bit-identical across CPUs, batch sizes and thread counts. The gallery is scanned once
/// per batch in cache-sized tiles, never as a B × N score matrix.
#[pyfunction]
#[pyo3(signature = (queries, gallery, k))]
fn topk<'py>(
    py: Python<'py>,
    queries: &Bound<'py, PyAny>,
    gallery: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::k)] k: i64,
) -> PyResult<Bound<'py, PyTuple>> {
    let q = Vecs::extract(queries, "queries", true)?.to_owned();
    let g = Vecs::extract(gallery, "gallery", false)?;
    let (qv, gv) = (q.view(), g.view());
    let r = py.detach(|| with_vecs!(qv, |a| with_vecs!(gv, |b| core_topk::topk(a, b, k)))).py_err()?;
    result(py, r)
}

/// Gallery vectors stored once for repeated exact top-k inner-product search.
///
/// ``Gallery(vectors, *, dtype="f32")`` with ``vectors`` of shape ``(N, D)``, float32 or float16
/// (other types are converted once). ``dtype`` is the storage scanned by each search:
///
/// * ``"f32"``: scores are exact float32 dot products.
/// * ``"f16"``: from float16 input the halves *are* the data (exact float32 scores of them);
///   from float32 input the scan reads f16 codes and re-ranks a shortlist exactly against the
///   float32 vectors.
/// * ``"i8"``: per-vector symmetric int8 codes (scale = max|x|/127), re-ranked exactly against
///   the input vectors.
///
/// Quantized scans keep every candidate within a proven error bound of the k-th best, so the
/// returned top-k and scores always equal the ``"f32"`` gallery's (recall 1.0).
///
/// Memory (``nbytes`` reports what the Gallery holds itself; D16 = D rounded up to 16):
///
/// * a C-contiguous float32 (``"f32"``) or float16 (``"f16"``) array over memory that nothing in
///   the process can write, i.e. a read-only memory map (``np.load(path, mmap_mode="r")``) or
///   ``bytes`` (``np.frombuffer``), is borrowed zero-copy: ``nbytes == 0``. The Gallery keeps
///   the array alive; do not modify the mapped file while it is in use (as for any memory map);
/// * any other array, read-only ones included (``flags.writeable`` can be switched back on), is
///   copied: ``"f32"`` holds one copy, N·D·4 bytes (float16 input is widened);
/// * ``"f16"`` from float32 input: N·D·2 bytes of codes, plus N·D·4 for the exact vectors unless
///   they are borrowed (memory-mapped float32 input);
/// * ``"i8"``: N·D16 + 4·N bytes of codes and scales, plus the exact vectors (float32 or float16
///   as given) unless borrowed.
///
/// ``search(queries, k, *, lse_scale=None)`` returns ``(scores, indices)`` like
/// :func:`geofast.topk`; with ``lse_scale`` also ``lse`` (float64, shape ``(B,)``),
/// ``log Σ_j exp(lse_scale · score_j)`` over the whole gallery, computed in the same pass.
/// Its error is ~1e-7 relative for exact storage; for quantized storage the scan's approximate
/// scores are used, corrected with the exact scores of every re-ranked candidate, leaving an
/// error of at most ``lse_scale`` times the quantization bound (~3e-4 for f16, ~1e-2 for i8 on
/// unit vectors) weighted by the probability mass outside the re-ranked candidates.
#[pyclass(module = "geofast", name = "Gallery", frozen)]
pub struct Gallery {
    inner: CoreGallery,
}

/// Where a Gallery's vectors come from: borrowed/adopted buffers, or arrays copied (in parallel,
/// without the GIL, under rust-numpy's borrow; see `convert.rs`) into Rust-owned memory.
enum Source<'py> {
    F32(Buf<f32>, usize, usize),
    F16(Buf<u16>, usize, usize),
    Copy32(PyReadonlyArray2<'py, f32>),
    Copy16(PyReadonlyArray2<'py, u16>),
    Copy64(PyReadonlyArray2<'py, f64>),
}

impl Gallery {
    fn source<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Source<'py>> {
        let py = obj.py();
        let arr_obj = if obj.cast::<PyUntypedArray>().is_ok() { obj.clone() } else { as_float32(obj, "vectors")? };
        let arr = arr_obj.cast::<PyUntypedArray>()?;
        if arr.ndim() != 2 {
            return Err(ShapeError::new_err(format!("vectors must be a 2-D (N, D) array, got shape {}", shape_str(arr.shape()))));
        }
        let (n, d) = (arr.shape()[0], arr.shape()[1]);
        let descr = arr.dtype();
        let native = descr.is_native_byteorder().unwrap_or(true);
        let in_place = flag(&arr_obj, "c_contiguous")? && flag(&arr_obj, "aligned")?;
        // Borrowed for the Gallery's lifetime only if nobody can ever write it (a read-only flag
        // alone proves nothing: it can be switched back on, and other views may be writeable).
        let immutable = in_place && immutable_memory(&arr_obj)?;
        let is_f32 = native && descr.kind() == b'f' && descr.itemsize() == 4;
        let is_f16 = native && descr.kind() == b'f' && descr.itemsize() == 2;
        let is_f64 = native && descr.kind() == b'f' && descr.itemsize() == 8;
        if is_f32 {
            let a = arr_obj.extract::<PyReadonlyArray2<f32>>()?;
            if immutable {
                let s = a.as_slice().map_err(|e| InputError::new_err(e.to_string()))?;
                let keep: Py<PyAny> = arr_obj.clone().unbind();
                // SAFETY: `s` is the array's whole C-contiguous, aligned, initialised f32 buffer,
                // kept alive by `keep` (owned by the Gallery with the buffer, so it outlives
                // every read). `immutable_memory` showed that its memory belongs to a read-only
                // mmap or to `bytes`, which no numpy array or Python code in the process can
                // write; writing the mapped file itself is excluded by the documented contract.
                let buf = unsafe { Buf::external(s.as_ptr(), s.len(), false, Box::new(keep)) };
                return Ok(Source::F32(buf, n, d));
            }
            return Ok(Source::Copy32(a));
        }
        if is_f16 {
            let bits = arr_obj.call_method1("view", ("uint16",))?;
            let a = bits.extract::<PyReadonlyArray2<u16>>()?;
            if immutable {
                let s = a.as_slice().map_err(|e| InputError::new_err(e.to_string()))?;
                let keep: Py<PyAny> = arr_obj.clone().unbind();
                // SAFETY: as for float32 above: `s` is the (u16 view of the) whole immutable
                // buffer of `arr_obj`, which `keep` keeps alive for the Gallery's lifetime.
                let buf = unsafe { Buf::external(s.as_ptr(), s.len(), false, Box::new(keep)) };
                return Ok(Source::F16(buf, n, d));
            }
            return Ok(Source::Copy16(a));
        }
        if is_f64 {
            let a = arr_obj.extract::<PyReadonlyArray2<f64>>()?;
            return Ok(Source::Copy64(a));
        }
        // Any other dtype: convert once. A fresh array numpy allocated is private to us, so it
        // is adopted (and counted in nbytes) instead of copied again.
        let conv = as_float32(&arr_obj, "vectors")?;
        let a = conv.extract::<PyReadonlyArray2<f32>>()?;
        if flag(&conv, "owndata")? && flag(&conv, "c_contiguous")? && !conv.is(&arr_obj) {
            let s = a.as_slice().map_err(|e| InputError::new_err(e.to_string()))?;
            let keep: Py<PyAny> = conv.clone().unbind();
            // SAFETY: `conv` is a fresh array numpy allocated for the dtype conversion of a
            // different array (`owndata`, not `arr_obj`): no Python object but `conv` refers to
            // it, and `conv` is referenced only by `keep`, owned by the Gallery, so nothing else
            // can ever write the memory `s` covers while the Gallery reads it.
            let buf = unsafe { Buf::external(s.as_ptr(), s.len(), true, Box::new(keep)) };
            return Ok(Source::F32(buf, n, d));
        }
        let _ = py;
        Ok(Source::Copy32(a))
    }
}

#[pymethods]
impl Gallery {
    #[new]
    #[pyo3(signature = (vectors, *, dtype = "f32"))]
    fn new(py: Python<'_>, vectors: &Bound<'_, PyAny>, dtype: &str) -> PyResult<Self> {
        let dt = Dtype::parse(dtype).py_err()?;
        let inner = match Gallery::source(vectors)? {
            Source::F32(b, n, d) => py.detach(move || CoreGallery::from_f32(b, n, d, dt)),
            Source::F16(b, n, d) => py.detach(move || CoreGallery::from_f16(b, n, d, dt)),
            Source::Copy32(a) => {
                let v = a.as_array();
                py.detach(|| CoreGallery::from_view(v, dt))
            }
            Source::Copy16(a) => {
                let v = a.as_array();
                py.detach(|| CoreGallery::from_f16_view(v, dt))
            }
            Source::Copy64(a) => {
                let v = a.as_array();
                py.detach(|| CoreGallery::from_view(v, dt))
            }
        }
        .py_err()?;
        Ok(Gallery { inner })
    }

    /// Top-k gallery vectors by exact inner product for each query (see the class docstring).
    #[pyo3(signature = (queries, k, *, lse_scale = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = arg::k)] k: i64,
        #[pyo3(from_py_with = arg::lse_scale)] lse_scale: Option<f64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let q = Vecs::extract(queries, "queries", true)?.to_owned();
        let qv = q.view();
        let g = &self.inner;
        let r = py.detach(|| with_vecs!(qv, |a| g.search(a, k, lse_scale))).py_err()?;
        result(py, r)
    }

    /// Top-k among the rows `rows` only (strictly increasing integer row ids), with gallery row
    /// indices; scores read in place from the exact rows (see the class docstring).
    #[pyo3(signature = (queries, rows, k, *, lse_scale = None))]
    fn search_rows<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        rows: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = arg::k)] k: i64,
        #[pyo3(from_py_with = arg::lse_scale)] lse_scale: Option<f64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let q = Vecs::extract(queries, "queries", true)?.to_owned();
        let qv = q.view();
        let arr = py.import("numpy")?.call_method1("asarray", (rows,))?;
        let arr = arr.cast::<PyUntypedArray>()?;
        if arr.ndim() != 1 || (arr.len() > 0 && !matches!(arr.dtype().kind(), b'i' | b'u')) {
            return Err(ShapeError::new_err(format!(
                "rows must be a 1-D array of integer row ids, got {} of shape {}",
                arr.dtype(),
                shape_str(arr.shape())
            )));
        }
        let ids: Vec<i64> = arr.call_method1("astype", ("int64",))?.extract::<PyReadonlyArray1<i64>>()?.as_array().to_vec();
        let g = &self.inner;
        let r = py.detach(|| with_vecs!(qv, |a| g.search_rows(a, &ids, k, lse_scale))).py_err()?;
        result(py, r)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Dimension D of the vectors.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Storage scanned by searches: "f32", "f16" or "i8".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    /// Bytes of vector storage held by the Gallery itself (borrowed arrays excluded).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "Gallery(n={}, dim={}, dtype='{}', nbytes={})",
            self.inner.len(),
            self.inner.dim(),
            self.inner.dtype().name(),
            self.inner.nbytes()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(topk, m)?)?;
    m.add_class::<Gallery>()?;
    Ok(())
}
