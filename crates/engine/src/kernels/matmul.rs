//! Quantized matrix products: 8-bit activation rows ([`Q8Blocks`]) times packed weights (the
//! formats in [`super::packed`]), split between threads by groups of 16 weight rows.
//!
//! Every format defines its product once, as a sequence of f32 operations per output over its
//! blocks in order (integer block dot products are exact), and every SIMD level performs exactly
//! that sequence. So a row's result does not depend on the SIMD level, on how many rows are
//! multiplied together, or on how the work is split between threads.

use super::packed::{Groups, GROUP};
use super::q8_0::Q8Blocks;
use super::Level;

/// Activation rows multiplied against one group's weights while they are in registers: enough
/// independent chains of VNNI products to hide their latency.
const ROW_TILE: usize = 8;

/// A packed weight format: its groups of rows and its product for one tile, at each level.
pub trait Weights: Sync {
    /// What the product needs of the activations besides scales and quants (offsets, scaled
    /// sums), computed once per product so that the kernels read it rather than derive it.
    type Term: Copy + Sync;

    fn groups(&self) -> &Groups;
    /// The activations' terms, row-major: the same number for every row.
    fn terms(a: &Q8Blocks) -> Vec<Self::Term>;
    /// The reference: writes the tile's `R` rows × 16 columns of the product.
    fn tile_scalar<const R: usize>(&self, tile: &Tile<'_, Self::Term>);
    /// The reference's bits on 256-bit vectors.
    ///
    /// # Safety
    /// The CPU runs AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2<const R: usize>(&self, tile: &Tile<'_, Self::Term>);
    /// The reference's bits on 512-bit vectors.
    ///
    /// # Safety
    /// The CPU runs AVX-512 F, BW and VNNI, and AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_vnni512<const R: usize>(&self, tile: &Tile<'_, Self::Term>);

    fn rows(&self) -> usize {
        self.groups().rows()
    }

    fn cols(&self) -> usize {
        self.groups().cols()
    }

    /// The tile at `level`.
    fn tile<const R: usize>(&self, level: Level, tile: &Tile<'_, Self::Term>) {
        match level {
            // SAFETY: the level is at most what the CPU was detected to run.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { self.tile_vnni512::<R>(tile) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { self.tile_avx2::<R>(tile) },
            _ => self.tile_scalar::<R>(tile),
        }
    }
}

/// `out` (m × n, row-major) = `a` (m × k) · `w`ᵀ, for `w` (n × k). Threads split the weight
/// groups; each thread runs every row tile against its groups while they are in cache.
pub fn matmul<W: Weights>(level: Level, a: &Q8Blocks, w: &W, out: &mut [f32]) {
    assert_eq!(a.cols(), w.cols(), "inner dimensions differ");
    let (m, n) = (a.rows(), w.rows());
    assert_eq!(out.len(), m * n, "output for {m}x{n}");
    let out = Output {
        addr: out.as_mut_ptr() as usize,
        n,
    };
    let terms = W::terms(a);
    let terms_per_row = terms.len() / m.max(1);
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(GROUP), |groups| {
        for group in groups {
            for first in (0..m).step_by(ROW_TILE) {
                let tile = Tile {
                    a,
                    terms: &terms,
                    terms_per_row,
                    group,
                    columns: GROUP.min(n - group * GROUP),
                    first_row: first,
                    out,
                };
                match m - first {
                    1 => w.tile::<1>(level, &tile),
                    2 => w.tile::<2>(level, &tile),
                    3 => w.tile::<3>(level, &tile),
                    4 => w.tile::<4>(level, &tile),
                    5 => w.tile::<5>(level, &tile),
                    6 => w.tile::<6>(level, &tile),
                    7 => w.tile::<7>(level, &tile),
                    _ => w.tile::<ROW_TILE>(level, &tile),
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

/// One activation row: per block a scale, the quants, and the weight format's terms.
pub struct Row<'a, T> {
    pub scales: &'a [f32],
    pub quants: &'a [i8],
    pub terms: &'a [T],
}

// Slices only: copyable whatever T is (a derive would ask T: Copy).
impl<T> Clone for Row<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Row<'_, T> {}

/// One group of 16 weight rows (output columns) against activation rows from `first_row`.
pub struct Tile<'a, T> {
    a: &'a Q8Blocks,
    terms: &'a [T],
    terms_per_row: usize,
    /// The weight group.
    pub group: usize,
    /// Output columns of the group inside the matrix (the last group may be partial).
    pub columns: usize,
    first_row: usize,
    out: Output,
}

impl<'a, T> Tile<'a, T> {
    /// The tile's `R` activation rows.
    #[inline(always)]
    pub fn rows<const R: usize>(&self) -> [Row<'a, T>; R] {
        // A plain loop: array::from_fn's closure stayed a call per row (~4% of a prompt's time).
        let mut rows = [Row {
            scales: &[],
            quants: &[],
            terms: &[],
        }; R];
        for (r, row) in (self.first_row..).zip(rows.iter_mut()) {
            let (scales, quants) = self.a.row(r);
            let terms = &self.terms[r * self.terms_per_row..(r + 1) * self.terms_per_row];
            *row = Row {
                scales,
                quants,
                terms,
            };
        }
        rows
    }

    /// Writes the 16 results of each of the tile's rows, in order.
    pub fn store_rows(&self, rows: &[[f32; GROUP]]) {
        for (r, values) in rows.iter().enumerate() {
            self.store(r, values);
        }
    }

    /// Writes row `r`'s 16 results, dropping the padding rows' columns.
    pub fn store(&self, r: usize, values: &[f32; GROUP]) {
        let at = (self.first_row + r) * self.out.n + self.group * GROUP;
        // SAFETY: the columns are inside the m × n output, and only this tile writes them (each
        // group belongs to one thread, and tiles of a group run one after another).
        unsafe {
            let out = (self.out.addr as *mut f32).add(at);
            std::ptr::copy_nonoverlapping(values.as_ptr(), out, self.columns);
        }
    }
}

/// 4 activation bytes of `step` (0..8) in block `b`, as one 32-bit value to broadcast.
///
/// # Safety
/// Block `b` is inside `quants`.
#[inline(always)]
pub unsafe fn four(quants: &[i8], b: usize, step: usize) -> i32 {
    let at = b * super::q8_0::BLOCK + 4 * step;
    unsafe { (quants.as_ptr().add(at) as *const i32).read_unaligned() }
}
