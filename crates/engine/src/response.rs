//! OpenAI-shaped responses: `chat.completion` objects and `chat.completion.chunk` stream chunks.

use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Identity shared by every object of one response.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(model: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self {
            id: format!("chatcmpl-{:x}{:04x}", now.as_micros(), n & 0xffff),
            created: now.as_secs(),
            model: model.to_string(),
        }
    }

    pub fn completion(&self, content: &str, finish: FinishReason, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
        })
    }

    fn chunk(&self, choices: Value, usage: Option<Usage>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = json!(u);
        }
        c
    }

    /// The first chunk, announcing the assistant role (as OpenAI does).
    pub fn role_chunk(&self) -> Value {
        self.chunk(
            json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]),
            None,
        )
    }

    pub fn content_chunk(&self, text: &str) -> Value {
        self.chunk(
            json!([{ "index": 0, "delta": { "content": text }, "logprobs": null, "finish_reason": null }]),
            None,
        )
    }

    pub fn finish_chunk(&self, finish: FinishReason) -> Value {
        self.chunk(
            json!([{ "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish }]),
            None,
        )
    }

    /// The trailing chunk of `stream_options.include_usage`: no choices, only usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        self.chunk(json!([]), Some(usage))
    }
}
