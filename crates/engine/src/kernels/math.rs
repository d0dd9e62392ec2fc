//! Elementary functions by the same arithmetic on every platform. The C library's `expf`, `sinf`,
//! `cosf` and `powf` round differently on glibc (Linux) and MinGW (the Windows build): measured
//! over 2 million inputs, 1 in ~1,600 `exp` results and 1 in ~80 `sin`/`cos` results differ by
//! one ULP. That was enough to flip greedy near-ties: the two builds wrote different answers to
//! the same prompt. Everything the CPU forward pass and sampling compute with these functions
//! goes through here instead.

/// e^x in f32 (Cephes' `expf`, about 1 ULP): x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6
/// polynomial, 2^n by exponent bits. Only IEEE additions, multiplications and conversions, no
/// libm and no branches, so loops over it vectorize.
#[inline]
pub fn exp(x: f32) -> f32 {
    // Beyond these e^x is 0 or infinite in f32; a NaN passes through.
    let x = x.clamp(-104.0, 89.0);
    // The nearest integer (ties to even), exactly: adding 1.5·2^23 leaves no fraction bits.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln2 split in two so that n·ln2 subtracts exactly for every n in range.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    // 2^n as two normal powers (n is in -150..=128), so results near overflow and in the
    // subnormal range round once.
    // n as an integer from the low bits of `shifted`: a float-to-int conversion would keep loops
    // from vectorizing. A NaN gives some n, and a NaN result all the same.
    let n = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half = n >> 1;
    er * pow2(half) * pow2(n.wrapping_sub(half))
}

/// 2^n for -126 ≤ n ≤ 127.
#[inline]
fn pow2(n: i32) -> f32 {
    f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// `xs[i] = e^(xs[i] - shift)`: a softmax's exponentials.
pub fn exp_shifted(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::level() >= super::Level::Avx2 {
        // SAFETY: the CPU has AVX2 (the level is never above the detected one).
        return unsafe { exp_shifted_avx2(xs, shift) };
    }
    exp_shifted_portable(xs, shift)
}

// The loops are compiled a second time for AVX2, 8 lanes instead of SSE2's 4. The arithmetic is
// the same IEEE operations (Rust never fuses a multiply and an add into an FMA on its own), so
// every level computes the same bits, as the other kernels do.
#[inline(always)]
fn exp_shifted_portable(xs: &mut [f32], shift: f32) {
    for x in xs {
        *x = exp(*x - shift);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(xs: &mut [f32], shift: f32) {
    exp_shifted_portable(xs, shift)
}

#[inline(always)]
fn silu_mul_portable(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_mul_avx2(out: &mut [f32], gate: &[f32], up: &[f32]) {
    silu_mul_portable(out, gate, up)
}

/// silu(gate) · up elementwise: the SwiGLU of Qwen's MLP in one pass, on the kernels' threads.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 4096;
    assert_eq!(gate.len(), up.len(), "SwiGLU halves differ in size");
    let mut out = vec![0f32; gate.len()];
    let out_addr = out.as_mut_ptr() as usize;
    let len = gate.len();
    let avx2 = super::level() >= super::Level::Avx2;
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(CHUNK), |chunks| {
        for c in chunks {
            let range = c * CHUNK..((c + 1) * CHUNK).min(len);
            // SAFETY: chunks are disjoint ranges of `out`, each written by one thread.
            let out = unsafe {
                std::slice::from_raw_parts_mut((out_addr as *mut f32).add(range.start), range.len())
            };
            let (gate, up) = (&gate[range.clone()], &up[range]);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 (the level is never above the detected one).
                unsafe { silu_mul_avx2(out, gate, up) };
                continue;
            }
            silu_mul_portable(out, gate, up);
        }
    });
    out
}

/// The RoPE angle table's (cos, sin) for `positions` positions, `half` frequencies each, row by
/// row. The angles are f32 products, as in transformers and llama.cpp; the frequencies and the
/// cosines and sines are computed in f64 and rounded once. libm's f64 results differ between
/// platforms by at most an f64 ULP, which changes the rounded f32 only where a value lies within
/// 2^-29 of an f32 rounding boundary.
pub fn rope_table(theta: f32, head_dim: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for pos in 0..positions {
        for &f in &inv_freq {
            let (s, c) = ((pos as f32 * f) as f64).sin_cos();
            cos.push(c as f32);
            sin.push(s as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_its_range() {
        let mut worst = 0u32;
        for i in 0..400_000 {
            let x = -103.0 + 191.0 * i as f32 / 400_000.0;
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want.is_normal() {
                worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            } else {
                assert!(
                    (got - want).abs() <= f32::MIN_POSITIVE,
                    "{x}: {got} vs {want}"
                );
            }
        }
        assert!(worst <= 2, "worst {worst} ULP");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn every_level_computes_the_same_bits() {
        let xs: Vec<f32> = (0..10_000).map(|i| (i as f32 - 7000.0) / 37.0).collect();
        let mut portable = xs.clone();
        exp_shifted_portable(&mut portable, 1.5);
        let mut dispatched = xs.clone();
        exp_shifted(&mut dispatched, 1.5);
        assert_eq!(portable, dispatched);
        let mut out = vec![0.0; xs.len()];
        silu_mul_portable(&mut out, &xs, &portable);
        assert_eq!(out, silu_mul(&xs, &portable));
    }

    #[test]
    fn silu_mul_matches_its_definition() {
        let gate: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 100.0).collect();
        let up = vec![2.0; gate.len()];
        let want: Vec<f32> = gate
            .iter()
            .map(|&g| (g as f64 / (1.0 + (-g as f64).exp()) * 2.0) as f32)
            .collect();
        let got = silu_mul(&gate, &up);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn rope_table_rows_are_positions() {
        let (cos, sin) = rope_table(10_000.0, 8, 3);
        assert_eq!(cos.len(), 12);
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        assert!(
            (sin[4] - 1f32.sin()).abs() < 1e-7,
            "position 1, frequency 1"
        );
        assert!((cos[8 + 1] - (2.0f64 * 0.1).cos() as f32).abs() < 1e-7);
    }
}
