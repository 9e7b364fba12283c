//! Search-within-Cell (SwC): one location from the k retrieved neighbours of a query.
//!
//! Müller-Budack et al., "Search-within-Cell" (visloc-estimation; ICMR 2021, MMM 2022):
//! 1. DBSCAN over the neighbours' coordinates (haversine, ε = `eps_km` (default 1 km),
//!    `min_samples` (default 1), sphere radius R = 6371 km as visloc uses; same semantics and
//!    boundary handling as [`crate::core::dbscan`]).
//! 2. The largest cluster wins (most members; noise points are not a cluster). If every point
//!    is noise, each point is its own cluster of size 1. Equal sizes: the cluster holding the
//!    most similar neighbour (the first such neighbour by index if similarities tie).
//! 3. The estimate is the spherical centroid of the winning cluster: the mean of its members'
//!    3-D unit vectors weighted by wᵢ = sᵢᵃ (a = `weight_exponent`; a = 0 gives equal weights),
//!    re-normalised to the sphere (`sphere::centroid`). A one-member cluster returns that
//!    member's coordinates unchanged. If the weighted mean vanishes (members that cancel, such
//!    as antipodes, or all weights zero) the most similar member's coordinates are returned.
//!
//! sᵢᵃ must be real and finite: negative similarities need an integer exponent, and zero
//! similarities a non-negative one.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::core::coords::{check_latlon, check_point, Real};
use crate::core::dbscan::{check_params, dbscan, dbscan_bruteforce, radians, EpsTest};
use crate::core::error::{GeoError, GeoResult};
use crate::core::geo::sphere::{centroid, unit_vector};
use crate::core::parallel;

/// Parameters of Search-within-Cell.
#[derive(Clone, Copy, Debug)]
pub struct SwcParams {
    pub eps_km: f64,
    pub min_samples: i64,
    pub weight_exponent: f64,
    pub radius_km: f64,
}

/// The estimate of one query.
#[derive(Clone, Debug, PartialEq)]
pub struct SwcResult {
    pub lat_deg: f64,
    pub lon_deg: f64,
    /// Indices (ascending) of the neighbours in the winning cluster.
    pub members: Vec<usize>,
}

/// Up to this many neighbours per query, DBSCAN runs as the O(k²) textbook algorithm; beyond,
/// through [`crate::core::dbscan::dbscan`] (same labels).
const BRUTE_FORCE_MAX_K: usize = 64;

fn check_swc_params(p: &SwcParams) -> GeoResult<()> {
    check_params(p.eps_km, p.min_samples, p.radius_km)?;
    if !p.weight_exponent.is_finite() {
        return Err(GeoError::parameter("weight_exponent", "finite", p.weight_exponent));
    }
    Ok(())
}

/// Validate one query's similarities: finite, and sᵃ finite and real.
fn check_similarity(sim: impl Iterator<Item = (usize, f64)>, a: f64) -> GeoResult<()> {
    let integer = a.fract() == 0.0;
    for (row, s) in sim {
        if !s.is_finite() {
            return Err(GeoError::NonFinite { name: "similarity", row, value: s });
        }
        if a != 0.0 {
            if s < 0.0 && !integer {
                return Err(GeoError::parameter(
                    "weight_exponent",
                    "an integer when similarities are negative (s ** a is not real otherwise)",
                    a,
                ));
            }
            if !s.powf(a).is_finite() {
                return Err(GeoError::parameter(
                    "weight_exponent",
                    "such that similarity ** weight_exponent is finite (zero similarities need a >= 0)",
                    a,
                ));
            }
        }
    }
    Ok(())
}

/// Index of the largest similarity among `candidates` (first on ties).
fn most_similar(sim: &[f64], candidates: impl Iterator<Item = usize>) -> usize {
    let mut best: Option<usize> = None;
    for i in candidates {
        if best.is_none_or(|b| sim[i] > sim[b]) {
            best = Some(i);
        }
    }
    best.expect("at least one candidate")
}

