//! The ε-neighbour predicate of every DBSCAN engine, decided on unit-vector chords with
//! scikit-learn's own formula at the boundary.
//!
//! A great-circle distance ε on a sphere of radius R is the chord e = 2 sin(ε / 2R) between unit
//! vectors (`sphere::chord_from_km`). sklearn (`metric="haversine"`, ball tree) decides a pair by
//! its reduced distance
//!
//!   rdist = sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2) ≤ sin²(ε_rad / 2),   ε_rad = ε_km / R,
//!
//! evaluated in float64 on `np.radians(latlon)` (`sklearn/metrics/_dist_metrics.pyx.tp`,
//! `HaversineDistance.rdist`). In exact arithmetic chord² = 4·rdist, and both float evaluations
//! are accurate to about 1e-15·e in chord² units. A pair whose chord² lies outside the band
//! e² ± (1e-12·e + 1e-14·e²) is decided by the chord alone ([`EpsTest::lo`], [`EpsTest::hi`]); a
//! pair inside the band (a distance within a few parts in 1e9 of ε) is re-decided with sklearn's
//! formula and operation order ([`sklearn_rdist`]), so points at exactly ε (or ε ± 1e-9 km) get
//! sklearn's answer. For ε_rad ≥ π every pair is a neighbour ([`EpsTest::all`]).

use crate::core::geo::sphere::chord_from_km;

/// The ε-neighbour predicate on unit-vector chords, with sklearn's own formula at the boundary.
#[derive(Clone, Copy, Debug)]
pub struct EpsTest {
    /// Chord² below which a pair is certainly a neighbour.
    pub lo: f64,
    /// Chord² above which a pair is certainly not a neighbour.
    pub hi: f64,
    /// sklearn's reduced radius sin²(ε_rad / 2).
    reduced_r: f64,
    /// ε ≥ πR: every pair is a neighbour.
    pub all: bool,
}

impl EpsTest {
    pub fn new(eps_km: f64, radius_km: f64) -> Self {
        let eps_rad = eps_km / radius_km;
        if eps_rad >= std::f64::consts::PI {
            return EpsTest { lo: f64::INFINITY, hi: f64::INFINITY, reduced_r: 1.0, all: true };
        }
        let e = chord_from_km(eps_km, radius_km);
        let e2 = e * e;
        let band = 1e-12 * e + 1e-14 * e2;
        let t = (0.5 * eps_rad).sin();
        EpsTest { lo: e2 - band, hi: e2 + band, reduced_r: t * t, all: false }
    }

    /// Is a pair with squared chord `c2` a neighbour? `rad` gives both points' (lat, lon) in
    /// radians, needed only for pairs in the boundary band.
    #[inline(always)]
    pub fn within(&self, c2: f64, rad: impl FnOnce() -> ([f64; 2], [f64; 2])) -> bool {
        if c2 < self.lo {
            true
        } else if c2 > self.hi {
            false
        } else {
            let (a, b) = rad();
            sklearn_rdist(a, b) <= self.reduced_r
        }
    }
}

/// scikit-learn's haversine reduced distance, with its operation order
/// (`sklearn/metrics/_dist_metrics.pyx.tp`, `HaversineDistance.rdist`).
#[inline(never)]
pub(super) fn sklearn_rdist(a: [f64; 2], b: [f64; 2]) -> f64 {
    let sin_0 = (0.5 * (a[0] - b[0])).sin();
    let sin_1 = (0.5 * (a[1] - b[1])).sin();
    sin_0 * sin_0 + a[0].cos() * b[0].cos() * sin_1 * sin_1
}

/// (lat, lon) in radians as `np.radians` computes them.
#[inline]
pub fn radians(lat_deg: f64, lon_deg: f64) -> [f64; 2] {
    [lat_deg.to_radians(), lon_deg.to_radians()]
}
