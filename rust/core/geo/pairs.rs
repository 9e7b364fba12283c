//! Elementwise kernels over pairs of coordinate rows, with broadcasting.
//!
//! `a` (N, 2) and `b` (N, 2) give N pairs (`a[i]`, `b[i]`); either side may instead be a single point
//! (1, 2) that pairs with every row of the other. Any other pair of lengths is a shape error
//! naming both shapes. N = 0 is valid and gives an empty result.
//!
//! Rows are gathered tile by tile into contiguous `f64` latitude/longitude buffers (any input
//! layout, float32 or float64) and validated while they are read, with the same checks and
//! messages as [`check_latlon`]: the error reported is the
//! one `check_latlon(a)` then `check_latlon(b)` would report (a's first bad row, else b's).
//! Tiles are spread over geofast's thread pool.

use std::any::TypeId;
use std::mem::MaybeUninit;

use ndarray::{s, Array1, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::core::buffer::{assume_init, uninit_vec, write_all};
use crate::core::coords::{check_cols, check_latlon, check_point, shape_str, Real};
use crate::core::error::{GeoError, GeoResult};
use crate::core::parallel;
use crate::core::simd::Isa;
use crate::simd_kernel;

/// Rows per gathered tile: five 2 KiB buffers, well inside L1.
pub const TILE: usize = 256;

/// Upper bound on pairs per parallel task (unless `min_chunk` is larger).
const MAX_PAIRS_PER_TASK: usize = 65_536;

/// Number of pairs of `a` (na rows) and `b` (nb rows): equal lengths, or one side a single point.
pub fn pair_count(na: usize, nb: usize) -> GeoResult<usize> {
    if na == nb || nb == 1 {
        Ok(na)
    } else if na == 1 {
        Ok(nb)
    } else {
        Err(GeoError::Shape {
            name: "b",
            expected: format!("{} to match a, or (1, 2) to broadcast one point", shape_str(&[na, 2])),
            got: shape_str(&[nb, 2]),
        })
    }
}

simd_kernel! {
    /// Split row-major (lat, lon) pairs into two arrays; true when every pair is a valid
    /// coordinate (|lat| ≤ 90, |lon| ≤ 180, no NaN: NaN fails both comparisons).
    fn deinterleave_f64<M>(rows: &[f64], lat: &mut [f64], lon: &mut [f64]) -> bool {
        let n = lat.len();
        let (rows, lon) = (&rows[..2 * n], &mut lon[..n]);
        let mut ok = true;
        for k in 0..n {
            let (la, lo) = (rows[2 * k], rows[2 * k + 1]);
            lat[k] = la;
            lon[k] = lo;
            ok &= (la.abs() <= 90.0) & (lo.abs() <= 180.0);
        }
        ok
    }
}

/// Where one side's rows come from.
enum Rows<'a, T> {
    /// A broadcast point (already validated).
    One(f64, f64),
    /// Row-major `(N, 2)`: lat, lon interleaved.
    Interleaved(&'a [T]),
    /// Any other layout: the two columns as strided views.
    Strided(ArrayView1<'a, T>, ArrayView1<'a, T>),
}

impl<'a, T: Real> Rows<'a, T> {
    fn new(v: &'a ArrayView2<'a, T>, one: bool) -> Self {
        if one {
            Rows::One(v[[0, 0]].to_f64(), v[[0, 1]].to_f64())
        } else if let Some(flat) = v.as_slice() {
            Rows::Interleaved(flat)
        } else {
            Rows::Strided(v.column(0), v.column(1))
        }
    }

    /// Copy rows `i0..i0 + lat.len()` into `lat`, `lon`; record the first invalid row in `first`.
    #[inline]
    fn gather(&self, isa: Isa, name: &'static str, i0: usize, lat: &mut [f64], lon: &mut [f64], first: &mut Option<GeoError>) {
        let len = lat.len();
        let lon = &mut lon[..len];
        // `ok` folds the checks without branches; NaN fails both comparisons.
        let mut ok = true;
        match self {
            Rows::One(la, lo) => {
                lat.fill(*la);
                lon.fill(*lo);
                return;
            }
            Rows::Interleaved(flat) if TypeId::of::<T>() == TypeId::of::<f64>() => {
                let rows = &flat[2 * i0..2 * (i0 + len)];
                // SAFETY: T is f64 (same TypeId), so the slice is a slice of f64.
                let rows = unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const f64, rows.len()) };
                ok = deinterleave_f64(isa, rows, lat, lon);
            }
            Rows::Interleaved(flat) => {
                let rows = &flat[2 * i0..2 * (i0 + len)];
                for (k, p) in rows.chunks_exact(2).enumerate() {
                    let (la, lo) = (p[0].to_f64(), p[1].to_f64());
                    lat[k] = la;
                    lon[k] = lo;
                    ok &= (la.abs() <= 90.0) & (lo.abs() <= 180.0);
                }
            }
            Rows::Strided(lat_col, lon_col) => {
                let rows = lat_col.slice(s![i0..i0 + len]).into_iter().zip(lon_col.slice(s![i0..i0 + len]));
                for (k, (la, lo)) in rows.enumerate() {
                    let (la, lo) = (la.to_f64(), lo.to_f64());
                    lat[k] = la;
                    lon[k] = lo;
                    ok &= (la.abs() <= 90.0) & (lo.abs() <= 180.0);
                }
            }
        }
        if !ok && first.is_none() {
            *first = (0..len).find_map(|k| check_point(name, i0 + k, lat[k], lon[k]).err());
        }
    }
}

