//! The brute-force engine: textbook DBSCAN by explicit neighbourhoods, O(n²) time and memory.
//!
//! Every pair is tested with the shared predicate ([`EpsTest`]); a point is core when the total
//! weight of its neighbourhood (itself included) reaches `min_samples`; clusters grow depth-first
//! from the unlabelled core points in index order, as `sklearn.cluster.DBSCAN` does
//! (`sklearn/cluster/_dbscan_inner.pyx`, `dbscan_inner`): a border point joins the first cluster
//! that reaches it, which is the lowest-numbered one. Used for the handful of points of one
//! Search-within-Cell query (k ≈ 10) and as the oracle of the other engines' tests. No constants.

use super::eps::EpsTest;
use crate::core::geo::sphere::chord2;

/// Textbook DBSCAN by explicit neighbourhoods and sklearn's depth-first labelling, O(n²): for
/// the handful of points of one Search-within-Cell query, and as the oracle of the tests.
/// `pts` are unit vectors, `rad` the same points' (lat, lon) in radians.
pub fn dbscan_bruteforce(
    pts: &[[f64; 3]],
    rad: &[[f64; 2]],
    weights: Option<&[f64]>,
    min_samples: f64,
    test: &EpsTest,
) -> Vec<i64> {
    let n = pts.len();
    let neighbourhoods: Vec<Vec<usize>> = (0..n)
        .map(|i| (0..n).filter(|&j| test.all || test.within(chord2(&pts[i], &pts[j]), || (rad[i], rad[j]))).collect())
        .collect();
    let core: Vec<bool> = neighbourhoods
        .iter()
        .map(|nb| {
            let total: f64 = match weights {
                Some(w) => nb.iter().map(|&j| w[j]).sum(),
                None => nb.len() as f64,
            };
            total >= min_samples
        })
        .collect();
    let mut labels = vec![-1i64; n];
    let mut label = 0i64;
    let mut stack = Vec::new();
    for start in 0..n {
        if labels[start] != -1 || !core[start] {
            continue;
        }
        let mut i = start;
        loop {
            if labels[i] == -1 {
                labels[i] = label;
                if core[i] {
                    stack.extend(neighbourhoods[i].iter().copied().filter(|&v| labels[v] == -1));
                }
            }
            match stack.pop() {
                Some(v) => i = v,
                None => break,
            }
        }
        label += 1;
    }
    labels
}
