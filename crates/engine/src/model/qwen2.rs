//! The Qwen2 decoder (Qwen2 / Qwen2.5): token embedding, N pre-norm blocks of grouped-query
//! attention with RoPE and a SwiGLU MLP, final RMSNorm and the LM head.

use super::attention::{causal_mask, needs_mask, Attention, Rotary, Span};
use super::fused::Fused;
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::loader::{LayerWeight, WeightName, WeightSource};
use crate::matrix::{with_cpu_f32, Embedding, Matrix};
use candle_core::{DType, Device, Tensor};

pub(super) struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl Linear {
    pub(super) fn load(
        src: &mut dyn WeightSource,
        w: WeightName,
        b: Option<WeightName>,
    ) -> Result<Self> {
        let bias = match b {
            Some(b) if src.contains(b) => Some(src.vector(b)?),
            _ => None,
        };
        Ok(Self {
            weight: src.matrix(w)?,
            bias,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [y] = Self::forward_each(x, [self])?;
        Ok(y)
    }

    /// `x` through each of `layers`, which share it as input (see [`Matrix::forward_each`]).
    pub(super) fn forward_each<const N: usize>(
        x: &Tensor,
        layers: [&Self; N],
    ) -> candle_core::Result<[Tensor; N]> {
        let products = Matrix::forward_each(x, layers.map(|l| &l.weight))?;
        let biased = layers
            .iter()
            .zip(products)
            .map(|(l, y)| match &l.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(biased
            .try_into()
            .unwrap_or_else(|_| unreachable!("one output per layer")))
    }

    /// `x` times the weight, without the bias (for a kernel that adds it on the way).
    pub(super) fn project(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.weight.forward(x)
    }

    pub(super) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, fused: Option<&Fused>) -> candle_core::Result<Tensor> {
        let [gate, up] = Linear::forward_each(x, [&self.gate, &self.up])?;
        let hidden = match fused {
            Some(fused) => fused.silu_mul(&gate, &up)?,
            None if gate.device().is_cpu() && gate.dtype() == DType::F32 => {
                swiglu_on_cpu(&gate, &up)?
            }
            None => (candle_nn::ops::silu(&gate)? * up)?,
        };
        self.down.forward(&hidden)
    }
}

/// silu(gate) · up with our exp, not libm's: the same bits on every platform (kernels::math).
fn swiglu_on_cpu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let hidden = with_cpu_f32(gate, |g| {
        with_cpu_f32(up, |u| crate::kernels::math::silu_mul(g, u))
    })??;
    Tensor::from_vec(hidden, gate.shape(), &Device::Cpu)
}

/// (x + h, norm(x + h)): one fused kernel where there is one.
fn add_norm(
    x: Tensor,
    h: &Tensor,
    norm: &RmsNorm,
    fused: Option<&Fused>,
) -> candle_core::Result<(Tensor, Tensor)> {
    match fused {
        Some(fused) => fused.add_rms_norm(&x, h, &norm.weight, norm.eps),
        None => {
            let sum = (x + h)?;
            let normed = norm.forward(&sum)?;
            Ok((sum, normed))
        }
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

/// A loaded Qwen2 network. Immutable after load: all per-sequence state lives in a [`KvCache`].
pub struct Qwen2 {
    cfg: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Matrix,
    rotary: Rotary,
    max_positions: usize,
    dtype: DType,
    device: Device,
    /// The GPU's fused kernels, when there are some for this device and dtype.
    fused: Option<Fused>,
}

impl Qwen2 {
    /// Builds the network from any weight source. `max_positions` bounds the rotary tables (the
    /// usable context); `dtype` is the activation dtype.
    pub fn load(
        cfg: &ModelConfig,
        src: &mut dyn WeightSource,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let eps = cfg.rms_norm_eps as f32;
        // Tied embeddings (the small Qwen2.5 models) have no separate head; GGUF files omit it.
        let tied = !src.contains(WeightName::LmHead);
        let embed = if tied {
            Embedding::Matrix(src.matrix(WeightName::TokenEmbedding)?)
        } else {
            src.embedding(WeightName::TokenEmbedding)?
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let w = |lw| WeightName::Layer(i, lw);
            use LayerWeight::*;
            blocks.push(Block {
                attn_norm: RmsNorm {
                    weight: src.vector(w(AttnNorm))?,
                    eps,
                },
                attn: Attention::load(cfg, src, i)?,
                ffn_norm: RmsNorm {
                    weight: src.vector(w(FfnNorm))?,
                    eps,
                },
                mlp: Mlp {
                    gate: Linear::load(src, w(Gate), None)?,
                    up: Linear::load(src, w(Up), None)?,
                    down: Linear::load(src, w(Down), None)?,
                },
            });
        }
        let norm = RmsNorm {
            weight: src.vector(WeightName::OutputNorm)?,
            eps,
        };
        let lm_head = match &embed {
            Embedding::Matrix(m) if tied => m.clone(),
            _ => src.matrix(WeightName::LmHead)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rotary: Rotary::new(cfg, max_positions, dtype, device)?,
            max_positions,
            dtype,
            device: device.clone(),
            fused: Fused::for_device(device, dtype)?,
        })
    }

    /// Whether the GPU's fused kernels run this model (see [`super::fused`]).
    pub fn uses_fused_kernels(&self) -> bool {
        self.fused.is_some()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Positions the model can attend over (the rotary tables' length).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Runs a two-token prompt and a decode step on a scratch cache, so a GPU's kernels are loaded
    /// (and, on a machine's first run, compiled by the driver: 15-20 s for a 7B on an H200) while
    /// the model loads rather than in the first request.
    pub fn warm_up(&self) -> Result<()> {
        let mut cache = self.new_cache();
        self.forward(&[0, 1], &mut cache)?;
        self.forward(&[0], &mut cache)?
            .argmax(0)?
            .to_scalar::<u32>()?;
        Ok(())
    }

    /// A fresh, empty KV cache shaped for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.cfg, self.dtype, &self.device)
    }

    /// Runs `tokens` after the positions already in `cache`, appends their keys/values to it and
    /// returns the next-token logits (f32, vocab-sized) at the last position.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut batch = [BatchInput {
            tokens,
            cache,
            logits: true,
        }];
        let logits = self
            .forward_batch(&mut batch)?
            .ok_or_else(|| EngineError::Internal("a forward returned no logits".into()))?;
        Ok(logits.squeeze(0)?)
    }

    /// Runs several sequences' new tokens in one pass: every weight is applied once to all rows,
    /// attention runs per sequence over its own cache. Returns the last position's logits of each
    /// input that asks for them, in order: (such inputs, vocab), f32; `None` if none asks.
    /// On error no cache has advanced (positions are committed after the last layer).
    pub fn forward_batch(&self, batch: &mut [BatchInput<'_>]) -> Result<Option<Tensor>> {
        let mut last_rows = Vec::new();
        let mut all_tokens = Vec::new();
        for input in batch.iter() {
            all_tokens.extend_from_slice(input.tokens);
            if input.logits {
                last_rows.push(all_tokens.len() as u32 - 1);
            }
        }
        let hidden = self.hidden_states(&all_tokens, batch)?;
        if last_rows.is_empty() {
            return Ok(None);
        }
        let rows = Tensor::new(last_rows.as_slice(), &self.device)?;
        let last = hidden.squeeze(0)?.index_select(&rows, 0)?;
        Ok(Some(self.logits(&last)?))
    }

    /// Like [`forward`](Self::forward), but returns logits at every position: (tokens, vocab).
    /// For scoring a known continuation in one pass (parity checks, evaluation).
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut batch = [BatchInput {
            tokens,
            cache,
            logits: false,
        }];
        let hidden = self.hidden_states(tokens, &mut batch)?;
        Ok(self.logits(&hidden)?.squeeze(0)?)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(&self.norm.forward(hidden)?)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// The decoder stack over `tokens`, the batch's inputs one after another: (1, tokens, hidden).
    fn hidden_states(&self, tokens: &[u32], batch: &mut [BatchInput<'_>]) -> Result<Tensor> {
        let mut spans = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for input in batch.iter() {
            let (n, start) = (input.tokens.len(), input.cache.len());
            if n == 0 {
                return Err(EngineError::Internal("forward with no tokens".into()));
            }
            if start + n > self.max_positions {
                return Err(EngineError::ContextLength(format!(
                    "{} positions exceed the context window of {}",
                    start + n,
                    self.max_positions
                )));
            }
        }
        for input in batch.iter_mut() {
            let (n, start) = (input.tokens.len(), input.cache.len());
            input.cache.reserve(start + n)?;
            let mask = if n > 1 && needs_mask(&self.device, self.dtype, self.fused.as_ref()) {
                Some(causal_mask(n, start, self.dtype, &self.device)?)
            } else {
                None
            };
            spans.push(Span {
                offset,
                len: n,
                cache: &mut *input.cache,
                mask,
            });
            offset += n;
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed.lookup(&ids)?.to_dtype(self.dtype)?;
        let fused = self.fused.as_ref();
        // Each residual add is followed by the next norm, so the two run as one step.
        let mut normed = match self.blocks.first() {
            Some(first) => first.attn_norm.forward(&x)?,
            None => x.clone(),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block
                .attn
                .forward(&normed, &self.rotary, &mut spans, i, fused)?;
            (x, normed) = add_norm(x, &h, &block.ffn_norm, fused)?;
            let h = block.mlp.forward(&normed, fused)?;
            match self.blocks.get(i + 1) {
                Some(next) => (x, normed) = add_norm(x, &h, &next.attn_norm, fused)?,
                None => x = (x + h)?,
            }
        }
        for span in spans {
            span.cache.commit(span.len);
        }
        Ok(x)
    }
}

/// One sequence's part of a batched forward: tokens to run after the positions its cache holds.
pub struct BatchInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the logits after its last token are wanted (not mid-prompt).
    pub logits: bool,
}
