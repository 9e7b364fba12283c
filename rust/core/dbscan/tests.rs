//! Tests of the DBSCAN engines against the O(n²) oracle and hand-made cases.

use super::eps::sklearn_rdist;
use super::grid::cluster;
use super::sweep::sweep;
use super::*;
use crate::core::geo::sphere::{unit_vector, MEAN_EARTH_RADIUS_KM};
use ndarray::Array2;

/// Small deterministic generator (SplitMix64) so the tests need no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Blobs of points around random centres (lat/lon offsets of a few km), some near the poles
/// and the antimeridian, plus uniform noise and exact duplicates.
fn clustered(rng: &mut Rng, n: usize, blobs: usize, spread_deg: f64) -> Array2<f64> {
    let mut centres: Vec<(f64, f64)> = (0..blobs).map(|_| (rng.uniform(-80.0, 80.0), rng.uniform(-180.0, 180.0))).collect();
    centres.push((89.99, 0.0));
    centres.push((0.0, 179.999));
    let mut a = Array2::<f64>::zeros((n, 2));
    for i in 0..n {
        let r = rng.next() % 10;
        let (lat, lon) = if r == 0 {
            (rng.uniform(-90.0, 90.0), rng.uniform(-180.0, 180.0))
        } else if r == 1 && i > 0 {
            let j = (rng.next() % i as u64) as usize;
            (a[[j, 0]], a[[j, 1]])
        } else {
            let (clat, clon) = centres[(rng.next() % centres.len() as u64) as usize];
            let lat = (clat + rng.uniform(-spread_deg, spread_deg)).clamp(-90.0, 90.0);
            let mut lon = clon + rng.uniform(-spread_deg, spread_deg);
            if lon > 180.0 {
                lon -= 360.0;
            }
            if lon < -180.0 {
                lon += 360.0;
            }
            (lat, lon)
        };
        a[[i, 0]] = lat;
        a[[i, 1]] = lon;
    }
    a
}

fn oracle(a: &Array2<f64>, eps_km: f64, m: i64, w: Option<&[f64]>) -> Vec<i64> {
    let pts: Vec<[f64; 3]> = a.outer_iter().map(|r| unit_vector(r[0], r[1])).collect();
    let rad: Vec<[f64; 2]> = a.outer_iter().map(|r| radians(r[0], r[1])).collect();
    let test = EpsTest::new(eps_km, MEAN_EARTH_RADIUS_KM);
    dbscan_bruteforce(&pts, &rad, w, m as f64, &test)
}

#[test]
fn grid_matches_bruteforce_on_clustered_data() {
    let mut rng = Rng(7);
    let mut swept_cases = 0;
    for trial in 0..40 {
        let n = 50 + (rng.next() % 400) as usize;
        let a = clustered(&mut rng, n, 1 + trial % 5, 0.05);
        let eps = [0.5, 2.0, 5.0, 20.0][trial % 4];
        let m = 1 + (rng.next() % 6) as i64;
        let weights: Option<Vec<f64>> = match trial % 3 {
            0 => None,
            1 => Some((0..n).map(|_| (rng.next() % 4) as f64 * 0.5).collect()),
            _ => Some((0..n).map(|_| (rng.next() % 5) as f64 - 1.0).collect()),
        };
        let wv = weights.as_ref().map(|w| ndarray::ArrayView1::from(w.as_slice()));
        let got = dbscan(a.view(), eps, m, wv, MEAN_EARTH_RADIUS_KM).unwrap();
        let want = oracle(&a, eps, m, weights.as_deref());
        assert_eq!(got, want, "trial {trial} n={n} eps={eps} m={m}");
        // Both engines, whichever `dbscan` picked.
        let test = EpsTest::new(eps, MEAN_EARTH_RADIUS_KM);
        let grid = parallel::install(|| cluster(a.view(), m as f64, wv, test));
        assert_eq!(grid, want, "grid: trial {trial}");
        if let Some(swept) = sweep(a.view(), m as f64, wv, &test) {
            assert_eq!(swept, want, "sweep: trial {trial}");
            swept_cases += 1;
        }
    }
    assert!(swept_cases > 5 && swept_cases < 40, "{swept_cases}");
}

