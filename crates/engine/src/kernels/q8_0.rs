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
    /// x / scale rounded half away from zero, so every quant is within -127..=127. Large inputs
    /// (a prompt's activations, weights re-blocked at load) are split between threads.
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
        /// Blocks per unit of work: 16 KiB of input.
        const BLOCKS_PER_ITEM: usize = 128;
        let quantize_blocks = |values: &[f32], scales: &mut [f32], quants: &mut [i8]| {
            for ((x, q), scale) in values
                .chunks_exact(BLOCK)
                .zip(quants.chunks_exact_mut(BLOCK))
                .zip(scales)
            {
                *scale = quantize_block(x.try_into().unwrap(), q.try_into().unwrap());
            }
        };
        if scales.len() <= BLOCKS_PER_ITEM {
            quantize_blocks(values, &mut scales, &mut quants);
        } else {
            // Uncontended locks hand each thread its own slices.
            let work: Vec<_> = values
                .chunks(BLOCKS_PER_ITEM * BLOCK)
                .zip(scales.chunks_mut(BLOCKS_PER_ITEM))
                .zip(quants.chunks_mut(BLOCKS_PER_ITEM * BLOCK))
                .map(|((v, s), q)| std::sync::Mutex::new((v, s, q)))
                .collect();
            candle_core::utils::barrier_pool().execute_chunked(work.len(), |items| {
                for item in &work[items] {
                    let mut item = item.lock().unwrap_or_else(|e| e.into_inner());
                    let (values, scales, quants) = &mut *item;
                    quantize_blocks(values, scales, quants);
                }
            });
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

/// One block of [`Q8Blocks::quantize`], written so the compiler vectorizes it on the baseline
/// target (no call to `roundf`): truncate, then step away from zero where the remainder is ≥ ½.
#[inline(always)]
fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> f32 {
    let amax = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
    let scale = amax / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        let t = v * inverse;
        let whole = t as i32;
        let rest = t - whole as f32;
        *q = (whole + (rest >= 0.5) as i32 - (rest <= -0.5) as i32) as i8;
    }
    scale
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
    let wide = (level == Level::Avx512Vnni).then(|| WideRows::new(a));
    let rows = Rows {
        plain: a,
        wide: wide.as_ref(),
    };
    let items = n.div_ceil(COLUMNS_PER_ITEM);
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        for item in range {
            let columns = item * COLUMNS_PER_ITEM..n.min((item + 1) * COLUMNS_PER_ITEM);
            // All row tiles against these weight rows while they are in L1.
            for first in (0..m).step_by(ROW_TILE) {
                let job = Columns {
                    w,
                    columns: columns.clone(),
                    first_row: first,
                    out,
                };
                match m - first {
                    1 => job.run::<1>(level, rows),
                    2 => job.run::<2>(level, rows),
                    3 => job.run::<3>(level, rows),
                    _ => job.run::<ROW_TILE>(level, rows),
                }
            }
        }
    });
}

/// The activations in the forms the kernels read.
#[derive(Clone, Copy)]
struct Rows<'a> {
    plain: &'a Q8Blocks,
    /// Present at [`Level::Avx512Vnni`].
    wide: Option<&'a WideRows>,
}

/// Activation rows laid out for 512-bit vectors, two blocks per vector: quants offset by 128 (the
/// unsigned operand of VNNI's byte products, so weights keep their sign), each block's scale
/// repeated over its 8 lanes, and an odd block count padded to even with zero rows and scales.
/// Made once per product: it is m × k bytes, small beside the weights.
struct WideRows {
    blocks: usize,
    quants: Vec<u8>,
    scales: Vec<f32>,
}