/// SwC on validated input: `pts` are (lat, lon) degrees, `sim` finite, k ≥ 1.
fn swc_validated(pts: &[(f64, f64)], sim: &[f64], p: &SwcParams, test: &EpsTest) -> SwcResult {
    let k = pts.len();
    let labels = if k <= BRUTE_FORCE_MAX_K {
        let vecs: Vec<[f64; 3]> = pts.iter().map(|&(la, lo)| unit_vector(la, lo)).collect();
        let rad: Vec<[f64; 2]> = pts.iter().map(|&(la, lo)| radians(la, lo)).collect();
        dbscan_bruteforce(&vecs, &rad, None, p.min_samples as f64, test)
    } else {
        let flat: Vec<f64> = pts.iter().flat_map(|&(la, lo)| [la, lo]).collect();
        let view = ArrayView2::from_shape((k, 2), &flat).expect("k rows of 2");
        dbscan(view, p.eps_km, p.min_samples, None, p.radius_km).expect("validated input")
    };
    let n_clusters = labels.iter().copied().max().map_or(0, |m| (m + 1) as usize);
    let members: Vec<usize> = if n_clusters == 0 {
        vec![most_similar(sim, 0..k)]
    } else {
        let mut sizes = vec![0usize; n_clusters];
        for &l in labels.iter().filter(|&&l| l >= 0) {
            sizes[l as usize] += 1;
        }
        let largest = *sizes.iter().max().expect("clusters exist");
        let winner_point = most_similar(sim, (0..k).filter(|&i| labels[i] >= 0 && sizes[labels[i] as usize] == largest));
        let winner = labels[winner_point];
        (0..k).filter(|&i| labels[i] == winner).collect()
    };
    let (lat_deg, lon_deg) = if members.len() == 1 {
        pts[members[0]]
    } else {
        let mp: Vec<(f64, f64)> = members.iter().map(|&i| pts[i]).collect();
        let w: Option<Vec<f64>> =
            (p.weight_exponent != 0.0).then(|| members.iter().map(|&i| sim[i].powf(p.weight_exponent)).collect());
        centroid(&mp, w.as_deref()).unwrap_or_else(|| pts[most_similar(sim, members.iter().copied())])
    };
    SwcResult { lat_deg, lon_deg, members }
}

/// Search-within-Cell for one query: `latlon` `(k, 2)` degrees of the neighbours, `similarity`
/// `(k,)` their similarities to the query.
pub fn swc<T: Real>(latlon: ArrayView2<T>, similarity: ArrayView1<f64>, params: &SwcParams) -> GeoResult<SwcResult> {
    let k = check_latlon("latlon", &latlon)?;
    check_swc_params(params)?;
    if similarity.len() != k {
        return Err(GeoError::Mismatch {
            what: "len(similarity) must equal the number of neighbours in latlon".into(),
            left: similarity.len(),
            right: k,
        });
    }
    if k == 0 {
        return Err(GeoError::Empty { name: "latlon", hint: "Search-within-Cell needs at least one neighbour" });
    }
    check_similarity(similarity.iter().copied().enumerate(), params.weight_exponent)?;
    let pts: Vec<(f64, f64)> = latlon.outer_iter().map(|r| (r[0].to_f64(), r[1].to_f64())).collect();
    let sim: Vec<f64> = similarity.to_vec();
    let test = EpsTest::new(params.eps_km, params.radius_km);
    Ok(swc_validated(&pts, &sim, params, &test))
}

/// Results of [`swc_batch`]: estimates `(B,)` and membership masks `(B, k)`.
#[derive(Debug)]
pub struct SwcBatch {
    pub lat_deg: Vec<f64>,
    pub lon_deg: Vec<f64>,
    pub members: Array2<bool>,
}