/// Apply `kernel(lat1, lon1, lat2, lon2, out)` (degrees, equal-length tiles) to every pair of
/// `a` and `b` and return the N results. `min_chunk` is the smallest number of pairs worth a
/// parallel task (large for cheap kernels, small for expensive ones).
pub fn map_pairs<A, B, F>(isa: Isa, a: &ArrayView2<A>, b: &ArrayView2<B>, min_chunk: usize, kernel: F) -> GeoResult<Array1<f64>>
where
    A: Real,
    B: Real,
    F: Fn(&[f64], &[f64], &[f64], &[f64], &mut [f64]) + Sync,
{
    let na = check_cols("a", a, 2)?;
    let nb = check_cols("b", b, 2)?;
    let n = pair_count(na, nb)?;
    // A broadcast single point is validated once, even when there are no pairs.
    let a_one = na == 1 && n != 1;
    let b_one = nb == 1 && n != 1;
    if a_one {
        check_latlon("a", a)?;
    }
    if b_one {
        if let Err(e) = check_latlon("b", b) {
            check_latlon("a", a)?;
            return Err(e);
        }
    }
    let mut out = uninit_vec::<f64>(n, "distance array")?;
    if n == 0 {
        return Ok(Array1::from_vec(Vec::new()));
    }
    // Several tasks per thread, none longer than ~64K pairs, so a thread that the OS pauses on a
    // busy machine leaves little work behind for the others to wait on.
    let chunk = parallel::chunk_len(n, min_chunk).min(MAX_PAIRS_PER_TASK.max(min_chunk));
    let (rows_a, rows_b) = (Rows::new(a, a_one), Rows::new(b, b_one));

    let errors: Vec<(Option<GeoError>, Option<GeoError>)> = parallel::install(|| {
        out.par_chunks_mut(chunk)
            .enumerate()
            .map(|(c, out_chunk): (usize, &mut [MaybeUninit<f64>])| {
                let mut first_a = None;
                let mut first_b = None;
                let mut lat1 = [0.0f64; TILE];
                let mut lon1 = [0.0f64; TILE];
                let mut lat2 = [0.0f64; TILE];
                let mut lon2 = [0.0f64; TILE];
                let mut res = [0.0f64; TILE];
                for (t, out_tile) in out_chunk.chunks_mut(TILE).enumerate() {
                    let i0 = c * chunk + t * TILE;
                    let len = out_tile.len();
                    rows_a.gather(isa, "a", i0, &mut lat1[..len], &mut lon1, &mut first_a);
                    rows_b.gather(isa, "b", i0, &mut lat2[..len], &mut lon2, &mut first_b);
                    kernel(&lat1[..len], &lon1[..len], &lat2[..len], &lon2[..len], &mut res[..len]);
                    write_all(out_tile, &res[..len]);
                }
                (first_a, first_b)
            })
            .collect()
    });
    let mut first_b = None;
    for (ea, eb) in errors {
        if let Some(e) = ea {
            return Err(e);
        }
        if first_b.is_none() {
            first_b = eb;
        }
    }
    if let Some(e) = first_b {
        return Err(e);
    }
    // SAFETY: the chunks partition `out` and the tiles partition each chunk; every tile was
    // written by `write_all` above.
    Ok(Array1::from_vec(unsafe { assume_init(out) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn sum_kernel(lat1: &[f64], lon1: &[f64], lat2: &[f64], lon2: &[f64], out: &mut [f64]) {
        for i in 0..out.len() {
            out[i] = lat1[i] + 10.0 * lon1[i] + 100.0 * lat2[i] + 1000.0 * lon2[i];
        }
    }

    #[test]
    fn broadcasting_and_shapes() {
        assert_eq!(pair_count(5, 5).unwrap(), 5);
        assert_eq!(pair_count(1, 7).unwrap(), 7);
        assert_eq!(pair_count(7, 1).unwrap(), 7);
        assert_eq!(pair_count(0, 1).unwrap(), 0);
        assert_eq!(pair_count(0, 0).unwrap(), 0);
        assert_eq!(
            pair_count(5, 3).unwrap_err().to_string(),
            "b must have shape (5, 2) to match a, or (1, 2) to broadcast one point, got (3, 2)"
        );
        assert!(pair_count(0, 3).is_err());
    }

    #[test]
    fn map_pairs_gathers_every_layout_and_broadcasts() {
        let n = 3 * TILE + 17;
        let a = ndarray::Array2::from_shape_fn((n, 2), |(i, j)| if j == 0 { (i % 90) as f64 } else { (i % 180) as f64 * 0.5 });
        let b = ndarray::Array2::from_shape_fn((n, 2), |(i, j)| if j == 0 { -((i % 80) as f64) } else { -((i % 170) as f64) });
        let got = map_pairs(Isa::detect(), &a.view(), &b.view(), 64, sum_kernel).unwrap();
        for i in 0..n {
            let want = a[[i, 0]] + 10.0 * a[[i, 1]] + 100.0 * b[[i, 0]] + 1000.0 * b[[i, 1]];
            assert_eq!(got[i], want);
        }
        // Fortran-order and float32 views read the same values.
        let bt = b.t().to_owned();
        let got_t = map_pairs(Isa::detect(), &a.view(), &bt.t(), 64, sum_kernel).unwrap();
        assert_eq!(got, got_t);
        let a32 = a.mapv(|v| v as f32);
        assert_eq!(map_pairs(Isa::detect(), &a32.view(), &b.view(), 64, sum_kernel).unwrap(), got);
        // Broadcast one point on either side.
        let p = array![[1.0, 2.0]];
        let left = map_pairs(Isa::detect(), &p.view(), &b.view(), 64, sum_kernel).unwrap();
        let right = map_pairs(Isa::detect(), &b.view(), &p.view(), 64, sum_kernel).unwrap();
        for i in 0..n {
            assert_eq!(left[i], 1.0 + 20.0 + 100.0 * b[[i, 0]] + 1000.0 * b[[i, 1]]);
            assert_eq!(right[i], b[[i, 0]] + 10.0 * b[[i, 1]] + 100.0 + 2000.0);
        }
        let empty = ndarray::Array2::<f64>::zeros((0, 2));
        assert_eq!(map_pairs(Isa::detect(), &empty.view(), &p.view(), 64, sum_kernel).unwrap().len(), 0);
    }

    #[test]
    fn errors_match_check_latlon_order() {
        let n = 2 * TILE + 5;
        let mut a = ndarray::Array2::<f64>::zeros((n, 2));
        let mut b = ndarray::Array2::<f64>::zeros((n, 2));
        b[[3, 0]] = 95.0;
        a[[TILE + 2, 1]] = 200.0;
        a[[TILE + 4, 0]] = f64::NAN;
        // a's first bad row wins even though b's bad row comes earlier.
        assert_eq!(
            map_pairs(Isa::detect(), &a.view(), &b.view(), 1, sum_kernel).unwrap_err(),
            GeoError::Longitude { name: "a", row: TILE + 2, value: 200.0 }
        );
        a[[TILE + 2, 1]] = 0.0;
        a[[TILE + 4, 0]] = 0.0;
        assert_eq!(
            map_pairs(Isa::detect(), &a.view(), &b.view(), 1, sum_kernel).unwrap_err(),
            GeoError::Latitude { name: "b", row: 3, value: 95.0 }
        );
        // A bad broadcast point is reported even with no pairs.
        let bad = array![[0.0, 181.0]];
        let empty = ndarray::Array2::<f64>::zeros((0, 2));
        assert!(matches!(
            map_pairs(Isa::detect(), &empty.view(), &bad.view(), 1, sum_kernel),
            Err(GeoError::Longitude { name: "b", row: 0, .. })
        ));
        assert!(matches!(
            map_pairs(Isa::detect(), &bad.view(), &b.view(), 1, sum_kernel),
            Err(GeoError::Longitude { name: "a", row: 0, .. })
        ));
        // ... but after a's own errors.
        let mut a2 = ndarray::Array2::<f64>::zeros((4, 2));
        a2[[2, 0]] = -91.0;
        assert!(matches!(
            map_pairs(Isa::detect(), &a2.view(), &bad.view(), 1, sum_kernel),
            Err(GeoError::Latitude { name: "a", row: 2, .. })
        ));
        let wide = ndarray::Array2::<f64>::zeros((2, 3));
        assert!(matches!(
            map_pairs(Isa::detect(), &wide.view(), &b.view(), 1, sum_kernel),
            Err(GeoError::Shape { name: "a", .. })
        ));
    }
}
