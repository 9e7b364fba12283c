//! Run-time choice of instruction set for the vectorised kernels.
//!
//! Hot loops (haversine, Fourier features, Equal Earth) are written once as plain scalar Rust
//! over contiguous `f64` tiles, using only branch-free operations (multiply-add, `sqrt`,
//! division, comparisons that become blends, bit operations on `to_bits`) that LLVM's loop
//! vectoriser turns into SIMD. [`simd_kernel!`](crate::simd_kernel) compiles each such loop
//! three times on x86-64:
//! * `#[target_feature(enable = "avx2,fma")]`: 4 × f64 lanes, multiply-adds fused into one
//!   instruction (mode [`Fused`](crate::core::vmath::Fused));
//! * AVX-512 (F, DQ, VL, BW: the x86-64-v4 set) plus AVX2 and FMA: 8 × f64 lanes, 32 vector
//!   registers and mask registers for the blends, same mode and same operations, hence
//!   bit-identical to the AVX2 version (2–3× faster on Zen 4/5 and recent Intel server cores);
//! * the portable baseline of the target (SSE2 on x86-64; other architectures get only this
//!   one), mode [`Native`](crate::core::vmath::Native): separate multiply and add where the
//!   target has no FMA, because `f64::mul_add` would then be a libm call per operation.
//!
//! [`Isa::active`] picks the best at run time with `is_x86_feature_detected!`; wheels are never
//! built with `target-cpu=native`. The versions run the same operations in the same order and
//! differ only in the rounding of multiply-adds between the fused and portable modes, so results
//! agree to within the documented error bounds of [`vmath`](crate::core::vmath) (a few ulp;
//! bit-identical between the two fused versions and on targets with native FMA). Every kernel's
//! unit tests compare the versions.
//!
//! `GEOFAST_SIMD=portable` or `GEOFAST_SIMD=avx2` (read once) caps the choice, for testing and
//! comparison.

use std::sync::OnceLock;

/// Environment variable that caps the instruction set: `portable` or `avx2`.
pub const SIMD_ENV: &str = "GEOFAST_SIMD";

/// An instruction set the kernels can run with. Only constructible through [`Isa::portable`],
/// [`Isa::detected`], [`Isa::active`] and [`Isa::without_avx512`], so each version runs only on
/// CPUs that reported its features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Isa {
    level: Level,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Portable,
    Avx2Fma,
    Avx512,
}

impl Isa {
    /// The baseline of the compilation target; always available.
    pub const fn portable() -> Self {
        Isa { level: Level::Portable }
    }

    /// The best instruction set this CPU supports (ignores `GEOFAST_SIMD`).
    pub fn detected() -> Self {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        let level = *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if !(has!("avx2") && has!("fma")) {
                    Level::Portable
                } else if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw") {
                    Level::Avx512
                } else {
                    Level::Avx2Fma
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                Level::Portable
            }
        });
        Isa { level }
    }

    /// What the kernels use: [`Isa::detected`], capped by `GEOFAST_SIMD=portable|avx2`.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let cap = std::env::var(SIMD_ENV).unwrap_or_default().trim().to_ascii_lowercase();
            match cap.as_str() {
                "portable" => Isa::portable(),
                "avx2" => Isa::detected().without_avx512(),
                _ => Isa::detected(),
            }
        })
    }

    /// The same instruction set without the AVX-512 versions.
    pub fn without_avx512(self) -> Self {
        Isa { level: self.level.min(Level::Avx2Fma) }
    }

    /// True when the AVX2 + FMA versions of the kernels may run.
    pub fn avx2_fma(self) -> bool {
        self.level >= Level::Avx2Fma
    }

    /// True when the AVX-512 (F, DQ, VL, BW) versions of the kernels may run.
    pub fn avx512(self) -> bool {
        self.level == Level::Avx512
    }

    /// A short name for reports: `"avx512"`, `"avx2+fma"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self.level {
            Level::Avx512 => "avx512",
            Level::Avx2Fma => "avx2+fma",
            Level::Portable => "portable",
        }
    }
}

/// Define a kernel compiled for AVX2+FMA and for the portable baseline, dispatched on an
/// [`Isa`] passed as the first argument:
///
/// ```ignore
/// simd_kernel! {
///     /// doc
///     pub fn axpy<M>(xs: &[f64], out: &mut [f64], k: f64) {
///         for (o, &x) in out.iter_mut().zip(xs) { *o = M::mul_add(x, k, *o); }
///     }
/// }
/// axpy(Isa::active(), &xs, &mut out, 2.0);
/// ```
///
/// The body is an `#[inline(always)]` function generic over the multiply-add mode `M`
/// ([`MulAdd`](crate::core::vmath::MulAdd)), instantiated with `Fused` in the AVX2+FMA version
/// and `Native` in the portable one. Helpers it calls must be `#[inline(always)]` too so that
/// they are compiled with the version's features.
#[macro_export]
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$mode:ident>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::core::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::extra_unused_type_parameters)]
            fn body<$mode: $crate::core::vmath::MulAdd>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2_fma($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Fused>($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Fused>($($arg),*)
            }

            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            fn portable($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Native>($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                if isa.avx512() {
                    // SAFETY: `Isa::avx512()` is true only when `is_x86_feature_detected!`
                    // reported AVX2, FMA, AVX512F, DQ, VL and BW on this CPU.
                    return unsafe { avx512($($arg),*) };
                }
                if isa.avx2_fma() {
                    // SAFETY: `Isa::avx2_fma()` is true only when `is_x86_feature_detected!`
                    // reported both AVX2 and FMA on this CPU.
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            let _ = isa;
            portable($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::simd_kernel! {
        fn axpy<M>(x: &[f64], y: &mut [f64], k: f64) {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = M::mul_add(v, k, *o);
            }
        }
    }

    #[test]
    fn both_paths_agree() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64).sqrt() * 0.1).collect();
        let mut a = vec![1.0 / 3.0; 1000];
        let mut b = a.clone();
        let mut c = a.clone();
        axpy(Isa::detected(), &x, &mut a, std::f64::consts::PI);
        axpy(Isa::portable(), &x, &mut b, std::f64::consts::PI);
        axpy(Isa::detected().without_avx512(), &x, &mut c, std::f64::consts::PI);
        assert_eq!(a, c);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 4.0 * f64::EPSILON * p.abs());
        }
        assert_eq!(Isa::portable().name(), "portable");
        assert!(!Isa::portable().avx2_fma() && !Isa::portable().avx512());
        assert!(!Isa::detected().without_avx512().avx512());
        assert_eq!(Isa::portable().without_avx512(), Isa::portable());
        let _ = Isa::active().name();
    }
}
