//! Causal self-attention in f32 on the CPU. Every (head, query row) is computed on its own, in a
//! fixed order, so a position's result is the same whether its prompt is read in one pass, in
//! chunks, or after a cached prefix, and whatever other sequences share the step.

use super::Level;

/// Keys or values of one sequence: element (kv head `h`, position `j`, dimension `x`) is at
/// `data[offset + h * head_stride + j * row_stride + x]` (a view of a preallocated cache).
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl Strided<'_> {
    #[inline(always)]
    fn row(&self, head: usize, position: usize, dim: usize) -> &[f32] {
        let start = self.offset + head * self.head_stride + position * self.row_stride;
        &self.data[start..start + dim]
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    /// New query rows; they are the last `rows` of `positions`.
    pub rows: usize,
    /// Positions attended over (cached and new).
    pub positions: usize,
    pub dim: usize,
}

/// softmax(q·kᵀ/√d)·v for `q` (heads, rows, dim), contiguous, where query row i sits at position
/// positions - rows + i and sees positions up to its own. Query heads h·g..(h+1)·g share KV head h.
/// Returns (heads, rows, dim), the same bits at every `level`.
pub fn causal_attention(
    level: Level,
    q: &[f32],
    k: Strided<'_>,
    v: Strided<'_>,
    shape: Shape,
) -> Vec<f32> {
    let Shape {
        heads,
        kv_heads,
        rows,
        positions,
        dim,
    } = shape;
    assert_eq!(q.len(), heads * rows * dim, "queries for {shape:?}");
    assert!(rows <= positions && kv_heads > 0 && heads.is_multiple_of(kv_heads));
    let group = heads / kv_heads;
    // A work item is one query row of several query heads that share a KV head, so that each key
    // and value row is read once for all of them: whole groups where that still shares the work
    // evenly between threads (prompts; a decode step with as many KV heads as threads), single
    // heads otherwise.
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let group_items = kv_heads * rows;
    let even = group_items >= 4 * threads || group_items.is_multiple_of(threads);
    let heads_per_item = if even && group <= MAX_GROUP { group } else { 1 };
    let mut out = vec![0f32; heads * rows * dim];
    let job = Job {
        q,
        k,
        v,
        shape,
        group,
        heads_per_item,
        scale: 1.0 / (dim as f32).sqrt(),
        out: out.as_mut_ptr() as usize,
    };
    pool.execute_chunked(heads / heads_per_item * rows, |items| {
        let mut scores = Vec::with_capacity(heads_per_item * positions);
        let mut acc = vec![0f32; heads_per_item * dim];
        for item in items {
            match level {
                // SAFETY: the CPU has AVX2 (the level is never above the detected one).
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 | Level::Avx512Vnni => unsafe {
                    job.item_avx2(item, &mut scores, &mut acc)
                },
                _ => job.item::<false>(item, &mut scores, &mut acc),
            }
        }
    });
    out
}

/// One call's inputs, shared by its work items.
struct Job<'a> {
    q: &'a [f32],
    k: Strided<'a>,
    v: Strided<'a>,
    shape: Shape,
    group: usize,
    heads_per_item: usize,
    scale: f32,
    /// Where the (heads, rows, dim) output starts.
    out: usize,
}

