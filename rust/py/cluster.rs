//! Bindings for `rust/core/{dbscan,swc,lattice,nearest}.rs`: convert, release the GIL, call the
//! core, return numpy.

use ndarray::{ArrayView3, Ix1, Ix2};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray3, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::convert::{arg, Float2};
use super::errors::{InputError, IntoPyResult, ShapeError};
use crate::core::coords::shape_str;
use crate::core::dbscan as db;
use crate::core::lattice;
use crate::core::nearest;
use crate::core::swc as sw;
use crate::with_view;

/// Borrow `obj` as a float64 array of `ndim` dimensions (any layout); anything else is converted
/// once with `numpy.asarray(obj, dtype=float64)`.
fn f64_array<'py>(obj: &Bound<'py, PyAny>, name: &str, ndim: usize, shape: &str) -> PyResult<PyReadonlyArrayDyn<'py, f64>> {
    let arr = match obj.extract::<PyReadonlyArrayDyn<'py, f64>>() {
        Ok(a) => a,
        Err(_) => {
            let np = obj.py().import("numpy")?;
            let converted = np.call_method1("asarray", (obj, np.getattr("float64")?)).map_err(|e| {
                InputError::new_err(format!("{name} must be a numeric array of shape {shape}; numpy could not convert it: {e}"))
            })?;
            converted.cast::<PyArrayDyn<f64>>()?.readonly()
        }
    };
    if arr.ndim() != ndim {
        return Err(ShapeError::new_err(format!("{name} must have shape {shape}, got {}", shape_str(arr.shape()))));
    }
    Ok(arr)
}

/// A 3-D float input borrowed from Python (float64 or float32 zero-copy).
enum Float3<'py> {
    F64(PyReadonlyArray3<'py, f64>),
    F32(PyReadonlyArray3<'py, f32>),
}

impl<'py> Float3<'py> {
    fn extract(obj: &Bound<'py, PyAny>, name: &str, shape: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f64>>() {
            return Ok(Float3::F64(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f32>>() {
            return Ok(Float3::F32(a));
        }
        let arr = f64_array(obj, name, 3, shape)?;
        let a = arr.as_array().into_dimensionality::<ndarray::Ix3>().expect("ndim checked").to_owned();
        Ok(Float3::F64(a.into_pyarray(obj.py()).readonly()))
    }
}

enum View3<'a> {
    F64(ArrayView3<'a, f64>),
    F32(ArrayView3<'a, f32>),
}

/// DBSCAN on the sphere (haversine distance) with scikit-learn's semantics.
///
/// `latlon` is `(N, 2)` degrees, latitude first (float64/float32, any layout). A point's
/// neighbours are the points within `eps_km` (inclusive) on a sphere of `radius_km`; it is core
/// when their count (itself included), or their total `sample_weight`, reaches `min_samples`.
/// Returns `(N,)` int64 labels, -1 for noise; clusters are numbered in order of their
/// lowest-index core point and a border point joins the lowest-numbered cluster that reaches
/// it, so the labels equal `sklearn.cluster.DBSCAN(eps=eps_km / radius_km,
/// min_samples=min_samples, metric="haversine").fit(np.radians(latlon)).labels_`, including
/// pairs at exactly `eps_km`. Exact, O(N) memory, parallel; the GIL is released.
#[pyfunction]
#[pyo3(signature = (latlon, eps_km, min_samples = 1, *, sample_weight = None, radius_km = 6371.0088))]
fn dbscan<'py>(
    py: Python<'py>,
    latlon: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::eps_km)] eps_km: f64,
    #[pyo3(from_py_with = arg::min_samples)] min_samples: i64,
    sample_weight: Option<&Bound<'py, PyAny>>,
    #[pyo3(from_py_with = arg::radius_km)] radius_km: f64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let input = Float2::extract(latlon, "latlon")?;
    let weights = match sample_weight {
        Some(w) if !w.is_none() => Some(f64_array(w, "sample_weight", 1, "(N,)")?),
        _ => None,
    };
    let view = input.view();
    let wview = weights.as_ref().map(|w| w.as_array().into_dimensionality::<Ix1>().expect("ndim checked"));
    let labels = py.detach(|| with_view!(view, |a| db::dbscan(a, eps_km, min_samples, wview, radius_km))).py_err()?;
    Ok(labels.into_pyarray(py))
}

/// Search-within-Cell (Müller-Budack et al.) for one query.
///
/// `latlon` `(k, 2)` are the coordinates of the query's k retrieved neighbours and
/// `similarity` `(k,)` their similarities. DBSCAN (`eps_km`, `min_samples`, sphere of
/// `radius_km`, 6371 km as in visloc) groups the neighbours; the largest cluster wins (ties: the
/// one holding the most similar neighbour; all noise: the most similar neighbour alone) and the
/// estimate is the re-normalised mean of its members' unit vectors weighted by
/// `similarity ** weight_exponent` (0: equal weights). A one-member cluster returns that member's
/// coordinates; a vanishing mean (members that cancel) returns the most similar member's.
/// Returns `(lat, lon, members)` with `members` the sorted int64 indices of the winning cluster.
#[pyfunction]
#[pyo3(signature = (latlon, similarity, *, eps_km = 1.0, min_samples = 1, weight_exponent = 0.0, radius_km = 6371.0))]
#[allow(clippy::too_many_arguments)]
fn swc<'py>(
    py: Python<'py>,
    latlon: &Bound<'py, PyAny>,
    similarity: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::eps_km)] eps_km: f64,
    #[pyo3(from_py_with = arg::min_samples)] min_samples: i64,
    #[pyo3(from_py_with = arg::weight_exponent)] weight_exponent: f64,
    #[pyo3(from_py_with = arg::radius_km)] radius_km: f64,
) -> PyResult<(f64, f64, Bound<'py, PyArray1<i64>>)> {
    let input = Float2::extract(latlon, "latlon")?;
    let sim = f64_array(similarity, "similarity", 1, "(k,)")?;
    let view = input.view();
    let sview = sim.as_array().into_dimensionality::<Ix1>().expect("ndim checked");
    let params = sw::SwcParams { eps_km, min_samples, weight_exponent, radius_km };
    let r = py.detach(|| with_view!(view, |a| sw::swc(a, sview, &params))).py_err()?;
    let members: Vec<i64> = r.members.iter().map(|&i| i as i64).collect();
    Ok((r.lat_deg, r.lon_deg, members.into_pyarray(py)))
}

