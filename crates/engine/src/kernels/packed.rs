//! Weight matrices laid out for the product kernels. Rows (output features) go in groups of 16,
//! interleaved 4 bytes at a time: one 512-bit vector holds the same 4 inputs of all 16 rows, so a
//! VNNI byte product adds into 16 outputs at once and no sum ever crosses lanes. The same layout
//! is the "B" operand of AMX tiles.
//!
//! Per group and block of 32 inputs: the 16 rows' f16 scales, then for each of the 8 four-byte
//! steps the 16 rows' 4 quants. Quants are stored offset by 128 (as unsigned bytes, the operand VNNI
//! takes unsigned); rows past the end of the matrix are zero.

use super::q8_0::{amax, round_half_away, BLOCK};
use candle_core::quantized::GgmlDType;
use half::f16;
use std::sync::Mutex;

/// Rows per group.
pub const GROUP: usize = 16;
/// Bytes of one group's scales for one block.
pub const SCALE_BYTES: usize = 2 * GROUP;
/// Bytes of one group's block: scales, then quants.
pub const GROUP_BLOCK_BYTES: usize = SCALE_BYTES + GROUP * BLOCK;

/// A `rows` × `cols` matrix of 8-bit quants with an f16 scale per row and block of 32.
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl PackedQ8 {
    /// Packs blocks given as `block(row, b) -> (scale, quants)`; groups are filled in parallel.
    fn from_blocks(
        rows: usize,
        cols: usize,
        block: impl Fn(usize, usize) -> (f16, [i8; BLOCK]) + Sync,
    ) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK),
            "{cols} columns are not whole blocks"
        );
        let blocks = cols / BLOCK;
        let group_bytes = blocks * GROUP_BLOCK_BYTES;
        // Quant 0x80 is the value 0: what the padding rows hold.
        let mut data = vec![0x80u8; rows.div_ceil(GROUP) * group_bytes];
        // Uncontended locks hand each thread its own groups.
        let groups: Vec<_> = data.chunks_mut(group_bytes).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(groups.len(), |range| {
            for g in range {
                let mut bytes = groups[g].lock().unwrap_or_else(|e| e.into_inner());
                for (b, at) in bytes.chunks_exact_mut(GROUP_BLOCK_BYTES).enumerate() {
                    at[..SCALE_BYTES].fill(0);
                    for lane in 0..GROUP.min(rows - g * GROUP) {
                        let (scale, quants) = block(g * GROUP + lane, b);
                        at[2 * lane..2 * lane + 2].copy_from_slice(&scale.to_le_bytes());
                        for (step, four) in quants.chunks_exact(4).enumerate() {
                            let to = SCALE_BYTES + step * 4 * GROUP + 4 * lane;
                            for (to, &q) in at[to..to + 4].iter_mut().zip(four) {
                                *to = q as u8 ^ 0x80;
                            }
                        }
                    }
                }
            }
        });
        drop(groups);
        Self { rows, cols, data }
    }

    /// Quantizes row-major f32 values: per block the scale is max |x| / 127 rounded to f16, and
    /// each value is x / scale rounded half away from zero (within -127..=127).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "values for a {rows}x{cols} matrix"
        );
        Self::from_blocks(rows, cols, |r, b| {
            let x: &[f32; BLOCK] = values[r * cols + b * BLOCK..][..BLOCK].try_into().unwrap();
            let scale = f16::from_f32(amax(x) / 127.0);
            let inverse = if scale.to_f32() > 0.0 {
                1.0 / scale.to_f32()
            } else {
                0.0
            };
            let quants = std::array::from_fn(|i| round_half_away(x[i] * inverse).clamp(-127, 127));
            (scale, quants.map(|q| q as i8))
        })
    }

    /// GGUF data of a type whose values are exactly an f16 scale times a small integer (Q8_0,
    /// Q5_0, Q4_0): packed without loss. `None` for other types or a size that does not match.
    pub fn from_gguf(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let block_bytes = match dtype {
            GgmlDType::Q8_0 => 2 + BLOCK,
            GgmlDType::Q5_0 => 2 + 4 + BLOCK / 2,
            GgmlDType::Q4_0 => 2 + BLOCK / 2,
            _ => return None,
        };
        let blocks = cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * blocks * block_bytes {
            return None;
        }
        Some(Self::from_blocks(rows, cols, |r, b| {
            let block = &bytes[(r * blocks + b) * block_bytes..][..block_bytes];
            let scale = f16::from_le_bytes([block[0], block[1]]);
            let quants: [i8; BLOCK] = match dtype {
                GgmlDType::Q8_0 => std::array::from_fn(|i| block[2 + i] as i8),
                // Low nibbles are values 0..16, high nibbles 16..32; Q5_0's fifth bits come from
                // a 32-bit mask, bit i for value i.
                GgmlDType::Q5_0 => {
                    let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                    std::array::from_fn(|i| {
                        let nibble = (block[6 + i % 16] >> (4 * (i / 16))) & 0x0f;
                        let fifth = ((high >> i) & 1) as u8;
                        (nibble | fifth << 4) as i8 - 16
                    })
                }
                _ => std::array::from_fn(|i| {
                    ((block[2 + i % 16] >> (4 * (i / 16))) & 0x0f) as i8 - 8
                }),
            };
            (scale, quants)
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Bytes held (for memory accounting).
    pub fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    /// Group `g`'s bytes: its blocks in order, [`GROUP_BLOCK_BYTES`] each.
    pub fn group(&self, g: usize) -> &[u8] {
        let bytes = self.blocks() * GROUP_BLOCK_BYTES;
        &self.data[g * bytes..(g + 1) * bytes]
    }

    /// Row `r`'s scale and quants in block `b`.
    pub fn block(&self, r: usize, b: usize) -> (f32, [i8; BLOCK]) {
        let at = &self.group(r / GROUP)[b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
        let lane = r % GROUP;
        let scale = f16::from_le_bytes([at[2 * lane], at[2 * lane + 1]]).to_f32();
        let quants = std::array::from_fn(|i| {
            (at[SCALE_BYTES + (i / 4) * 4 * GROUP + 4 * lane + i % 4] ^ 0x80) as i8
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::random_values as random;
    use crate::sampling::Rng;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn gguf_types_pack_without_loss() {
        let mut rng = Rng::new(5);
        // 19 rows: a group and a partial one.
        let (rows, cols) = (19, 3 * BLOCK);
        let values = random(&mut rng, rows * cols, 3.0);
        let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&tensor, dtype).unwrap();
            let want = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let packed = PackedQ8::from_gguf(dtype, &q.data().unwrap(), rows, cols).unwrap();
            for (r, want) in want.iter().enumerate() {
                let mut got = vec![0f32; cols];
                packed.dequantize_row(r, &mut got);
                assert_eq!(&got, want, "{dtype:?} row {r}");
            }
        }
    }

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
