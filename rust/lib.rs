//! geofast's native extension: pure-Rust kernels in [`core`] and their thin PyO3 bindings in `py`.
//!
//! `cargo test --no-default-features` builds and tests the core without Python.

pub mod core;

#[cfg(feature = "python")]
mod py;

/// The `geofast._geofast` extension module.
#[cfg(feature = "python")]
#[pyo3::pymodule]
#[pyo3(name = "_geofast")]
fn geofast_extension(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    py::register(m)
}
