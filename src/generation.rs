//! `NativeGeneration`: one running request, read by index.js as chunks or as one completion.

use crate::error::to_napi;
use napi::tokio::sync::Mutex;
use napi_derive::napi;
use qwen_engine::Generation;

#[napi]
pub struct NativeGeneration {
    inner: Mutex<Generation>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NativeGeneration {
    pub fn new(generation: Generation) -> Self {
        Self {
            cancel: generation.cancel_flag(),
            inner: Mutex::new(generation),
        }
    }
}

#[napi]
impl NativeGeneration {
    /// The next `chat.completion.chunk` objects, or null when the stream has ended.
    #[napi(ts_return_type = "Promise<Array<object> | null>")]
    pub async fn next_chunks(&self) -> napi::Result<Option<Vec<serde_json::Value>>> {
        let mut g = self.inner.lock().await;
        g.next_chunks().await.transpose().map_err(to_napi)
    }

    /// Waits for the whole answer as one `chat.completion` object.
    #[napi(ts_return_type = "Promise<object>")]
    pub async fn completion(&self) -> napi::Result<serde_json::Value> {
        let mut g = self.inner.lock().await;
        g.completion().await.map_err(to_napi)
    }

    /// Stops the request at its next token step; pending reads then fail with ERR_ABORTED.
    #[napi]
    pub fn cancel(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
