//! Run-time choice of instruction set for every vectorised kernel: the geo and Fourier kernels
//! ([`simd_kernel!`](crate::simd_kernel)) and the top-k scan kernels (`topk::kernels`).
//!
//! ## Levels
//! | level      | CPU features it requires (all reported by `is_x86_feature_detected!`)   |
//! |------------|--------------------------------------------------------------------------|
//! | `avx512`   | everything of `avx2`, plus AVX512F, AVX512DQ, AVX512VL, AVX512BW (x86-64-v4) |
//! | `avx2`     | AVX2, FMA, F16C (x86-64-v3 without BMI/MOVBE, which no kernel uses)        |
//! | `portable` | nothing beyond the compilation target (SSE2 on x86-64; the only level elsewhere) |
//!
//! Every `#[target_feature(enable = ...)]` function that a level runs enables a subset of that
//! level's features; that is the safety argument of every call into such a function.
//!
//! Hot loops of the geo kernels are written once as plain scalar Rust over contiguous `f64`
//! tiles, using only branch-free operations (multiply-add, `sqrt`, division, comparisons that
//! become blends, bit operations on `to_bits`) that LLVM's loop vectoriser turns into SIMD.
//! [`simd_kernel!`](crate::simd_kernel) compiles each such loop three times on x86-64:
//! * `avx2`: 4 × f64 lanes, multiply-adds fused into one instruction (mode
//!   [`Fused`](crate::core::vmath::Fused));
//! * `avx512`: 8 × f64 lanes, 32 vector registers and mask registers for the blends, same mode
//!   and same operations, hence bit-identical to the AVX2 version (2–3× faster on Zen 4/5 and
//!   recent Intel server cores);
//! * `portable`: mode [`Native`](crate::core::vmath::Native), separate multiply and add where the
//!   target has no FMA, because `f64::mul_add` would then be a libm call per operation.
//!
//! The versions run the same operations in the same order and differ only in the rounding of
//! multiply-adds between the fused and portable modes, so results agree to within the documented
//! error bounds of [`vmath`](crate::core::vmath) (a few ulp; bit-identical between the two fused
//! versions and on targets with native FMA). The top-k kernels reproduce one canonical arithmetic
//! bit for bit at every level (`topk::kernels::scalar`). Unit tests compare the levels.
//!
//! ## The token
//! [`Isa`] is a proof that this CPU supports a level: its field is private and nothing outside
//! this module can build one. The only sources are CPU detection ([`Isa::detect`]) and capping it
//! ([`Isa::capped`], [`Isa::from_setting`], [`Isa::active`], [`Isa::all_available`]), which can
//! only lower the detected level. Safe functions that take an `Isa` (every kernel entry point)
//! therefore never run an instruction the CPU lacks, whatever their caller passes; wheels are
//! never built with `target-cpu=native`.
//!
//! ## `GEOFAST_SIMD`
//! The kernels use [`Isa::active`]: the detected level capped by the environment variable
//! `GEOFAST_SIMD`, read once per process (later changes are ignored), for testing and
//! comparison. Values (case-insensitive, surrounding spaces ignored):
//! * unset, empty or `auto`: the best level the CPU supports;
//! * `avx512`, `avx2`: at most that level (a cap: a CPU without it runs the best level it has);
//! * `portable`: the portable code only; `off` and `scalar` are aliases of `portable`.
//!
//! Any other value is an error: every kernel that would use SIMD returns
//! [`GeoError::Parameter`] naming the variable and its valid values (a `ParameterError` in
//! Python), instead of silently running a level the user did not ask for.

use std::sync::OnceLock;

use crate::core::error::{GeoError, GeoResult};

/// Environment variable that caps the instruction set (see the module documentation).
pub const SIMD_ENV: &str = "GEOFAST_SIMD";

/// The values `GEOFAST_SIMD` accepts, as error messages state them.
pub const SIMD_VALUES: &str = "one of auto, avx512, avx2, portable (off and scalar mean portable)";

