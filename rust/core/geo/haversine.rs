//! Great-circle (haversine) distances on a sphere of radius R, elementwise and as a matrix.
//!
//! ## Elementwise: a well-conditioned haversine
//! With latitudes φ, longitudes λ, Δ = difference, Σ = sum and θ the central angle:
//!
//!   h  = sin²(θ/2) = sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2)      (the haversine; Sinnott 1984)
//!   h' = cos²(θ/2) = sin²(Σφ/2) + cos φ₁ cos φ₂ cos²(Δλ/2)      (its complement)
//!   d  = 2R · atan2(√h, √h')
//!
//! The second line follows from 1 + cos θ = 1 + sin φ₁ sin φ₂ + cos φ₁ cos φ₂ (2cos²(Δλ/2) − 1)
//! = 2 sin²(Σφ/2) + 2 cos φ₁ cos φ₂ cos²(Δλ/2). Both h and h' are sums of non-negative terms:
//! h keeps full relative precision for tiny distances, h' never cancels near antipodes (where
//! the usual 2R·asin(√h) is ill-conditioned and 1 − h loses everything), and atan2 is
//! well-conditioned everywhere. Only h needs relative precision; √h' enters additively near
//! the antipode, so sin(Σφ/2) is formed as sin(φ₂ + Δφ/2) = sin φ₂ cos(Δφ/2) + cos φ₂ sin(Δφ/2)
//! from values already at hand (four sin/cos evaluations per pair: φ₁, φ₂, Δφ/2, Δλ/2). Pairs are
//! put in a canonical order first, so d(p, q) and d(q, p) are bitwise equal.
//!
//! All angles stay in degrees until the exact quarter-circle reduction of
//! [`sincos_deg`], so cos φ keeps its relative precision at the
//! poles (every longitude at ±90° gives the same point: cos φ = 0 exactly). Δλ is wrapped to
//! [−180°, 180°] without rounding near the antimeridian: for λ₁ − λ₂ > 180° it is formed as
//! (λ₁ − 180) − (λ₂ + 180), whose operands are exact there (Sterbenz), and symmetrically.
//!
//! ## Matrix: chords of unit vectors, with an accurate path for close pairs
//! Each point's unit vector p = (cos φ cos λ, cos φ sin λ, sin φ) is computed once. Per pair,
//! c² = |p − q|² and s² = |p + q|² are sums of squared coordinate differences / sums (never
//! 2 ∓ 2 p·q), and d = 2R · atan2(c, s) (c = 2 sin(θ/2), s = 2 cos(θ/2)), well-conditioned at the
//! antipode. The chord's relative error is about 3e-16 / c, so pairs with θ/2 < 5e-4 rad
//! (d < 6.4 km at R = 6371 km) are recomputed with the elementwise formula; the relative error
//! stays below ~1e-13 everywhere.
//!
//! R defaults (in the bindings) to the IUGG mean Earth radius 6371.0088 km
//! ([`MEAN_EARTH_RADIUS_KM`](crate::core::geo::sphere::MEAN_EARTH_RADIUS_KM)).

use ndarray::{Array1, Array2, ArrayView2};
use rayon::prelude::*;

