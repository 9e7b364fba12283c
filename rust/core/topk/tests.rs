//! Tests of the top-k search against brute-force references.
#![allow(clippy::needless_range_loop)]

use ndarray::{Array2, ArrayView2};

use super::kernels::{self, scalar, F16Rows, F32Rows, I8Rows};
use super::scan::PackedF32;
use super::*;
use crate::core::error::GeoError;
use crate::core::simd::{Isa, Level};

/// Deterministic pseudo-random numbers (PCG-style LCG + xorshift).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = self.0;
        (x ^ (x >> 33)).wrapping_mul(0xff51afd7ed558ccd) ^ (x >> 29)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut r = Rng(seed);
    Array2::from_shape_fn((n, d), |_| r.normal() as f32)
}

fn normalized(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut a = random(n, d, seed);
    for mut row in a.rows_mut() {
        let s = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
        row.mapv_inplace(|v| v / s);
    }
    a
}

fn pack(q: &Array2<f32>) -> PackedF32 {
    pack_queries(&q.view(), q.ncols()).unwrap().0
}

/// Brute force with canonical scalar scores: indices sorted by (score desc, index asc).
fn brute(q: &Array2<f32>, x: &Array2<f32>, k: usize) -> (Array2<f32>, Array2<i64>) {
    let p = pack(q);
    let (b, n) = (q.nrows(), x.nrows());
    let mut scores = Array2::zeros((b, k));
    let mut idx = Array2::zeros((b, k));
    for i in 0..b {
        let mut s: Vec<(f32, usize)> = (0..n).map(|r| (scalar::dot_f32(p.row(i), x.row(r).as_slice().unwrap()), r)).collect();
        s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        for j in 0..k {
            scores[[i, j]] = s[j].0;
            idx[[i, j]] = s[j].1 as i64;
        }
    }
    (scores, idx)
}

fn same_bits(a: &Array2<f32>, b: &Array2<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn simd_levels_give_identical_bits() {
    let isas = Isa::all_available();
    assert!(isas.contains(&Isa::capped(Level::Portable)));
    for &d in &[1usize, 7, 15, 16, 17, 33, 100, 512, 768] {
        let x = random(23, d, d as u64);
        let q = random(9, d, 100 + d as u64);
        let p = pack(&q);
        let xh: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let rows = F32Rows::new(x.as_slice().unwrap(), 23, d, d);
        let hrows = F16Rows::new(&xh, 23, d, d);
        for nq in [1usize, 2, 3, 5, 9] {
            let mut reference = vec![0f32; nq * 23];
            let mut href = vec![0f32; nq * 23];
            kernels::score_f32(Isa::capped(Level::Portable), &p.data, nq, p.dp, &rows, 0, 23, &mut reference, 23);
            kernels::score_f16(Isa::capped(Level::Portable), &p.data, nq, p.dp, &hrows, 0, 23, &mut href, 23);
            for &isa in &isas {
                let mut out = vec![0f32; nq * 23];
                kernels::score_f32(isa, &p.data, nq, p.dp, &rows, 0, 23, &mut out, 23);
                assert!(out.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()), "f32 {isa:?} d={d} nq={nq}");
                kernels::score_f16(isa, &p.data, nq, p.dp, &hrows, 0, 23, &mut out, 23);
                assert!(out.iter().zip(&href).all(|(a, b)| a.to_bits() == b.to_bits()), "f16 {isa:?} d={d} nq={nq}");
                // Sub-ranges and single dot products agree with the block.
                let mut part = vec![0f32; nq * 23];
                kernels::score_f32(isa, &p.data, nq, p.dp, &rows, 5, 19, &mut part, 23);
                for i in 0..nq {
                    for r in 5..19 {
                        assert_eq!(part[i * 23 + r - 5].to_bits(), reference[i * 23 + r].to_bits());
                    }
                    let one = kernels::dot_f32(isa, p.row(i), x.row(7).as_slice().unwrap());
                    assert_eq!(one.to_bits(), reference[i * 23 + 7].to_bits());
                }
            }
        }
    }
}

