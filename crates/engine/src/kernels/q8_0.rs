//! Activations in 8-bit blocks: every 32 values share one f32 scale, quantized one row at a time
//! before a product with packed weights ([`super::packed`]).

/// Values per block.
pub const BLOCK: usize = 32;
/// A `rows` × `cols` matrix in 8-bit blocks along each row (`cols` a multiple of [`BLOCK`]).
#[derive(Debug, Clone)]
pub struct Q8Blocks {
    rows: usize,
    cols: usize,
    /// One per block, row-major: `rows * cols / BLOCK`.
    scales: Vec<f32>,
    quants: Vec<i8>,
    /// The sum of each half block's quants (16 values), row-major: weight formats with an offset
    /// or a minimum subtract a multiple of it.
    sums: Vec<i32>,
}

/// Values per half block (the sub-block of Q6_K weights).
pub const HALF: usize = BLOCK / 2;

impl Q8Blocks {
    /// Quantizes row-major f32 values: per block the scale is max |x| / 127 and each value is
    /// x / scale rounded half away from zero, so every quant is within -127..=127. Large inputs
    /// (a prompt's activations) are split between threads.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK),
            "{cols} columns are not whole blocks"
        );
        assert_eq!(
            values.len(),
            rows * cols,
            "values for a {rows}x{cols} matrix"
        );
        let mut scales = vec![0f32; values.len() / BLOCK];
        let mut quants = vec![0i8; values.len()];
        let mut sums = vec![0i32; values.len() / HALF];
        /// Blocks per unit of work: 16 KiB of input.
        const BLOCKS_PER_ITEM: usize = 128;
        let quantize_blocks =
            |values: &[f32], scales: &mut [f32], quants: &mut [i8], sums: &mut [i32]| {
                for (((x, q), scale), sums) in values
                    .chunks_exact(BLOCK)
                    .zip(quants.chunks_exact_mut(BLOCK))
                    .zip(scales)
                    .zip(sums.chunks_exact_mut(2))
                {
                    *scale = quantize_block(x.try_into().unwrap(), q.try_into().unwrap());
                    for (sum, half) in sums.iter_mut().zip(q.chunks_exact(HALF)) {
                        *sum = half.iter().map(|&q| q as i32).sum();
                    }
                }
            };
        if scales.len() <= BLOCKS_PER_ITEM {
            quantize_blocks(values, &mut scales, &mut quants, &mut sums);
        } else {
            // Uncontended locks hand each thread its own slices.
            let work: Vec<_> = values
                .chunks(BLOCKS_PER_ITEM * BLOCK)
                .zip(scales.chunks_mut(BLOCKS_PER_ITEM))
                .zip(quants.chunks_mut(BLOCKS_PER_ITEM * BLOCK))
                .zip(sums.chunks_mut(2 * BLOCKS_PER_ITEM))
                .map(|(((v, s), q), h)| std::sync::Mutex::new((v, s, q, h)))
                .collect();
            candle_core::utils::barrier_pool().execute_chunked(work.len(), |items| {
                for item in &work[items] {
                    let mut item = item.lock().unwrap_or_else(|e| e.into_inner());
                    let (values, scales, quants, sums) = &mut *item;
                    quantize_blocks(values, scales, quants, sums);
                }
            });
        }
        Self {
            rows,
            cols,
            scales,
            quants,
            sums,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`'s scales and quants.
    pub fn row(&self, r: usize) -> (&[f32], &[i8]) {
        let blocks = self.cols / BLOCK;
        (
            &self.scales[r * blocks..(r + 1) * blocks],
            &self.quants[r * self.cols..(r + 1) * self.cols],
        )
    }

    /// Every block's scale, row-major.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Every half block's sum of quants, row-major.
    pub fn half_sums(&self) -> &[i32] {
        &self.sums
    }
}

/// One block of [`Q8Blocks::quantize`], written so the compiler vectorizes it on the baseline
/// target.
#[inline(always)]
fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> f32 {
    let scale = amax(x) / 127.0;
    quantize_at(x, scale, q);
    scale
}

/// Each value of a block divided by `scale` (0 makes every quant 0), rounded half away from
/// zero and kept within -127..=127: the one rounding rule of activations and weights.
#[inline(always)]
pub fn quantize_at(x: &[f32; BLOCK], scale: f32, q: &mut [i8; BLOCK]) {
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_half_away(v * inverse).clamp(-127, 127) as i8;
    }
}

/// The largest |x| of a block, over 8 lanes so that the compiler vectorizes it.
#[inline(always)]
pub fn amax(x: &[f32; BLOCK]) -> f32 {
    let mut lanes = [0f32; 8];
    for eight in x.chunks_exact(8) {
        for (lane, v) in lanes.iter_mut().zip(eight) {
            *lane = lane.max(v.abs());
        }
    }
    lanes.into_iter().fold(0f32, f32::max)
}

/// `t.round() as i32` for |t| < 2²³ without a call to libm's `roundf` (which the baseline
/// target has no instruction for): truncate, then step away from zero where the rest is ≥ ½.
#[inline(always)]
fn round_half_away(t: f32) -> i32 {
    let whole = t as i32;
    let rest = t - whole as f32;
    whole + (rest >= 0.5) as i32 - (rest <= -0.5) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::random_values as random;
    use crate::sampling::Rng;

    #[test]
    fn quantize_rounds_like_f32_round_on_any_split() {
        let mut rng = Rng::new(11);
        // More than one unit of work, so threads split it; with a block's largest value at 127,
        // the scale is 1 and values at n + 0.5 are exact ties.
        let (rows, cols) = (9, 64 * BLOCK);
        let mut values = random(&mut rng, rows * cols, 8.0);
        for (i, v) in values.iter_mut().enumerate() {
            if i % 64 < BLOCK {
                *v = if i % BLOCK == 0 {
                    127.0
                } else {
                    (i % 254) as f32 - 126.5
                };
            }
        }
        let got = Q8Blocks::quantize(&values, rows, cols);
        for (b, x) in values.chunks_exact(BLOCK).enumerate() {
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            assert_eq!(got.scales[b], scale);
            let want: Vec<i8> = x
                .iter()
                .map(|v| (v * (1.0 / scale)).round() as i8)
                .collect();
            assert_eq!(&got.quants[b * BLOCK..][..BLOCK], &want[..], "block {b}");
            for (h, want) in want.chunks_exact(HALF).enumerate() {
                let want: i32 = want.iter().map(|&q| q as i32).sum();
                assert_eq!(got.sums[2 * b + h], want, "block {b} half {h}");
            }
        }
    }
}
