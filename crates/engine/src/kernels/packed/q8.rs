//! 8-bit quants with an f16 scale per row and block of 32.
//!
//! Per group and block: the 16 rows' f16 scales, then for each of the 8 four-byte steps the 16
//! rows' 4 quants. Quants are stored offset by 128 (as unsigned bytes, the operand VNNI takes
//! unsigned); rows past the end of the matrix are zero.
//!
//! The product, per output and block in order: `acc = fma(dot, scale_a * scale_w, acc)`, where
//! `dot` is the block's exact integer dot product.

use super::{infallible, interleaved, lanes, Groups, GROUP};
use crate::kernels::matmul::{four, Tile, Weights};
use crate::kernels::q8_0::{amax, quantize_at, Q8Blocks, BLOCK};
use candle_core::quantized::GgmlDType;
use half::f16;

/// Bytes of one group's scales for one block.
pub const SCALE_BYTES: usize = 2 * GROUP;
/// Bytes of one group's block: scales, then quants.
pub const GROUP_BLOCK_BYTES: usize = SCALE_BYTES + GROUP * BLOCK;

/// A `rows` × `cols` matrix of 8-bit quants with an f16 scale per row and block of 32.
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    groups: Groups,
}

impl PackedQ8 {
    /// Packs rows given as `row(r, blocks)`, which fills row `r`'s blocks (scale, quants) or
    /// fails; groups are filled in parallel, and the first failure is returned.
    fn from_rows<E: Send>(
        rows: usize,
        cols: usize,
        row: impl Fn(usize, &mut [(f16, [i8; BLOCK])]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        assert!(
            cols.is_multiple_of(BLOCK),
            "{cols} columns are not whole blocks"
        );
        let blocks = cols / BLOCK;
        let groups = Groups::fill(rows, cols, blocks * GROUP_BLOCK_BYTES, |g, bytes| {
            // Quant 0x80 is the value 0, scale 0 too: what the padding rows hold.
            for at in bytes.chunks_exact_mut(GROUP_BLOCK_BYTES) {
                at[SCALE_BYTES..].fill(0x80);
            }
            let mut row_blocks = vec![(f16::ZERO, [0i8; BLOCK]); blocks];
            for (lane, r) in lanes(g, rows) {
                row(r, &mut row_blocks)?;
                for (at, (scale, quants)) in
                    bytes.chunks_exact_mut(GROUP_BLOCK_BYTES).zip(&row_blocks)
                {
                    at[2 * lane..2 * lane + 2].copy_from_slice(&scale.to_le_bytes());
                    for (i, &q) in quants.iter().enumerate() {
                        at[SCALE_BYTES + interleaved(i, lane)] = q as u8 ^ 0x80;
                    }
                }
            }
            Ok(())
        })?;
        Ok(Self { groups })
    }

    /// Quantizes row-major f32 values: per block the scale is max |x| / 127 rounded to f16, and
    /// each value is x / scale rounded half away from zero (within -127..=127).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "values for a {rows}x{cols} matrix"
        );
        infallible(Self::from_rows(rows, cols, |r, blocks| {
            quantize_row(&values[r * cols..(r + 1) * cols], blocks);
            Ok(())
        }))
    }

    /// Quantizes rows produced one at a time by `row(r, values)` (e.g. dequantized from a file),
    /// as [`PackedQ8::quantize`] does; only a row per thread is held in f32.
    pub fn quantize_rows<E: Send>(
        rows: usize,
        cols: usize,
        row: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        Self::from_rows(rows, cols, |r, blocks| {
            let mut values = vec![0f32; cols];
            row(r, &mut values)?;
            quantize_row(&values, blocks);
            Ok(())
        })
    }

    /// GGUF data of a type whose values are exactly an f16 scale times a small integer (Q8_0,
    /// Q5_0, Q4_0): packed without loss. `None` for other types or a size that does not match.
    pub fn from_gguf(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let block_bytes = gguf_block_bytes(dtype)?;
        let row_bytes = cols / BLOCK * block_bytes;
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * row_bytes {
            return None;
        }
        Some(infallible(Self::from_rows(rows, cols, |r, blocks| {
            let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
            for (block, to) in row.chunks_exact(block_bytes).zip(blocks) {
                *to = gguf_block(dtype, block);
            }
            Ok(())
        })))
    }

    pub fn blocks(&self) -> usize {
        self.groups.cols() / BLOCK
    }

    /// Row `r`'s scale and quants in block `b`.
    pub fn block(&self, r: usize, b: usize) -> (f32, [i8; BLOCK]) {
        let at = &self.groups.group(r / GROUP)[b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
        let lane = r % GROUP;
        let scale = f16::from_le_bytes([at[2 * lane], at[2 * lane + 1]]).to_f32();
        let quants = std::array::from_fn(|i| (at[SCALE_BYTES + interleaved(i, lane)] ^ 0x80) as i8);
        (scale, quants)
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (scale, quants) = self.block(r, b);
            for (o, q) in out.iter_mut().zip(quants) {
                *o = q as f32 * scale;
            }
        }
    }
}

