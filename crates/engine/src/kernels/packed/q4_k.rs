//! Q4_K as stored: per row and block of 32, 4-bit quants `q` with a 6-bit scale `sc` and minimum
//! `m`, and per super-block of 256 the f16 factors `d` and `dmin`; a weight is
//! `(d·sc)·q − dmin·m` (both products exact in f32).
//!
//! Per group and super-block: the 16 rows' `d` (f16), their `dmin` (f16), per block the 16 `sc`
//! then the 16 `m` (bytes), then per block four 64-byte vectors of nibbles: vector `v` holds step
//! `v` (quants 4v..4v+4) in its low nibbles and step `v + 4` in its high ones, 16 rows × 4 each.
//! Rows past the end of the matrix are zero.
//!
//! The product, per output and block in order, with `a` the activations' scale and `Σa` the
//! sum of their quants: `acc = fma(dot, a·(d·sc), acc)`, then `acc = fma(−(a·Σa), dmin·m, acc)`.

use super::{infallible, interleaved, lanes, Groups, GROUP, SUPER};
use crate::kernels::matmul::{four, Tile, Weights};
use crate::kernels::q8_0::{Q8Blocks, BLOCK};
use half::f16;

/// Blocks of 32 per super-block.
const BLOCKS: usize = SUPER / BLOCK;
/// Where a group's super-block keeps its `dmin`, its `sc`/`m` bytes and its nibbles.
const DMIN: usize = 2 * GROUP;
const SCALES: usize = 4 * GROUP;
const QUANTS: usize = SCALES + BLOCKS * 2 * GROUP;
/// Bytes of one group's block of nibbles.
const BLOCK_QUANT_BYTES: usize = GROUP * BLOCK / 2;
/// Bytes of one group's super-block.
pub const SUPER_BYTES: usize = QUANTS + BLOCKS * BLOCK_QUANT_BYTES;
/// Bytes of a GGUF Q4_K super-block: d, dmin, 12 bytes of packed 6-bit scales and minimums, 128
/// bytes of nibbles.
const GGUF_BYTES: usize = 4 + 12 + SUPER / 2;

/// A `rows` × `cols` Q4_K matrix (`cols` a multiple of 256).
#[derive(Debug, Clone)]
pub struct PackedQ4K {
    groups: Groups,
}

/// One GGUF super-block, unpacked.
struct Super {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; BLOCKS],
    mins: [u8; BLOCKS],
    quants: [[u8; BLOCK]; BLOCKS],
}

impl Super {
    fn from_gguf(block: &[u8]) -> Self {
        let packed = &block[4..16];
        // Blocks 0-3 keep their 6 bits in bytes 0-7; blocks 4-7 take 4 bits from bytes 8-11 and
        // their top 2 bits from the top of bytes 0-7.
        let scale_min = |j: usize| {
            if j < 4 {
                (packed[j] & 63, packed[j + 4] & 63)
            } else {
                (
                    (packed[j + 4] & 0x0f) | (packed[j - 4] >> 6) << 4,
                    (packed[j + 4] >> 4) | (packed[j] >> 6) << 4,
                )
            }
        };
        // Each 32 bytes of nibbles hold two blocks: the even one low, the odd one high.
        let nibbles = &block[16..GGUF_BYTES];
        Self {
            d: [block[0], block[1]],
            dmin: [block[2], block[3]],
            scales: std::array::from_fn(|j| scale_min(j).0),
            mins: std::array::from_fn(|j| scale_min(j).1),
            quants: std::array::from_fn(|j| {
                std::array::from_fn(|i| (nibbles[32 * (j / 2) + i] >> (4 * (j % 2))) & 0x0f)
            }),
        }
    }
}

impl PackedQ4K {
    /// GGUF Q4_K data of a `rows` × `cols` matrix; `None` if the size does not match.
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
                    let block = Super::from_gguf(block);
                    at[2 * lane..][..2].copy_from_slice(&block.d);
                    at[DMIN + 2 * lane..][..2].copy_from_slice(&block.dmin);
                    for j in 0..BLOCKS {
                        at[SCALES + 2 * GROUP * j + lane] = block.scales[j];
                        at[SCALES + 2 * GROUP * j + GROUP + lane] = block.mins[j];
                        let quants = &mut at[QUANTS + j * BLOCK_QUANT_BYTES..];
                        for (i, &q) in block.quants[j].iter().enumerate() {
                            quants[interleaved(i % 16, lane)] |= q << (4 * (i / 16));
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

    /// Row `r`'s `d·sc`, `dmin·m` and quants in block `b`.
    fn block(&self, r: usize, b: usize) -> (f32, f32, [u8; BLOCK]) {
        let at = &self.groups.group(r / GROUP)[(b / BLOCKS) * SUPER_BYTES..][..SUPER_BYTES];
        let (lane, j) = (r % GROUP, b % BLOCKS);
        let f16_at = |i: usize| f16::from_le_bytes([at[i], at[i + 1]]).to_f32();
        let scale = f16_at(2 * lane) * at[SCALES + 2 * GROUP * j + lane] as f32;
        let min = f16_at(DMIN + 2 * lane) * at[SCALES + 2 * GROUP * j + GROUP + lane] as f32;
        let quants = &at[QUANTS + j * BLOCK_QUANT_BYTES..];
        let quants =
            std::array::from_fn(|i| (quants[interleaved(i % 16, lane)] >> (4 * (i / 16))) & 0x0f);
        (scale, min, quants)
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (scale, min, quants) = self.block(r, b);
            for (o, q) in out.iter_mut().zip(quants) {
                *o = scale * q as f32 - min;
            }
        }
    }
}

impl Weights for PackedQ4K {
    /// Per block, the activations' scale times the sum of their quants.
    type Term = f32;

