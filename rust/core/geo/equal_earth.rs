//! The Equal Earth projection exactly as GeoCLIP's location encoder applies it.
//!
//! Šavrič, Patterson & Jenny (2018), "The Equal Earth map projection", IJGIS 33(3):
//!   sin θ = (√3 / 2) sin φ
//!   x = 2√3 λ cos θ / (3 (9 A4 θ⁸ + 7 A3 θ⁶ + 3 A2 θ² + A1))
//!   y = A4 θ⁹ + A3 θ⁷ + A2 θ³ + A1 θ
//! with A1 = 1.340264, A2 = -0.081106, A3 = 0.000893, A4 = 0.003796 (φ, λ in radians).
//! GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023; `geoclip.model.location_encoder`) then scales
//! both coordinates by SF / 180 with SF = 66.50336, so the output lies in about [-1, 1] × [-0.5, 0.5].
//! Computed here in float64.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::core::coords::{check_latlon, Real};
use crate::core::error::GeoResult;
use crate::core::parallel;

const A1: f64 = 1.340264;
const A2: f64 = -0.081106;
const A3: f64 = 0.000893;
const A4: f64 = 0.003796;
/// GeoCLIP's scale factor; the projection is multiplied by SF / 180.
pub const GEOCLIP_SF: f64 = 66.50336;

/// Equal Earth x, y of one point (degrees in), scaled by SF / 180 as GeoCLIP does.
#[inline]
pub fn project(lat_deg: f64, lon_deg: f64) -> [f64; 2] {
    let m = 3f64.sqrt() / 2.0;
    let theta = (m * lat_deg.to_radians().sin()).asin();
    let t2 = theta * theta;
    let t6 = t2 * t2 * t2;
    let denom = 3.0 * (9.0 * A4 * t6 * t2 + 7.0 * A3 * t6 + 3.0 * A2 * t2 + A1);
    let x = 2.0 * 3f64.sqrt() * lon_deg.to_radians() * theta.cos() / denom;
    let y = theta * (A4 * t6 * t2 + A3 * t6 + A2 * t2 + A1);
    let s = GEOCLIP_SF / 180.0;
    [x * s, y * s]
}

/// Project an `(N, 2)` latitude/longitude array (degrees) to GeoCLIP's scaled Equal Earth
/// coordinates, `(N, 2)` float64.
pub fn equal_earth<T: Real>(latlon: ArrayView2<T>) -> GeoResult<Array2<f64>> {
    let n = check_latlon("latlon", &latlon)?;
    let mut out = Array2::<f64>::zeros((n, 2));
    let chunk = parallel::chunk_len(n, 4096);
    parallel::install(|| {
        out.axis_chunks_iter_mut(Axis(0), chunk)
            .into_par_iter()
            .zip(latlon.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .for_each(|(mut o, inp)| {
                for (mut orow, irow) in o.outer_iter_mut().zip(inp.outer_iter()) {
                    let [x, y] = project(irow[0].to_f64(), irow[1].to_f64());
                    orow[0] = x;
                    orow[1] = y;
                }
            });
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn known_points() {
        let p = project(0.0, 0.0);
        assert_eq!(p, [0.0, 0.0]);
        // Symmetric in both axes.
        let a = project(40.0, 100.0);
        let b = project(-40.0, -100.0);
        assert!((a[0] + b[0]).abs() < 1e-15 && (a[1] + b[1]).abs() < 1e-15);
        // The pole: θ = asin(√3/2) = π/3; y = A4 θ⁹ + A3 θ⁷ + A2 θ³ + A1 θ.
        let t = std::f64::consts::FRAC_PI_3;
        let y = A4 * t.powi(9) + A3 * t.powi(7) + A2 * t.powi(3) + A1 * t;
        assert!((project(90.0, 0.0)[1] - y * GEOCLIP_SF / 180.0).abs() < 1e-14);
        // Equator, λ = 180°: x = 2√3 π / (3 A1).
        let x = 2.0 * 3f64.sqrt() * std::f64::consts::PI / (3.0 * A1);
        assert!((project(0.0, 180.0)[0] - x * GEOCLIP_SF / 180.0).abs() < 1e-14);
    }

    #[test]
    fn array_matches_pointwise_and_validates() {
        let pts = array![[10.0f32, 20.0], [-89.0, 179.5], [0.0, -180.0]];
        let out = equal_earth(pts.view()).unwrap();
        for i in 0..3 {
            let p = project(pts[[i, 0]] as f64, pts[[i, 1]] as f64);
            assert_eq!([out[[i, 0]], out[[i, 1]]], p);
        }
        assert!(equal_earth(array![[91.0, 0.0]].view()).is_err());
        assert_eq!(equal_earth(Array2::<f64>::zeros((0, 2)).view()).unwrap().nrows(), 0);
    }
}
