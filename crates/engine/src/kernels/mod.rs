//! Our own CPU kernels: quantized matrix products, chosen at run time by the instructions the CPU
//! has (the build targets a baseline; nothing here depends on the build machine's CPU), and
//! causal attention. Every level computes the same bits (see [`matmul`]).

pub mod attention;
pub mod math;
pub mod matmul;
pub mod packed;
pub mod q8_0;

use std::sync::OnceLock;

/// The instruction sets the kernels use, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust: the reference every other level is tested against.
    Scalar,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX-512 VNNI on 512-bit vectors: one instruction per 4-byte dot product of 16 outputs.
    Avx512Vnni,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512vnni",
        }
    }

    /// The best level this CPU runs.
    pub fn detected() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Level::Avx512Vnni;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// The detected level, lowered by `QWEN_NATIVE_SIMD` (scalar | avx2 | avx512vnni) where set:
    /// how tests cover every level on one machine. A level above the CPU's is never used.
    pub fn from_env() -> Level {
        let cap = match std::env::var("QWEN_NATIVE_SIMD").as_deref() {
            Ok("scalar") => Level::Scalar,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512Vnni,
        };
        Level::detected().min(cap)
    }
}

/// The level the kernels use in this process (read once).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(Level::from_env)
}

/// Every level this CPU can run, for tests.
pub fn available_levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512Vnni]
        .into_iter()
        .filter(|l| *l <= Level::detected())
        .collect()
}

/// Test data: `n` values spread evenly over ±`spread` / 2.
#[cfg(test)]
pub(crate) fn random_values(rng: &mut crate::sampling::Rng, n: usize, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_can_only_lower_the_level() {
        // Read through from_env (not the process-wide level) so other tests are unaffected.
        std::env::set_var("QWEN_NATIVE_SIMD", "scalar");
        assert_eq!(Level::from_env(), Level::Scalar);
        std::env::set_var("QWEN_NATIVE_SIMD", "avx2");
        assert_eq!(Level::from_env(), Level::detected().min(Level::Avx2));
        std::env::remove_var("QWEN_NATIVE_SIMD");
        assert_eq!(Level::from_env(), Level::detected());
        assert_eq!(available_levels().last(), Some(&Level::detected()));
    }
}
