//! Node.js binding of qwen-engine. Thin by design: one file per JS class, errors in error.rs;
//! the curated API (async iterators, AbortSignal, defaults) lives in index.js.

mod error;
mod generation;
mod model;

use error::{guard, to_napi};
use model::NativeModel;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use qwen_engine::{Engine, EngineError, EngineOptions};

#[napi(object)]
pub struct NativeLoadOptions {
    pub model_path: String,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub context_length: Option<u32>,
    pub threads: Option<u32>,
    pub max_queue: Option<u32>,
    pub prefix_cache_slots: Option<u32>,
    pub prefix_cache_tokens: Option<u32>,
    pub max_batch: Option<u32>,
    pub prefill_chunk: Option<u32>,
    pub max_prompt_tokens: Option<u32>,
    pub request_timeout_ms: Option<u32>,
}

#[napi(object)]
#[derive(Clone, Copy)]
pub struct LoadProgress {
    pub loaded_bytes: f64,
    pub total_bytes: f64,
}

type ProgressCallback = ThreadsafeFunction<LoadProgress, (), LoadProgress, napi::Status, false>;

/// Loads a model on a blocking thread; progress is reported at most once per percent.
#[napi(ts_return_type = "Promise<NativeModel>")]
pub async fn load_native_model(
    options: NativeLoadOptions,
    on_progress: Option<ProgressCallback>,
) -> napi::Result<NativeModel> {
    let mut opts = EngineOptions::new(options.model_path);
    if let Some(d) = options.device {
        opts.device = d;
    }
    if let Some(d) = options.dtype {
        opts.dtype = d;
    }
    opts.context_length = options.context_length.map(|n| n as usize);
    opts.threads = options.threads.map(|n| n as usize);
    if let Some(q) = options.max_queue {
        opts.max_queue = q as usize;
    }
    if let Some(n) = options.prefix_cache_slots {
        opts.prefix_cache.slots = n as usize;
    }
    if let Some(n) = options.prefix_cache_tokens {
        opts.prefix_cache.tokens = n as usize;
    }
    if let Some(n) = options.max_batch {
        opts.max_batch = n as usize;
    }
    opts.prefill_chunk = options.prefill_chunk.map(|n| n as usize);
    opts.max_prompt_tokens = options.max_prompt_tokens.map(|n| n as usize);
    opts.request_timeout = options
        .request_timeout_ms
        .map(|ms| std::time::Duration::from_millis(ms.into()));
    let engine = napi::tokio::task::spawn_blocking(move || {
        guard(|| {
            let mut last_percent = u64::MAX;
            let mut report = |loaded: u64, total: u64| {
                let percent = loaded * 100 / total.max(1);
                if percent != last_percent {
                    last_percent = percent;
                    if let Some(cb) = &on_progress {
                        cb.call(
                            LoadProgress {
                                loaded_bytes: loaded as f64,
                                total_bytes: total as f64,
                            },
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                    }
                }
            };
            Engine::load(&opts, Some(&mut report)).map_err(to_napi)
        })
    })
    .await
    .map_err(|e| to_napi(EngineError::Internal(e.to_string())))??;
    Ok(NativeModel::new(engine))
}