/// An instruction-set level, lowest first. A plain value: naming a level proves nothing about
/// the CPU; only an [`Isa`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The compilation target's baseline.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/DQ/VL/BW on top of [`Level::Avx2`].
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The name `GEOFAST_SIMD` and `geofast._geofast.simd_level()` use.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// Parse a `GEOFAST_SIMD` value into the highest level it allows (`None`: the variable is unset).
pub fn parse_setting(value: Option<&str>) -> GeoResult<Level> {
    let Some(raw) = value else { return Ok(Level::Avx512) };
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "auto" | "avx512" => Ok(Level::Avx512),
        "avx2" => Ok(Level::Avx2),
        "portable" | "off" | "scalar" => Ok(Level::Portable),
        _ => Err(GeoError::parameter(SIMD_ENV, SIMD_VALUES, format!("{raw:?}"))),
    }
}

/// Proof that this CPU supports [`Isa::level`]. Created only by detection (see the module
/// documentation); `Copy`, so a kernel passes it down freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Isa {
    level: Level,
}

impl Isa {
    /// The best level this CPU supports (detected once; ignores `GEOFAST_SIMD`).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        Isa { level: *DETECTED.get_or_init(detect_level) }
    }

    /// The best level this CPU supports that is at most `max`. `Isa::capped(Level::Portable)`
    /// is the portable code, available everywhere.
    pub fn capped(max: Level) -> Isa {
        Isa { level: Isa::detect().level.min(max) }
    }

    /// The level a `GEOFAST_SIMD` value selects on this CPU (`None`: unset).
    pub fn from_setting(value: Option<&str>) -> GeoResult<Isa> {
        parse_setting(value).map(Isa::capped)
    }

    /// The level the kernels use in this process: [`Isa::detect`] capped by `GEOFAST_SIMD`,
    /// read the first time; an invalid value is an error on every call. After the first call,
    /// one atomic load.
    pub fn active() -> GeoResult<Isa> {
        static ACTIVE: OnceLock<GeoResult<Isa>> = OnceLock::new();
        ACTIVE
            .get_or_init(|| match std::env::var(SIMD_ENV) {
                Ok(v) => Isa::from_setting(Some(&v)),
                Err(std::env::VarError::NotPresent) => Ok(Isa::detect()),
                Err(std::env::VarError::NotUnicode(v)) => Isa::from_setting(Some(&v.to_string_lossy())),
            })
            .clone()
    }

    /// Every level this CPU supports, lowest first (tests and benchmarks compare them).
    pub fn all_available() -> Vec<Isa> {
        let best = Isa::detect().level;
        Level::ALL.into_iter().filter(|&l| l <= best).map(|level| Isa { level }).collect()
    }

    /// The level this token proves.
    pub fn level(self) -> Level {
        self.level
    }

    /// The level's name: `"avx512"`, `"avx2"` or `"portable"`.
    pub fn name(self) -> &'static str {
        self.level.name()
    }

    /// True when the `avx2` versions may run (AVX2, FMA and F16C are present).
    pub fn avx2(self) -> bool {
        self.level >= Level::Avx2
    }

    /// True when the `avx512` versions may run (the `avx2` features plus AVX-512 F/DQ/VL/BW).
    pub fn avx512(self) -> bool {
        self.level >= Level::Avx512
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_level() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        Level::Portable
    } else if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw") {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_level() -> Level {
    Level::Portable
}