impl Job<'_> {
    /// Query row `item % rows` of the query heads of block `item / rows`. Each head's result is
    /// the same sequence of operations whatever the block holds and whatever the level: dot
    /// products in [`dot`]'s order, the softmax, then the values weighted in position order.
    /// `AVX2`: the dot products by 256-bit intrinsics (the compiler vectorizes the rest).
    #[inline(always)]
    fn item<const AVX2: bool>(&self, item: usize, scores: &mut Vec<f32>, acc: &mut [f32]) {
        let Shape {
            rows,
            positions,
            dim,
            ..
        } = self.shape;
        let (block, row) = (item / rows, item % rows);
        let first_head = block * self.heads_per_item;
        let kv = first_head / self.group;
        let visible = positions - rows + row + 1;
        let query = |i: usize| &self.q[((first_head + i) * rows + row) * dim..][..dim];
        scores.clear();
        scores.resize(self.heads_per_item * visible, 0.0);
        // Four keys at a time: independent sums, and each query read once for them.
        let whole = visible / 4 * 4;
        for j in (0..whole).step_by(4) {
            let keys = std::array::from_fn(|x| self.k.row(kv, j + x, dim));
            for i in 0..self.heads_per_item {
                let dots = dot4::<AVX2>(query(i), keys);
                for (s, d) in scores[i * visible + j..][..4].iter_mut().zip(dots) {
                    *s = d * self.scale;
                }
            }
        }
        for j in whole..visible {
            let key = self.k.row(kv, j, dim);
            for i in 0..self.heads_per_item {
                scores[i * visible + j] = dot(query(i), key) * self.scale;
            }
        }
        let mut totals = [0f32; MAX_GROUP];
        let totals = &mut totals[..self.heads_per_item];
        for (scores, total) in scores.chunks_exact_mut(visible).zip(totals.iter_mut()) {
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            // The exponentials first (a loop that vectorizes), then their sum in order.
            super::math::exp_shifted(scores, max);
            *total = scores.iter().fold(0f32, |t, &s| t + s);
        }
        // The values weighted in position order; four positions per pass over a head's sums, so
        // they are loaded and stored a quarter as often (the same additions in the same order).
        acc.fill(0.0);
        for j in (0..whole).step_by(4) {
            let [v0, v1, v2, v3] = std::array::from_fn(|x| self.v.row(kv, j + x, dim));
            for (i, acc) in acc.chunks_exact_mut(dim).enumerate() {
                let [p0, p1, p2, p3] = [0, 1, 2, 3].map(|x| scores[i * visible + j + x]);
                for d in 0..dim {
                    acc[d] = acc[d] + p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d];
                }
            }
        }
        for j in whole..visible {
            let value = self.v.row(kv, j, dim);
            for (i, acc) in acc.chunks_exact_mut(dim).enumerate() {
                let p = scores[i * visible + j];
                for (a, &x) in acc.iter_mut().zip(value) {
                    *a += p * x;
                }
            }
        }
        for (i, (acc, total)) in acc.chunks_exact(dim).zip(totals.iter()).enumerate() {
            let at = ((first_head + i) * rows + row) * dim;
            // SAFETY: items write disjoint rows of the output, each from one thread.
            let out =
                unsafe { std::slice::from_raw_parts_mut((self.out as *mut f32).add(at), dim) };
            for (o, a) in out.iter_mut().zip(acc) {
                *o = a / total;
            }
        }
    }

    /// [`Job::item`] compiled for AVX2: 8-lane vectors for the same operations (Rust never fuses
    /// a multiply and an add on its own), so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn item_avx2(&self, item: usize, scores: &mut Vec<f32>, acc: &mut [f32]) {
        self.item::<true>(item, scores, acc)
    }
}

/// Query heads per KV head an item can hold (Qwen2.5: 2 to 7); models with more take one at a time.
const MAX_GROUP: usize = 16;

/// Dot product in 8 lanes summed in a fixed order (vectorizes, and is the same on every call).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    reduce(lanes, tail_dot(a, b))
}