/// Search-within-Cell for B queries at once: `latlon` `(B, k, 2)`, `similarity` `(B, k)`.
/// Queries run in parallel.
pub fn swc_batch<T: Real>(latlon: ArrayView3<T>, similarity: ArrayView2<f64>, params: &SwcParams) -> GeoResult<SwcBatch> {
    let (b, k, two) = latlon.dim();
    if two != 2 {
        return Err(GeoError::Shape {
            name: "latlon",
            expected: "(B, k, 2)".into(),
            got: crate::core::coords::shape_str(latlon.shape()),
        });
    }
    if similarity.dim() != (b, k) {
        return Err(GeoError::Shape {
            name: "similarity",
            expected: format!("(B, k) = ({b}, {k}) to match latlon"),
            got: crate::core::coords::shape_str(similarity.shape()),
        });
    }
    check_swc_params(params)?;
    if b > 0 && k == 0 {
        return Err(GeoError::Empty {
            name: "latlon",
            hint: "Search-within-Cell needs at least one neighbour per query (k >= 1)",
        });
    }
    for (q, rows) in latlon.outer_iter().enumerate() {
        for (j, r) in rows.outer_iter().enumerate() {
            check_point("latlon.reshape(-1, 2)", q * k + j, r[0].to_f64(), r[1].to_f64())?;
        }
    }
    for (q, row) in similarity.outer_iter().enumerate() {
        check_similarity(row.iter().enumerate().map(|(j, &s)| (q * k + j, s)), params.weight_exponent).map_err(|e| match e {
            GeoError::NonFinite { row, value, .. } => GeoError::NonFinite { name: "similarity.reshape(-1)", row, value },
            other => other,
        })?;
    }
    let test = EpsTest::new(params.eps_km, params.radius_km);
    let mut lat = vec![0.0f64; b];
    let mut lon = vec![0.0f64; b];
    let mut members = Array2::<bool>::from_elem((b, k), false);
    let chunk = parallel::chunk_len(b, 16);
    parallel::install(|| {
        lat.par_chunks_mut(chunk)
            .zip(lon.par_chunks_mut(chunk))
            .zip(members.axis_chunks_iter_mut(Axis(0), chunk).into_par_iter())
            .zip(latlon.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .zip(similarity.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .for_each(|((((la, lo), mut mem), ll), ss)| {
                let mut pts = Vec::with_capacity(k);
                let mut sim = Vec::with_capacity(k);
                for q in 0..la.len() {
                    pts.clear();
                    pts.extend(ll.index_axis(Axis(0), q).outer_iter().map(|r| (r[0].to_f64(), r[1].to_f64())));
                    sim.clear();
                    sim.extend(ss.index_axis(Axis(0), q).iter().copied());
                    let r = swc_validated(&pts, &sim, params, &test);
                    la[q] = r.lat_deg;
                    lo[q] = r.lon_deg;
                    for &i in &r.members {
                        mem[[q, i]] = true;
                    }
                }
            });
    });
    Ok(SwcBatch { lat_deg: lat, lon_deg: lon, members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geo::sphere::SPHERE_RADIUS_6371_KM;
    use ndarray::{array, Array3};

    fn params(eps_km: f64, min_samples: i64, a: f64) -> SwcParams {
        SwcParams { eps_km, min_samples, weight_exponent: a, radius_km: SPHERE_RADIUS_6371_KM }
    }

    #[test]
    fn largest_cluster_and_its_centroid() {
        // Three neighbours near Paris, two near Rome, one in Tokyo.
        let ll = array![[41.90, 12.49], [48.856, 2.352], [35.68, 139.69], [48.857, 2.353], [41.901, 12.491], [48.858, 2.351]];
        let sim = array![0.99, 0.5, 0.98, 0.4, 0.9, 0.3];
        let r = swc(ll.view(), sim.view(), &params(1.0, 1, 0.0)).unwrap();
        assert_eq!(r.members, vec![1, 3, 5]);
        let (clat, clon) = centroid(&[(48.856, 2.352), (48.857, 2.353), (48.858, 2.351)], None).unwrap();
        assert_eq!((r.lat_deg, r.lon_deg), (clat, clon));
        // Weighted: pulled toward the most similar member.
        let rw = swc(ll.view(), sim.view(), &params(1.0, 1, 4.0)).unwrap();
        assert!(rw.lat_deg < r.lat_deg);
    }

    #[test]
    fn ties_go_to_the_most_similar_and_all_noise_to_the_best_point() {
        let ll = array![[10.0, 10.0], [10.001, 10.0], [20.0, 20.0], [20.001, 20.0]];
        let sim = array![0.5, 0.6, 0.7, 0.1];
        let r = swc(ll.view(), sim.view(), &params(1.0, 1, 0.0)).unwrap();
        assert_eq!(r.members, vec![2, 3]);
        // min_samples = 3: every point is noise → the most similar point itself.
        let r = swc(ll.view(), sim.view(), &params(1.0, 3, 0.0)).unwrap();
        assert_eq!(r.members, vec![2]);
        assert_eq!((r.lat_deg, r.lon_deg), (20.0, 20.0));
    }

    #[test]
    fn cancelling_members_fall_back_to_the_most_similar() {
        // Two antipodal points with ε larger than half the circumference: one cluster whose
        // mean vector vanishes.
        let ll = array![[0.0, 0.0], [0.0, 180.0]];
        let sim = array![0.2, 0.8];
        let r = swc(ll.view(), sim.view(), &params(30_000.0, 1, 0.0)).unwrap();
        assert_eq!(r.members, vec![0, 1]);
        assert_eq!((r.lat_deg, r.lon_deg), (0.0, 180.0));
    }

    #[test]
    fn errors() {
        let ll = array![[0.0, 0.0], [0.0, 0.001]];
        let p = params(1.0, 1, 0.5);
        assert!(matches!(swc(ll.view(), array![-0.1, 0.5].view(), &p), Err(GeoError::Parameter { name: "weight_exponent", .. })));
        assert!(swc(ll.view(), array![-0.1, 0.5].view(), &params(1.0, 1, 2.0)).is_ok());
        assert!(matches!(swc(ll.view(), array![0.0, 0.5].view(), &params(1.0, 1, -1.0)), Err(GeoError::Parameter { .. })));
        assert!(matches!(swc(ll.view(), array![f64::NAN, 0.5].view(), &p), Err(GeoError::NonFinite { .. })));
        assert!(matches!(swc(ll.view(), array![0.5].view(), &p), Err(GeoError::Mismatch { .. })));
        let empty = Array2::<f64>::zeros((0, 2));
        assert!(matches!(swc(empty.view(), ArrayView1::from(&[] as &[f64]), &p), Err(GeoError::Empty { .. })));
        assert!(matches!(swc(ll.view(), array![0.1, 0.5].view(), &params(0.0, 1, 0.0)), Err(GeoError::Parameter { .. })));
    }

    #[test]
    fn batch_equals_single_queries() {
        let b = 37;
        let k = 6;
        let mut ll = Array3::<f64>::zeros((b, k, 2));
        let mut sim = Array2::<f64>::zeros((b, k));
        for q in 0..b {
            for j in 0..k {
                let f = (q * 7 + j * 13) as f64;
                ll[[q, j, 0]] = 40.0 + (f * 0.37).sin() * 0.01 * (1 + j % 3) as f64;
                ll[[q, j, 1]] = -3.0 + (f * 0.11).cos() * 0.02;
                sim[[q, j]] = 0.5 + 0.4 * (f * 0.91).sin();
            }
        }
        let p = params(0.8, 2, 1.0);
        let out = swc_batch(ll.view(), sim.view(), &p).unwrap();
        for q in 0..b {
            let one = swc(ll.index_axis(Axis(0), q), sim.row(q), &p).unwrap();
            assert_eq!(out.lat_deg[q], one.lat_deg);
            assert_eq!(out.lon_deg[q], one.lon_deg);
            let mask: Vec<usize> = (0..k).filter(|&j| out.members[[q, j]]).collect();
            assert_eq!(mask, one.members);
        }
        let bad = Array3::<f64>::zeros((2, 3, 3));
        assert!(matches!(swc_batch(bad.view(), Array2::zeros((2, 3)).view(), &p), Err(GeoError::Shape { .. })));
        assert!(matches!(swc_batch(ll.view(), Array2::zeros((b, k + 1)).view(), &p), Err(GeoError::Shape { .. })));
        let mut ll2 = ll.clone();
        ll2[[3, 2, 0]] = 95.0;
        assert_eq!(
            swc_batch(ll2.view(), sim.view(), &p).unwrap_err(),
            GeoError::Latitude { name: "latlon.reshape(-1, 2)", row: 3 * k + 2, value: 95.0 }
        );
        let empty = swc_batch(Array3::<f64>::zeros((0, 4, 2)).view(), Array2::zeros((0, 4)).view(), &p).unwrap();
        assert!(empty.lat_deg.is_empty() && empty.members.dim() == (0, 4));
    }
}
