//! Weight matrices laid out for the product kernels, one format per module, each with its
//! product ([`super::matmul::Weights`]). Every format puts rows (output features) in groups of 16
//! and interleaves them 4 inputs at a time: one 512-bit vector holds the same 4 inputs of all 16
//! rows, so a VNNI byte product adds into 16 outputs at once and no sum ever crosses lanes (the
//! layout of an AMX "B" tile too).
//!
//! - [`q8::PackedQ8`]: 8-bit quants, an f16 scale per block of 32. Q8_0, Q5_0 and Q4_0 files
//!   are exactly this; other types are re-rounded to it.
//! - [`q4_k::PackedQ4K`]: Q4_K as stored: 4-bit quants with a 6-bit scale and minimum per 32.
//! - [`q6_k::PackedQ6K`]: Q6_K's values exactly, quants held in bytes.

pub mod q4_k;
pub mod q6_k;
pub mod q8;

use super::matmul::{matmul, Weights};
use super::q8_0::Q8Blocks;
use super::Level;
use candle_core::quantized::GgmlDType;
use std::convert::Infallible;
use std::sync::Mutex;

/// Rows per group.
pub const GROUP: usize = 16;
/// Values per K-quant super-block.
pub const SUPER: usize = 256;

/// A weight matrix in one of the packed formats.
#[derive(Debug, Clone)]
pub enum Packed {
    Q8(q8::PackedQ8),
    Q4K(q4_k::PackedQ4K),
    Q6K(q6_k::PackedQ6K),
}

impl Packed {
    /// GGUF data a format holds without loss (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K). `None` for other
    /// types, or a size that does not match the shape.
    pub fn from_gguf(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => q4_k::PackedQ4K::from_gguf(bytes, rows, cols).map(Self::Q4K),
            GgmlDType::Q6K => q6_k::PackedQ6K::from_gguf(bytes, rows, cols).map(Self::Q6K),
            _ => q8::PackedQ8::from_gguf(dtype, bytes, rows, cols).map(Self::Q8),
        }
    }

    fn groups(&self) -> &Groups {
        match self {
            Self::Q8(w) => w.groups(),
            Self::Q4K(w) => w.groups(),
            Self::Q6K(w) => w.groups(),
        }
    }

    pub fn rows(&self) -> usize {
        self.groups().rows()
    }

    pub fn cols(&self) -> usize {
        self.groups().cols()
    }

    /// Bytes held (for memory accounting).
    pub fn size_in_bytes(&self) -> usize {
        self.groups().size_in_bytes()
    }

    /// The format's name: "q8", "q4_k" or "q6_k".
    pub fn format(&self) -> &'static str {
        match self {
            Self::Q8(_) => "q8",
            Self::Q4K(_) => "q4_k",
            Self::Q6K(_) => "q6_k",
        }
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Self::Q8(w) => w.dequantize_row(r, out),
            Self::Q4K(w) => w.dequantize_row(r, out),
            Self::Q6K(w) => w.dequantize_row(r, out),
        }
    }

    /// `out` = `a` · selfᵀ (see [`matmul`]).
    pub fn matmul(&self, level: Level, a: &Q8Blocks, out: &mut [f32]) {
        match self {
            Self::Q8(w) => matmul(level, a, w, out),
            Self::Q4K(w) => matmul(level, a, w, out),
            Self::Q6K(w) => matmul(level, a, w, out),
        }
    }
}

/// A matrix's bytes in groups of 16 rows (the last one padded), the same number of bytes each.
#[derive(Debug, Clone)]
pub struct Groups {
    rows: usize,
    cols: usize,
    group_bytes: usize,
    data: Vec<u8>,
}

