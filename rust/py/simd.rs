//! Binding for `rust/core/simd.rs`: the SIMD level the kernels run at.

use pyo3::prelude::*;

use super::errors::IntoPyResult;
use crate::core::simd::Isa;

/// The instruction-set level geofast's kernels use in this process: ``"avx512"``, ``"avx2"`` or
/// ``"portable"``. The best level the CPU supports, capped by the environment variable
/// ``GEOFAST_SIMD`` (``auto``, ``avx512``, ``avx2``, ``portable``; ``off`` and ``scalar`` mean
/// ``portable``), read once. An invalid ``GEOFAST_SIMD`` raises ``ParameterError`` here and in
/// every kernel that would use SIMD.
#[pyfunction]
fn simd_level() -> PyResult<&'static str> {
    Isa::active().map(Isa::name).py_err()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
