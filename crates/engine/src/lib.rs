//! qwen-engine: Qwen2.5 chat inference on candle, with no Node or Python in sight.
//!
//! Data flows `request` (validate, with `tools`) -> `prompt` (`template` render, `tokenizer`
//! encode) -> `scheduler` (the engine thread: batched forward passes of the `model` over each
//! request's `sequence` / `kv_cache`, reused through the `prefix_cache`) stepping one `generate`
//! state machine per request (`grammar` masks, `sampling`, `detokenize`, `stop`, `tool_parser`)
//! -> `event`s -> `response` (OpenAI shapes). `engine` is the callers' side: it validates and
//! queues requests and hands back their event streams.

pub mod call_guard;
pub mod config;
pub mod detokenize;
pub mod device;
pub mod engine;
pub mod error;
pub mod event;
pub mod export;
pub mod generate;
pub mod grammar;
pub mod kernels;
pub mod kv_cache;
pub mod loader;
pub mod matrix;
pub mod model;
pub mod prefix_cache;
pub mod prompt;
pub mod request;
pub mod response;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod template;
pub mod tokenizer;
pub mod tool_parser;
pub mod tools;

pub use candle_core;
pub use engine::{Engine, EngineOptions, Generation};
pub use error::{EngineError, Result};
pub use event::{Event, FinishReason, Usage};
pub use response::{AssistantMessage, ToolCall};
pub use scheduler::{BatchLimits, Stats};