impl Groups {
    /// The groups of a `rows` × `cols` matrix, zeroed and then filled by `fill(g, bytes)` on all
    /// threads; the first failure is returned.
    fn fill<E: Send>(
        rows: usize,
        cols: usize,
        group_bytes: usize,
        fill: impl Fn(usize, &mut [u8]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        let mut data = vec![0u8; rows.div_ceil(GROUP) * group_bytes];
        let failure = Mutex::new(None);
        // Uncontended locks hand each thread its own groups.
        let slices: Vec<_> = data
            .chunks_mut(group_bytes.max(1))
            .map(Mutex::new)
            .collect();
        candle_core::utils::barrier_pool().execute_chunked(slices.len(), |range| {
            for g in range {
                let mut bytes = slices[g].lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = fill(g, &mut bytes) {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            }
        });
        drop(slices);
        match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(Self {
                rows,
                cols,
                group_bytes,
                data,
            }),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (for memory accounting).
    pub fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    /// Group `g`'s bytes.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.group_bytes..(g + 1) * self.group_bytes]
    }
}

/// The value of a result that cannot fail.
fn infallible<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Rows of the matrix in group `g`: `(lane, row)` pairs.
fn lanes(g: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..GROUP.min(rows - g * GROUP)).map(move |lane| (lane, g * GROUP + lane))
}

/// Where quant `i` (0..32) of a block lands in a 16-row interleaved block: its 4-byte step's
/// 64 bytes, then the lane's 4 bytes.
#[inline(always)]
fn interleaved(i: usize, lane: usize) -> usize {
    (i / 4) * 4 * GROUP + 4 * lane + i % 4
}

/// Values quantized to `dtype` by candle: the GGUF bytes, and the values they stand for.
#[cfg(test)]
pub(crate) fn candle_quantized(
    dtype: GgmlDType,
    values: Vec<f32>,
    rows: usize,
    cols: usize,
) -> (Vec<u8>, Vec<f32>) {
    use candle_core::{quantized::QTensor, Device, Tensor};
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
    (q.data().unwrap().into_owned(), values.to_vec1().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::q8_0::Q8Blocks;
    use crate::kernels::{available_levels, random_values as random};
    use crate::sampling::Rng;
    use half::f16;

    #[test]
    fn gguf_types_pack_without_loss() {
        let mut rng = Rng::new(5);
        // 19 rows: a group and a partial one; values off centre so that minimums matter.
        let (rows, cols) = (19, 2 * SUPER);
        let values: Vec<f32> = random(&mut rng, rows * cols, 3.0);
        let values: Vec<f32> = values.iter().map(|v| v + 0.7).collect();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (bytes, want) = candle_quantized(dtype, values.clone(), rows, cols);
            let packed = Packed::from_gguf(dtype, &bytes, rows, cols).unwrap();
            for (r, want) in want.chunks_exact(cols).enumerate() {
                let mut got = vec![0f32; cols];
                packed.dequantize_row(r, &mut got);
                assert_eq!(&got, want, "{dtype:?} row {r}");
            }
            let short = Packed::from_gguf(dtype, &bytes[1..], rows, cols);
            assert!(short.is_none(), "{dtype:?} data one byte short");
        }
    }

    #[test]
    fn extreme_quants_do_not_saturate() {
        // Each type's largest quants against activations of -127 everywhere: the AVX2 paths'
        // 16-bit pair sums at their edge.
        let one = f16::from_f32(1.0).to_le_bytes();
        let cases = [
            // Q8_0: -128 (byte 0x80), scale 1.
            (GgmlDType::Q8_0, [&one[..], &[0x80; 32]].concat(), 128.0),
            // Q4_K: quants 15 with scales 1 and minimums 0 (6 bits each, packed), dmin 0.
            (
                GgmlDType::Q4K,
                [
                    &one[..],
                    &[0; 2],
                    &[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1],
                    &[0xff; 128],
                ]
                .concat(),
                -15.0,
            ),
            // Q6_K: quants 63 (the value 31), scales 1.
            (
                GgmlDType::Q6K,
                [&[0xff; 192][..], &[1; 16], &one].concat(),
                -31.0,
            ),
        ];
        let k = 2 * SUPER;
        let a = Q8Blocks::quantize(&vec![-1.0; k], 1, k);
        for (dtype, block, per_value) in cases {
            let bytes = block.repeat(k / dtype.block_size());
            let w = Packed::from_gguf(dtype, &bytes, 1, k).unwrap();
            let want = per_value * k as f32;
            for level in available_levels() {
                let mut got = [0f32];
                w.matmul(level, &a, &mut got);
                let close = (got[0] - want).abs() <= 1e-5 * want.abs();
                assert!(close, "{dtype:?} {}: {} vs {want}", level.name(), got[0]);
            }
        }
    }

    /// A `rows` × `cols` matrix of each format, and the values it stands for: Q8 from f32
    /// values, the others from candle's quantization of them.
    fn every_format(
        rng: &mut Rng,
        rows: usize,
        cols: usize,
        spread: f32,
    ) -> Vec<(Packed, Vec<f32>)> {
        let values = random(rng, rows * cols, spread);
        let mut formats = vec![(
            Packed::Q8(q8::PackedQ8::quantize(&values, rows, cols)),
            values.clone(),
        )];
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (bytes, values) = candle_quantized(dtype, values.clone(), rows, cols);
            formats.push((
                Packed::from_gguf(dtype, &bytes, rows, cols).unwrap(),
                values,
            ));
        }
        formats
    }

    #[test]
    fn every_level_gives_the_reference_bits_for_any_number_of_rows() {
        let mut rng = Rng::new(7);
        // A partial last group (37 rows), one and several super-blocks.
        for (n, k) in [(37, 3 * SUPER), (16, SUPER)] {
            for (w, _) in every_format(&mut rng, n, k, 2.0) {
                for m in [1, 2, 3, 4, 5, 8, 9, 17] {
                    let a = Q8Blocks::quantize(&random(&mut rng, m * k, 20.0), m, k);
                    let mut want = vec![0f32; m * n];
                    w.matmul(Level::Scalar, &a, &mut want);
                    for level in available_levels() {
                        let mut got = vec![f32::NAN; m * n];
                        w.matmul(level, &a, &mut got);
                        let same = want
                            .iter()
                            .zip(&got)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        let format = w.format();
                        assert!(same, "{format} {}: {m}x{k} by {n} rows", level.name());
                    }
                }
            }
        }
    }

    #[test]
    fn products_are_close_to_the_float_products() {
        let mut rng = Rng::new(3);
        let (m, n, k) = (3, 16, 4 * SUPER);
        let a = random(&mut rng, m * k, 4.0);
        let q = Q8Blocks::quantize(&a, m, k);
        for (w, wv) in every_format(&mut rng, n, k, 0.2) {
            let mut got = vec![0f32; m * n];
            w.matmul(crate::kernels::level(), &q, &mut got);
            for r in 0..m {
                for c in 0..n {
                    let terms = (0..k).map(|j| a[r * k + j] * wv[c * k + j]);
                    let (exact, size) = terms.fold((0f32, 0f32), |(s, z), t| (s + t, z + t.abs()));
                    // The activations' 8-bit rounding (and Q8's of the weights): about 1/254 of
                    // each term, mostly cancelling.
                    let error = (got[r * n + c] - exact).abs();
                    let format = w.format();
                    assert!(
                        error < 1e-3 * size,
                        "{format}: {} vs {exact} (terms' size {size})",
                        got[r * n + c]
                    );
                }
            }
        }
    }
}
