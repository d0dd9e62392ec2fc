//! Integration tests on the real default model (fetched by `npm test`'s pretest step, or
//! `npm run fetch-model`). One test binary, so candle is linked once.

mod common;
mod cuda_kernels;
mod engine;
mod load_errors;
mod prefix_cache;
mod prompt_injection;
mod properties;
mod safetensors_parity;
mod scheduler;
mod template_parity;
mod tiny_model_parity;
mod tokenizer_parity;
mod tools;
