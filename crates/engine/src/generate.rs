//! One generation: prefill the prompt, then sample, detokenize and check stops token by token.

use crate::detokenize::StreamDecoder;
use crate::error::{EngineError, Result};
use crate::model::Qwen2;
use crate::response::{FinishReason, Usage};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;

/// Prompt tokens per forward pass during prefill: bounds the attention scratch memory and lets
/// a cancel land between chunks of a long prompt.
const PREFILL_CHUNK: usize = 512;
/// KV positions reserved up front for the completion when `max_tokens` is large or unset.
const INITIAL_COMPLETION_RESERVE: usize = 512;

pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub eos: Vec<u32>,
}

/// What a generation reports, in order: text pieces, then one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Finished { reason: FinishReason, usage: Usage },
}

/// Runs one generation. `interrupt` is polled before every forward pass and ends the run with
/// its error (abort, close); `emit` returns false when nobody listens any more, which ends it too.
pub fn generate(
    model: &Qwen2,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerationParams,
    interrupt: &dyn Fn() -> Option<EngineError>,
    emit: &mut dyn FnMut(Event) -> bool,
) -> Result<()> {
    let mut cache = model.new_cache();
    cache.reserve(prompt.len() + params.max_tokens.min(INITIAL_COMPLETION_RESERVE))?;
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        if let Some(e) = interrupt() {
            return Err(e);
        }
        logits = Some(model.forward(chunk, &mut cache)?);
    }
    let mut logits = logits.ok_or_else(|| EngineError::invalid("the prompt is empty"))?;
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut decoder = StreamDecoder::default();
    let mut stops = StopMatcher::new(params.stop.clone());
    let mut generated = 0;
    // (why it ended, whether held-back text still belongs to the answer)
    let (reason, flush) = loop {
        if let Some(e) = interrupt() {
            return Err(e);
        }
        let mut values = logits.to_vec1::<f32>()?;
        let token = sampler.sample(&mut values);
        generated += 1;
        if params.eos.contains(&token) {
            break (FinishReason::Stop, true);
        }
        let check = stops.push(&decoder.push(tokenizer.token_bytes(token)));
        if !check.emit.is_empty() && !emit(Event::Text(check.emit)) {
            return Err(EngineError::Aborted);
        }
        if check.stopped {
            break (FinishReason::Stop, false);
        }
        if generated >= params.max_tokens {
            break (FinishReason::Length, true);
        }
        logits = model.forward(&[token], &mut cache)?;
    };
    if flush {
        let last = stops.push(&decoder.finish());
        let tail = if last.stopped {
            last.emit
        } else {
            last.emit + &stops.finish()
        };
        if !tail.is_empty() && !emit(Event::Text(tail)) {
            return Err(EngineError::Aborted);
        }
    }
    emit(Event::Finished {
        reason,
        usage: Usage::new(prompt.len(), generated),
    });
    Ok(())
}
