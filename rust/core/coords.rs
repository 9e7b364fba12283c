//! Coordinate arrays as the public API takes them: `(N, 2)` degrees, latitude first, float64 or
//! float32, any memory layout (views carry their strides, so nothing is copied to read them).
//!
//! [`check_latlon`] is the single validation every kernel runs: shape, NaN/inf, |lat| <= 90,
//! |lon| <= 180, each failure reported with the offending row.

use ndarray::ArrayView2;

use super::error::{GeoError, GeoResult};

/// Element types accepted for coordinates and vectors: read as `f64` for the math.
pub trait Real: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
}

impl Real for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// `(3, 3)`-style rendering of a shape for messages.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Require an `(N, cols)` shape.
pub fn check_cols<T>(name: &'static str, a: &ArrayView2<T>, cols: usize) -> GeoResult<usize> {
    if a.ncols() != cols {
        return Err(GeoError::Shape { name, expected: format!("(N, {cols})"), got: shape_str(a.shape()) });
    }
    Ok(a.nrows())
}

/// Validate one latitude/longitude pair (degrees) of row `row`.
#[inline]
pub fn check_point(name: &'static str, row: usize, lat: f64, lon: f64) -> GeoResult<()> {
    if !lat.is_finite() {
        return Err(GeoError::NonFinite { name, row, value: lat });
    }
    if !lon.is_finite() {
        return Err(GeoError::NonFinite { name, row, value: lon });
    }
    if lat.abs() > 90.0 {
        return Err(GeoError::Latitude { name, row, value: lat });
    }
    if lon.abs() > 180.0 {
        return Err(GeoError::Longitude { name, row, value: lon });
    }
    Ok(())
}

/// Validate an `(N, 2)` latitude/longitude array in degrees; returns N (which may be 0).
pub fn check_latlon<T: Real>(name: &'static str, a: &ArrayView2<T>) -> GeoResult<usize> {
    let n = check_cols(name, a, 2)?;
    for (row, p) in a.outer_iter().enumerate() {
        check_point(name, row, p[0].to_f64(), p[1].to_f64())?;
    }
    Ok(n)
}

/// Like [`check_latlon`] but also rejects an empty array, with `hint` saying why data is needed.
pub fn check_latlon_nonempty<T: Real>(name: &'static str, a: &ArrayView2<T>, hint: &'static str) -> GeoResult<usize> {
    let n = check_latlon(name, a)?;
    if n == 0 {
        return Err(GeoError::Empty { name, hint });
    }
    Ok(n)
}

/// Reject NaN/inf anywhere in a 2-D float array (vectors, features).
pub fn check_finite<T: Real>(name: &'static str, a: &ArrayView2<T>) -> GeoResult<()> {
    for (row, r) in a.outer_iter().enumerate() {
        for &v in r.iter() {
            let v = v.to_f64();
            if !v.is_finite() {
                return Err(GeoError::NonFinite { name, row, value: v });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn accepts_valid_and_edges() {
        let a = array![[90.0, 180.0], [-90.0, -180.0], [0.0, 0.0]];
        assert_eq!(check_latlon("a", &a.view()).unwrap(), 3);
        let f = array![[45.0f32, 10.0]];
        assert_eq!(check_latlon("a", &f.view()).unwrap(), 1);
    }

    #[test]
    fn rejects_each_problem_with_its_row() {
        let bad_lat = array![[0.0, 0.0], [90.5, 0.0]];
        assert_eq!(check_latlon("a", &bad_lat.view()), Err(GeoError::Latitude { name: "a", row: 1, value: 90.5 }));
        let bad_lon = array![[0.0, -180.1]];
        assert!(matches!(check_latlon("b", &bad_lon.view()), Err(GeoError::Longitude { row: 0, .. })));
        let nan = array![[0.0, 0.0], [0.0, 0.0], [f64::NAN, 1.0]];
        assert!(matches!(check_latlon("a", &nan.view()), Err(GeoError::NonFinite { row: 2, .. })));
        let inf = array![[0.0, f64::INFINITY]];
        assert!(matches!(check_latlon("a", &inf.view()), Err(GeoError::NonFinite { .. })));
        let shape = array![[0.0, 0.0, 0.0]];
        assert_eq!(check_latlon("a", &shape.view()).unwrap_err().to_string(), "a must have shape (N, 2), got (1, 3)");
        let empty = ndarray::Array2::<f64>::zeros((0, 2));
        assert_eq!(check_latlon("a", &empty.view()).unwrap(), 0);
        assert!(matches!(check_latlon_nonempty("a", &empty.view(), "pass at least one point"), Err(GeoError::Empty { .. })));
    }

    #[test]
    fn strided_views_are_read_in_place() {
        // A transposed (Fortran-order) view: rows are not contiguous.
        let t = array![[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]];
        let v = t.t();
        assert_eq!(check_latlon("a", &v).unwrap(), 3);
        let bad = array![[10.0, 95.0], [1.0, 2.0]];
        assert!(matches!(check_latlon("a", &bad.t()), Err(GeoError::Latitude { row: 1, .. })));
    }
}
