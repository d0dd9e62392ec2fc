//! The Qwen2 decoder (Qwen2 / Qwen2.5): token embedding, N pre-norm blocks of grouped-query
//! attention with RoPE and a SwiGLU MLP, final RMSNorm and the LM head.

use super::attention::{causal_mask, Attention, Rotary};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::loader::{LayerWeight, WeightName, WeightSource};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};

pub(super) struct Linear {
    weight: QMatMul,
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
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
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
    embed: QMatMul,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: QMatMul,
    rotary: Rotary,
    max_positions: usize,
    dtype: DType,
    device: Device,
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
        let embed = src.matrix(WeightName::TokenEmbedding)?;
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
        // Tied embeddings (the small Qwen2.5 models) have no separate head; GGUF files omit it.
        let lm_head = if src.contains(WeightName::LmHead) {
            src.matrix(WeightName::LmHead)?
        } else {
            embed.clone()
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
        })
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
        let hidden = self.hidden_states(tokens, cache)?;
        let last = hidden.narrow(1, tokens.len() - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(0)?.squeeze(0)?)
    }

    /// Like [`forward`](Self::forward), but returns logits at every position: (tokens, vocab).
    /// For scoring a known continuation in one pass (parity checks, evaluation).
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.hidden_states(tokens, cache)?;
        Ok(self.logits(&hidden)?.squeeze(0)?)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(&self.norm.forward(hidden)?)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// The decoder stack over `tokens` (positions after `cache`): (1, tokens, hidden).
    fn hidden_states(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let n = tokens.len();
        let start = cache.len();
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
        cache.reserve(start + n)?;
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed.embedding(&ids)?.to_dtype(self.dtype)?;
        let mask = if n > 1 {
            Some(causal_mask(n, start, self.dtype, &self.device)?)
        } else {
            None
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let h = block
                .attn
                .forward(&h, &self.rotary, cache, i, mask.as_ref())?;
            x = (x + h)?;
            let h = block.mlp.forward(&block.ffn_norm.forward(&x)?)?;
            x = (x + h)?;
        }
        cache.commit(n);
        Ok(x)
    }
}