#[test]
fn tiny_eps_uses_checked_cells() {
    // ε of 1 cm: cubes are not cliques; results must still match.
    let mut rng = Rng(3);
    let mut a = clustered(&mut rng, 300, 2, 1e-7);
    a[[5, 0]] = a[[4, 0]];
    a[[5, 1]] = a[[4, 1]];
    for m in [1, 2, 3] {
        let got = dbscan(a.view(), 1e-5, m, None, MEAN_EARTH_RADIUS_KM).unwrap();
        assert_eq!(got, oracle(&a, 1e-5, m, None));
    }
}

#[test]
fn boundary_pairs_follow_the_haversine_formula() {
    // Two points on a meridian at ε ± 1e-9 km and at exactly ε.
    let r = MEAN_EARTH_RADIUS_KM;
    let eps = 3.0;
    for (dist, expect_pair) in [(eps - 1e-9, true), (eps + 1e-9, false)] {
        let a = ndarray::array![[10.0, 20.0], [10.0 + (dist / r).to_degrees(), 20.0]];
        let got = dbscan(a.view(), eps, 2, None, r).unwrap();
        assert_eq!(got, if expect_pair { vec![0, 0] } else { vec![-1, -1] }, "{dist}");
    }
    let a = ndarray::array![[10.0, 20.0], [10.0 + (eps / r).to_degrees(), 20.0]];
    let got = dbscan(a.view(), eps, 2, None, r).unwrap();
    let rdist = sklearn_rdist(radians(10.0, 20.0), radians(a[[1, 0]], 20.0));
    let t = (0.5 * (eps / r)).sin();
    assert_eq!(got[0] == 0, rdist <= t * t);
}

#[test]
fn labels_are_in_discovery_order_and_borders_take_the_lowest() {
    let r = MEAN_EARTH_RADIUS_KM;
    let d = |km: f64| (km / r).to_degrees();
    // Cluster B (indices 0..9) east of cluster A (10..19); point 9 lies within ε of one core
    // of each but is not core itself; point 19 is noise.
    let mut rows = Vec::new();
    for j in 0..9 {
        rows.push([0.0, d(2.47 + 0.01 * j as f64)]);
    }
    rows.push([0.0, d(1.275)]);
    for j in 0..9 {
        rows.push([0.0, d(0.01 * j as f64)]);
    }
    rows.push([50.0, 50.0]);
    let a = Array2::from(rows);
    let got = dbscan(a.view(), 1.2, 8, None, r).unwrap();
    let mut want = vec![0i64; 10];
    want.extend(vec![1i64; 9]);
    want.push(-1);
    assert_eq!(got, want);
    assert_eq!(oracle(&a, 1.2, 8, None), want);
}

#[test]
fn errors_and_edges() {
    let a = ndarray::array![[0.0, 0.0]];
    let r = MEAN_EARTH_RADIUS_KM;
    assert!(matches!(dbscan(a.view(), 0.0, 1, None, r), Err(GeoError::Parameter { .. })));
    assert!(matches!(dbscan(a.view(), f64::NAN, 1, None, r), Err(GeoError::Parameter { .. })));
    assert!(matches!(dbscan(a.view(), 1.0, 0, None, r), Err(GeoError::Parameter { .. })));
    assert!(matches!(dbscan(a.view(), 1.0, 1, None, -1.0), Err(GeoError::Parameter { .. })));
    let w = [1.0, 2.0];
    assert!(matches!(dbscan(a.view(), 1.0, 1, Some(ArrayView1::from(&w[..])), r), Err(GeoError::Mismatch { .. })));
    let w = [f64::INFINITY];
    assert!(matches!(dbscan(a.view(), 1.0, 1, Some(ArrayView1::from(&w[..])), r), Err(GeoError::NonFinite { .. })));
    assert!(dbscan(Array2::<f64>::zeros((0, 2)).view(), 1.0, 1, None, r).unwrap().is_empty());
    // ε beyond half the circumference: one cluster of everything.
    let b = ndarray::array![[0.0, 0.0], [0.0, 180.0], [90.0, 0.0]];
    assert_eq!(dbscan(b.view(), 30_000.0, 3, None, r).unwrap(), vec![0, 0, 0]);
    assert_eq!(dbscan(b.view(), 30_000.0, 4, None, r).unwrap(), vec![-1, -1, -1]);
}
