//! qwen-engine: Qwen2.5 chat inference on candle, with no Node or Python in sight.
//!
//! Data flows `request` (validate, with `tools`) -> `template` (render) -> `tokenizer` (encode) ->
//! `generate` (model forward over a `sequence`'s `kv_cache`, `grammar` masks, `sampling`,
//! `detokenize`, `stop`, `tool_parser`) -> `response` (OpenAI shapes). `engine` owns the model on
//! a worker thread and queues requests.

pub mod config;
pub mod detokenize;
pub mod device;
pub mod engine;
pub mod error;
pub mod export;
pub mod generate;
pub mod grammar;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod prefix_cache;
pub mod request;
pub mod response;
pub mod sampling;
pub mod sequence;
pub mod stop;
pub mod template;
pub mod tokenizer;
pub mod tool_parser;
pub mod tools;

pub use candle_core;
pub use engine::{Engine, EngineOptions, Generation};
pub use error::{EngineError, Result};
pub use generate::Event;
pub use response::{AssistantMessage, FinishReason, ToolCall, Usage};
