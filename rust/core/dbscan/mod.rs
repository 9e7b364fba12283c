//! Exact DBSCAN on the sphere (haversine distance), with scikit-learn's semantics.
//!
//! Semantics (Ester, Kriegel, Sander & Xu, "A density-based algorithm for discovering clusters in
//! large spatial databases with noise", KDD 1996, as implemented by `sklearn.cluster.DBSCAN`):
//! - q is an ε-neighbour of p iff d(p, q) ≤ ε; every point is its own neighbour.
//! - p is a core point iff Σ w(q) over its ε-neighbourhood (itself included) ≥ `min_samples`
//!   (w = 1 without `sample_weight`; weights may be zero or negative).
//! - Core points within ε of each other are in the same cluster; a non-core point within ε of a
//!   core point is a border point of (one of) that core point's clusters; the rest is noise (−1).
//! - Clusters are numbered in order of their lowest-index core point, and a border point goes to
//!   the lowest-numbered cluster that reaches it — exactly what sklearn's depth-first labelling
//!   does when it visits points in index order (`labels.rs`).
//!
//! Geometry. Points become 3-D unit vectors p = (cos φ cos λ, cos φ sin λ, sin φ). A great-circle
//! radius ε on a sphere of radius R is the Euclidean chord e = 2 sin(ε / 2R); chords are computed
//! as sums of squared coordinate differences (`sphere::chord2`), never as 2 − 2 p·q. The
//! ε-neighbour test, with sklearn's own formula for pairs within rounding of ε, is `eps.rs`.
//! For ε ≥ πR (half the circumference) every pair is a neighbour (sklearn's sin² conversion
//! folds back there and drops far pairs; geofast does not copy that).
//!
//! Engines, all with the same predicate and the same labels (each tested against the O(n²)
//! oracle and, from Python, against sklearn):
//! - `grid.rs`: grid-based exact DBSCAN (Gunawan 2013; Gan & Tao, SIGMOD 2015) in 3-D, parallel,
//!   O(N) memory, for every input it is given;
//! - `sweep.rs`: sort-and-sweep along the widest axis, sequential, for small sparse inputs
//!   (N ≤ `SWEEP_MAX_N` = 4096 and at most 16 candidate pairs per point; 2–4× faster there);
//! - `brute.rs`: explicit neighbourhoods, O(n²), for the handful of points of one
//!   Search-within-Cell query and as the tests' oracle.
//!
//! [`dbscan`] validates the input, answers ε ≥ πR directly, tries the sweep when N ≤ 4096 and
//! otherwise (or when the sweep gives up on dense data) runs the grid.
//!
//! With fractional weights, a neighbourhood whose total lies within rounding of `min_samples` may
//! be decided differently from sklearn, which sums in its ball-tree order (integer and dyadic
//! weights sum exactly either way).

mod brute;
mod eps;
mod grid;
mod labels;
mod sweep;

use ndarray::{ArrayView1, ArrayView2};

use crate::core::coords::{check_latlon, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::parallel;

pub use brute::dbscan_bruteforce;
pub use eps::{radians, EpsTest};
use labels::NONE;
use sweep::SWEEP_MAX_N;

/// Validate the scalar DBSCAN parameters shared by [`dbscan`] and Search-within-Cell.
pub fn check_params(eps_km: f64, min_samples: i64, radius_km: f64) -> GeoResult<()> {
    if !(eps_km.is_finite() && eps_km > 0.0) {
        return Err(GeoError::parameter("eps_km", "a finite distance > 0 in km", eps_km));
    }
    if min_samples < 1 {
        return Err(GeoError::parameter("min_samples", ">= 1 (it counts the point itself)", min_samples));
    }
    if !(radius_km.is_finite() && radius_km > 0.0) {
        return Err(GeoError::parameter("radius_km", "a finite radius > 0 in km", radius_km));
    }
    Ok(())
}

/// DBSCAN labels (−1 = noise) of `(N, 2)` lat/lon degrees with haversine radius `eps_km` on a
/// sphere of radius `radius_km`. `sample_weight` (length N, finite, any sign) replaces the count
/// of neighbours by their total weight.
pub fn dbscan<T: Real>(
    latlon: ArrayView2<T>,
    eps_km: f64,
    min_samples: i64,
    sample_weight: Option<ArrayView1<f64>>,
    radius_km: f64,
) -> GeoResult<Vec<i64>> {
    let n = check_latlon("latlon", &latlon)?;
    check_params(eps_km, min_samples, radius_km)?;
    if let Some(w) = &sample_weight {
        if w.len() != n {
            return Err(GeoError::Mismatch {
                what: "len(sample_weight) must equal the number of points".into(),
                left: w.len(),
                right: n,
            });
        }
        for (row, &v) in w.iter().enumerate() {
            if !v.is_finite() {
                return Err(GeoError::NonFinite { name: "sample_weight", row, value: v });
            }
        }
    }
    if n >= NONE as usize {
        return Err(GeoError::TooLarge { what: "latlon", detail: format!("{n} points; dbscan handles fewer than 2^32 - 1") });
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let m = min_samples as f64;
    let test = EpsTest::new(eps_km, radius_km);

    if test.all {
        // Every point's neighbourhood is the whole set.
        let total: f64 = match &sample_weight {
            Some(w) => w.iter().sum(),
            None => n as f64,
        };
        return Ok(vec![if total >= m { 0 } else { -1 }; n]);
    }

    if n <= SWEEP_MAX_N {
        if let Some(labels) = sweep::sweep(latlon, m, sample_weight, &test) {
            return Ok(labels);
        }
    }
    // One crossing into the pool; the phases below run inline on its workers.
    Ok(parallel::install(|| grid::cluster(latlon, m, sample_weight, test)))
}

#[cfg(test)]
mod tests;
