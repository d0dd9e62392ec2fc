//! Q6_K's values exactly: per row and half block of 16, an 8-bit scale `sc`, per super-block of
//! 256 an f16 factor `d`, and 6-bit quants `q`; a weight is `(d·sc)·(q − 32)`. The quants are
//! held a byte each (unsigned, 0..64): a quarter more bytes than the file, and the same
//! interleaved steps as 8-bit weights, with no unpacking in the product.
//!
//! Per group and super-block: the 16 rows' `d` (f16), per half block the 16 rows' `sc`, then per
//! block the 8 four-byte steps of 16 rows. Rows past the end of the matrix are zero.
//!
//! The product, per output and half block in order, with `a` the activations' scale and `Σa` the
//! sum of their quants in the half: `acc = fma(dot − 32·Σa, a·(d·sc), acc)`.

use super::{infallible, interleaved, lanes, Groups, GROUP, SUPER};
use crate::kernels::matmul::{four, Tile, Weights};
use crate::kernels::q8_0::{Q8Blocks, BLOCK, HALF};
use half::f16;

/// Blocks of 32 per super-block.
const BLOCKS: usize = SUPER / BLOCK;
/// Where a group's super-block keeps its scales and its quants.
const SCALES: usize = 2 * GROUP;
const QUANTS: usize = SCALES + 2 * BLOCKS * GROUP;
/// Bytes of one group's block of quants.
const BLOCK_QUANT_BYTES: usize = GROUP * BLOCK;
/// Bytes of one group's super-block.
pub const SUPER_BYTES: usize = QUANTS + BLOCKS * BLOCK_QUANT_BYTES;
/// Bytes of a GGUF Q6_K super-block: 128 bytes of low nibbles, 64 of high bit pairs, 16 scales,
/// d.
const GGUF_BYTES: usize = SUPER / 2 + SUPER / 4 + SUPER / HALF + 2;

/// A `rows` × `cols` Q6_K matrix (`cols` a multiple of 256).
#[derive(Debug, Clone)]
pub struct PackedQ6K {
    groups: Groups,
}

/// The 256 quants (0..64) of a GGUF super-block: each 128 values take 64 bytes of nibbles
/// (values 0-31 and 32-63 low, 64-95 and 96-127 high) and 32 bytes of bit pairs (four values
/// 32 apart per byte).
fn gguf_quants(block: &[u8]) -> [u8; SUPER] {
    let mut q = [0u8; SUPER];
    for n in 0..2 {
        let (low, high) = (&block[64 * n..], &block[SUPER / 2 + 32 * n..]);
        for l in 0..32 {
            let at = 128 * n + l;
            q[at] = (low[l] & 0x0f) | (high[l] & 3) << 4;
            q[at + 32] = (low[l + 32] & 0x0f) | (high[l] >> 2 & 3) << 4;
            q[at + 64] = (low[l] >> 4) | (high[l] >> 4 & 3) << 4;
            q[at + 96] = (low[l + 32] >> 4) | (high[l] >> 6 & 3) << 4;
        }
    }
    q
}

impl PackedQ6K {
    /// GGUF Q6_K data of a `rows` × `cols` matrix; `None` if the size does not match.
    pub fn from_gguf(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let supers = cols / SUPER;
        let row_bytes = supers * GGUF_BYTES;
        if !cols.is_multiple_of(SUPER) || bytes.len() != rows * row_bytes {
            return None;
        }
        let groups = Groups::fill(rows, cols, supers * SUPER_BYTES, |g, group| {
            for (lane, r) in lanes(g, rows) {
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                for (block, at) in row
                    .chunks_exact(GGUF_BYTES)
                    .zip(group.chunks_exact_mut(SUPER_BYTES))
                {
                    at[2 * lane..][..2].copy_from_slice(&block[GGUF_BYTES - 2..]);
                    let scales = &block[SUPER / 2 + SUPER / 4..];
                    for t in 0..2 * BLOCKS {
                        at[SCALES + GROUP * t + lane] = scales[t];
                    }
                    let quants = gguf_quants(block);
                    for (j, quants) in quants.chunks_exact(BLOCK).enumerate() {
                        let to = &mut at[QUANTS + j * BLOCK_QUANT_BYTES..];
                        for (i, &q) in quants.iter().enumerate() {
                            to[interleaved(i, lane)] = q;
                        }
                    }
                }
            }
            Ok(())
        });
        Some(Self {
            groups: infallible(groups),
        })
    }

    fn supers(&self) -> usize {
        self.groups.cols() / SUPER
    }

    /// Row `r`'s `d·sc` for both halves and its quants in block `b`.
    fn block(&self, r: usize, b: usize) -> ([f32; 2], [u8; BLOCK]) {
        let at = &self.groups.group(r / GROUP)[(b / BLOCKS) * SUPER_BYTES..][..SUPER_BYTES];
        let (lane, j) = (r % GROUP, b % BLOCKS);
        let d = f16::from_le_bytes([at[2 * lane], at[2 * lane + 1]]).to_f32();
        let scales =
            std::array::from_fn(|h| d * at[SCALES + GROUP * (2 * j + h) + lane] as i8 as f32);
        let quants = &at[QUANTS + j * BLOCK_QUANT_BYTES..];
        (
            scales,
            std::array::from_fn(|i| quants[interleaved(i, lane)]),
        )
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (scales, quants) = self.block(r, b);
            for (i, (o, q)) in out.iter_mut().zip(quants).enumerate() {
                *o = scales[i / HALF] * (q as i32 - 32) as f32;
            }
        }
    }
}

impl Weights for PackedQ6K {
    /// Per half block, -32 times the sum of the activations' quants: the quants' offset.
    type Term = i32;