#[test]
fn half_conversions_agree_with_the_half_crate() {
    let mut r = Rng(5);
    let mut vals: Vec<f32> = (0..4000).map(|_| (r.normal() * 10f64.powi((r.next_u64() % 14) as i32 - 9)) as f32).collect();
    vals.extend([0.0, -0.0, 65504.0, 65519.0, 65520.0, -1e6, 6e-8, 3e-8, 1e-9, 1.0 + 1.0 / 2048.0, 2049.0, 2051.0]);
    let want: Vec<u16> = vals.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    for isa in Isa::all_available() {
        let mut got = vec![0u16; vals.len()];
        kernels::f32_to_f16(isa, &vals, &mut got);
        assert_eq!(got, want, "{isa:?}");
        let mut back = vec![0f32; vals.len()];
        kernels::f16_to_f32(isa, &got, &mut back);
        for (b, h) in back.iter().zip(&want) {
            assert_eq!(b.to_bits(), half::f16::from_bits(*h).to_f32().to_bits());
        }
    }
}

#[test]
fn int8_kernels_agree_and_are_exact_integers() {
    let mut r = Rng(7);
    for &dp in &[16usize, 48, 512] {
        let n = 13;
        let codes: Vec<i8> = (0..n * dp).map(|_| (r.next_u64() % 255) as i8).collect();
        let scales: Vec<f32> = (0..n).map(|_| r.uniform() as f32).collect();
        let q: Vec<i16> = (0..7 * dp).map(|_| ((r.next_u64() % 40001) as i32 - 20000) as i16).collect();
        let qs: Vec<f32> = (0..7).map(|_| r.uniform() as f32).collect();
        let rows = I8Rows::new(&codes, &scales, n, dp);
        for nq in [1usize, 3, 7] {
            let mut reference = vec![0f32; nq * n];
            kernels::score_i8(Isa::capped(Level::Portable), &q, &qs, nq, &rows, 0, n, &mut reference, n);
            for i in 0..nq {
                for row in 0..n {
                    let exact: i64 = (0..dp).map(|j| q[i * dp + j] as i64 * codes[row * dp + j] as i64).sum();
                    assert_eq!(reference[i * n + row], (exact as i32 as f32) * (qs[i] * scales[row]));
                }
            }
            for isa in Isa::all_available() {
                let mut out = vec![0f32; nq * n];
                kernels::score_i8(isa, &q, &qs, nq, &rows, 0, n, &mut out, n);
                assert!(out.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?}");
            }
        }
    }
}

#[test]
fn canonical_scores_are_within_the_rounding_bound() {
    let (x, q) = (random(50, 333, 1), random(4, 333, 2));
    let p = pack(&q);
    let n_ops = (kernels::padded(333) / 16 + 4) as f64;
    let gamma = n_ops * 2f64.powi(-24) / (1.0 - n_ops * 2f64.powi(-24));
    for i in 0..4 {
        for r in 0..50 {
            let s = scalar::dot_f32(p.row(i), x.row(r).as_slice().unwrap()) as f64;
            let exact: f64 = q.row(i).iter().zip(x.row(r)).map(|(&a, &b)| a as f64 * b as f64).sum();
            let abs: f64 = q.row(i).iter().zip(x.row(r)).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            assert!((s - exact).abs() <= gamma * abs + 1e-30, "row {r}: {s} vs {exact}");
        }
    }
}

#[test]
fn exp_and_tile_lse_agree_across_levels_and_with_f64() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let e = scalar::exp_canon(x) as f64;
        let r = (x as f64).exp();
        worst = worst.max(((e - r) / r).abs());
        x += 0.0137;
    }
    assert!(worst < 3e-7, "exp relative error {worst}");
    assert_eq!(scalar::exp_canon(0.0), 1.0);
    assert!(scalar::exp_canon(-200.0) < 1.2e-38);
    let mut r = Rng(3);
    for len in [1usize, 5, 8, 15, 16, 17, 31, 100, 1024] {
        let s: Vec<f32> = (0..len).map(|_| (r.normal() * 0.2) as f32).collect();
        for scale in [39.69f32, 1.0, 0.0, -5.0] {
            let want = kernels::tile_lse(Isa::capped(Level::Portable), &s, scale);
            for isa in Isa::all_available() {
                let got = kernels::tile_lse(isa, &s, scale);
                assert_eq!((got.0.to_bits(), got.1.to_bits()), (want.0.to_bits(), want.1.to_bits()), "{isa:?} {len}");
            }
            let direct: f64 = s.iter().map(|&v| ((v - want.0) as f64 * scale as f64).exp()).sum();
            assert!(((want.1 as f64 - direct) / direct).abs() < 1e-6);
        }
    }
}

