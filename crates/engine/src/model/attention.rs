//! Self-attention over a sequence's KV cache: rotary embeddings, the cache write, and the
//! scaled-dot-product attention itself. The one place that knows the cache layout
//! (kv_heads, positions, head_dim) and the place where a backend-specific kernel (a fused
//! single-query decode kernel on CUDA, flash attention for prompts) replaces the generic one.

use super::fused::{Fused, RopeInput};
use super::qwen2::Linear;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kernels::{
    self,
    attention::{Shape as AttentionShape, Strided},
};
use crate::kv_cache::KvCache;
use crate::loader::{LayerWeight, WeightName, WeightSource};
use candle_core::{DType, Device, Layout, Storage, Tensor};

/// cos/sin tables for rotary position embeddings (the "neox" half-split layout Qwen2 uses).
pub(super) struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub(super) fn new(
        cfg: &ModelConfig,
        max_positions: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let half = cfg.head_dim / 2;
        // The same table bits on every platform (see kernels::math).
        let (cos, sin) = kernels::math::rope_table(cfg.rope_theta, cfg.head_dim, max_positions);
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_positions, half), dev)?.to_dtype(dtype)?,
        })
    }

    fn apply(&self, x: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let n = x.dim(2)?;
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        candle_nn::rotary_emb::rope(x, &cos, &sin)
    }
}

/// Grouped-query self-attention of one layer: projections, RoPE, the cache write and the
/// attention over every cached position.
pub(super) struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub(super) fn load(
        cfg: &ModelConfig,
        src: &mut dyn WeightSource,
        layer: usize,
    ) -> Result<Self> {
        use LayerWeight::*;
        let w = |lw| WeightName::Layer(layer, lw);
        Ok(Self {
            q: Linear::load(src, w(Q), Some(w(QBias)))?,
            k: Linear::load(src, w(K), Some(w(KBias)))?,
            v: Linear::load(src, w(V), Some(w(VBias)))?,
            o: Linear::load(src, w(O), None)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `x` (1, rows, hidden) holds the new positions of every sequence in `spans`, one span
    /// after another. Projections run once over all rows; RoPE, the cache write and attention run
    /// per sequence, each over its own cache. Returns (1, rows, hidden).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        spans: &mut [Span<'_>],
        layer: usize,
        fused: Option<&Fused>,
    ) -> candle_core::Result<Tensor> {
        let hidden = x.dim(2)?;
        let mut outputs = Vec::with_capacity(spans.len());
        if let Some(fused) = fused {
            let (q_all, k_all, v_all) =
                (self.q.project(x)?, self.k.project(x)?, self.v.project(x)?);
            let biases = match (self.q.bias(), self.k.bias(), self.v.bias()) {
                (Some(q), Some(k), Some(v)) => Some((q, k, v)),
                (None, None, None) => None,
                _ => candle_core::bail!("fused attention needs all three biases or none"),
            };
            for span in spans.iter_mut() {
                let (n, start) = (span.len, span.cache.len());
                let (k_cache, v_cache) = span.cache.buffers(layer);
                let q = fused.rope_into_cache(RopeInput {
                    q: &q_all,
                    k: &k_all,
                    v: &v_all,
                    biases,
                    cos: &rotary.cos,
                    sin: &rotary.sin,
                    k_cache,
                    v_cache,
                    offset: span.offset,
                    len: n,
                    start,
                    heads: self.num_heads,
                    kv_heads: self.num_kv_heads,
                    head_dim: self.head_dim,
                })?;
                let single = match n {
                    1 => fused.decode_attention(&q, k_cache, v_cache, start + 1)?,
                    _ => None,
                };
                outputs.push(match single {
                    Some(y) => y,
                    None => {
                        let (k, v) = span.cache.positions(layer, start + n)?;
                        scaled_dot_product(&q, &k, &v, span.mask.as_ref(), Some(fused))?
                            .transpose(1, 2)?
                            .reshape((1, n, hidden))?
                    }
                });
            }
        } else {
            let [q_all, k_all, v_all] = Linear::forward_each(x, [&self.q, &self.k, &self.v])?;
            for span in spans.iter_mut() {
                let (offset, n, start) = (span.offset, span.len, span.cache.len());
                let heads = |t: &Tensor, h: usize| {
                    t.narrow(1, offset, n)?
                        .reshape((1, n, h, self.head_dim))?
                        .transpose(1, 2)?
                        .contiguous()
                };
                let q = rotary.apply(&heads(&q_all, self.num_heads)?, start)?;
                let k = rotary.apply(&heads(&k_all, self.num_kv_heads)?, start)?;
                let v = heads(&v_all, self.num_kv_heads)?;
                let (k, v) = span.cache.append(layer, &k, &v)?;
                outputs.push(
                    scaled_dot_product(&q, &k, &v, span.mask.as_ref(), None)?
                        .transpose(1, 2)?
                        .reshape((1, n, hidden))?,
                );
            }
        }
        let y = match outputs.len() {
            1 => outputs.remove(0),
            _ => Tensor::cat(&outputs, 1)?,
        };
        self.o.forward(&y)
    }
}

/// One sequence's rows in a batched forward: `len` new positions at `offset` among the batch's
/// rows, written after the positions its cache holds.
pub(super) struct Span<'a> {
    pub offset: usize,
    pub len: usize,
    pub cache: &'a mut KvCache,
    /// [`causal_mask`]'s, for len > 1 where [`needs_mask`].
    pub mask: Option<Tensor>,
}

