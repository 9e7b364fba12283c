//! Points on the sphere as 3-D unit vectors.
//!
//! p(φ, λ) = (cos φ cos λ, cos φ sin λ, sin φ) for latitude φ and longitude λ in radians.
//! A great-circle distance d on a sphere of radius R corresponds to the Euclidean chord
//! c = 2 sin(d / 2R), and back d = 2R asin(c / 2). Chords are computed as sums of squared
//! coordinate differences (never 2 - 2 p·q, which cancels catastrophically for close points).
//!
//! The spherical centroid of weighted points is the weighted mean of their unit vectors,
//! re-normalised to the sphere (Search-within-Cell, Müller-Budack et al.; visloc-estimation).
//!
//! Radii: IUGG mean Earth radius R₁ = 6371.0088 km (the public API's default); visloc and
//! OSV-5M use R = 6371 km.

/// IUGG mean Earth radius R₁ in km (Moritz, Geodetic Reference System 1980).
pub const MEAN_EARTH_RADIUS_KM: f64 = 6371.0088;

/// The rounded radius visloc-estimation and OSV-5M use for haversine distances.
pub const SPHERE_RADIUS_6371_KM: f64 = 6371.0;

/// Unit vector of a latitude/longitude in degrees.
#[inline]
pub fn unit_vector(lat_deg: f64, lon_deg: f64) -> [f64; 3] {
    let (sin_lat, cos_lat) = lat_deg.to_radians().sin_cos();
    let (sin_lon, cos_lon) = lon_deg.to_radians().sin_cos();
    [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
}

/// Latitude/longitude in degrees of a non-zero 3-D vector (need not be unit length).
/// Uses atan2 in both coordinates, which stays accurate near the poles.
#[inline]
pub fn to_latlon(v: [f64; 3]) -> (f64, f64) {
    let [x, y, z] = v;
    let lat = z.atan2(x.hypot(y)).to_degrees();
    let lon = if x == 0.0 && y == 0.0 { 0.0 } else { y.atan2(x).to_degrees() };
    (lat, lon)
}

/// Squared Euclidean distance between two 3-D points, as a sum of squared differences.
#[inline(always)]
pub fn chord2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let dx = a[0] - b[0];
    let dy = a[1] - b[1];
    let dz = a[2] - b[2];
    dx * dx + dy * dy + dz * dz
}

/// The chord length on the unit sphere of a great-circle distance `dist_km` on a sphere of
/// radius `radius_km`. Distances of half the circumference or more map to the diameter, 2.
#[inline]
pub fn chord_from_km(dist_km: f64, radius_km: f64) -> f64 {
    let half_angle = dist_km / (2.0 * radius_km);
    if half_angle >= std::f64::consts::FRAC_PI_2 {
        2.0
    } else {
        2.0 * half_angle.sin()
    }
}

/// Great-circle distance in km of a unit-sphere chord length (clamped to [0, 2]).
#[inline]
pub fn km_from_chord(chord: f64, radius_km: f64) -> f64 {
    2.0 * radius_km * (0.5 * chord).clamp(0.0, 1.0).asin()
}

/// Weighted spherical centroid of `points` (lat/lon degrees): the re-normalised weighted mean
/// of their unit vectors. `weights = None` weighs all points equally. Returns `None` when the
/// mean vector vanishes (no positive total weight, or points that cancel such as antipodes).
pub fn centroid(points: &[(f64, f64)], weights: Option<&[f64]>) -> Option<(f64, f64)> {
    let mut sum = [0.0f64; 3];
    for (i, &(lat, lon)) in points.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        let u = unit_vector(lat, lon);
        sum[0] += w * u[0];
        sum[1] += w * u[1];
        sum[2] += w * u[2];
    }
    let norm = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2]).sqrt();
    let total: f64 = match weights {
        Some(w) => w.iter().map(|x| x.abs()).sum(),
        None => points.len() as f64,
    };
    // Relative threshold: a mean this short is numerical noise, not a direction (NaN included).
    let long_enough = norm > 1e-12 * total.max(f64::MIN_POSITIVE);
    if !long_enough {
        return None;
    }
    Some(to_latlon([sum[0] / norm, sum[1] / norm, sum[2] / norm]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_vectors_round_trip() {
        for &(lat, lon) in &[(0.0, 0.0), (45.0, 90.0), (-33.9, 151.2), (89.999, -179.9), (-90.0, 0.0)] {
            let u = unit_vector(lat, lon);
            let n = (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]).sqrt();
            assert!((n - 1.0).abs() < 1e-15);
            let (la, lo) = to_latlon(u);
            assert!((la - lat).abs() < 1e-9, "{la} vs {lat}");
            if lat.abs() < 90.0 {
                assert!((lo - lon).abs() < 1e-9, "{lo} vs {lon}");
            }
        }
    }

    #[test]
    fn chord_and_distance_invert() {
        let r = MEAN_EARTH_RADIUS_KM;
        for &d in &[0.0, 0.001, 1.0, 500.0, 10_000.0, 20_000.0] {
            let c = chord_from_km(d, r);
            assert!((km_from_chord(c, r) - d).abs() < 1e-9 * d.max(1.0));
        }
        assert_eq!(chord_from_km(1e9, r), 2.0);
        // 1 km on the equator: chord of two unit vectors equals the formula.
        let a = unit_vector(0.0, 0.0);
        let b = unit_vector(0.0, (1.0 / r).to_degrees());
        assert!((chord2(&a, &b).sqrt() - chord_from_km(1.0, r)).abs() < 1e-15);
    }

    #[test]
    fn centroid_of_symmetric_points_and_degenerate_cases() {
        let (lat, lon) = centroid(&[(10.0, 20.0), (-10.0, 20.0)], None).unwrap();
        assert!(lat.abs() < 1e-12 && (lon - 20.0).abs() < 1e-12);
        // Across the antimeridian the centroid stays on it, not at longitude 0.
        let (lat, lon) = centroid(&[(0.0, 179.0), (0.0, -179.0)], None).unwrap();
        assert!(lat.abs() < 1e-12 && (lon.abs() - 180.0).abs() < 1e-9);
        // Weights pull toward the heavier point.
        let (_, lon) = centroid(&[(0.0, 0.0), (0.0, 10.0)], Some(&[3.0, 1.0])).unwrap();
        assert!(lon > 0.0 && lon < 5.0);
        assert!(centroid(&[(0.0, 0.0), (0.0, 180.0)], None).is_none());
        assert!(centroid(&[(1.0, 1.0)], Some(&[0.0])).is_none());
        assert!(centroid(&[], None).is_none());
    }
}
