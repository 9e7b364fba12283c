//! Branch-free, vectorisable `f64` sin/cos/atan for the hot loops.
//!
//! Every function here is `#[inline(always)]` and uses only operations LLVM's loop vectoriser
//! maps onto SIMD lanes (`mul_add`, `+ - * /`, `sqrt`, comparisons that become blends, integer
//! bit operations on `to_bits`). No table look-ups, no libm calls, no data-dependent branches.
//! Callers run them over contiguous tiles inside [`simd_kernel!`](crate::simd_kernel) loops.
//!
//! Each function is generic over [`MulAdd`]: [`Fused`] (one rounding, a single FMA instruction
//! in the AVX2+FMA version and on aarch64) or [`Unfused`] (multiply, then add), which the
//! portable version uses on x86-64 without FMA, where `f64::mul_add` would be a libm call per
//! operation and would stop the loop from vectorising. The exact argument reductions below are
//! exact in both modes; the polynomial error bounds hold for both (the tests check each).
//!
//! ## Argument reduction (exact)
//! * Turns (`sincos_turns*`, x in turns, angle 2πx): `n = round(4x)` with the 1.5·2⁵² trick
//!   (`(v + 1.5·2⁵²) − 1.5·2⁵²` rounds |v| < 2⁵¹ to the nearest integer, and the low two bits of
//!   `(v + 1.5·2⁵²).to_bits()` are n mod 4); `r = x − n/4` is exact (x and n/4 are multiples of
//!   ulp(x), |r| ≤ 1/8). [`sincos_turns`] first removes whole turns, `x − round(x)` computed
//!   exactly with the 2⁵² trick on |x| (every |x| ≥ 2⁵² is an integer), so it is exact for every
//!   finite x; [`sincos_turns_small`] skips that step and needs |x| < 2⁴⁸.
//! * Degrees ([`sincos_deg`]): `n = round(x/90)`, `r = x − 90n` is exact (Sterbenz: x lies within
//!   [45(2n−1), 45(2n+1)], i.e. within a factor 2 of 90n, for n ≠ 0), then r/360 turns. Valid
//!   for |x| ≤ 2⁴⁰. This keeps full *relative* accuracy for cos near ±90° and sin near 0°,
//!   which `x.to_radians()` loses (its rounding error is absolute, ~1e-16 rad).
//! * Quadrant: with q = n mod 4, (sin, cos)(2π(r + q/4)) is (s, c), (c, −s), (−s, −c), (−c, s):
//!   a blend on bit 0 and sign flips (XOR of bit 63) from bits 1 and 0⊕1.
//!
//! ## Polynomials (minimax for relative error, Remez exchange in mpmath at 60 digits,
//! coefficients rounded to f64; r in turns, u = r²)
//! * `sin(2πr) = r·S(u)`, S of degree 6, |r| ≤ 1/8: approximation error 3.3e-18.
//! * `cos(2πr) = C(u)`, C of degree 7, |r| ≤ 1/8: approximation error 3.6e-20.
//! * `atan(t) = t·A(t²)`, A of degree 11, |t| ≤ tan(π/8): approximation error 1.2e-18.
//! * Low-precision pair for float32 outputs (Fourier features): S of degree 3 (3.3e-9) and
//!   C of degree 4 (5.6e-11).
//!
//! ## Error bounds (checked densely against libm in the tests below)
//! * [`sincos_turns`] / [`sincos_turns_small`]: ≤ 2 ulp of the result (exact reduction, the
//!   approximation error is far below rounding).
//! * [`sincos_deg`]: ≤ 2 ulp + 1.5·2⁻⁵² relative (the r/360 conversion rounds twice).
//! * [`sincos_turns_lp`]: ≤ 4e-9 absolute.
//! * [`atan2_q1`]: ≤ 2 ulp of the result for results below π/4, ≤ 2.5e-16 absolute above
//!   (the π/4, π/2 offsets are rounded constants).

