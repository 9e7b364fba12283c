//! The one error type of the core.
//!
//! Every kernel validates its input and returns `Err(GeoError)` instead of panicking; the
//! binding layer (`rust/py/errors.rs`) maps each variant onto the Python hierarchy rooted at
//! `geofast.GeofastError`. Messages are one line: what is wrong, where, and how to fix it.

use thiserror::Error;

/// Everything a kernel can reject.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GeoError {
    /// An array does not have the shape the kernel needs.
    #[error("{name} must have shape {expected}, got {got}")]
    Shape { name: &'static str, expected: String, got: String },

    /// Two inputs disagree in a dimension that must match.
    #[error("{what}: {left} != {right}")]
    Mismatch { what: String, left: usize, right: usize },

    /// An input that must hold data is empty.
    #[error("{name} is empty; {hint}")]
    Empty { name: &'static str, hint: &'static str },

    /// A NaN or infinity in the input.
    #[error("{name}[{row}] is not finite ({value}); drop or fill rows with NaN/inf before calling")]
    NonFinite { name: &'static str, row: usize, value: f64 },

    /// A latitude outside [-90, 90].
    #[error("{name}[{row}] has latitude {value}, outside [-90, 90]; coordinates are degrees, latitude first")]
    Latitude { name: &'static str, row: usize, value: f64 },

    /// A longitude outside [-180, 180].
    #[error("{name}[{row}] has longitude {value}, outside [-180, 180]; coordinates are degrees, latitude first")]
    Longitude { name: &'static str, row: usize, value: f64 },

    /// `k` outside `1..=n`.
    #[error("k must be between 1 and {n} (the number of {what}), got {k}")]
    K { k: i64, n: usize, what: &'static str },

    /// Any other scalar argument out of its domain (eps <= 0, radius <= 0, threads = 0, ...).
    #[error("{name} must be {requirement}, got {value}")]
    Parameter { name: &'static str, requirement: &'static str, value: String },

    /// A size computation overflowed or an allocation would exceed what the input justifies.
    #[error("{what} is too large: {detail}")]
    TooLarge { what: &'static str, detail: String },
}

/// Result alias used across the core.
pub type GeoResult<T> = Result<T, GeoError>;

impl GeoError {
    /// A `Parameter` error from any displayable value.
    pub fn parameter(name: &'static str, requirement: &'static str, value: impl std::fmt::Display) -> Self {
        GeoError::Parameter { name, requirement, value: value.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_fix() {
        let errors = [
            GeoError::Shape { name: "a", expected: "(N, 2)".into(), got: "(3, 3)".into() },
            GeoError::Latitude { name: "a", row: 4, value: 91.0 },
            GeoError::K { k: 0, n: 10, what: "gallery vectors" },
            GeoError::parameter("eps_km", "> 0", -1.0),
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.len() > 10);
        }
        assert_eq!(GeoError::parameter("eps_km", "> 0", -1.5).to_string(), "eps_km must be > 0, got -1.5");
    }
}
