//! Network definitions. The KV cache is passed in by the caller, never held by the model.

mod attention;
mod fused;
mod qwen2;

pub use qwen2::{BatchInput, Qwen2};
