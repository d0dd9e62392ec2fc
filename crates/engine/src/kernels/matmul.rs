//! Quantized matrix products: 8-bit activation rows ([`Q8Blocks`]) times packed 8-bit weights
//! ([`PackedQ8`]).
//!
//! Every level computes one definition: for each output, over blocks in order,
//! `acc = fma(dot, scale_a * scale_w, acc)`, where `dot` is the block's exact integer dot product.
//! So a row's result does not depend on the SIMD level, on how many rows are multiplied together,
//! or on how the work is split between threads.

use super::packed::{PackedQ8, GROUP, GROUP_BLOCK_BYTES, SCALE_BYTES};
use super::q8_0::{Q8Blocks, BLOCK};
use super::Level;

/// Activation rows multiplied against one group's weights while they are in registers: enough
/// independent chains of VNNI products to hide their latency.
const ROW_TILE: usize = 8;

/// `out` (m × n, row-major) = `a` (m × k) · `w`ᵀ, for `w` (n × k). Threads split the weight
/// groups; each thread runs every row tile against its groups while they are in cache.
pub fn matmul(level: Level, a: &Q8Blocks, w: &PackedQ8, out: &mut [f32]) {
    assert_eq!(a.cols(), w.cols(), "inner dimensions differ");
    let (m, n) = (a.rows(), w.rows());
    assert_eq!(out.len(), m * n, "output for {m}x{n}");
    let out = Output {
        addr: out.as_mut_ptr() as usize,
        n,
    };
    // VNNI multiplies unsigned (the weights, offset by 128) by signed bytes: each block's sum
    // starts at -128 times the sum of its activations, once per row and block.
    let offsets: Vec<i32> = a
        .quants()
        .chunks_exact(BLOCK)
        .map(|q| -128 * q.iter().map(|&x| x as i32).sum::<i32>())
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(w.groups(), |groups| {
        for group in groups {
            for first in (0..m).step_by(ROW_TILE) {
                let tile = Tile {
                    a,
                    offsets: &offsets,
                    w,
                    group,
                    first_row: first,
                    out,
                };
                match m - first {
                    1 => tile.run::<1>(level),
                    2 => tile.run::<2>(level),
                    3 => tile.run::<3>(level),
                    4 => tile.run::<4>(level),
                    5 => tile.run::<5>(level),
                    6 => tile.run::<6>(level),
                    7 => tile.run::<7>(level),
                    _ => tile.run::<ROW_TILE>(level),
                }
            }
        }
    });
}

/// Where results go: `out[r * n + c]`.
#[derive(Clone, Copy)]
struct Output {
    addr: usize,
    n: usize,
}

impl Output {
    /// SAFETY: `count` values from (r, c) are inside the m × n output, and no other thread writes
    /// them (each group's columns belong to one thread).
    unsafe fn at(self, r: usize, c: usize) -> *mut f32 {
        unsafe { (self.addr as *mut f32).add(r * self.n + c) }
    }
}

/// One group of 16 weight rows against `R` activation rows from `first_row`.
struct Tile<'a> {
    a: &'a Q8Blocks,
    offsets: &'a [i32],
    w: &'a PackedQ8,
    group: usize,
    first_row: usize,
    out: Output,
}