/// softmax(q·kᵀ/√d + mask)·v for q (b, heads, n, d) over k, v (b, kv_heads, total, d), where
/// query heads h·group .. (h+1)·group share KV head h. Returns (b, heads, n, d).
///
/// The generic version, built from candle ops, runs on every backend; the CPU and the GPU's fused
/// kernels apply the causal mask themselves (see [`needs_mask`]). A backend's own prompt kernel
/// (flash attention) goes in here, so the model and the cache layout do not change with it.
fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    fused: Option<&Fused>,
) -> candle_core::Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        return attend_on_cpu(q, k, v);
    }
    let (b, heads, n, d) = q.dims4()?;
    let (_, kv_heads, total, _) = k.dims4()?;
    // No per-head copies of K/V: the query heads of one KV head are adjacent, so
    // (b, heads, n, d) reshapes to (b, kv_heads, group * n, d).
    let group = heads / kv_heads;
    let q = q.reshape((b, kv_heads, group * n, d))?;
    let scores = q.matmul(&k.t()?)?;
    let scale = 1.0 / (d as f64).sqrt();
    let probs = match fused {
        Some(fused) => fused.causal_softmax(&scores, n, total - n, scale as f32)?,
        None => {
            let mut scores = (scores * scale)?;
            if let Some(mask) = mask {
                scores = scores
                    .reshape((b, kv_heads, group, n, total))?
                    .broadcast_add(mask)?
                    .reshape((b, kv_heads, group * n, total))?;
            }
            candle_nn::ops::softmax_last_dim(&scores)?
        }
    };
    probs.matmul(v)?.reshape((b, heads, n, d))
}

/// Whether a prompt's attention needs a mask tensor: only candle's generic ops do; the CPU kernel
/// and the GPU's causal softmax mask by position.
pub(super) fn needs_mask(device: &Device, dtype: DType, fused: Option<&Fused>) -> bool {
    fused.is_none() && !(device.is_cpu() && dtype == DType::F32)
}

/// The CPU's attention ([`kernels::attention`]): causal by construction (the mask is implied),
/// reading keys and values in place from the cache's buffers, each query row computed on its own.
fn attend_on_cpu(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (_, heads, rows, dim) = q.dims4()?;
    let (_, kv_heads, positions, _) = k.dims4()?;
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let queries = strided_view(&q_storage, q_layout)?;
    let out = kernels::attention::causal_attention(
        kernels::level(),
        &queries.data[queries.offset..queries.offset + heads * rows * dim],
        strided_view(&k_storage, k_layout)?,
        strided_view(&v_storage, v_layout)?,
        AttentionShape {
            heads,
            kv_heads,
            rows,
            positions,
            dim,
        },
    );
    Tensor::from_vec(out, (1, heads, rows, dim), &Device::Cpu)
}

/// A CPU f32 tensor of shape (1, heads, positions, dim) as the attention kernel reads it.
fn strided_view<'a>(storage: &'a Storage, layout: &Layout) -> candle_core::Result<Strided<'a>> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("CPU attention on a tensor off the CPU");
    };
    let stride = layout.stride();
    if stride[3] != 1 {
        candle_core::bail!("attention needs rows of contiguous values, got strides {stride:?}");
    }
    Ok(Strided {
        data: cpu.as_slice::<f32>()?,
        offset: layout.start_offset(),
        head_stride: stride[1],
        row_stride: stride[2],
    })
}

/// (n, start + n) additive mask: query i (at position start + i) sees keys 0..=start + i.
pub(super) fn causal_mask(
    n: usize,
    start: usize,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let total = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, total), dev)?.to_dtype(dtype)
}