/// 1.5·2⁵²: adding and subtracting it rounds |v| < 2⁵¹ to the nearest integer (ties to even).
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
const SIGN_BIT: u64 = 1 << 63;
/// 2⁵²: every f64 of magnitude at least this is an integer.
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// sin(2πr)/r = S(r²) on |r| ≤ 1/8, minimax relative error 3.3e-18.
const SIN_TURN: [f64; 7] = [
    std::f64::consts::TAU, // 6.283185307179586, the minimax value rounds to 2π
    -41.341702240399634,
    81.60524927594452,
    -76.70585970331513,
    42.05868490205379,
    -15.093797505201382,
    3.78072617116929,
];

/// cos(2πr) = C(r²) on |r| ≤ 1/8, minimax relative error 3.6e-20.
const COS_TURN: [f64; 8] = [
    1.0,
    -19.739208802178716,
    64.93939402266793,
    -85.45681720650958,
    60.24464132648271,
    -26.426250686054434,
    7.903081377124141,
    -1.696661687070565,
];

/// Low-precision sin(2πr)/r on |r| ≤ 1/8, minimax relative error 3.3e-9.
const SIN_TURN_LP: [f64; 4] = [6.283185286833364, -41.3416614549242, 81.59235355492545, -75.39356282348649];

/// Low-precision cos(2πr) on |r| ≤ 1/8, minimax relative error 5.6e-11.
const COS_TURN_LP: [f64; 5] = [0.9999999999439373, -19.739208633036142, 64.93931074460755, -85.44229797328077, 59.20279611125543];

/// atan(t)/t = A(t²) on |t| ≤ tan(π/8), minimax relative error 1.2e-18.
const ATAN: [f64; 12] = [
    1.0,
    -0.3333333333333313,
    0.19999999999942733,
    -0.14285714279416986,
    0.11111110752667373,
    -0.09090897019163542,
    0.07692048883895726,
    -0.06662990410412961,
    0.05847147695873555,
    -0.05036270252365542,
    0.03799386906228067,
    -0.017835672444083687,
];

/// tan(π/8) = √2 − 1.
const TAN_PI_8: f64 = 0.414_213_562_373_095_03;
const FRAC_PI_4: f64 = std::f64::consts::FRAC_PI_4;
const FRAC_PI_2: f64 = std::f64::consts::FRAC_PI_2;

/// How a kernel version evaluates a·b + c.
pub trait MulAdd: Copy + Send + Sync + 'static {
    fn mul_add(a: f64, b: f64, c: f64) -> f64;
}

/// a·b + c with one rounding (`vfmadd` under FMA, `fmadd` on aarch64).
#[derive(Clone, Copy, Debug)]
pub struct Fused;

/// a·b + c as a multiply then an add (two roundings), for targets without FMA.
#[derive(Clone, Copy, Debug)]
pub struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a * b + c
    }
}

/// The mode of the portable kernel version: fused where the compilation target has FMA
/// instructions, unfused otherwise (x86-64 baseline).
#[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
pub type Native = Fused;
/// The mode of the portable kernel version: fused where the compilation target has FMA
/// instructions, unfused otherwise (x86-64 baseline).
#[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
pub type Native = Unfused;

/// Horner evaluation of `c[0] + c[1] u + … + c[N-1] u^(N-1)`.
#[inline(always)]
fn horner<M: MulAdd, const N: usize>(u: f64, c: &[f64; N]) -> f64 {
    let mut acc = c[N - 1];
    let mut i = N - 1;
    while i > 0 {
        i -= 1;
        acc = M::mul_add(acc, u, c[i]);
    }
    acc
}

/// (sin, cos) of 2πr for |r| ≤ 1/8 (a little beyond is fine): the core polynomials.
#[inline(always)]
pub fn sincos_turn_kernel<M: MulAdd>(r: f64) -> (f64, f64) {
    let u = r * r;
    (r * horner::<M, 7>(u, &SIN_TURN), horner::<M, 8>(u, &COS_TURN))
}

/// Rotate (s, c) = (sin, cos)(θ) to (sin, cos)(θ + q·π/2), q taken from the low two bits.
#[inline(always)]
fn quadrant(q: u64, s: f64, c: f64) -> (f64, f64) {
    let swap = (q & 1) != 0;
    let (s1, c1) = if swap { (c, s) } else { (s, c) };
    let sin_flip = (q & 2) << 62;
    let cos_flip = ((q ^ (q >> 1)) & 1) << 63;
    (f64::from_bits(s1.to_bits() ^ sin_flip), f64::from_bits(c1.to_bits() ^ cos_flip))
}