impl Tile<'_> {
    /// Output columns of the group inside the matrix (the last group may be partial).
    fn columns(&self) -> usize {
        GROUP.min(self.w.rows() - self.group * GROUP)
    }

    /// Writes one row's 16 results, dropping the padding rows' columns.
    fn store(&self, r: usize, values: &[f32; GROUP]) {
        let c = self.group * GROUP;
        for (i, v) in values[..self.columns()].iter().enumerate() {
            // SAFETY: see Output::at; c + i < n and first_row + r < m.
            unsafe { *self.out.at(self.first_row + r, c + i) = *v };
        }
    }

    fn run<const R: usize>(&self, level: Level) {
        match level {
            // SAFETY: the level is at most what the CPU was detected to run.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { x86::tile_vnni512::<R>(self) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::tile_avx2::<R>(self) },
            _ => self.run_scalar::<R>(),
        }
    }

    /// The reference.
    fn run_scalar<const R: usize>(&self) {
        let blocks = self.w.blocks();
        for r in 0..R {
            let (a_scales, a_quants) = self.a.row(self.first_row + r);
            let mut acc = [0f32; GROUP];
            for b in 0..blocks {
                let a_quants = &a_quants[b * BLOCK..][..BLOCK];
                for (lane, acc) in acc.iter_mut().enumerate().take(self.columns()) {
                    let (w_scale, w_quants) = self.w.block(self.group * GROUP + lane, b);
                    let dot: i32 = a_quants
                        .iter()
                        .zip(w_quants)
                        .map(|(&a, w)| a as i32 * w as i32)
                        .sum();
                    *acc = (dot as f32).mul_add(a_scales[b] * w_scale, *acc);
                }
            }
            self.store(r, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Bytes ahead in a group's stream to prefetch (about four blocks).
    const PREFETCH_AHEAD: usize = 4 * GROUP_BLOCK_BYTES;
    /// Cache lines per block of a group.
    const LINES: usize = GROUP_BLOCK_BYTES.div_ceil(64);

    /// The tile's activation rows: scales, and quants as a pointer to read 4 bytes at a time.
    #[inline(always)]
    fn rows<'a, const R: usize>(tile: &Tile<'a>) -> [(&'a [f32], *const u8); R] {
        std::array::from_fn(|r| {
            let (scales, quants) = tile.a.row(tile.first_row + r);
            (scales, quants.as_ptr() as *const u8)
        })
    }

    /// 4 activation bytes of `step` in block `b`, as one 32-bit value (to broadcast).
    #[inline(always)]
    unsafe fn four(quants: *const u8, b: usize, step: usize) -> i32 {
        unsafe { (quants.add(b * BLOCK + 4 * step) as *const i32).read_unaligned() }
    }

    /// The reference on 512-bit vectors: a vector holds the 16 columns of the group.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni512<const R: usize>(tile: &Tile<'_>) {
        let group = tile.w.group(tile.group);
        let blocks = tile.w.blocks();
        let a = rows::<R>(tile);
        let offsets: [&[i32]; R] =
            std::array::from_fn(|r| &tile.offsets[(tile.first_row + r) * blocks..]);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let at = group.as_ptr().add(b * GROUP_BLOCK_BYTES);
            for line in 0..LINES {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_AHEAD + 64 * line) as _);
            }
            let w_scale = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            let w: [__m512i; 8] = std::array::from_fn(|step| {
                _mm512_loadu_si512(at.add(SCALE_BYTES + step * 4 * GROUP) as *const _)
            });
            for ((acc, (a_scales, a_quants)), offsets) in acc.iter_mut().zip(a).zip(offsets) {
                let mut dot = _mm512_set1_epi32(*offsets.get_unchecked(b));
                for (step, w) in w.iter().enumerate() {
                    let a = _mm512_set1_epi32(four(a_quants, b, step));
                    dot = _mm512_dpbusd_epi32(dot, *w, a);
                }
                let scale = _mm512_mul_ps(_mm512_set1_ps(*a_scales.get_unchecked(b)), w_scale);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            if tile.columns() == GROUP {
                _mm512_storeu_ps(tile.out.at(tile.first_row + r, tile.group * GROUP), *acc);
            } else {
                let mut values = [0f32; GROUP];
                _mm512_storeu_ps(values.as_mut_ptr(), *acc);
                tile.store(r, &values);
            }
        }
    }

    /// The reference on 256-bit vectors: the group's columns in two halves of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(tile: &Tile<'_>) {
        let group = tile.w.group(tile.group);
        let blocks = tile.w.blocks();
        let a = rows::<R>(tile);
        let (offset, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
        let mut values = [[0f32; GROUP]; R];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..blocks {
                let at = group.as_ptr().add(b * GROUP_BLOCK_BYTES);
                let w_scale = _mm256_cvtph_ps(_mm_loadu_si128(at.add(16 * half) as *const __m128i));
                let mut dot = [_mm256_setzero_si256(); R];
                for step in 0..8 {
                    let stored = at.add(SCALE_BYTES + step * 4 * GROUP + 32 * half);
                    let w = _mm256_xor_si256(_mm256_loadu_si256(stored as *const __m256i), offset);
                    // maddubs multiplies unsigned by signed bytes: |w| by a·sign(w). Exact:
                    // every pair sum fits i16 because |a| ≤ 127 and |w| ≤ 128.
                    let abs_w = _mm256_abs_epi8(w);
                    for (dot, (_, a_quants)) in dot.iter_mut().zip(a) {
                        let a = _mm256_sign_epi8(_mm256_set1_epi32(four(a_quants, b, step)), w);
                        let pairs = _mm256_maddubs_epi16(abs_w, a);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
                for ((acc, dot), (a_scales, _)) in acc.iter_mut().zip(dot).zip(a) {
                    let scale = _mm256_mul_ps(_mm256_set1_ps(*a_scales.get_unchecked(b)), w_scale);
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(values[r].as_mut_ptr().add(8 * half), acc[r]);
            }
        }
        for (r, values) in values.iter().enumerate() {
            tile.store(r, values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::available_levels;
    use crate::kernels::random_values as random;
    use crate::sampling::Rng;

    #[test]
    fn every_level_gives_the_reference_bits_for_any_number_of_rows() {
        let mut rng = Rng::new(7);
        // A partial last group (37 rows) and odd and even block counts.
        for (n, blocks) in [(37, 7), (48, 8), (16, 1)] {
            let k = blocks * BLOCK;
            let w = PackedQ8::quantize(&random(&mut rng, n * k, 2.0), n, k);
            for m in [1, 2, 3, 4, 5, 8, 9, 17] {
                let a = Q8Blocks::quantize(&random(&mut rng, m * k, 20.0), m, k);
                let mut want = vec![0f32; m * n];
                matmul(Level::Scalar, &a, &w, &mut want);
                for level in available_levels() {
                    let mut got = vec![f32::NAN; m * n];
                    matmul(level, &a, &w, &mut got);
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{} with {m}x{k} by {n} rows", level.name());
                }
            }
        }
    }

    #[test]
    fn extreme_quants_do_not_saturate() {
        // |w| = 128 (possible in a GGUF Q8_0 file) against |a| = 127 in every position: the pair
        // sums are at the edge of i16 in the AVX2 path.
        let k = 4 * BLOCK;
        let mut bytes = Vec::new();
        for _ in 0..k / BLOCK {
            bytes.extend(half::f16::from_f32(1.0).to_le_bytes());
            bytes.extend([0x80u8; BLOCK]);
        }
        let w = PackedQ8::from_gguf(candle_core::quantized::GgmlDType::Q8_0, &bytes, 1, k).unwrap();
        let a = Q8Blocks::quantize(&vec![-1.0; k], 1, k);
        for level in available_levels() {
            let mut got = [0f32];
            matmul(level, &a, &w, &mut got);
            // 127 * 128 * k, scaled by 1/127 (a's scale) and 1.0 (w's).
            assert_eq!(got[0], 128.0 * k as f32, "{}", level.name());
        }
    }

    #[test]
    fn quantized_product_is_close_to_the_float_product() {
        let mut rng = Rng::new(3);
        let (m, n, k) = (3, 16, 32 * BLOCK);
        let (av, wv) = (random(&mut rng, m * k, 4.0), random(&mut rng, n * k, 0.2));
        let (a, w) = (Q8Blocks::quantize(&av, m, k), PackedQ8::quantize(&wv, n, k));
        let mut got = vec![0f32; m * n];
        matmul(crate::kernels::level(), &a, &w, &mut got);
        for r in 0..m {
            for c in 0..n {
                let terms = (0..k).map(|j| av[r * k + j] * wv[c * k + j]);
                let (exact, size) = terms.fold((0f32, 0f32), |(s, z), t| (s + t, z + t.abs()));
                // 8-bit rounding of both operands: about 1/254 of each term, mostly cancelling.
                let error = (got[r * n + c] - exact).abs();
                assert!(
                    error < 1e-3 * size,
                    "{} vs {exact} (terms' size {size})",
                    got[r * n + c]
                );
            }
        }
    }
}
