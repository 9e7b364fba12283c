//! Run-time choice of instruction set for the vectorised kernels.
//!
//! Hot loops (haversine, Fourier features, Equal Earth) are written once as plain scalar Rust
//! over contiguous `f64` tiles, using only branch-free operations (multiply-add, `sqrt`,
//! division, comparisons that become blends, bit operations on `to_bits`) that LLVM's loop
//! vectoriser turns into SIMD. [`simd_kernel!`](crate::simd_kernel) compiles each such loop
//! twice: once with `#[target_feature(enable = "avx2,fma")]` (4 × f64 lanes, multiply-adds
//! fused into one instruction: mode [`Fused`](crate::core::vmath::Fused)) and once for the
//! portable baseline of the target (SSE2 on x86-64, mode [`Native`](crate::core::vmath::Native):
//! separate multiply and add where the target has no FMA, because `f64::mul_add` would then be
//! a libm call per operation). [`Isa::active`] picks one at run time with
//! `is_x86_feature_detected!`; wheels are never built with `target-cpu=native`.
//!
//! Both versions run the same operations in the same order; they differ only in the rounding
//! of multiply-adds, so results agree to within the documented error bounds of
//! [`vmath`](crate::core::vmath) (a few ulp; bit-identical on targets with native FMA). Every
//! kernel's unit tests compare the two versions.
//!
//! `GEOFAST_SIMD=portable` (read once) forces the portable path, for testing and comparison.

use std::sync::OnceLock;

/// Environment variable that forces the portable path when set to `portable`.
pub const SIMD_ENV: &str = "GEOFAST_SIMD";

/// An instruction set the kernels can run with. Only constructible through [`Isa::portable`],
/// [`Isa::detected`] and [`Isa::active`], so `avx2_fma()` is true only on CPUs that have both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    avx2_fma: bool,
}

impl Isa {
    /// The baseline of the compilation target; always available.
    pub const fn portable() -> Self {
        Isa { avx2_fma: false }
    }

    /// The best instruction set this CPU supports (ignores `GEOFAST_SIMD`).
    pub fn detected() -> Self {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        let avx2_fma = *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        });
        Isa { avx2_fma }
    }

    /// What the kernels use: [`Isa::detected`] unless `GEOFAST_SIMD=portable`.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let forced = std::env::var(SIMD_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("portable"));
            if forced {
                Isa::portable()
            } else {
                Isa::detected()
            }
        })
    }

    /// True when the AVX2 + FMA versions of the kernels may run.
    pub fn avx2_fma(self) -> bool {
        self.avx2_fma
    }

    /// A short name for reports: `"avx2+fma"` or `"portable"`.
    pub fn name(self) -> &'static str {
        if self.avx2_fma {
            "avx2+fma"
        } else {
            "portable"
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
            #[allow(clippy::too_many_arguments)]
            fn body<$mode: $crate::core::vmath::MulAdd>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2_fma($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Fused>($($arg),*)
            }

            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            fn portable($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Native>($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
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
        axpy(Isa::detected(), &x, &mut a, std::f64::consts::PI);
        axpy(Isa::portable(), &x, &mut b, std::f64::consts::PI);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 4.0 * f64::EPSILON * p.abs());
        }
        assert_eq!(Isa::portable().name(), "portable");
        let _ = Isa::active().name();
    }
}