/// Quarter-turn reduction of x (turns, |x| < 2⁴⁸): (q bits, r) with x = n/4 + r exactly.
#[inline(always)]
fn reduce_quarter_turns<M: MulAdd>(x: f64) -> (u64, f64) {
    let t = 4.0 * x + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    // Exact in both modes: n/4 and x − n/4 are representable.
    (t.to_bits(), M::mul_add(n, -0.25, x))
}

/// x − round(x), exact for every finite x (result in [−1/2, 1/2]).
#[inline(always)]
pub fn frac_turns(x: f64) -> f64 {
    let a = x.abs();
    let rounded = (a + TWO_52) - TWO_52;
    let rounded = if a < TWO_52 { rounded } else { a };
    // Give |x| − round(|x|) the sign *of x* (multiply by sign(x), which copysign would not).
    f64::from_bits((a - rounded).to_bits() ^ (x.to_bits() & SIGN_BIT))
}

/// (sin 2πx, cos 2πx) for |x| < 2⁴⁸ turns, ≤ 2 ulp.
#[inline(always)]
pub fn sincos_turns_small<M: MulAdd>(x: f64) -> (f64, f64) {
    let (q, r) = reduce_quarter_turns::<M>(x);
    let (s, c) = sincos_turn_kernel::<M>(r);
    quadrant(q, s, c)
}

/// (sin 2πx, cos 2πx) for every finite x (turns), ≤ 2 ulp.
#[inline(always)]
pub fn sincos_turns<M: MulAdd>(x: f64) -> (f64, f64) {
    sincos_turns_small::<M>(frac_turns(x))
}

/// Low-precision (sin 2πx, cos 2πx) for |x| < 2⁴⁸ turns, ≤ 4e-9 absolute: for float32 outputs.
#[inline(always)]
pub fn sincos_turns_small_lp<M: MulAdd>(x: f64) -> (f64, f64) {
    let (q, r) = reduce_quarter_turns::<M>(x);
    let u = r * r;
    quadrant(q, r * horner::<M, 4>(u, &SIN_TURN_LP), horner::<M, 5>(u, &COS_TURN_LP))
}

/// Low-precision (sin 2πx, cos 2πx) for every finite x, ≤ 4e-9 absolute.
#[inline(always)]
pub fn sincos_turns_lp<M: MulAdd>(x: f64) -> (f64, f64) {
    sincos_turns_small_lp::<M>(frac_turns(x))
}

/// (sin, cos) of an angle in degrees, |x| ≤ 2⁴⁰, with exact reduction by quarter circles.
#[inline(always)]
pub fn sincos_deg<M: MulAdd>(x_deg: f64) -> (f64, f64) {
    let t = x_deg * (1.0 / 90.0) + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    // Exact in both modes: 90n and x − 90n are representable.
    let r_deg = M::mul_add(n, -90.0, x_deg);
    let (s, c) = sincos_turn_kernel::<M>(r_deg * (1.0 / 360.0));
    quadrant(t.to_bits(), s, c)
}

/// atan(t) for |t| ≤ tan(π/8).
#[inline(always)]
pub fn atan_kernel<M: MulAdd>(t: f64) -> f64 {
    t * horner::<M, 12>(t * t, &ATAN)
}

