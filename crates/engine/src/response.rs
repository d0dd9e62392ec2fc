//! OpenAI-shaped responses: `chat.completion` objects and `chat.completion.chunk` stream chunks.

use crate::event::{Event, FinishReason, Usage};
use crate::sampling::Rng;
use serde_json::{json, Value};

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

    pub fn completion(
        &self,
        message: &AssistantMessage,
        finish: FinishReason,
        usage: Usage,
    ) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message.to_json(),
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

    /// A call's first chunk: its id and name, with empty arguments (as OpenAI streams them).
    pub fn tool_call_start_chunk(&self, index: usize, id: &str, name: &str) -> Value {
        self.tool_call_chunk(json!({
            "index": index, "id": id, "type": "function",
            "function": { "name": name, "arguments": "" },
        }))
    }

    pub fn tool_call_arguments_chunk(&self, index: usize, text: &str) -> Value {
        self.tool_call_chunk(json!({ "index": index, "function": { "arguments": text } }))
    }

    fn tool_call_chunk(&self, call: Value) -> Value {
        self.chunk(
            json!([{ "index": 0, "delta": { "tool_calls": [call] }, "logprobs": null, "finish_reason": null }]),
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

/// Turns a generation's events into the stream's chunks: the role chunk first, then one chunk
/// per piece, the finish chunk, and the usage chunk where the request asked for it.
#[derive(Debug, Clone)]
pub struct ChunkShaper {
    meta: ResponseMeta,
    include_usage: bool,
    started: bool,
}

impl ChunkShaper {
    pub fn new(meta: ResponseMeta, include_usage: bool) -> Self {
        Self {
            meta,
            include_usage,
            started: false,
        }
    }

    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    pub fn chunks(&mut self, event: Event) -> Vec<Value> {
        let mut chunks = Vec::new();
        if !self.started {
            self.started = true;
            chunks.push(self.meta.role_chunk());
        }
        let meta = &self.meta;
        match event {
            Event::Text(t) => chunks.push(meta.content_chunk(&t)),
            Event::ToolCallStart { index, id, name } => {
                chunks.push(meta.tool_call_start_chunk(index, &id, &name))
            }
            Event::ToolCallArguments { index, text } => {
                chunks.push(meta.tool_call_arguments_chunk(index, &text))
            }
            Event::Finished { reason, usage } => {
                chunks.push(meta.finish_chunk(reason));
                if self.include_usage {
                    chunks.push(meta.usage_chunk(usage));
                }
            }
        }
        chunks
    }
}

/// One tool call of an answer, OpenAI-shaped: `arguments` is the JSON text the model wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The assistant's answer: text outside tool calls, and the calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssistantMessage {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

impl AssistantMessage {
    /// Adds one generation event; returns how the answer ended once it has.
    pub fn push(&mut self, event: Event) -> Option<(FinishReason, Usage)> {
        match event {
            Event::Text(t) => self.content.push_str(&t),
            Event::ToolCallStart { id, name, .. } => self.tool_calls.push(ToolCall {
                id,
                name,
                arguments: String::new(),
            }),
            Event::ToolCallArguments { index, text } => {
                if let Some(call) = self.tool_calls.get_mut(index) {
                    call.arguments.push_str(&text);
                }
            }
            Event::Finished { reason, usage } => return Some((reason, usage)),
        }
        None
    }

    /// `content` is null when the answer is only tool calls (as OpenAI returns it).
    pub fn to_json(&self) -> Value {
        let mut m = json!({ "role": "assistant", "content": self.content });
        if !self.tool_calls.is_empty() {
            if self.content.is_empty() {
                m["content"] = Value::Null;
            }
            m["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id, "type": "function",
                        "function": { "name": c.name, "arguments": c.arguments },
                    })
                })
                .collect();
        }
        m
    }
}

/// A tool-call id unique in this process and unlikely to repeat across restarts.
pub fn new_call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Scrambled so consecutive ids do not look sequential; the counter keeps them unique.
    let z = Rng::new(now ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    format!("call_{z:016x}{n:08x}")
}
