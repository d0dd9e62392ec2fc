//! Causal self-attention in f32 on the CPU. Every (head, query row) is computed on its own, in a
//! fixed order, so a position's result is the same whether its prompt is read in one pass, in
//! chunks, or after a cached prefix, and whatever other sequences share the step.

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
/// Returns (heads, rows, dim).
pub fn causal_attention(q: &[f32], k: Strided<'_>, v: Strided<'_>, shape: Shape) -> Vec<f32> {
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
    let first = positions - rows;
    let scale = 1.0 / (dim as f32).sqrt();
    let mut out = vec![0f32; heads * rows * dim];
    let out_addr = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(heads * rows, |items| {
        let mut scores = Vec::with_capacity(positions);
        let mut acc = vec![0f32; dim];
        for item in items {
            let (head, row) = (item / rows, item % rows);
            let kv = head / group;
            let query = &q[item * dim..(item + 1) * dim];
            let visible = first + row + 1;
            scores.clear();
            scores.extend((0..visible).map(|j| dot(query, k.row(kv, j, dim)) * scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            // The exponentials first (a loop that vectorizes), then their sum in order.
            super::math::exp_shifted(&mut scores, max);
            let total = scores.iter().fold(0f32, |t, &s| t + s);
            acc.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                for (a, &x) in acc.iter_mut().zip(v.row(kv, j, dim)) {
                    *a += p * x;
                }
            }
            // SAFETY: items are disjoint rows of `out`, each written by one thread.
            let out = unsafe {
                std::slice::from_raw_parts_mut((out_addr as *mut f32).add(item * dim), dim)
            };
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = a / total;
            }
        }
    });
    out
}

/// Dot product in 8 lanes summed in a fixed order (vectorizes, and is the same on every call).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
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
        let all = causal_attention(&q_all, kv(&kd), kv(&vd), shape(positions));
        // The last row alone (a decode step after a cached prompt).
        let q_last: Vec<f32> = (0..heads)
            .flat_map(|h| q_all[(h * positions + positions - 1) * dim..][..dim].to_vec())
            .collect();
        let last = causal_attention(&q_last, kv(&kd), kv(&vd), shape(1));
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
}