/// Search-within-Cell for B queries in one call (parallel over queries, GIL released).
///
/// `latlon` is `(B, k, 2)`, `similarity` `(B, k)`; keywords as in `swc`. Returns
/// `(lat (B,), lon (B,), members (B, k) bool)` where `members[b, j]` marks the neighbours of
/// query b in its winning cluster.
#[pyfunction]
#[pyo3(signature = (latlon, similarity, *, eps_km = 1.0, min_samples = 1, weight_exponent = 0.0, radius_km = 6371.0))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn swc_batch<'py>(
    py: Python<'py>,
    latlon: &Bound<'py, PyAny>,
    similarity: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arg::eps_km)] eps_km: f64,
    #[pyo3(from_py_with = arg::min_samples)] min_samples: i64,
    #[pyo3(from_py_with = arg::weight_exponent)] weight_exponent: f64,
    #[pyo3(from_py_with = arg::radius_km)] radius_km: f64,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<bool>>)> {
    let input = Float3::extract(latlon, "latlon", "(B, k, 2)")?;
    let sim = f64_array(similarity, "similarity", 2, "(B, k)")?;
    let view = match &input {
        Float3::F64(a) => View3::F64(a.as_array()),
        Float3::F32(a) => View3::F32(a.as_array()),
    };
    let sview = sim.as_array().into_dimensionality::<Ix2>().expect("ndim checked");
    let params = sw::SwcParams { eps_km, min_samples, weight_exponent, radius_km };
    let out = py
        .detach(|| match view {
            View3::F64(a) => sw::swc_batch(a, sview, &params),
            View3::F32(a) => sw::swc_batch(a, sview, &params),
        })
        .py_err()?;
    Ok((out.lat_deg.into_pyarray(py), out.lon_deg.into_pyarray(py), out.members.into_pyarray(py)))
}

