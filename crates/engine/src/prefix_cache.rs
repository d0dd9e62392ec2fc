//! Sequences kept after their requests, so a later prompt that begins like one of them (the same
//! system prompt and tools, an earlier turn of the same conversation) computes only what differs.
//! Several are kept, least recently used evicted first, so users taking turns, or the repeat-call
//! guard's tool-less redo, do not throw each other's prefixes away.

use crate::error::Result;
use crate::model::Qwen2;
use crate::sequence::Sequence;

/// How many sequences, and how many cached positions in all, the cache keeps.
#[derive(Debug, Clone, Copy)]
pub struct PrefixCacheLimits {
    pub slots: usize,
    /// Allocated positions over all kept sequences (KV memory is this × the model's bytes per
    /// position).
    pub tokens: usize,
}

pub struct PrefixCache {
    /// Least recently used first.
    kept: Vec<Sequence>,
    limits: PrefixCacheLimits,
    /// Prompt positions served from the cache, over all checkouts.
    hit_tokens: u64,
}

impl PrefixCache {
    pub fn new(limits: PrefixCacheLimits) -> Self {
        Self {
            kept: Vec::new(),
            limits,
            hit_tokens: 0,
        }
    }

    /// A sequence for `prompt`, holding the longest prefix of it that any kept sequence holds
    /// (the most recent among equals). A prompt that continues a kept sequence takes that
    /// sequence; one that only shares its beginning (a system prompt, a conversation that went
    /// another way) gets a copy of the shared part, so the kept sequence stays whole. Room comes
    /// from the least recently used sequence when the cache is full. Out of the cache until
    /// `check_in`.
    pub fn check_out(&mut self, model: &Qwen2, prompt: &[u32]) -> Result<Sequence> {
        let best = self
            .kept
            .iter()
            .enumerate()
            .map(|(i, s)| (s.common_prefix(prompt), i))
            .max();
        let full = self.kept.len() >= self.limits.slots.max(1);
        let mut seq = match best {
            Some((shared, i)) if shared > 0 => {
                // Taking loses the kept tokens after the shared part: fine when there are none
                // (the prompt continues it) or when it is the one to be evicted anyway.
                if self.kept[i].len() - shared <= 1 || (full && i == 0) {
                    self.kept.remove(i)
                } else {
                    let (mut fresh, source) = if full {
                        (self.kept.remove(0), i - 1)
                    } else {
                        (Sequence::new(model), i)
                    };
                    fresh.copy_prefix(&self.kept[source], shared)?;
                    fresh
                }
            }
            _ if full => self.kept.remove(0),
            _ => Sequence::new(model),
        };
        self.hit_tokens += seq.reuse_prefix(prompt) as u64;
        Ok(seq)
    }

    /// Keeps `seq` as the most recently used, evicting the least recently used beyond the
    /// limits (a single sequence larger than the token limit is kept alone).
    pub fn check_in(&mut self, seq: Sequence) {
        if seq.is_empty() {
            return;
        }
        self.kept.push(seq);
        // A sequence over the whole budget is not kept either: one long request's KV memory is
        // released when it ends, not held until a smaller one evicts it.
        while self.kept.len() > self.limits.slots.max(1) || self.allocated() > self.limits.tokens {
            self.kept.remove(0);
        }
    }

    /// Sequences kept now.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Positions held by kept sequences.
    pub fn cached_tokens(&self) -> usize {
        self.kept.iter().map(Sequence::len).sum()
    }

    fn allocated(&self) -> usize {
        self.kept.iter().map(Sequence::capacity).sum()
    }

    /// Prompt positions reused from the cache so far.
    pub fn hit_tokens(&self) -> u64 {
        self.hit_tokens
    }
}
