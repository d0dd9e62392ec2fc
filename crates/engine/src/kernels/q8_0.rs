//! 8-bit blocks: every 32 values share one f32 scale. Weights stored as GGUF Q8_0 load into this
//! form directly (their f16 scales widened); the default model's Q5_0 weights are re-blocked into
//! it at load. Activations are quantized the same way, one row at a time, so a product is exact
//! integer dot products of 4-value groups, each scaled by its two blocks' scales.

use super::Level;

/// Values per block.
pub const BLOCK: usize = 32;
/// Rows of activations multiplied against one weight row while it is in registers.
const ROW_TILE: usize = 4;
/// Weight rows (output columns) per unit of work handed to a thread: small enough to balance two
/// to sixteen threads, large enough that a tile of activations is reused across them from L1.
const COLUMNS_PER_ITEM: usize = 16;

/// A `rows` × `cols` matrix in 8-bit blocks along each row (`cols` a multiple of [`BLOCK`]).
#[derive(Debug, Clone)]
pub struct Q8Blocks {
    rows: usize,
    cols: usize,
    /// One per block, row-major: `rows * cols / BLOCK`.
    scales: Vec<f32>,
    quants: Vec<i8>,
}

impl Q8Blocks {
    /// Quantizes row-major f32 values: per block the scale is max |x| / 127 and each value is
    /// round(x / scale), so every quant is within -127..=127.
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
        let mut scales = Vec::with_capacity(values.len() / BLOCK);
        let mut quants = vec![0i8; values.len()];
        for (block, q) in values
            .chunks_exact(BLOCK)
            .zip(quants.chunks_exact_mut(BLOCK))
        {
            let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = amax / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (q, x) in q.iter_mut().zip(block) {
                *q = (x * inverse).round() as i8;
            }
            scales.push(scale);
        }
        Self {
            rows,
            cols,
            scales,
            quants,
        }
    }

    /// GGUF Q8_0 data: per block a little-endian f16 scale, then 32 signed bytes.
    pub fn from_gguf_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BYTES: usize = 2 + BLOCK;
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * BYTES {
            return None;
        }
        let mut scales = Vec::with_capacity(rows * cols / BLOCK);
        let mut quants = Vec::with_capacity(rows * cols);
        for block in bytes.chunks_exact(BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            quants.extend(block[2..].iter().map(|&b| b as i8));
        }
        Some(Self {
            rows,
            cols,
            scales,
            quants,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (for memory accounting).
    pub fn size_in_bytes(&self) -> usize {
        self.quants.len() + 4 * self.scales.len()
    }

    fn row(&self, r: usize) -> (&[f32], &[i8]) {
        let blocks = self.cols / BLOCK;
        (
            &self.scales[r * blocks..(r + 1) * blocks],
            &self.quants[r * self.cols..(r + 1) * self.cols],
        )
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (scales, quants) = self.row(r);
        for ((out, q), scale) in out
            .chunks_exact_mut(BLOCK)
            .zip(quants.chunks_exact(BLOCK))
            .zip(scales)
        {
            for (o, &q) in out.iter_mut().zip(q) {
                *o = q as f32 * scale;
            }
        }
    }
}

/// `out` (m × n, row-major) = `a` (m × k) · `w`ᵀ, for `w` (n × k): each activation row against
/// each weight row. Threads split the weight rows; each row of `out` is computed the same way
/// whatever `m` is.
pub fn matmul(level: Level, a: &Q8Blocks, w: &Q8Blocks, out: &mut [f32]) {
    assert_eq!(a.cols, w.cols, "inner dimensions differ");
    let (m, n) = (a.rows, w.rows);
    assert_eq!(out.len(), m * n, "output for {m}x{n}");
    let out = Output {
        addr: out.as_mut_ptr() as usize,
        n,
    };
    let items = n.div_ceil(COLUMNS_PER_ITEM);
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        for item in range {
            let columns = item * COLUMNS_PER_ITEM..n.min((item + 1) * COLUMNS_PER_ITEM);
            // All row tiles against these weight rows while they are in L1.
            run_item(level, a, w, columns, out);
        }
    });
}

/// One work item: every tile of activation rows against the item's weight rows.
fn run_item(
    level: Level,
    a: &Q8Blocks,
    w: &Q8Blocks,
    columns: std::ops::Range<usize>,
    out: Output,
) {
    for first in (0..a.rows).step_by(ROW_TILE) {
        let rows = first..a.rows.min(first + ROW_TILE);
        let mut tile = [a.row(first); ROW_TILE];
        for (slot, r) in tile.iter_mut().zip(rows.clone()) {
            *slot = a.row(r);
        }
        let job = Columns {
            w,
            columns: columns.clone(),
            first_row: first,
            out,
        };
        match rows.len() {
            1 => job.run::<1>(level, [tile[0]]),
            2 => job.run::<2>(level, [tile[0], tile[1]]),
            3 => job.run::<3>(level, [tile[0], tile[1], tile[2]]),
            _ => job.run::<ROW_TILE>(level, tile),
        }
    }
}

/// Where results go: `out[r * n + c]`.
#[derive(Clone, Copy)]
struct Output {
    addr: usize,
    n: usize,
}

impl Output {
    /// SAFETY: (r, c) is inside the m × n output, and no other thread writes it (each column
    /// belongs to one work item).
    unsafe fn write(self, r: usize, c: usize, value: f32) {
        unsafe { *(self.addr as *mut f32).add(r * self.n + c) = value };
    }
}