/// Points of a spherical Fibonacci lattice whose nearest-neighbour spacing is about `spacing_km`.
///
/// Point i of N = round(4πR² / (1.1 spacing²)) (R = 6371.0088 km) has z = 1 - (2i + 1)/N,
/// lat = asin(z) and lon = i × the golden angle (137.5078°) wrapped to [-180, 180); the median
/// nearest-neighbour distance is within a few percent of `spacing_km`. With
/// `bbox = (lat_min, lon_min, lat_max, lon_max)` only the points inside (edges included) are
/// generated, directly; `lon_min > lon_max` crosses the antimeridian. Returns `(M, 2)` float64
/// lat/lon degrees in index order (north to south). More than 50 million points raise
/// `TooLargeError`: pass a bbox or a larger spacing.
#[pyfunction]
#[pyo3(signature = (spacing_km, bbox = None))]
fn fibonacci_lattice<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arg::spacing_km)] spacing_km: f64,
    bbox: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let bbox: Option<[f64; 4]> = match bbox {
        Some(b) if !b.is_none() => {
            let v: Vec<f64> = b
                .extract()
                .map_err(|_| InputError::new_err("bbox must be a sequence of 4 numbers (lat_min, lon_min, lat_max, lon_max)"))?;
            let arr: [f64; 4] = v.as_slice().try_into().map_err(|_| {
                ShapeError::new_err(format!("bbox must have 4 values (lat_min, lon_min, lat_max, lon_max), got {}", v.len()))
            })?;
            Some(arr)
        }
        _ => None,
    };
    let out = py.detach(|| lattice::fibonacci_lattice(spacing_km, bbox)).py_err()?;
    Ok(out.into_pyarray(py))
}

/// Exact k-nearest-neighbour index over points on the sphere, e.g. for offline place names.
///
/// `PointIndex(latlon, *, radius_km=6371.0088)` indexes `(N, 2)` lat/lon degrees (built once,
/// in parallel, GIL released). `query(latlon, k=1)` returns great-circle distances in km and
/// indices of the k nearest points of each query, ascending, ties to the lower index.
#[pyclass(frozen, name = "PointIndex", module = "geofast._geofast")]
struct PointIndex {
    inner: nearest::PointIndex,
}

#[pymethods]
impl PointIndex {
    #[new]
    #[pyo3(signature = (latlon, *, radius_km = 6371.0088))]
    fn new(py: Python<'_>, latlon: &Bound<'_, PyAny>, #[pyo3(from_py_with = arg::radius_km)] radius_km: f64) -> PyResult<Self> {
        let input = Float2::extract(latlon, "latlon")?;
        let view = input.view();
        let inner = py.detach(|| with_view!(view, |a| nearest::PointIndex::new(a, radius_km))).py_err()?;
        Ok(PointIndex { inner })
    }

    /// The k nearest indexed points of each `(Q, 2)` query point.
    ///
    /// Returns `(dist_km (Q, k) float64, idx (Q, k) int64)`, ascending by distance, ties to the
    /// lower index. Queries run in parallel with the GIL released. 1 <= k <= len(index).
    #[pyo3(signature = (latlon, k = 1))]
    #[allow(clippy::type_complexity)]
    fn query<'py>(
        &self,
        py: Python<'py>,
        latlon: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = arg::k)] k: i64,
    ) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<i64>>)> {
        let input = Float2::extract(latlon, "latlon")?;
        let view = input.view();
        let (d, i) = py.detach(|| with_view!(view, |a| self.inner.query(a, k))).py_err()?;
        Ok((d.into_pyarray(py), i.into_pyarray(py)))
    }

    /// Radius (km) of the sphere distances are reported on.
    #[getter]
    fn radius_km(&self) -> f64 {
        self.inner.radius_km()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!("PointIndex(<{} points>, radius_km={})", self.inner.len(), self.inner.radius_km())
    }
}

// Literal defaults in the signatures (pyo3 renders constants as `...` in text signatures, which
// the stubs cannot match); they must equal the core's radius constants.
const _: () = assert!(crate::core::geo::sphere::MEAN_EARTH_RADIUS_KM == 6371.0088);
const _: () = assert!(crate::core::geo::sphere::SPHERE_RADIUS_6371_KM == 6371.0);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dbscan, m)?)?;
    m.add_function(wrap_pyfunction!(swc, m)?)?;
    m.add_function(wrap_pyfunction!(swc_batch, m)?)?;
    m.add_function(wrap_pyfunction!(fibonacci_lattice, m)?)?;
    m.add_class::<PointIndex>()?;
    Ok(())
}
