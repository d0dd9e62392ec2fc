//! A KV cache together with the tokens it holds, kept between requests: a prompt that begins like
//! the previous one (system prompt, tool definitions, earlier turns of an agent loop) reuses that
//! prefix instead of recomputing it.

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{BatchInput, Qwen2};
use candle_core::Tensor;

pub struct Sequence {
    kv: KvCache,
    /// The tokens whose keys and values `kv` holds, in order.
    tokens: Vec<u32>,
}

impl Sequence {
    pub fn new(model: &Qwen2) -> Self {
        Self {
            kv: model.new_cache(),
            tokens: Vec::new(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Positions the cache has room for without reallocating.
    pub fn capacity(&self) -> usize {
        self.kv.capacity()
    }

    /// How many leading tokens of `prompt` are cached, short of its last token (whose logits
    /// start the answer, so it is always computed).
    pub fn common_prefix(&self, prompt: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1))
    }

    /// Keeps the cached prefix of `prompt` (see [`common_prefix`](Self::common_prefix)) and
    /// returns its length.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let shared = self.common_prefix(prompt);
        self.truncate(shared);
        shared
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.kv.truncate(len);
    }

    /// Makes this sequence hold `from`'s first `n` tokens and their keys and values, copied.
    pub fn copy_prefix(&mut self, from: &Sequence, n: usize) -> Result<()> {
        self.tokens.clear();
        self.kv.copy_prefix(&from.kv, n)?;
        self.tokens.extend_from_slice(&from.tokens[..n]);
        Ok(())
    }

    /// Ensures room for `total` positions up front, so decoding does not reallocate.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        Ok(self.kv.reserve(total)?)
    }

    /// Runs `tokens` after the cached ones and returns the next-token logits.
    pub fn forward(&mut self, model: &Qwen2, tokens: &[u32]) -> Result<Tensor> {
        let logits = model.forward(tokens, &mut self.kv)?;
        self.tokens.extend_from_slice(tokens);
        Ok(logits)
    }

    /// Runs each sequence's tokens after its cached ones in one batched forward (see
    /// [`Qwen2::forward_batch`]); the flag says whether that sequence's logits are wanted.
    /// On error every sequence is left as it was.
    pub fn forward_batch(
        model: &Qwen2,
        rows: &mut [(&mut Sequence, &[u32], bool)],
    ) -> Result<Option<Tensor>> {
        let mut batch: Vec<BatchInput<'_>> = rows
            .iter_mut()
            .map(|(seq, tokens, logits)| BatchInput {
                tokens,
                cache: &mut seq.kv,
                logits: *logits,
            })
            .collect();
        let logits = model.forward_batch(&mut batch)?;
        drop(batch);
        for (seq, tokens, _) in rows.iter_mut() {
            seq.tokens.extend_from_slice(tokens);
        }
        Ok(logits)
    }
}