/// Per block of `values`: the scale max |x| / 127 rounded to f16, and each value divided by it,
/// rounded half away from zero (within -127..=127).
fn quantize_row(values: &[f32], blocks: &mut [(f16, [i8; BLOCK])]) {
    for (x, to) in values.chunks_exact(BLOCK).zip(blocks) {
        let x: &[f32; BLOCK] = x.try_into().unwrap();
        let scale = f16::from_f32(amax(x) / 127.0);
        quantize_at(x, scale.to_f32(), &mut to.1);
        to.0 = scale;
    }
}

/// Bytes of one block of 32 values of a GGUF type that [`gguf_block`] decodes; `None` for others.
fn gguf_block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q8_0 => Some(2 + BLOCK),
        GgmlDType::Q5_0 => Some(2 + 4 + BLOCK / 2),
        GgmlDType::Q4_0 => Some(2 + BLOCK / 2),
        _ => None,
    }
}

/// One GGUF block of Q8_0, Q5_0 or Q4_0 (`block` is [`gguf_block_bytes`] long) as its f16 scale
/// and 32 integers: the values are exactly scale × integer.
fn gguf_block(dtype: GgmlDType, block: &[u8]) -> (f16, [i8; BLOCK]) {
    let scale = f16::from_le_bytes([block[0], block[1]]);
    let quants: [i8; BLOCK] = match dtype {
        GgmlDType::Q8_0 => std::array::from_fn(|i| block[2 + i] as i8),
        // Low nibbles are values 0..16, high nibbles 16..32; Q5_0's fifth bits come from a
        // 32-bit mask, bit i for value i.
        GgmlDType::Q5_0 => {
            let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            std::array::from_fn(|i| {
                let nibble = (block[6 + i % 16] >> (4 * (i / 16))) & 0x0f;
                let fifth = ((high >> i) & 1) as u8;
                (nibble | fifth << 4) as i8 - 16
            })
        }
        _ => std::array::from_fn(|i| ((block[2 + i % 16] >> (4 * (i / 16))) & 0x0f) as i8 - 8),
    };
    (scale, quants)
}

impl Weights for PackedQ8 {
    /// Per block, -128 times the sum of the activations' quants: VNNI multiplies unsigned bytes
    /// (the weights, offset by 128) by signed ones, so each block's sum starts there.
    type Term = i32;