impl WideRows {
    fn new(a: &Q8Blocks) -> Self {
        let blocks = (a.cols / BLOCK).next_multiple_of(2);
        let mut quants = vec![0x80u8; a.rows * blocks * BLOCK];
        let mut scales = vec![0f32; a.rows * blocks * 8];
        for r in 0..a.rows {
            let (from_scales, from_quants) = a.row(r);
            let to = &mut quants[r * blocks * BLOCK..];
            for (to, &q) in to.iter_mut().zip(from_quants) {
                *to = (q as u8) ^ 0x80;
            }
            let to = &mut scales[r * blocks * 8..];
            for (to, &s) in to.chunks_exact_mut(8).zip(from_scales) {
                to.fill(s);
            }
        }
        Self {
            blocks,
            quants,
            scales,
        }
    }

    fn row(&self, r: usize) -> (&[f32], &[u8]) {
        (
            &self.scales[r * self.blocks * 8..(r + 1) * self.blocks * 8],
            &self.quants[r * self.blocks * BLOCK..(r + 1) * self.blocks * BLOCK],
        )
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
    fn run<const R: usize>(&self, level: Level, rows: Rows<'_>) {
        let plain = std::array::from_fn(|i| rows.plain.row(self.first_row + i));
        match (level, rows.wide) {
            // SAFETY: the level is at most what the CPU was detected to run.
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512Vnni, Some(wide)) => unsafe {
                x86::columns_vnni512::<R>(
                    self,
                    std::array::from_fn(|i| wide.row(self.first_row + i)),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2 | Level::Avx512Vnni, _) => unsafe { x86::columns_avx2::<R>(self, plain) },
            _ => {
                for c in self.columns.clone() {
                    for (i, a) in plain.iter().enumerate() {
                        let value = dot_scalar(*a, self.w.row(c));
                        // SAFETY: see Output::write; c < n and first_row + i < m.
                        unsafe { self.out.write(self.first_row + i, c, value) };
                    }
                }
            }
        }
    }
}

/// The reference. A block's 32 products make 8 lanes of 4-value integer dot products; even blocks
/// go to lanes 0..8 and odd blocks to lanes 8..16 (two blocks fill a 512-bit vector), each added
/// to its lane as `fma(sum, scale_a * scale_w, lane)`. Then lane i and i + 8 are added, and those
/// 8 sums are summed as ((0+4)+(2+6)) + ((1+5)+(3+7)).
fn dot_scalar(a: (&[f32], &[i8]), w: (&[f32], &[i8])) -> f32 {
    let mut lanes = [0f32; 16];
    for (b, (aq, wq)) in
        a.1.chunks_exact(BLOCK)
            .zip(w.1.chunks_exact(BLOCK))
            .enumerate()
    {
        let scale = a.0[b] * w.0[b];
        let half = &mut lanes[8 * (b % 2)..][..8];
        for (l, lane) in half.iter_mut().enumerate() {
            let sum: i32 = (4 * l..4 * l + 4)
                .map(|j| aq[j] as i32 * wq[j] as i32)
                .sum();
            *lane = (sum as f32).mul_add(scale, *lane);
        }
    }
    sum_lanes(std::array::from_fn(|l| lanes[l] + lanes[l + 8]))
}

fn sum_lanes(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Columns, BLOCK};
    use std::arch::x86_64::*;

    /// Bytes ahead of the current block to prefetch: about one weight row of the default model.
    const PREFETCH_AHEAD: usize = 2048;

