//! The pure-Rust core: every numeric kernel, on plain slices and ndarray views. Nothing here
//! imports pyo3; `cargo test --no-default-features` tests it without Python.

pub mod buffer;
pub mod coords;
pub mod dbscan;
pub mod error;
pub mod fourier;
pub mod geo;
pub mod lattice;
pub mod nearest;
pub mod parallel;
pub mod simd;
pub mod swc;
pub mod topk;
pub mod vmath;