    fn terms(a: &Q8Blocks) -> Vec<i32> {
        let sums = a.half_sums().chunks_exact(2);
        sums.map(|s| -128 * (s[0] + s[1])).collect()
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
            for b in 0..self.blocks() {
                let a_quants = &a.quants[b * BLOCK..][..BLOCK];
                for (lane, acc) in acc.iter_mut().enumerate().take(tile.columns) {
                    let (w_scale, w_quants) = self.block(tile.group * GROUP + lane, b);
                    let dot: i32 = a_quants
                        .iter()
                        .zip(w_quants)
                        .map(|(&a, w)| a as i32 * w as i32)
                        .sum();
                    *acc = (dot as f32).mul_add(a.scales[b] * w_scale, *acc);
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

    /// Bytes ahead in a group's stream to prefetch (about four blocks).
    const PREFETCH_AHEAD: usize = 4 * GROUP_BLOCK_BYTES;
    /// Cache lines per block of a group.
    const LINES: usize = GROUP_BLOCK_BYTES.div_ceil(64);

    /// The reference on 512-bit vectors: a vector holds the 16 columns of the group.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni512<const R: usize>(w: &PackedQ8, tile: &Tile<'_, i32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..w.blocks() {
            let at = group.as_ptr().add(b * GROUP_BLOCK_BYTES);
            for line in 0..LINES {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_AHEAD + 64 * line) as _);
            }
            let w_scale = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            let w: [__m512i; 8] = std::array::from_fn(|step| {
                _mm512_loadu_si512(at.add(SCALE_BYTES + step * 4 * GROUP) as *const _)
            });
            for (acc, a) in acc.iter_mut().zip(&a) {
                let mut dot = _mm512_set1_epi32(*a.terms.get_unchecked(b));
                for (step, w) in w.iter().enumerate() {
                    let a = _mm512_set1_epi32(four(a.quants, b, step));
                    dot = _mm512_dpbusd_epi32(dot, *w, a);
                }
                let scale = _mm512_mul_ps(_mm512_set1_ps(*a.scales.get_unchecked(b)), w_scale);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
            }
        }
        // SAFETY: a vector of 16 f32 is laid out as the array of them.
        tile.store_rows(&std::mem::transmute_copy::<_, [[f32; GROUP]; R]>(&acc));
    }

    /// The reference on 256-bit vectors: the group's columns in two halves of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(w: &PackedQ8, tile: &Tile<'_, i32>) {
        let group = w.groups.group(tile.group);
        let a = tile.rows::<R>();
        let (offset, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
        let mut values = [[0f32; GROUP]; R];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..w.blocks() {
                let at = group.as_ptr().add(b * GROUP_BLOCK_BYTES);
                let w_scale = _mm256_cvtph_ps(_mm_loadu_si128(at.add(16 * half) as *const __m128i));
                let mut dot = [_mm256_setzero_si256(); R];
                for step in 0..8 {
                    let stored = at.add(SCALE_BYTES + step * 4 * GROUP + 32 * half);
                    let w = _mm256_xor_si256(_mm256_loadu_si256(stored as *const __m256i), offset);
                    // maddubs multiplies unsigned by signed bytes: |w| by a·sign(w). Exact:
                    // every pair sum fits i16 because |a| ≤ 127 and |w| ≤ 128.
                    let abs_w = _mm256_abs_epi8(w);
                    for (dot, a) in dot.iter_mut().zip(&a) {
                        let a = _mm256_sign_epi8(_mm256_set1_epi32(four(a.quants, b, step)), w);
                        let pairs = _mm256_maddubs_epi16(abs_w, a);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
                for ((acc, dot), a) in acc.iter_mut().zip(dot).zip(&a) {
                    let scale = _mm256_mul_ps(_mm256_set1_ps(*a.scales.get_unchecked(b)), w_scale);
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                }
            }
            for (values, acc) in values.iter_mut().zip(acc) {
                _mm256_storeu_ps(values.as_mut_ptr().add(8 * half), acc);
            }
        }
        tile.store_rows(&values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::random_values as random;
    use crate::sampling::Rng;

    #[test]
    fn quantized_rows_are_within_half_a_step() {
        let mut rng = Rng::new(9);
        let (rows, cols) = (17, 2 * BLOCK);
        let values = random(&mut rng, rows * cols, 5.0);
        let packed = PackedQ8::quantize(&values, rows, cols);
        for r in 0..rows {
            let mut got = vec![0f32; cols];
            packed.dequantize_row(r, &mut got);
            for (b, (got, want)) in got
                .chunks_exact(BLOCK)
                .zip(values[r * cols..].chunks_exact(BLOCK))
                .enumerate()
            {
                let (scale, _) = packed.block(r, b);
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= 0.5 * scale * 1.001, "row {r}: {g} vs {w}");
                }
            }
        }
    }
}
