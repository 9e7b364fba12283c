//! The pure-Rust core: every numeric kernel, on plain slices and ndarray views. Nothing here
//! imports pyo3; `cargo test --no-default-features` tests it without Python.

pub mod coords;
pub mod error;
pub mod geo;
pub mod parallel;
pub mod topk;