/// atan2(y, x) for y ≥ 0, x ≥ 0, not both zero: the angle in [0, π/2].
///
/// Octant reduction: with (p, q) = (min, max)(x, y), the angle is atan(p/q) (or π/2 minus it
/// when y > x); when p > q·tan(π/8), atan(p/q) = π/4 + atan((p − q)/(p + q)). One division.
#[inline(always)]
pub fn atan2_q1<M: MulAdd>(y: f64, x: f64) -> f64 {
    let steep = y > x;
    let (p, q) = if steep { (x, y) } else { (y, x) };
    let mid = p > TAN_PI_8 * q;
    let num = if mid { p - q } else { p };
    let den = if mid { p + q } else { q };
    let a = atan_kernel::<M>(num / den) + if mid { FRAC_PI_4 } else { 0.0 };
    if steep {
        FRAC_PI_2 - a
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static WORST: std::cell::RefCell<std::collections::BTreeMap<String, f64>> = Default::default();
    }

    fn report() {
        WORST.with(|w| eprintln!("worst ulp errors: {:?}", w.borrow()));
    }

    fn ulp(x: f64) -> f64 {
        let a = x.abs();
        if a < f64::MIN_POSITIVE {
            return f64::MIN_POSITIVE * f64::EPSILON;
        }
        f64::from_bits(a.to_bits() + 1) - a
    }

    /// 2π as a double-double.
    const TWO_PI_HI: f64 = std::f64::consts::TAU;
    const TWO_PI_LO: f64 = 2.4492935982947064e-16;
    /// π/180 as a double-double.
    const DEG_HI: f64 = 0.017453292519943295;
    const DEG_LO: f64 = 2.9486522708701687e-19;

    /// Reference (sin, cos) of the angle k·x given k as a double-double (hi + lo): the product
    /// is formed as hi' + lo' exactly enough (error ~1e-32), then sin(h + l) ≈ sin h + l cos h.
    fn reference(x: f64, k_hi: f64, k_lo: f64) -> (f64, f64) {
        let h = x * k_hi;
        let l = x.mul_add(k_hi, -h) + x * k_lo;
        let (s, c) = h.sin_cos();
        (s + l * c, c - l * s)
    }

    fn check_close(got: f64, want: f64, ulps: f64, abs: f64, what: &str) {
        let err = (got - want).abs();
        WORST.with(|w| {
            let mut w = w.borrow_mut();
            let e = err / ulp(want);
            let slot = w.entry(what.to_string()).or_insert(0.0);
            if e > *slot && err > abs {
                *slot = e;
            }
        });
        assert!(err <= ulps * ulp(want) + abs, "{what}: got {got:e}, want {want:e}, err {err:e} = {} ulp", err / ulp(want));
    }

    /// Dense sweep of x in [lo, hi]: n evenly spaced points plus deterministic pseudo-random ones.
    fn sweep(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..=n).map(move |i| {
            if i % 2 == 0 {
                lo + (hi - lo) * (i as f64 / n as f64)
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                lo + (hi - lo) * ((state >> 11) as f64 / (1u64 << 53) as f64)
            }
        })
    }

    /// Run a generic check for both multiply-add modes.
    macro_rules! both_modes {
        ($check:ident) => {
            $check::<Fused>("fused");
            $check::<Unfused>("unfused");
            report();
        };
    }

    fn turn_kernel<M: MulAdd>(mode: &str) {
        let (sin, cos, tiny) = (format!("sin {mode}"), format!("cos {mode}"), format!("tiny {mode}"));
        for r in sweep(-0.125, 0.125, 4_000_000) {
            let (s, c) = sincos_turn_kernel::<M>(r);
            let (ws, wc) = reference(r, TWO_PI_HI, TWO_PI_LO);
            check_close(s, ws, 2.0, 0.0, &sin);
            check_close(c, wc, 2.0, 0.0, &cos);
        }
        // Tiny arguments keep full relative accuracy (sin 2πr ≈ 2πr).
        for &r in &[1e-300, 1e-20, 3e-9, -7e-12] {
            check_close(sincos_turn_kernel::<M>(r).0, reference(r, TWO_PI_HI, TWO_PI_LO).0, 1.0, 0.0, &tiny);
        }
    }

    #[test]
    fn turn_kernel_within_2_ulp_on_reduced_interval() {
        both_modes!(turn_kernel);
    }

    fn turns_full_range<M: MulAdd>(mode: &str) {
        let (sin, cos) = (format!("sin turns {mode}"), format!("cos turns {mode}"));
        for x in sweep(-3.0, 3.0, 2_000_000).chain(sweep(-2000.0, 2000.0, 1_000_000)) {
            let (s, c) = sincos_turns::<M>(x);
            // Reference: reduce exactly first (x − round(x) is exact), then the double-double.
            let f = x - x.round();
            let (ws, wc) = reference(f, TWO_PI_HI, TWO_PI_LO);
            check_close(s, ws, 2.0, 1e-30, &sin);
            check_close(c, wc, 2.0, 1e-30, &cos);
            assert_eq!(sincos_turns_small::<M>(x), (s, c));
        }
        // Quadrant boundaries are exact.
        assert_eq!(sincos_turns::<M>(0.0), (0.0, 1.0));
        assert_eq!(sincos_turns::<M>(0.25), (1.0, 0.0));
        assert_eq!(sincos_turns::<M>(0.5).1, -1.0);
        assert_eq!(sincos_turns::<M>(0.5).0.abs(), 0.0);
        assert_eq!(sincos_turns::<M>(-0.25), (-1.0, 0.0));
        assert_eq!(sincos_turns::<M>(1e6 + 0.25), (1.0, 0.0));
        // Huge and integer inputs: exact fractional part.
        for &x in &[2f64.powi(48) + 0.75, 2f64.powi(51) + 0.5, 2f64.powi(52) + 1.0, 1e300, -1e300, -(2f64.powi(50) + 0.25)] {
            let f = frac_turns(x);
            assert_eq!(f, x - x.round_ties_even(), "{x}");
            let (s, c) = sincos_turns::<M>(x);
            let (ws, wc) = reference(f, TWO_PI_HI, TWO_PI_LO);
            check_close(s, ws, 2.0, 1e-30, &sin);
            check_close(c, wc, 2.0, 1e-30, &cos);
        }
    }

    #[test]
    fn turns_full_range_and_exact_reduction() {
        both_modes!(turns_full_range);
    }

    fn low_precision<M: MulAdd>(mode: &str) {
        let mut worst = 0.0f64;
        for x in sweep(-1.0, 1.0, 4_000_000).chain(sweep(-1500.0, 1500.0, 1_000_000)) {
            let (s, c) = sincos_turns_lp::<M>(x);
            let (ws, wc) = reference(x - x.round(), TWO_PI_HI, TWO_PI_LO);
            worst = worst.max((s - ws).abs()).max((c - wc).abs());
            assert_eq!(sincos_turns_small_lp::<M>(x), (s, c));
        }
        eprintln!("low-precision worst absolute error ({mode}) {worst:e}");
        assert!(worst <= 4e-9, "{worst:e}");
    }

    #[test]
    fn low_precision_pair_within_4e9() {
        both_modes!(low_precision);
    }

    fn degrees<M: MulAdd>(mode: &str) {
        let (sin, cos) = (format!("sin deg {mode}"), format!("cos deg {mode}"));
        for x in sweep(-360.0, 360.0, 4_000_000) {
            let (s, c) = sincos_deg::<M>(x);
            // Reference with the exact degree reduction (x − 90n is exact) and a double-double.
            let n = (x / 90.0).round();
            let r = x - 90.0 * n;
            let (rs, rc) = reference(r, DEG_HI, DEG_LO);
            let (ws, wc) = match (n as i64).rem_euclid(4) {
                0 => (rs, rc),
                1 => (rc, -rs),
                2 => (-rs, -rc),
                _ => (-rc, rs),
            };
            check_close(s, ws, 3.0, 1e-300, &sin);
            check_close(c, wc, 3.0, 1e-300, &cos);
            // And libm on the rounded radian argument agrees to its own ~1e-16 absolute error.
            let (ls, lc) = x.to_radians().sin_cos();
            assert!((s - ls).abs() < 1e-15 && (c - lc).abs() < 1e-15, "{x}");
        }
        // cos x = sin(90° − x), and 90 − x is exact here (Sterbenz).
        let x = 90.0 - 1e-7;
        let want = reference(90.0 - x, DEG_HI, DEG_LO).0;
        check_close(sincos_deg::<M>(x).1, want, 3.0, 0.0, &cos);
        let libm = x.to_radians().cos();
        assert!((libm - want).abs() > 1e3 * ulp(want), "libm is expected to lose digits here");
        assert_eq!(sincos_deg::<M>(90.0).0, 1.0);
        assert_eq!(sincos_deg::<M>(90.0).1, 0.0);
        assert_eq!(sincos_deg::<M>(-180.0).0, 0.0);
        assert_eq!(sincos_deg::<M>(180.0).1, -1.0);
        assert_eq!(sincos_deg::<M>(45.0).0, sincos_deg::<M>(45.0).1);
    }

    #[test]
    fn degrees_keep_relative_accuracy_everywhere() {
        both_modes!(degrees);
    }

    fn atan<M: MulAdd>(mode: &str) {
        let (at, at2, asin) = (format!("atan {mode}"), format!("atan2 {mode}"), format!("asin form {mode}"));
        for t in sweep(-TAN_PI_8, TAN_PI_8, 4_000_000) {
            check_close(atan_kernel::<M>(t), t.atan(), 2.0, 0.0, &at);
        }
        // Full first quadrant through the octant reduction, against libm atan2.
        for i in 0..=2_000_000u64 {
            let angle = FRAC_PI_2 * i as f64 / 2_000_000.0;
            let (y, x) = angle.sin_cos();
            let (y, x) = (y.max(0.0), x.max(0.0));
            check_close(atan2_q1::<M>(y, x), y.atan2(x), 2.0, 2.5e-16, &at2);
            // Scale invariance with scales that are powers of two (exact).
            assert_eq!(atan2_q1::<M>(4.0 * y, 4.0 * x), atan2_q1::<M>(y, x));
        }
        assert_eq!(atan2_q1::<M>(0.0, 1.0), 0.0);
        assert_eq!(atan2_q1::<M>(1.0, 0.0), FRAC_PI_2);
        assert_eq!(atan2_q1::<M>(1.0, 1.0), FRAC_PI_4);
        assert_eq!(atan2_q1::<M>(1e-200, 1.0), 1e-200);
        // 2·atan2(√h, √(1−h)) = 2·asin(√h): the haversine identity, against libm asin.
        for h in sweep(0.0, 0.5, 1_000_000) {
            let want = 2.0 * h.sqrt().asin();
            check_close(2.0 * atan2_q1::<M>(h.sqrt(), (1.0 - h).sqrt()), want, 3.0, 5e-16, &asin);
        }
    }

    #[test]
    fn atan_kernel_and_atan2_within_bounds() {
        both_modes!(atan);
    }

    crate::simd_kernel! {
        fn all_kernels<M>(x: &[f64], out: &mut [f64]) {
            for (o, &v) in out.chunks_exact_mut(6).zip(x) {
                let (a, b) = sincos_turns::<M>(v);
                let (c, d) = sincos_deg::<M>(v * 100.0);
                let (e, _) = sincos_turns_lp::<M>(v);
                o[0] = a;
                o[1] = b;
                o[2] = c;
                o[3] = d;
                o[4] = e;
                o[5] = atan2_q1::<M>(v.abs(), 1.0 - v.abs().min(1.0) + 1e-3);
            }
        }
    }

    #[test]
    fn avx2_and_portable_versions_agree() {
        let x: Vec<f64> = sweep(-3.5, 3.5, 200_000).collect();
        let mut a = vec![0.0; x.len() * 6];
        let mut b = vec![0.0; x.len() * 6];
        let mut c = vec![0.0; x.len() * 6];
        all_kernels(crate::core::simd::Isa::detect(), &x, &mut a);
        all_kernels(crate::core::simd::Isa::capped(crate::core::simd::Level::Portable), &x, &mut b);
        all_kernels(crate::core::simd::Isa::capped(crate::core::simd::Level::Avx2), &x, &mut c);
        // AVX-512 and AVX2 versions: same fused operations, same bits.
        assert!(a.iter().zip(&c).all(|(p, q)| p.to_bits() == q.to_bits()));
        // The SIMD versions are the fused scalar code, bit for bit.
        let mut fused = vec![0.0; x.len() * 6];
        for (o, &v) in fused.chunks_exact_mut(6).zip(&x) {
            let (p, q) = sincos_turns::<Fused>(v);
            let (r, s) = sincos_deg::<Fused>(v * 100.0);
            o[..5].copy_from_slice(&[p, q, r, s, sincos_turns_lp::<Fused>(v).0]);
            o[5] = atan2_q1::<Fused>(v.abs(), 1.0 - v.abs().min(1.0) + 1e-3);
        }
        if crate::core::simd::Isa::detect().avx2() {
            assert!(a.iter().zip(&fused).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
        // Portable agrees within the error bounds (bitwise where the target has FMA).
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            let tol = if i % 6 == 4 { 8e-9 } else { 4.0 * ulp(*p) + 1e-300 };
            assert!((p - q).abs() <= tol, "{i}: {p} vs {q}");
        }
    }
}
