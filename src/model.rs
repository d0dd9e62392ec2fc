//! `NativeModel`: a loaded model. Converts JS values to engine calls and back; no logic here.

use crate::error::{guard, invalid, to_napi};
use crate::generation::NativeGeneration;
use napi::bindgen_prelude::Uint32Array;
use napi_derive::napi;
use qwen_engine::request::ChatRequest;
use qwen_engine::{Engine, EngineError};
use std::sync::Arc;

#[napi]
pub struct NativeModel {
    engine: Arc<Engine>,
}

impl NativeModel {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine: Arc::new(engine),
        }
    }

    fn open(&self) -> napi::Result<&Engine> {
        if self.engine.is_closed() {
            Err(to_napi(EngineError::Closed))
        } else {
            Ok(&self.engine)
        }
    }
}

#[napi(object)]
pub struct TemplateOptions {
    pub tools: Option<Vec<serde_json::Value>>,
    pub add_generation_prompt: Option<bool>,
}

#[napi]
impl NativeModel {
    /// Queues an OpenAI-shaped chat request with an optional deadline; throws
    /// ERR_INVALID_REQUEST / ERR_CLOSED / ERR_OVERLOADED at once, other errors arrive through the
    /// generation.
    #[napi]
    pub fn start(
        &self,
        request: serde_json::Value,
        timeout_ms: Option<u32>,
    ) -> napi::Result<NativeGeneration> {
        guard(|| {
            let engine = self.open()?;
            let mut request =
                ChatRequest::from_json(&request, engine.defaults()).map_err(to_napi)?;
            request.timeout = timeout_ms.map(|ms| std::time::Duration::from_millis(ms.into()));
            let g = engine.submit(request).map_err(to_napi)?;
            Ok(NativeGeneration::new(g))
        })
    }

    #[napi]
    pub fn tokenize(&self, text: String) -> napi::Result<Uint32Array> {
        guard(|| {
            let ids = self
                .open()?
                .tokenizer()
                .encode(&text, false)
                .map_err(to_napi)?;
            Ok(Uint32Array::new(ids))
        })
    }

    #[napi]
    pub fn detokenize(&self, ids: Vec<f64>) -> napi::Result<String> {
        guard(|| {
            let tokenizer = self.open()?.tokenizer();
            Ok(tokenizer.decode(&tokenizer.ids_of(&ids).map_err(to_napi)?))
        })
    }

    #[napi]
    pub fn apply_chat_template(
        &self,
        messages: serde_json::Value,
        options: Option<TemplateOptions>,
    ) -> napi::Result<String> {
        guard(|| {
            let engine = self.open()?;
            let options = options.unwrap_or(TemplateOptions {
                tools: None,
                add_generation_prompt: None,
            });
            let body = serde_json::json!({ "messages": messages, "tools": options.tools });
            let request = ChatRequest::from_json(&body, engine.defaults()).map_err(to_napi)?;
            engine
                .template()
                .render(
                    &request.messages,
                    request.tools.as_deref(),
                    options.add_generation_prompt.unwrap_or(true),
                )
                .map_err(to_napi)
        })
    }

    #[napi(getter, ts_return_type = "object")]
    pub fn info(&self) -> napi::Result<serde_json::Value> {
        serde_json::to_value(self.engine.info()).map_err(invalid)
    }

    /// Queue, batch and token counters, as of now.
    #[napi(ts_return_type = "object")]
    pub fn stats(&self) -> napi::Result<serde_json::Value> {
        serde_json::to_value(self.engine.stats()).map_err(invalid)
    }

    /// Ends running and queued requests with ERR_CLOSED and frees the weights.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let engine = self.engine.clone();
        napi::tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| to_napi(EngineError::Internal(e.to_string())))
    }
}
