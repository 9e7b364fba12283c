//! The only PyO3 code: one thin wrapper module per core kernel, plus the error mapping and
//! numpy conversion they share. Wrappers convert, release the GIL around the core call, and
//! convert back; they hold no logic of their own.

mod cluster;
pub mod convert;
pub mod errors;
mod fourier;
mod geo;
mod simd;
mod threads;
mod topk;

use pyo3::prelude::*;

/// Add every binding to the `_geofast` module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    threads::register(m)?;
    simd::register(m)?;
    geo::register(m)?;
    fourier::register(m)?;
    cluster::register(m)?;
    topk::register(m)?;
    Ok(())
}
