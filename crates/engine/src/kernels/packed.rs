//! Weight matrices laid out for the product kernels. Rows (output features) go in groups of 16,
//! interleaved 4 bytes at a time: one 512-bit vector holds the same 4 inputs of all 16 rows, so a
//! VNNI byte product adds into 16 outputs at once and no sum ever crosses lanes. The same layout
//! is the "B" operand of AMX tiles.
//!
//! Per group and block of 32 inputs: the 16 rows' f16 scales, then for each of the 8 four-byte
//! steps the 16 rows' 4 quants. Quants are stored offset by 128 (as unsigned bytes, the operand VNNI
//! takes unsigned); rows past the end of the matrix are zero.

use super::q8_0::{amax, quantize_at, BLOCK};
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
        let group_bytes = blocks * GROUP_BLOCK_BYTES;
        // Quant 0x80 is the value 0, scale 0 too: what the padding rows hold.
        let mut data = vec![0x80u8; rows.div_ceil(GROUP) * group_bytes];
        for at in data.chunks_exact_mut(GROUP_BLOCK_BYTES) {
            at[..SCALE_BYTES].fill(0);
        }
        let failure = Mutex::new(None);
        // Uncontended locks hand each thread its own groups.
        let groups: Vec<_> = data.chunks_mut(group_bytes).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(groups.len(), |range| {
            let mut row_blocks = vec![(f16::ZERO, [0i8; BLOCK]); blocks];
            for g in range {
                let mut bytes = groups[g].lock().unwrap_or_else(|e| e.into_inner());
                for lane in 0..GROUP.min(rows - g * GROUP) {
                    if let Err(e) = row(g * GROUP + lane, &mut row_blocks) {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                    for (at, (scale, quants)) in
                        bytes.chunks_exact_mut(GROUP_BLOCK_BYTES).zip(&row_blocks)
                    {
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
        match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(Self { rows, cols, data }),
        }
    }

    /// Quantizes row-major f32 values: per block the scale is max |x| / 127 rounded to f16, and
    /// each value is x / scale rounded half away from zero (within -127..=127).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "values for a {rows}x{cols} matrix"
        );
        let packed = Self::from_rows(rows, cols, |r, blocks| {
            quantize_row(&values[r * cols..(r + 1) * cols], blocks);
            Ok::<_, std::convert::Infallible>(())
        });
        match packed {
            Ok(packed) => packed,
            Err(never) => match never {},
        }
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
        let packed = Self::from_rows(rows, cols, |r, blocks| {
            let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
            for (block, to) in row.chunks_exact(block_bytes).zip(blocks) {
                *to = gguf_block(dtype, block);
            }
            Ok::<_, std::convert::Infallible>(())
        });
        match packed {
            Ok(packed) => Some(packed),
            Err(never) => match never {},
        }
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