#[test]
fn topk_matches_brute_force_for_all_shapes() {
    for &(n, d) in &[(1usize, 7usize), (100, 7), (1000, 33), (3000, 64), (2500, 768)] {
        let x = random(n, d, (n * d) as u64);
        for &b in &[1usize, 3, 17] {
            let q = random(b, d, (b + n) as u64);
            for k in [1usize, 5, n.min(40), n].into_iter().filter(|&k| k <= n) {
                let (ws, wi) = brute(&q, &x, k);
                for isa in Isa::all_available() {
                    let got = topk_with(isa, q.view(), x.view(), k as i64).unwrap();
                    assert_eq!(got.indices, wi, "n={n} d={d} b={b} k={k} {isa:?}");
                    assert!(same_bits(&got.scores, &ws));
                }
            }
        }
    }
}

/// Every `GEOFAST_SIMD` value: the level it selects, and top-k equal to the brute force (the
/// same bits at every level) for `topk` and for each gallery storage type.
#[test]
fn every_simd_setting_matches_brute_force() {
    let x = normalized(3001, 33, 71);
    let q = normalized(5, 33, 72);
    let (ws, wi) = brute(&q, &x, 7);
    let best = Isa::detect();
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
        let got = topk_with(isa, q.view(), x.view(), 7).unwrap();
        assert_eq!(got.indices, wi, "{value}");
        assert!(same_bits(&got.scores, &ws), "{value}");
        for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
            let g = Gallery::from_view(x.view(), dtype).unwrap();
            let got = g.search_with(isa, q.view(), 7, None).unwrap();
            assert_eq!(got.indices, wi, "{value} {dtype:?}");
            assert!(same_bits(&got.scores, &ws), "{value} {dtype:?}");
        }
    }
}

#[test]
fn exact_ties_break_by_lower_index() {
    // Integer-valued vectors: every dot product is exact, and many are equal.
    let mut r = Rng(11);
    let (n, d) = (2000, 12);
    let x = Array2::from_shape_fn((n, d), |_| (r.next_u64() % 3) as f32 - 1.0);
    let q = Array2::from_shape_fn((7, d), |_| (r.next_u64() % 3) as f32 - 1.0);
    for k in [1usize, 10, 333, n] {
        let got = topk(q.view(), x.view(), k as i64).unwrap();
        for i in 0..7 {
            let mut s: Vec<(i64, usize)> =
                (0..n).map(|row| (q.row(i).iter().zip(x.row(row)).map(|(&a, &b)| (a * b) as i64).sum(), row)).collect();
            s.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for j in 0..k {
                assert_eq!(got.indices[[i, j]], s[j].1 as i64);
                assert_eq!(got.scores[[i, j]], s[j].0 as f32);
            }
        }
    }
}

#[test]
fn strided_and_f64_inputs_match_contiguous() {
    let x = random(700, 40, 5);
    let q = random(6, 40, 6);
    let want = topk(q.view(), x.view(), 9).unwrap();
    let xt = x.t().to_owned(); // (40, 700) C order
    let got = topk(q.t().to_owned().t(), xt.t(), 9).unwrap();
    assert_eq!(got.indices, want.indices);
    assert!(same_bits(&got.scores, &want.scores));
    // Column slice: rows read in place with a row stride larger than D.
    let wide = ndarray::concatenate![ndarray::Axis(1), x.view(), random(700, 8, 9).view()];
    let got = topk(q.view(), wide.slice(ndarray::s![.., ..40]), 9).unwrap();
    assert_eq!(got.indices, want.indices);
    let got = topk(q.mapv(|v| v as f64).view(), x.mapv(|v| v as f64).view(), 9).unwrap();
    assert_eq!(got.indices, want.indices);
}