    fn terms(a: &Q8Blocks) -> Vec<i32> {
        a.half_sums().iter().map(|s| -32 * s).collect()
    }

    fn groups(&self) -> &Groups {
        &self.groups
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2<const R: usize>(&self, tile: &Tile<'_, i32>) {
        unsafe { x86::tile_avx2::<R>(self, tile) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_vnni512<const R: usize>(&self, tile: &Tile<'_, i32>) {
        unsafe { x86::tile_vnni512::<R>(self, tile) }
    }

    fn tile_scalar<const R: usize>(&self, tile: &Tile<'_, i32>) {
        for (r, a) in tile.rows::<R>().iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for b in 0..self.groups.cols() / BLOCK {
                for (lane, acc) in acc.iter_mut().enumerate().take(tile.columns) {
                    let (scales, w_quants) = self.block(tile.group * GROUP + lane, b);
                    for h in 0..2 {
                        let a_quants = &a.quants[b * BLOCK + h * HALF..][..HALF];
                        let dot: i32 = a_quants
                            .iter()
                            .zip(&w_quants[h * HALF..])
                            .map(|(&a, &w)| a as i32 * w as i32)
                            .sum();
                        let dot = dot + a.terms[2 * b + h];
                        *acc = (dot as f32).mul_add(a.scales[b] * scales[h], *acc);
                    }
                }
            }
            tile.store(r, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Cache lines to prefetch per block: a super-block ahead, spread over its blocks.
    const LINES: usize = (SUPER_BYTES / BLOCKS).div_ceil(64);

    /// The reference on 512-bit vectors: a vector holds the 16 columns of the group.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni512<const R: usize>(w: &PackedQ6K, tile: &Tile<'_, i32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let mut acc = [_mm512_setzero_ps(); R];
        for s in 0..w.supers() {
            let at = group.as_ptr().add(s * SUPER_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            for j in 0..BLOCKS {
                let ahead = at.wrapping_add(SUPER_BYTES + j * SUPER_BYTES / BLOCKS);
                for line in 0..LINES {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as _);
                }
                let scale = |h: usize| {
                    let at = at.add(SCALES + GROUP * (2 * j + h));
                    let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(at as *const _));
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d)
                };
                let scales = [scale(0), scale(1)];
                let quants = at.add(QUANTS + j * BLOCK_QUANT_BYTES);
                let q: [__m512i; 8] = std::array::from_fn(|step| {
                    _mm512_loadu_si512(quants.add(64 * step) as *const _)
                });
                let b = s * BLOCKS + j;
                for (acc, a) in acc.iter_mut().zip(&a) {
                    let a_scale = _mm512_set1_ps(*a.scales.get_unchecked(b));
                    for (h, scale) in scales.iter().enumerate() {
                        let mut dot = _mm512_set1_epi32(*a.terms.get_unchecked(2 * b + h));
                        for (step, q) in q.iter().enumerate().skip(4 * h).take(4) {
                            let a = _mm512_set1_epi32(four(a.quants, b, step));
                            dot = _mm512_dpbusd_epi32(dot, *q, a);
                        }
                        let a_scaled = _mm512_mul_ps(a_scale, *scale);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), a_scaled, *acc);
                    }
                }
            }
        }
        // SAFETY: a vector of 16 f32 is laid out as the array of them.
        tile.store_rows(&std::mem::transmute_copy::<_, [[f32; GROUP]; R]>(&acc));
    }

    /// The reference on 256-bit vectors: the group's columns in two halves of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(w: &PackedQ6K, tile: &Tile<'_, i32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let ones = _mm256_set1_epi16(1);
        let mut values = [[0f32; GROUP]; R];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for s in 0..w.supers() {
                let at = group.as_ptr().add(s * SUPER_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(at.add(16 * half) as *const _));
                for j in 0..BLOCKS {
                    let scale = |h: usize| {
                        let at = at.add(SCALES + GROUP * (2 * j + h) + 8 * half);
                        let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(at as *const _));
                        _mm256_mul_ps(_mm256_cvtepi32_ps(sc), d)
                    };
                    let scales = [scale(0), scale(1)];
                    let quants = at.add(QUANTS + j * BLOCK_QUANT_BYTES + 32 * half);
                    let q: [__m256i; 8] = std::array::from_fn(|step| {
                        _mm256_loadu_si256(quants.add(64 * step) as *const _)
                    });
                    let b = s * BLOCKS + j;
                    for (acc, a) in acc.iter_mut().zip(&a) {
                        let a_scale = _mm256_set1_ps(*a.scales.get_unchecked(b));
                        for (h, scale) in scales.iter().enumerate() {
                            let mut dot = _mm256_set1_epi32(*a.terms.get_unchecked(2 * b + h));
                            // Exact in 16 bits: 2 steps of pairs of 63 · 127 stay below 2¹⁵.
                            for steps in (4 * h..4 * h + 4).step_by(2) {
                                let pairs = |step: usize| {
                                    let a = _mm256_set1_epi32(four(a.quants, b, step));
                                    _mm256_maddubs_epi16(q[step], a)
                                };
                                let pairs = _mm256_add_epi16(pairs(steps), pairs(steps + 1));
                                dot = _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, ones));
                            }
                            let a_scaled = _mm256_mul_ps(a_scale, *scale);
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), a_scaled, *acc);
                        }
                    }
                }
            }
            for (values, acc) in values.iter_mut().zip(acc) {
                _mm256_storeu_ps(values.as_mut_ptr().add(8 * half), acc);
            }
        }
        tile.store_rows(&values);
    }
}