    fn terms(a: &Q8Blocks) -> Vec<f32> {
        let sums = a.half_sums().chunks_exact(2);
        sums.zip(a.scales())
            .map(|(s, a)| a * (s[0] + s[1]) as f32)
            .collect()
    }

    fn groups(&self) -> &Groups {
        &self.groups
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2<const R: usize>(&self, tile: &Tile<'_, f32>) {
        unsafe { x86::tile_avx2::<R>(self, tile) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_vnni512<const R: usize>(&self, tile: &Tile<'_, f32>) {
        unsafe { x86::tile_vnni512::<R>(self, tile) }
    }

    fn tile_scalar<const R: usize>(&self, tile: &Tile<'_, f32>) {
        for (r, a) in tile.rows::<R>().iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for b in 0..self.groups.cols() / BLOCK {
                let a_quants = &a.quants[b * BLOCK..][..BLOCK];
                let a_min = a.terms[b];
                for (lane, acc) in acc.iter_mut().enumerate().take(tile.columns) {
                    let (scale, min, w_quants) = self.block(tile.group * GROUP + lane, b);
                    let dot: i32 = a_quants
                        .iter()
                        .zip(w_quants)
                        .map(|(&a, w)| a as i32 * w as i32)
                        .sum();
                    *acc = (dot as f32).mul_add(a.scales[b] * scale, *acc);
                    *acc = (-a_min).mul_add(min, *acc);
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
    pub(super) unsafe fn tile_vnni512<const R: usize>(w: &PackedQ4K, tile: &Tile<'_, f32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let nibble = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); R];
        for s in 0..w.supers() {
            let at = group.as_ptr().add(s * SUPER_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(at.add(DMIN) as *const __m256i));
            for j in 0..BLOCKS {
                let ahead = at.wrapping_add(SUPER_BYTES + j * SUPER_BYTES / BLOCKS);
                for line in 0..LINES {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as _);
                }
                let bytes = |at: *const u8| {
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(at as *const _)))
                };
                let scales = at.add(SCALES + 2 * GROUP * j);
                let scale = _mm512_mul_ps(bytes(scales), d);
                let min = _mm512_mul_ps(bytes(scales.add(GROUP)), dmin);
                let quants = at.add(QUANTS + j * BLOCK_QUANT_BYTES);
                let mut q = [_mm512_setzero_si512(); 8];
                for v in 0..4 {
                    let x = _mm512_loadu_si512(quants.add(64 * v) as *const _);
                    q[v] = _mm512_and_si512(x, nibble);
                    q[v + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), nibble);
                }
                let b = s * BLOCKS + j;
                for (acc, a) in acc.iter_mut().zip(&a) {
                    let mut dot = _mm512_setzero_si512();
                    for (step, q) in q.iter().enumerate() {
                        let a = _mm512_set1_epi32(four(a.quants, b, step));
                        dot = _mm512_dpbusd_epi32(dot, *q, a);
                    }
                    let a_scaled = _mm512_mul_ps(_mm512_set1_ps(*a.scales.get_unchecked(b)), scale);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), a_scaled, *acc);
                    *acc = _mm512_fnmadd_ps(_mm512_set1_ps(*a.terms.get_unchecked(b)), min, *acc);
                }
            }
        }
        // SAFETY: a vector of 16 f32 is laid out as the array of them.
        tile.store_rows(&std::mem::transmute_copy::<_, [[f32; GROUP]; R]>(&acc));
    }

    /// The reference on 256-bit vectors: the group's columns in two halves of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(w: &PackedQ4K, tile: &Tile<'_, f32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let (nibble, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
        let mut values = [[0f32; GROUP]; R];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for s in 0..w.supers() {
                let at = group.as_ptr().add(s * SUPER_BYTES);
                let f16s = |at: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(at as *const _));
                let (d, dmin) = (f16s(at.add(16 * half)), f16s(at.add(DMIN + 16 * half)));
                for j in 0..BLOCKS {
                    let bytes = |at: *const u8| {
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(at as *const _)))
                    };
                    let scales = at.add(SCALES + 2 * GROUP * j + 8 * half);
                    let scale = _mm256_mul_ps(bytes(scales), d);
                    let min = _mm256_mul_ps(bytes(scales.add(GROUP)), dmin);
                    let quants = at.add(QUANTS + j * BLOCK_QUANT_BYTES + 32 * half);
                    let mut q = [_mm256_setzero_si256(); 8];
                    for v in 0..4 {
                        let x = _mm256_loadu_si256(quants.add(64 * v) as *const _);
                        q[v] = _mm256_and_si256(x, nibble);
                        q[v + 4] = _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble);
                    }
                    let b = s * BLOCKS + j;
                    for (acc, a) in acc.iter_mut().zip(&a) {
                        // Exact in 16 bits: 8 steps of pairs of 15 · 127 stay below 2¹⁵.
                        let mut pairs = _mm256_setzero_si256();
                        for (step, q) in q.iter().enumerate() {
                            let a = _mm256_set1_epi32(four(a.quants, b, step));
                            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*q, a));
                        }
                        let dot = _mm256_madd_epi16(pairs, ones);
                        let a_scale = _mm256_set1_ps(*a.scales.get_unchecked(b));
                        let a_scaled = _mm256_mul_ps(a_scale, scale);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), a_scaled, *acc);
                        let a_min = _mm256_set1_ps(*a.terms.get_unchecked(b));
                        *acc = _mm256_fnmadd_ps(a_min, min, *acc);
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