/// Define a kernel compiled for each [`Level`], dispatched on an [`Isa`] passed as the first
/// argument:
///
/// ```ignore
/// simd_kernel! {
///     /// doc
///     pub fn axpy<M>(xs: &[f64], out: &mut [f64], k: f64) {
///         for (o, &x) in out.iter_mut().zip(xs) { *o = M::mul_add(x, k, *o); }
///     }
/// }
/// axpy(Isa::active()?, &xs, &mut out, 2.0);
/// ```
///
/// The body is an `#[inline(always)]` function generic over the multiply-add mode `M`
/// ([`MulAdd`](crate::core::vmath::MulAdd)), instantiated with `Fused` in the AVX2 and AVX-512
/// versions and `Native` in the portable one. Helpers it calls must be `#[inline(always)]` too so
/// that they are compiled with the version's features. The body must be safe code: the versions
/// differ only in the instructions the compiler may choose.
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

            /// # Safety
            /// The CPU must support AVX2 and FMA (an `Isa` with `avx2()` true proves it).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2_fma($($arg: $ty),*) $(-> $ret)? {
                body::<$crate::core::vmath::Fused>($($arg),*)
            }

            /// # Safety
            /// The CPU must support AVX-512 F/DQ/VL/BW, AVX2 and FMA (an `Isa` with `avx512()`
            /// true proves it).
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
                    // SAFETY: an `Isa` is only ever created by CPU detection (`core::simd`), and
                    // `avx512()` is true only when the CPU reported AVX-512 F/DQ/VL/BW, AVX2 and
                    // FMA: every feature `avx512` enables.
                    return unsafe { avx512($($arg),*) };
                }
                if isa.avx2() {
                    // SAFETY: as above; `avx2()` is true only when the CPU reported AVX2, FMA
                    // and F16C, a superset of what `avx2_fma` enables.
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
    fn every_level_agrees() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64).sqrt() * 0.1).collect();
        let runs: Vec<(Isa, Vec<f64>)> = Isa::all_available()
            .into_iter()
            .map(|isa| {
                let mut y = vec![1.0 / 3.0; 1000];
                axpy(isa, &x, &mut y, std::f64::consts::PI);
                (isa, y)
            })
            .collect();
        let best = &runs.last().unwrap().1;
        for (isa, y) in &runs {
            if isa.avx2() {
                assert_eq!(y, best, "{isa:?}");
            }
            for (p, q) in y.iter().zip(best) {
                assert!((p - q).abs() <= 4.0 * f64::EPSILON * p.abs());
            }
        }
    }

    #[test]
    fn tokens_never_exceed_the_cpu() {
        let best = Isa::detect();
        for level in Level::ALL {
            let isa = Isa::capped(level);
            assert_eq!(isa.level(), level.min(best.level()));
            assert!(isa <= best);
        }
        assert_eq!(Isa::capped(Level::Portable).name(), "portable");
        assert!(!Isa::capped(Level::Portable).avx2() && !Isa::capped(Level::Portable).avx512());
        assert!(!Isa::capped(Level::Avx2).avx512());
        let all = Isa::all_available();
        assert_eq!(all.first().map(|i| i.level()), Some(Level::Portable));
        assert_eq!(all.last(), Some(&best));
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if best.avx2() {
                assert!(has!("avx2") && has!("fma") && has!("f16c"));
            }
            if best.avx512() {
                assert!(has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw"));
            }
        }
    }

    #[test]
    fn setting_values() {
        let best = Isa::detect().level();
        let cases: [(Option<&str>, Level); 12] = [
            (None, Level::Avx512),
            (Some(""), Level::Avx512),
            (Some("auto"), Level::Avx512),
            (Some(" AUTO "), Level::Avx512),
            (Some("avx512"), Level::Avx512),
            (Some("avx2"), Level::Avx2),
            (Some("AVX2\n"), Level::Avx2),
            (Some("portable"), Level::Portable),
            (Some("off"), Level::Portable),
            (Some("scalar"), Level::Portable),
            (Some("Portable"), Level::Portable),
            (Some("OFF"), Level::Portable),
        ];
        for (value, cap) in cases {
            assert_eq!(parse_setting(value), Ok(cap), "{value:?}");
            assert_eq!(Isa::from_setting(value).unwrap().level(), cap.min(best), "{value:?}");
        }
        for bad in ["avx3", "sse2", "0", "none", "avx2,fma", "portabel"] {
            let err = Isa::from_setting(Some(bad)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("GEOFAST_SIMD must be one of auto, avx512, avx2, portable (off and scalar mean portable), got {bad:?}")
            );
        }
        // Whatever the test environment sets, `active` is one of the detected levels or the error.
        match Isa::active() {
            Ok(isa) => assert!(isa <= Isa::detect()),
            Err(e) => assert!(e.to_string().starts_with("GEOFAST_SIMD must be")),
        }
    }
}