use crate::core::buffer::{assume_init, uninit_vec, write_all};
use crate::core::coords::{check_latlon, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::geo::pairs::map_pairs;
use crate::core::parallel;
use crate::core::simd::Isa;
use crate::core::vmath::{atan2_q1, sincos_deg, MulAdd, Native};
use crate::simd_kernel;

/// Half central angles below this (radians) take the accurate path in the matrix.
pub const TINY_HALF_ANGLE: f64 = 5e-4;
/// Columns of `b` per matrix tile: the seven 4 KiB arrays of a tile stay in L1.
const COL_TILE: usize = 512;
/// Smallest number of pairs worth a parallel task.
const MIN_PAIRS_PER_TASK: usize = 16_384;
/// Largest number of matrix entries per parallel task (whole rows, at least one): short tasks
/// let idle threads take over the work of a thread the OS pauses on a busy machine.
const MAX_PAIRS_PER_TASK: usize = 131_072;

/// Reject a radius that is not a positive finite number.
pub fn check_radius(radius_km: f64) -> GeoResult<()> {
    if radius_km.is_finite() && radius_km > 0.0 {
        Ok(())
    } else {
        Err(GeoError::parameter("radius_km", "a finite number > 0 (km)", radius_km))
    }
}

/// λ₁ − λ₂ in degrees wrapped to [−180, 180], exact near the antimeridian.
#[inline(always)]
fn wrap_dlon_deg(lon1_deg: f64, lon2_deg: f64) -> f64 {
    let d = lon1_deg - lon2_deg;
    let above = (lon1_deg - 180.0) - (lon2_deg + 180.0);
    let below = (lon1_deg + 180.0) - (lon2_deg - 180.0);
    if d > 180.0 {
        above
    } else if d < -180.0 {
        below
    } else {
        d
    }
}

/// A point in degrees with the sine and cosine of its latitude.
#[derive(Clone, Copy)]
struct LatLon {
    lat_deg: f64,
    lon_deg: f64,
    sin_lat: f64,
    cos_lat: f64,
}

impl LatLon {
    #[inline(always)]
    fn new<M: MulAdd>(lat_deg: f64, lon_deg: f64) -> Self {
        let (sin_lat, cos_lat) = sincos_deg::<M>(lat_deg);
        LatLon { lat_deg, lon_deg, sin_lat, cos_lat }
    }
}

/// θ/2 in radians between two points.
///
/// The pair is first put in a canonical order (by latitude, then longitude) with blends, so
/// the result is bitwise symmetric. h needs full relative precision (it is tiny for close
/// points) and gets it from exact Δφ/2 and Δλ/2; its complement h' only ever needs absolute
/// precision (√h' enters θ/2 = atan2(√h, √h') additively near the antipode), so
/// sin(Σφ/2) = sin(φ_b + Δφ/2) = sin φ_b cos(Δφ/2) + cos φ_b sin(Δφ/2) reuses the sines and
/// cosines already at hand instead of a fifth sin/cos evaluation.
#[inline(always)]
fn half_angle<M: MulAdd>(p: LatLon, q: LatLon) -> f64 {
    let swap = (p.lat_deg > q.lat_deg) | ((p.lat_deg == q.lat_deg) & (p.lon_deg > q.lon_deg));
    let (a, b) = if swap { (q, p) } else { (p, q) };
    let (s_dlat, c_dlat) = sincos_deg::<M>(0.5 * (a.lat_deg - b.lat_deg));
    let s_slat = M::mul_add(b.sin_lat, c_dlat, b.cos_lat * s_dlat);
    let (s_dlon, c_dlon) = sincos_deg::<M>(0.5 * wrap_dlon_deg(a.lon_deg, b.lon_deg));
    let k = a.cos_lat * b.cos_lat;
    let h = M::mul_add(s_dlat, s_dlat, k * (s_dlon * s_dlon));
    let h_comp = M::mul_add(s_slat, s_slat, k * (c_dlon * c_dlon));
    atan2_q1::<M>(h.sqrt(), h_comp.sqrt())
}

/// Great-circle distance in km between two valid points in degrees (no validation).
#[inline]
pub fn haversine_km(lat1_deg: f64, lon1_deg: f64, lat2_deg: f64, lon2_deg: f64, radius_km: f64) -> f64 {
    2.0 * radius_km * half_angle::<Native>(LatLon::new::<Native>(lat1_deg, lon1_deg), LatLon::new::<Native>(lat2_deg, lon2_deg))
}

simd_kernel! {
    /// Distances of one tile of pairs: `out[i] = 2R · θᵢ/2`.
    fn haversine_tile<M>(lat1: &[f64], lon1: &[f64], lat2: &[f64], lon2: &[f64], out: &mut [f64], two_r: f64) {
        let n = out.len();
        let (lat1, lon1, lat2, lon2) = (&lat1[..n], &lon1[..n], &lat2[..n], &lon2[..n]);
        for i in 0..n {
            out[i] = two_r * half_angle::<M>(LatLon::new::<M>(lat1[i], lon1[i]), LatLon::new::<M>(lat2[i], lon2[i]));
        }
    }
}

/// Elementwise great-circle distances (km) between the rows of `a` and `b` (`(N, 2)` degrees,
/// latitude first; either may be a single point `(1, 2)`), on a sphere of radius `radius_km`.
pub fn haversine<A: Real, B: Real>(a: ArrayView2<A>, b: ArrayView2<B>, radius_km: f64) -> GeoResult<Array1<f64>> {
    check_radius(radius_km)?;
    haversine_with(Isa::active()?, a, b, radius_km)
}

/// [`haversine`] on an explicit SIMD level (tests compare levels; any [`Isa`] is one this CPU
/// supports).
pub fn haversine_with<A: Real, B: Real>(isa: Isa, a: ArrayView2<A>, b: ArrayView2<B>, radius_km: f64) -> GeoResult<Array1<f64>> {
    check_radius(radius_km)?;
    let two_r = 2.0 * radius_km;
    map_pairs(isa, &a, &b, MIN_PAIRS_PER_TASK, |lat1, lon1, lat2, lon2, out| {
        haversine_tile(isa, lat1, lon1, lat2, lon2, out, two_r)
    })
}

/// Per-point terms of the matrix kernel, structure of arrays (z = sin φ).
struct Points {
    lat: Vec<f64>,
    lon: Vec<f64>,
    cos_lat: Vec<f64>,
    x: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
}

simd_kernel! {
    /// cos φ and the unit vector of each point.
    fn points_tile<M>(lat: &[f64], lon: &[f64], cos_lat: &mut [f64], x: &mut [f64], y: &mut [f64], z: &mut [f64]) {
        let n = lat.len();
        let (lon, cos_lat, x, y, z) = (&lon[..n], &mut cos_lat[..n], &mut x[..n], &mut y[..n], &mut z[..n]);
        for i in 0..n {
            let (s_lat, c_lat) = sincos_deg::<M>(lat[i]);
            let (s_lon, c_lon) = sincos_deg::<M>(lon[i]);
            cos_lat[i] = c_lat;
            x[i] = c_lat * c_lon;
            y[i] = c_lat * s_lon;
            z[i] = s_lat;
        }
    }
}

impl Points {
    /// Terms of an already validated `(N, 2)` array.
    fn new<T: Real>(v: &ArrayView2<T>, isa: Isa) -> Self {
        let lat: Vec<f64> = v.column(0).iter().map(|p| p.to_f64()).collect();
        let lon: Vec<f64> = v.column(1).iter().map(|p| p.to_f64()).collect();
        let n = lat.len();
        let (mut cos_lat, mut x, mut y, mut z) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let chunk = parallel::chunk_len(n, 4096);
        parallel::install(|| {
            lat.par_chunks(chunk)
                .zip(lon.par_chunks(chunk))
                .zip(cos_lat.par_chunks_mut(chunk))
                .zip(x.par_chunks_mut(chunk))
                .zip(y.par_chunks_mut(chunk))
                .zip(z.par_chunks_mut(chunk))
                .for_each(|(((((la, lo), c), x), y), z)| points_tile(isa, la, lo, c, x, y, z));
        });
        Points { lat, lon, cos_lat, x, y, z }
    }
}

simd_kernel! {
    /// One row tile of the matrix from unit vectors; returns how many pairs are too close for
    /// the chord formula.
    fn chord_row_tile<M>(ax: f64, ay: f64, az: f64, bx: &[f64], by: &[f64], bz: &[f64], out: &mut [f64], two_r: f64) -> usize {
        let n = out.len();
        let (bx, by, bz) = (&bx[..n], &by[..n], &bz[..n]);
        let mut close = 0usize;
        for j in 0..n {
            let (dx, dy, dz) = (ax - bx[j], ay - by[j], az - bz[j]);
            let (sx, sy, sz) = (ax + bx[j], ay + by[j], az + bz[j]);
            let c2 = M::mul_add(dx, dx, M::mul_add(dy, dy, dz * dz));
            let s2 = M::mul_add(sx, sx, M::mul_add(sy, sy, sz * sz));
            let half = atan2_q1::<M>(c2.sqrt(), s2.sqrt());
            close += (half < TINY_HALF_ANGLE) as usize;
            out[j] = two_r * half;
        }
        close
    }
}

simd_kernel! {
    /// Recompute, with the elementwise formula, the entries of a row tile below `limit_km`.
    fn close_row_tile<M>(
        lat_a: f64, lon_a: f64, sin_a: f64, cos_a: f64,
        lat_b: &[f64], lon_b: &[f64], sin_b: &[f64], cos_b: &[f64],
        out: &mut [f64], two_r: f64, limit_km: f64,
    ) {
        let n = out.len();
        let (lat_b, lon_b, sin_b, cos_b) = (&lat_b[..n], &lon_b[..n], &sin_b[..n], &cos_b[..n]);
        for j in 0..n {
            let pa = LatLon { lat_deg: lat_a, lon_deg: lon_a, sin_lat: sin_a, cos_lat: cos_a };
            let pb = LatLon { lat_deg: lat_b[j], lon_deg: lon_b[j], sin_lat: sin_b[j], cos_lat: cos_b[j] };
            let accurate = two_r * half_angle::<M>(pa, pb);
            out[j] = if out[j] < limit_km { accurate } else { out[j] };
        }
    }
}

/// All pairwise great-circle distances (km): `out[i, j]` between `a[i]` and `b[j]`.
pub fn haversine_matrix<A: Real, B: Real>(a: ArrayView2<A>, b: ArrayView2<B>, radius_km: f64) -> GeoResult<Array2<f64>> {
    check_radius(radius_km)?;
    let na = check_latlon("a", &a)?;
    let nb = check_latlon("b", &b)?;
    let len = na.checked_mul(nb).ok_or_else(|| GeoError::TooLarge {
        what: "distance matrix",
        detail: format!("{na} × {nb} entries overflow; split the input into smaller batches"),
    })?;
    let mut out = uninit_vec::<f64>(len, "distance matrix")?;
    if len > 0 {
        let isa = Isa::active()?;
        let pa = Points::new(&a, isa);
        let pb = Points::new(&b, isa);
        let two_r = 2.0 * radius_km;
        let limit_km = two_r * TINY_HALF_ANGLE;
        let rows_per_task = parallel::chunk_len(na, (MIN_PAIRS_PER_TASK / nb).max(1)).min((MAX_PAIRS_PER_TASK / nb).max(1));
        parallel::install(|| {
            out.par_chunks_mut(rows_per_task * nb).enumerate().for_each(|(t, block)| {
                let r0 = t * rows_per_task;
                let rows = block.len() / nb;
                let mut res = [0.0f64; COL_TILE];
                for j0 in (0..nb).step_by(COL_TILE) {
                    let j1 = (j0 + COL_TILE).min(nb);
                    let res = &mut res[..j1 - j0];
                    for r in 0..rows {
                        let i = r0 + r;
                        let close = chord_row_tile(
                            isa,
                            pa.x[i],
                            pa.y[i],
                            pa.z[i],
                            &pb.x[j0..j1],
                            &pb.y[j0..j1],
                            &pb.z[j0..j1],
                            res,
                            two_r,
                        );
                        if close > 0 {
                            close_row_tile(
                                isa,
                                pa.lat[i],
                                pa.lon[i],
                                pa.z[i],
                                pa.cos_lat[i],
                                &pb.lat[j0..j1],
                                &pb.lon[j0..j1],
                                &pb.z[j0..j1],
                                &pb.cos_lat[j0..j1],
                                res,
                                two_r,
                                limit_km,
                            );
                        }
                        write_all(&mut block[r * nb + j0..r * nb + j1], res);
                    }
                }
            });
        });
    }
    // SAFETY: the blocks partition `out` into whole rows; for each row the column tiles
    // j0..j1 partition 0..nb, and each (row, tile) was written by `write_all` above.
    let out = unsafe { assume_init(out) };
    Array2::from_shape_vec((na, nb), out).map_err(|e| GeoError::TooLarge { what: "distance matrix", detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::simd::Level;
    use ndarray::{array, Array2};

    const R: f64 = 6371.0088;

    /// Textbook haversine with libm, for points where it is well-conditioned.
    fn textbook(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let dp = p2 - p1;
        let dl = (lon2 - lon1).to_radians();
        let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * R * h.sqrt().asin()
    }

    fn lcg_points(n: usize, seed: u64) -> Array2<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        Array2::from_shape_fn(
            (n, 2),
            |(_, j)| if j == 0 { (2.0 * next() - 1.0).asin().to_degrees() } else { 360.0 * next() - 180.0 },
        )
    }

    #[test]
    fn matches_textbook_formula_away_from_degenerate_cases() {
        let a = lcg_points(20_000, 1);
        let b = lcg_points(20_000, 2);
        let d = haversine(a.view(), b.view(), R).unwrap();
        for i in 0..a.nrows() {
            let want = textbook(a[[i, 0]], a[[i, 1]], b[[i, 0]], b[[i, 1]]);
            // asin(√h) loses digits as h → 1 (antipodes); compare where it is well-conditioned.
            if want < 0.9 * std::f64::consts::PI * R && want > 10.0 {
                assert!((d[i] - want).abs() <= 1e-12 * want, "{i}: {} vs {want}", d[i]);
            }
            assert!(d[i] >= 0.0 && d[i] <= std::f64::consts::PI * R * (1.0 + 1e-15));
        }
    }

    #[test]
    fn known_distances_and_edges() {
        // Quarter meridian: equator to pole is πR/2, at any longitude.
        let q = std::f64::consts::FRAC_PI_2 * R;
        for lon in [-180.0, -33.3, 0.0, 120.0, 180.0] {
            let d = haversine_km(0.0, 0.0, 90.0, lon, R);
            assert!((d - q).abs() <= 1e-12 * q, "{d} vs {q}");
        }
        // The pole at any longitude is one point.
        assert_eq!(haversine_km(90.0, 10.0, 90.0, -170.0, R), 0.0);
        assert_eq!(haversine_km(-90.0, 0.0, -90.0, 180.0, R), 0.0);
        // Antipodes: exactly πR, through the pole or along the equator.
        let half = std::f64::consts::PI * R;
        assert!((haversine_km(90.0, 0.0, -90.0, 0.0, R) - half).abs() <= 1e-12 * half);
        assert!((haversine_km(0.0, 0.0, 0.0, 180.0, R) - half).abs() <= 1e-12 * half);
        assert!((haversine_km(30.0, -60.0, -30.0, 120.0, R) - half).abs() <= 1e-12 * half);
        // Antimeridian: 179.9 and -179.9 are 0.2° of longitude apart, not 359.8°.
        let want = 0.2f64.to_radians() * R;
        let d = haversine_km(0.0, 179.9, 0.0, -179.9, R);
        assert!((d - want).abs() <= 1e-12 * want, "{d} vs {want}");
        // Duplicates are exactly 0.
        assert_eq!(haversine_km(12.345, 67.89, 12.345, 67.89, R), 0.0);
        // One metre on the equator (longitude step of 1 m / R radians).
        let dlon = (1e-3 / R).to_degrees();
        let d = haversine_km(0.0, 0.0, 0.0, dlon, R);
        assert!((d - 1e-3).abs() <= 1e-15, "{d}");
    }

    #[test]
    fn near_antipodal_pairs_keep_precision() {
        // Along the equator, lon2 = 180 - ε: d = R(π - ε) exactly on the sphere.
        for eps_deg in [1e-9, 1e-6, 1e-3, 0.5] {
            let d = haversine_km(0.0, 0.0, 0.0, 180.0 - eps_deg, R);
            let want = R * (std::f64::consts::PI - eps_deg.to_radians());
            assert!((d - want).abs() <= 4e-16 * want, "{eps_deg}: {d} vs {want}");
        }
        // Through a pole: (φ, 0) to (-φ', 180) with φ + φ' small.
        let d = haversine_km(45.0, 0.0, -45.0 + 1e-6, 180.0, R);
        let want = R * (std::f64::consts::PI - (1e-6f64).to_radians());
        assert!((d - want).abs() <= 4e-16 * want, "{d} vs {want}");
    }

    #[test]
    fn symmetric_and_versions_agree() {
        let a = lcg_points(3_000, 3);
        let b = lcg_points(3_000, 4);
        let ab = haversine(a.view(), b.view(), R).unwrap();
        let ba = haversine(b.view(), a.view(), R).unwrap();
        assert_eq!(ab, ba);
        let lat1: Vec<f64> = a.column(0).to_vec();
        let lon1: Vec<f64> = a.column(1).to_vec();
        let lat2: Vec<f64> = b.column(0).to_vec();
        let lon2: Vec<f64> = b.column(1).to_vec();
        let mut fast = vec![0.0; 3_000];
        let mut portable = vec![0.0; 3_000];
        let mut avx2 = vec![0.0; 3_000];
        haversine_tile(Isa::detect(), &lat1, &lon1, &lat2, &lon2, &mut fast, 2.0 * R);
        haversine_tile(Isa::capped(Level::Avx2), &lat1, &lon1, &lat2, &lon2, &mut avx2, 2.0 * R);
        assert_eq!(fast, avx2);
        haversine_tile(Isa::capped(Level::Portable), &lat1, &lon1, &lat2, &lon2, &mut portable, 2.0 * R);
        // Portable rounds each multiply-add twice: measured at most 5.8e-16 relative (2.6 eps)
        // over 20,000 random pairs; 1e-14 (45 eps) leaves 17x.
        for (x, y) in fast.iter().zip(&portable) {
            assert!((x - y).abs() <= 1e-14 * x + 1e-300, "{x} vs {y}");
        }
        if Isa::active() == Ok(Isa::detect()) {
            assert_eq!(fast, ab.to_vec());
        }
    }

    /// Every `GEOFAST_SIMD` value: the level it selects, and distances that match the libm
    /// formula (bit-identical between the fused levels, within 1e-14 relative to portable: 17x
    /// over the 5.8e-16 measured).
    #[test]
    fn every_simd_setting_matches_the_reference() {
        let a = lcg_points(5_000, 7);
        let b = lcg_points(5_000, 8);
        let best = Isa::detect();
        let fused = haversine_with(best, a.view(), b.view(), R).unwrap();
        for (value, cap) in [
            ("auto", Level::Avx512),
            ("avx512", Level::Avx512),
            ("avx2", Level::Avx2),
            ("portable", Level::Portable),
            ("off", Level::Portable),
            ("scalar", Level::Portable),
        ] {
            let isa = Isa::from_setting(Some(value)).unwrap();
            assert_eq!(isa.level(), cap.min(best.level()), "{value}");
            let d = haversine_with(isa, a.view(), b.view(), R).unwrap();
            for i in 0..a.nrows() {
                let want = textbook(a[[i, 0]], a[[i, 1]], b[[i, 0]], b[[i, 1]]);
                if want < 0.9 * std::f64::consts::PI * R && want > 10.0 {
                    assert!((d[i] - want).abs() <= 1e-12 * want, "{value} {i}: {} vs {want}", d[i]);
                }
                assert!((d[i] - fused[i]).abs() <= 1e-14 * fused[i] + 1e-300, "{value} {i}");
            }
            if isa.avx2() && best.avx2() {
                assert_eq!(d, fused, "{value}");
            }
        }
        assert!(Isa::from_setting(Some("avx-512")).is_err());
    }

    #[test]
    fn matrix_matches_elementwise_including_close_pairs() {
        let mut a = lcg_points(300, 5);
        let mut b = lcg_points(700, 6);
        // Close pairs (metres to kilometres) that take the accurate path.
        for k in 0..50 {
            b[[k, 0]] = a[[k, 0]] + 1e-5 * k as f64;
            b[[k, 1]] = a[[k, 1]] - 2e-5 * k as f64;
        }
        a[[299, 0]] = 90.0;
        b[[699, 0]] = 90.0;
        b[[698, 0]] = -a[[1, 0]];
        b[[698, 1]] = if a[[1, 1]] > 0.0 { a[[1, 1]] - 180.0 } else { a[[1, 1]] + 180.0 };
        let m = haversine_matrix(a.view(), b.view(), R).unwrap();
        assert_eq!(m.dim(), (300, 700));
        for i in 0..300 {
            for j in 0..700 {
                let want = haversine_km(a[[i, 0]], a[[i, 1]], b[[j, 0]], b[[j, 1]], R);
                let err = (m[[i, j]] - want).abs();
                assert!(err <= 2e-13 * want + 1e-13, "{i},{j}: {} vs {want}", m[[i, j]]);
            }
        }
        assert_eq!(m[[299, 699]], 0.0);
        let mt = haversine_matrix(b.view(), a.view(), R).unwrap();
        assert_eq!(mt.t(), m);
        // Empty sides.
        let e = Array2::<f64>::zeros((0, 2));
        assert_eq!(haversine_matrix(e.view(), b.view(), R).unwrap().dim(), (0, 700));
        assert_eq!(haversine_matrix(a.view(), e.view(), R).unwrap().dim(), (300, 0));
    }

    #[test]
    fn validation() {
        let p = array![[0.0, 0.0]];
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(haversine(p.view(), p.view(), r), Err(GeoError::Parameter { name: "radius_km", .. })));
            assert!(matches!(haversine_matrix(p.view(), p.view(), r), Err(GeoError::Parameter { .. })));
        }
        let bad = array![[0.0, 0.0], [0.0, 190.0]];
        assert!(matches!(haversine_matrix(p.view(), bad.view(), R), Err(GeoError::Longitude { name: "b", row: 1, .. })));
        assert!(matches!(haversine(bad.view(), bad.view(), R), Err(GeoError::Longitude { name: "a", row: 1, .. })));
    }
}