#[test]
fn results_do_not_depend_on_threads() {
    let x = normalized(20_000, 64, 8);
    let q = normalized(33, 64, 9);
    let g = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    crate::core::parallel::set_num_threads(1).unwrap();
    let one = g.search(q.view(), 7, Some(39.69)).unwrap();
    crate::core::parallel::set_num_threads(3).unwrap();
    let three = g.search(q.view(), 7, Some(39.69)).unwrap();
    crate::core::parallel::set_num_threads(2).unwrap();
    assert_eq!(one.indices, three.indices);
    assert!(same_bits(&one.scores, &three.scores));
    assert_eq!(one.lse.unwrap(), three.lse.unwrap());
}

fn reference_lse(q: &Array2<f32>, x: &Array2<f32>, scale: f64) -> Vec<f64> {
    q.rows()
        .into_iter()
        .map(|qr| {
            let s: Vec<f64> = x
                .rows()
                .into_iter()
                .map(|xr| scale * qr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

#[test]
fn lse_matches_float64_reference() {
    let x = normalized(5000, 48, 21);
    let q = normalized(5, 48, 22);
    let g = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    for scale in [39.69, 78.94, 1.0, 0.0, -3.0] {
        let want = reference_lse(&q, &x, scale);
        for isa in Isa::all_available() {
            let got = g.search_with(isa, q.view(), 3, Some(scale)).unwrap().lse.unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "scale {scale}: {a} vs {b}");
            }
        }
    }
    assert!(g.search(q.view(), 3, None).unwrap().lse.is_none());
}

/// Quantized galleries return exactly the f32 gallery's results.
fn check_quantized_equals_exact(x: &Array2<f32>, q: &Array2<f32>, k: i64) {
    let exact = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    let want = exact.search(q.view(), k, Some(39.69)).unwrap();
    for dtype in [Dtype::F16, Dtype::I8] {
        let g = Gallery::from_view(x.view(), dtype).unwrap();
        for isa in Isa::all_available() {
            let got = g.search_with(isa, q.view(), k, Some(39.69)).unwrap();
            assert_eq!(got.indices, want.indices, "{dtype:?} {isa:?}");
            assert!(same_bits(&got.scores, &want.scores), "{dtype:?} {isa:?}");
            let (a, b) = (got.lse.unwrap(), want.lse.clone().unwrap());
            for (u, v) in a.iter().zip(b.iter()) {
                assert!((u - v).abs() < 1e-3 * v.abs().max(1.0), "{dtype:?} lse {u} vs {v}");
            }
        }
    }
}

#[test]
fn quantized_galleries_rerank_to_exact_results() {
    check_quantized_equals_exact(&normalized(20_000, 96, 31), &normalized(40, 96, 32), 5);
    check_quantized_equals_exact(&normalized(3_000, 33, 33), &normalized(7, 33, 34), 1);
    check_quantized_equals_exact(&normalized(500, 7, 35), &normalized(3, 7, 36), 500);
    // Clustered gallery: many near-identical vectors around a few centres.
    let centres = normalized(5, 64, 37);
    let noise = random(8000, 64, 38);
    let mut x = Array2::<f32>::zeros((8000, 64));
    for r in 0..8000 {
        for j in 0..64 {
            x[[r, j]] = centres[[r % 5, j]] + 1e-3 * noise[[r, j]];
        }
    }
    let q = normalized(20, 64, 39);
    check_quantized_equals_exact(&x, &q, 10);
}

#[test]
fn identical_vectors_fall_back_to_exact_rescan() {
    // Every row equal: all candidates tie, so the candidate cap triggers an exact rescan.
    let row = normalized(1, 32, 41);
    let x = Array2::from_shape_fn((30_000, 32), |(_, j)| row[[0, j]]);
    let q = normalized(3, 32, 42);
    let before = gallery::RESCANS.load(std::sync::atomic::Ordering::Relaxed);
    check_quantized_equals_exact(&x, &q, 4);
    assert!(gallery::RESCANS.load(std::sync::atomic::Ordering::Relaxed) >= before + 3);
    let got = Gallery::from_view(x.view(), Dtype::I8).unwrap().search(q.view(), 4, None).unwrap();
    assert_eq!(got.indices.row(0).to_vec(), vec![0, 1, 2, 3]);
}

#[test]
fn f16_sources() {
    let x = normalized(4000, 40, 51);
    let q = normalized(6, 40, 52);
    let bits: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let xh = x.mapv(|v| half::f16::from_f32(v).to_f32());
    let want = Gallery::from_view(xh.view(), Dtype::F32).unwrap().search(q.view(), 8, Some(10.0)).unwrap();
    let (_, wi) = brute(&q, &xh, 8);
    assert_eq!(want.indices, wi);
    for dtype in [Dtype::F16, Dtype::F32, Dtype::I8] {
        let g = Gallery::from_f16(Buf::owned(bits.clone()), 4000, 40, dtype).unwrap();
        let got = g.search(q.view(), 8, Some(10.0)).unwrap();
        assert_eq!(got.indices, want.indices, "{dtype:?}");
        assert!(same_bits(&got.scores, &want.scores));
        assert_eq!(g.dtype(), dtype);
    }
    let g = Gallery::from_f16(Buf::owned(bits.clone()), 4000, 40, Dtype::F16).unwrap();
    assert_eq!(g.nbytes(), 4000 * 40 * 2);
}

#[test]
fn borrowed_storage_is_not_counted() {
    let x = normalized(100, 16, 61);
    let keep = std::sync::Arc::new(x.clone());
    let ptr = keep.as_ptr();
    // SAFETY: `ptr` points to the 1600 f32 of the array inside `keep`, an `Arc` that the buffer
    // keeps alive and that nothing writes to.
    let buf = unsafe { Buf::external(ptr, 1600, false, Box::new(keep.clone())) };
    let g = Gallery::from_f32(buf, 100, 16, Dtype::F32).unwrap();
    assert_eq!(g.nbytes(), 0);
    assert_eq!((g.len(), g.dim()), (100, 16));
    let owned = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    assert_eq!(owned.nbytes(), 6400);
    let i8g = Gallery::from_view(x.view(), Dtype::I8).unwrap();
    assert_eq!(i8g.nbytes(), 6400 + 100 * 16 + 400);
    let q = normalized(2, 16, 62);
    assert_eq!(g.search(q.view(), 3, None).unwrap().indices, owned.search(q.view(), 3, None).unwrap().indices);
}

#[test]
fn errors_name_the_problem() {
    let x = random(10, 8, 1);
    let q = random(2, 8, 2);
    let e = topk(q.view(), x.view(), 0).unwrap_err();
    assert_eq!(e, GeoError::K { k: 0, n: 10, what: "gallery vectors" });
    assert!(e.to_string().contains("k must be between 1 and 10"));
    assert!(matches!(topk(q.view(), x.view(), 11), Err(GeoError::K { k: 11, n: 10, .. })));
    let e = topk(random(2, 7, 3).view(), x.view(), 1).unwrap_err();
    assert!(e.to_string().contains("(B, 8)") && e.to_string().contains("(2, 7)"), "{e}");
    let mut bad = q.clone();
    bad[[1, 3]] = f32::NAN;
    assert!(matches!(topk(bad.view(), x.view(), 1), Err(GeoError::NonFinite { name: "queries", row: 1, .. })));
    let mut badx = x.clone();
    badx[[6, 2]] = f32::INFINITY;
    assert_eq!(
        topk(q.view(), badx.view(), 1).unwrap_err(),
        GeoError::NonFinite { name: "gallery", row: 6, value: f64::INFINITY }
    );
    assert!(matches!(Gallery::from_view(badx.view(), Dtype::I8), Err(GeoError::NonFinite { name: "vectors", row: 6, .. })));
    let empty = Array2::<f32>::zeros((0, 8));
    assert!(matches!(topk(q.view(), empty.view(), 1), Err(GeoError::Empty { .. })));
    assert!(matches!(Gallery::from_view(empty.view(), Dtype::F32), Err(GeoError::Empty { .. })));
    // Overflow: finite inputs whose inner products exceed float32.
    let huge = x.mapv(|v| v * 1e30);
    assert!(matches!(
        topk(q.mapv(|v| v * 1e30).view(), huge.view(), 1),
        Err(GeoError::Parameter { name: "gallery", .. }) | Err(GeoError::Parameter { .. })
    ));
    let g = Gallery::from_view(huge.view(), Dtype::F32).unwrap();
    assert!(matches!(g.search(q.mapv(|v| v * 1e30).view(), 1, None), Err(GeoError::Parameter { name: "queries", .. })));
    assert!(matches!(
        Gallery::from_view(x.mapv(|v| v * 1e5).view(), Dtype::F16),
        Err(GeoError::Parameter { name: "vectors", .. })
    ));
    let g = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    assert!(matches!(g.search(q.view(), 1, Some(f64::NAN)), Err(GeoError::Parameter { name: "lse_scale", .. })));
    assert!(Dtype::parse("f8").is_err());
    let _: ArrayView2<f32> = q.view();
}

#[test]
fn row_subsets_equal_a_gallery_of_those_rows_at_every_level() {
    let x = normalized(5000, 40, 81);
    let q = normalized(7, 40, 82);
    // Every third row and a dense run: tiles of gathered rows cross both patterns.
    let ids: Vec<i64> = (0..5000).filter(|r| r % 3 == 1 || (2000..2600).contains(r)).map(|r| r as i64).collect();
    let sub = Array2::from_shape_fn((ids.len(), 40), |(i, j)| x[[ids[i] as usize, j]]);
    let (ws, wi) = brute(&q, &sub, 9);
    let want_idx = wi.mapv(|i| ids[i as usize]);
    let bits: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let sub_h = sub.mapv(|v| half::f16::from_f32(v).to_f32());
    let (hs, hi) = brute(&q, &sub_h, 9);
    for isa in Isa::all_available() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
            // f32 source: the exact rows are the f32 ones, whatever the storage.
            let g = Gallery::from_view(x.view(), dtype).unwrap();
            let got = g.search_rows_with(isa, q.view(), &ids, 9, Some(39.69)).unwrap();
            assert_eq!(got.indices, want_idx, "{isa:?} {dtype:?}");
            assert!(same_bits(&got.scores, &ws), "{isa:?} {dtype:?}");
            let full = Gallery::from_view(sub.view(), Dtype::F32).unwrap().search_with(isa, q.view(), 9, Some(39.69)).unwrap();
            let (a, b) = (got.lse.unwrap(), full.lse.unwrap());
            assert!(a.iter().zip(b.iter()).all(|(u, v)| u.to_bits() == v.to_bits()), "lse {isa:?} {dtype:?}");
            // f16 source: scores of the f16 rows widened exactly.
            let g = Gallery::from_f16(Buf::owned(bits.clone()), 5000, 40, dtype).unwrap();
            let got = g.search_rows_with(isa, q.view(), &ids, 9, None).unwrap();
            assert_eq!(got.indices, hi.mapv(|i| ids[i as usize]), "f16 {isa:?} {dtype:?}");
            assert!(same_bits(&got.scores, &hs), "f16 {isa:?} {dtype:?}");
        }
    }
}

#[test]
fn row_subsets_reject_bad_ids_and_k() {
    let x = normalized(50, 8, 91);
    let q = normalized(1, 8, 92);
    let g = Gallery::from_view(x.view(), Dtype::F32).unwrap();
    for ids in [vec![3i64, 2], vec![1, 1], vec![-1, 4], vec![0, 50]] {
        let e = g.search_rows(q.view(), &ids, 1, None).unwrap_err();
        assert!(matches!(e, GeoError::Parameter { name: "rows", .. }), "{ids:?}: {e}");
    }
    assert!(matches!(g.search_rows(q.view(), &[1, 2], 3, None).unwrap_err(), GeoError::K { .. }));
    assert!(matches!(g.search_rows(q.view(), &[], 1, None).unwrap_err(), GeoError::K { .. }));
}
