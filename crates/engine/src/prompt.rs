//! A request's prompt: the chat template rendered over its messages (and tools), tokenized, and
//! the room left in the context for the answer.

use crate::error::{EngineError, Result};
use crate::request::ChatRequest;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Renders and tokenizes a request, and fixes how many tokens it may generate. A prompt longer
/// than `max_prompt_tokens` (a deployer's limit) is refused like one over the context.
pub fn prepare_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    request: &ChatRequest,
    context_length: usize,
    max_prompt_tokens: Option<usize>,
) -> Result<(Vec<u32>, usize)> {
    let prompt = render_prompt(tokenizer, template, request, request.tools.as_deref())?;
    if let Some(limit) = max_prompt_tokens.filter(|&limit| prompt.len() > limit) {
        return Err(EngineError::ContextLength(format!(
            "the messages are {} tokens; this server accepts prompts of at most {limit} tokens (maxPromptTokens); shorten the conversation",
            prompt.len()
        )));
    }
    let room = context_length.saturating_sub(prompt.len());
    match request.max_tokens {
        Some(max) if max <= room => Ok((prompt, max)),
        None if room >= 1 => Ok((prompt, room)),
        requested => Err(EngineError::ContextLength(format!(
            "this model's context is {context_length} tokens, but the request needs {} ({} in the messages, {} to generate); shorten the conversation{}",
            prompt.len().saturating_add(requested.unwrap_or(1)),
            prompt.len(),
            requested.unwrap_or(1),
            if requested.is_some() { " or lower max_tokens" } else { "" }
        ))),
    }
}

/// The prompt tokens of `request`'s messages with `tools` in the system prompt.
pub fn render_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    request: &ChatRequest,
    tools: Option<&[serde_json::Value]>,
) -> Result<Vec<u32>> {
    let rendered =
        template.render_marked(&request.messages, tools, true, &tokenizer.added_tokens())?;
    tokenizer.encode_segments(&rendered.segments())
}