/// [`dot`] of one query with four keys at once, each sum exactly as [`dot`] makes it.
/// `AVX2` only where the CPU runs it.
#[inline(always)]
fn dot4<const AVX2: bool>(a: &[f32], keys: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    let lanes = if AVX2 {
        // SAFETY: the caller runs AVX2 code only on a CPU with AVX2.
        unsafe { x86::dot4_lanes(a, keys) }
    } else {
        dot4_lanes(a, keys)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = dot4_lanes(a, keys);
    std::array::from_fn(|i| reduce(lanes[i], tail_dot(a, keys[i])))
}

/// Each key's 8 lane sums over the whole 8s of `a`, as [`dot`] accumulates them.
#[inline(always)]
fn dot4_lanes(a: &[f32], keys: [&[f32]; 4]) -> [[f32; 8]; 4] {
    let mut lanes = [[0f32; 8]; 4];
    for (c, x) in a.chunks_exact(8).enumerate() {
        for (lanes, key) in lanes.iter_mut().zip(keys) {
            let y = &key[8 * c..8 * c + 8];
            for l in 0..8 {
                lanes[l] += x[l] * y[l];
            }
        }
    }
    lanes
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::dot4_lanes`] with a key's 8 lanes in one register: the same multiplies and adds
    /// (left to itself the compiler shuffled the four sums through 128-bit halves).
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn dot4_lanes(a: &[f32], keys: [&[f32]; 4]) -> [[f32; 8]; 4] {
        let whole = a.len() / 8 * 8;
        assert!(keys.iter().all(|k| k.len() >= whole));
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole, within `a` and every key (checked above).
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i)) };
            for (acc, key) in acc.iter_mut().zip(keys) {
                let y = unsafe { _mm256_loadu_ps(key.as_ptr().add(i)) };
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, y));
            }
        }
        // SAFETY: a 256-bit vector of f32 is laid out as the array of its 8 lanes.
        acc.map(|v| unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) })
    }
}

/// The products past the last whole 8 values, summed.
#[inline(always)]
fn tail_dot(a: &[f32], b: &[f32]) -> f32 {
    let whole = a.len() / 8 * 8;
    a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum()
}

#[inline(always)]
fn reduce(lanes: [f32; 8], tail: f32) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        crate::kernels::random_values(rng, n, 1.0)
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_with_the_rows_before_it() {
        let mut rng = Rng::new(11);
        let (heads, kv_heads, dim, positions) = (6, 2, 16, 9);
        let (kd, vd) = (
            random(&mut rng, kv_heads * positions * dim),
            random(&mut rng, kv_heads * positions * dim),
        );
        let kv = |data| Strided {
            data,
            offset: 0,
            head_stride: positions * dim,
            row_stride: dim,
        };
        let q_all = random(&mut rng, heads * positions * dim);
        let shape = |rows| Shape {
            heads,
            kv_heads,
            rows,
            positions,
            dim,
        };
        let all = causal_attention(Level::Scalar, &q_all, kv(&kd), kv(&vd), shape(positions));
        // The last row alone (a decode step after a cached prompt).
        let q_last: Vec<f32> = (0..heads)
            .flat_map(|h| q_all[(h * positions + positions - 1) * dim..][..dim].to_vec())
            .collect();
        let last = causal_attention(Level::Scalar, &q_last, kv(&kd), kv(&vd), shape(1));
        for h in 0..heads {
            let from_all = &all[(h * positions + positions - 1) * dim..][..dim];
            assert_eq!(from_all, &last[h * dim..][..dim]);
        }
        // The first row sees only position 0: its output is v[0] of its KV head.
        for h in 0..heads {
            let first = &all[h * positions * dim..][..dim];
            let v0 = &vd[(h / 3) * positions * dim..][..dim];
            for (a, b) in first.iter().zip(v0) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }

    /// The attention as first written, one (head, row) at a time with one key per dot product:
    /// what every grouping and level must reproduce bit for bit.
    fn reference(q: &[f32], k: Strided<'_>, v: Strided<'_>, shape: Shape) -> Vec<f32> {
        let Shape {
            heads,
            kv_heads,
            rows,
            positions,
            dim,
        } = shape;
        let scale = 1.0 / (dim as f32).sqrt();
        let mut out = vec![0f32; heads * rows * dim];
        for head in 0..heads {
            let kv = head / (heads / kv_heads);
            for row in 0..rows {
                let at = (head * rows + row) * dim;
                let query = &q[at..at + dim];
                let mut scores: Vec<f32> = (0..positions - rows + row + 1)
                    .map(|j| dot(query, k.row(kv, j, dim)) * scale)
                    .collect();
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                crate::kernels::math::exp_shifted(&mut scores, max);
                let total = scores.iter().fold(0f32, |t, &s| t + s);
                let mut acc = vec![0f32; dim];
                for (j, &p) in scores.iter().enumerate() {
                    for (a, &x) in acc.iter_mut().zip(v.row(kv, j, dim)) {
                        *a += p * x;
                    }
                }
                for (o, a) in out[at..at + dim].iter_mut().zip(&acc) {
                    *o = a / total;
                }
            }
        }
        out
    }

    #[test]
    fn every_grouping_and_level_gives_the_reference_bits() {
        let mut rng = Rng::new(12);
        // head_dim with and without a tail past whole 8s; one KV head per query head and six;
        // a decode row (single heads per item) and a prompt (whole groups); position counts
        // around multiples of four; keys in a cache with spare capacity.
        for (heads, kv_heads, dim) in [(12, 2, 128), (4, 4, 64), (6, 1, 20)] {
            for (rows, positions) in [(1, 1), (1, 38), (33, 33), (29, 70)] {
                let capacity = positions + 5;
                let cache = |rng: &mut Rng| random(rng, 3 + kv_heads * capacity * dim);
                let (kd, vd) = (cache(&mut rng), cache(&mut rng));
                let kv = |data| Strided {
                    data,
                    offset: 3,
                    head_stride: capacity * dim,
                    row_stride: dim,
                };
                let q = random(&mut rng, heads * rows * dim);
                let shape = Shape {
                    heads,
                    kv_heads,
                    rows,
                    positions,
                    dim,
                };
                let want = reference(&q, kv(&kd), kv(&vd), shape);
                for level in crate::kernels::available_levels() {
                    let got = causal_attention(level, &q, kv(&kd), kv(&vd), shape);
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{shape:?} at {}", level.name());
                }
            }
        }
    }
}