    /// [`super::sum_lanes`]'s order.
    #[inline(always)]
    unsafe fn sum_lanes(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// [`super::dot_scalar`] for `R` activation rows against each weight row of the item, on
    /// 256-bit vectors: one accumulator per row for even blocks and one for odd.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns_avx2<const R: usize>(job: &Columns<'_>, a: [(&[f32], &[i8]); R]) {
        let blocks = job.w.cols() / BLOCK;
        for c in job.columns.clone() {
            let (w_scales, w_quants) = job.w.row(c);
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            // One block into each row's accumulator `half`.
            let mut block = |b: usize, half: usize| {
                // The weight rows of an item are contiguous: fetch ahead into the next one, so
                // the loads below find their lines in cache.
                _mm_prefetch::<_MM_HINT_T0>(
                    w_quants.as_ptr().wrapping_add(b * BLOCK + PREFETCH_AHEAD),
                );
                let wq = _mm256_loadu_si256(w_quants.as_ptr().add(b * BLOCK) as *const __m256i);
                // maddubs multiplies unsigned by signed bytes: |w| by a·sign(w). Exact: every
                // pair sum fits i16 because |a| ≤ 127 and |w| ≤ 128.
                let abs_w = _mm256_sign_epi8(wq, wq);
                let w_scale = *w_scales.get_unchecked(b);
                for r in 0..R {
                    let aq = _mm256_loadu_si256(a[r].1.as_ptr().add(b * BLOCK) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(aq, wq));
                    let sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
                    let scale = _mm256_set1_ps(*a[r].0.get_unchecked(b) * w_scale);
                    acc[r][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r][half]);
                }
            };
            for pair in 0..blocks / 2 {
                block(2 * pair, 0);
                block(2 * pair + 1, 1);
            }
            if blocks % 2 == 1 {
                block(blocks - 1, 0);
            }
            for (r, [even, odd]) in acc.into_iter().enumerate() {
                job.out
                    .write(job.first_row + r, c, sum_lanes(_mm256_add_ps(even, odd)));
            }
        }
    }

    /// [`super::dot_scalar`] on 512-bit vectors, two blocks per vector, for `R` rows of
    /// [`super::WideRows`]. VNNI multiplies unsigned by signed bytes, so activations come offset by
    /// 128 and every 4-byte sum starts at −128·Σw, computed once per weight vector for all rows.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn columns_vnni512<const R: usize>(
        job: &Columns<'_>,
        a: [(&[f32], &[u8]); R],
    ) {
        let blocks = job.w.cols() / BLOCK;
        let offset = _mm512_set1_epi8(0x80u8 as i8);
        // Lanes 0..8 from the first of two scales, 8..16 from the second.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        for c in job.columns.clone() {
            let (w_scales, w_quants) = job.w.row(c);
            let mut acc = [_mm512_setzero_ps(); R];
            for pair in 0..blocks.div_ceil(2) {
                let b = 2 * pair;
                _mm_prefetch::<_MM_HINT_T0>(
                    w_quants.as_ptr().wrapping_add(b * BLOCK + PREFETCH_AHEAD),
                );
                // A lone last block: the upper half's weights and scale are zero, so its lanes
                // gain exactly 0.
                let (wq, ws) = if b + 1 < blocks {
                    (
                        _mm512_loadu_si512(w_quants.as_ptr().add(b * BLOCK) as *const _),
                        _mm_castpd_ps(_mm_load_sd(w_scales.as_ptr().add(b) as *const f64)),
                    )
                } else {
                    (
                        _mm512_zextsi256_si512(_mm256_loadu_si256(
                            w_quants.as_ptr().add(b * BLOCK) as *const __m256i,
                        )),
                        _mm_load_ss(w_scales.as_ptr().add(b)),
                    )
                };
                let w_scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(ws));
                let start = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, wq),
                );
                for r in 0..R {
                    let aq = _mm512_loadu_si512(a[r].1.as_ptr().add(b * BLOCK) as *const _);
                    let sums = _mm512_dpbusd_epi32(start, aq, wq);
                    let a_scale = _mm512_loadu_ps(a[r].0.as_ptr().add(b * 8));
                    let scale = _mm512_mul_ps(a_scale, w_scale);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[r]);
                }
            }
            for (r, acc) in acc.into_iter().enumerate() {
                let even = _mm512_castps512_ps256(acc);
                let odd = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
                job.out
                    .write(job.first_row + r, c, sum_lanes(_mm256_add_ps(even, odd)));
            }
        }
    }
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
        // An odd block count too: the 512-bit kernel's last vector is half empty.
        for (n, k, m) in [8, 7]
            .iter()
            .flat_map(|&blocks| [1, 2, 3, 4, 5, 9].map(|m| (37, blocks * BLOCK, m)))
        {
            let w = Q8Blocks::quantize(&random(&mut rng, n * k, 2.0), n, k);
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
                    "{} with {m} rows of {k} differs from the reference",
                    level.name()
                );
            }
        }
    }

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