/// A range of weight rows against one tile of activation rows.
struct Columns<'w> {
    w: &'w Q8Blocks,
    columns: std::ops::Range<usize>,
    first_row: usize,
    out: Output,
}

impl Columns<'_> {
    fn run<const R: usize>(&self, level: Level, a: [(&[f32], &[i8]); R]) {
        match level {
            // SAFETY: the level is at most what the CPU was detected to run.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { x86::columns_vnni(self, a) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::columns_avx2(self, a) },
            _ => {
                for c in self.columns.clone() {
                    for (i, a) in a.iter().enumerate() {
                        let value = dot_scalar(*a, self.w.row(c));
                        // SAFETY: see Output::write; c < n and first_row + i < m.
                        unsafe { self.out.write(self.first_row + i, c, value) };
                    }
                }
            }
        }
    }
}

/// The reference: per block, 8 lanes of 4-value integer dot products, each added to its lane as
/// `fma(sum, scale_a * scale_w, lane)`; then the lanes summed as ((0+4)+(2+6)) + ((1+5)+(3+7)).
fn dot_scalar(a: (&[f32], &[i8]), w: (&[f32], &[i8])) -> f32 {
    let mut lanes = [0f32; 8];
    for (b, (aq, wq)) in
        a.1.chunks_exact(BLOCK)
            .zip(w.1.chunks_exact(BLOCK))
            .enumerate()
    {
        let scale = a.0[b] * w.0[b];
        for (l, lane) in lanes.iter_mut().enumerate() {
            let sum: i32 = (4 * l..4 * l + 4)
                .map(|j| aq[j] as i32 * wq[j] as i32)
                .sum();
            *lane = (sum as f32).mul_add(scale, *lane);
        }
    }
    sum_lanes(lanes)
}

fn sum_lanes(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Columns, BLOCK};

    /// Bytes ahead of the current block to prefetch: about one weight row of the default model.
    const PREFETCH_AHEAD: usize = 2048;
    use std::arch::x86_64::*;

    /// [`super::sum_lanes`]'s order.
    #[inline(always)]
    unsafe fn sum_lanes(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// The lanes' 4-byte dot products of `a` and `w`, given |w| and a·sign(w) (so the unsigned
    /// operand is |w|). Exact: every pair sum fits i16 because |a| ≤ 127 and |w| ≤ 128.
    #[inline(always)]
    unsafe fn group_sums_avx2(abs_w: __m256i, signed_a: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, signed_a), _mm256_set1_epi16(1))
    }

    macro_rules! columns_kernel {
        ($name:ident, $features:literal, $group_sums:expr) => {
            /// [`super::dot_scalar`] for `R` activation rows against each weight row of the item.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const R: usize>(job: &Columns<'_>, a: [(&[f32], &[i8]); R]) {
                let blocks = job.w.cols() / BLOCK;
                for c in job.columns.clone() {
                    let (w_scales, w_quants) = job.w.row(c);
                    let mut acc = [_mm256_setzero_ps(); R];
                    for b in 0..blocks {
                        // The weight rows of an item are contiguous: fetch ahead into the next
                        // one, so the loads below find their lines in cache.
                        _mm_prefetch::<_MM_HINT_T0>(
                            w_quants.as_ptr().wrapping_add(b * BLOCK + PREFETCH_AHEAD),
                        );
                        let wq =
                            _mm256_loadu_si256(w_quants.as_ptr().add(b * BLOCK) as *const __m256i);
                        let abs_w = _mm256_sign_epi8(wq, wq);
                        let w_scale = *w_scales.get_unchecked(b);
                        for r in 0..R {
                            let aq = _mm256_loadu_si256(
                                a[r].1.as_ptr().add(b * BLOCK) as *const __m256i
                            );
                            let sums = $group_sums(abs_w, _mm256_sign_epi8(aq, wq));
                            let scale = _mm256_set1_ps(*a[r].0.get_unchecked(b) * w_scale);
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r]);
                        }
                    }
                    for r in 0..R {
                        job.out.write(job.first_row + r, c, sum_lanes(acc[r]));
                    }
                }
            }
        };
    }

    columns_kernel!(columns_avx2, "avx2,fma", |w, a| group_sums_avx2(w, a));
    columns_kernel!(columns_vnni, "avx2,fma,avx512vnni,avx512vl", |w, a| {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::available_levels;
    use crate::sampling::Rng;

    fn random(rng: &mut Rng, n: usize, spread: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread)
            .collect()
    }

    fn reference(a: &Q8Blocks, w: &Q8Blocks) -> Vec<f32> {
        (0..a.rows())
            .flat_map(|r| (0..w.rows()).map(move |c| dot_scalar(a.row(r), w.row(c))))
            .collect()
    }

    #[test]
    fn every_level_gives_the_reference_bits_for_any_number_of_rows() {
        let mut rng = Rng::new(7);
        let (n, k) = (37, 8 * BLOCK);
        let w = Q8Blocks::quantize(&random(&mut rng, n * k, 2.0), n, k);
        for m in [1, 2, 3, 4, 5, 9] {
            let a = Q8Blocks::quantize(&random(&mut rng, m * k, 20.0), m, k);
            let want = reference(&a, &w);
            for level in available_levels() {
                let mut got = vec![0f32; m * n];
                matmul(level, &a, &w, &mut got);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{} with {m} rows differs from the reference",
                    level.name()
                );
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
        let w = Q8Blocks::from_gguf_q8_0(&bytes, 1, k).unwrap();
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
        let (a, w) = (Q8Blocks::quantize(&av, m, k), Q8Blocks::quantize(&wv, n, k));
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
