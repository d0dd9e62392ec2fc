//! The engine: the callers' side of one loaded model. Requests are validated here and queued to
//! the engine thread's [`Scheduler`], which owns the model; each request gets its own event
//! channel and cancel flag, and a dropped receiver cancels it.

use crate::device::{self, DeviceRequest};
use crate::error::{EngineError, Result};
use crate::event::{Event, FinishReason, Usage};
use crate::loader::{self, LoadOptions, LoadedModel, ModelInfo, ProgressFn};
use crate::prefix_cache::PrefixCacheLimits;
use crate::request::ChatRequest;
use crate::response::{AssistantMessage, ChunkShaper, ResponseMeta};
use crate::sampling::SamplingParams;
use crate::scheduler::{BatchLimits, Job, Scheduler, Shared, Stats};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How to load a model, as the caller states it.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_path: PathBuf,
    /// "auto", "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// "auto", "f32", "f16" or "bf16".
    pub dtype: String,
    pub context_length: Option<usize>,
    /// CPU compute threads for the process (candle's pool is global: the first model sets it).
    pub threads: Option<usize>,
    /// Requests waiting for a batch place beyond this are refused with `ERR_OVERLOADED`.
    pub max_queue: usize,
    /// Finished requests' KV caches kept for prefix reuse: how many, and how many positions in all.
    pub prefix_cache: PrefixCacheLimits,
    /// Requests decoded together in one batched forward; more wait in the queue.
    pub max_batch: usize,
    /// Prompt tokens run per step (see [`BatchLimits`]); by default sized for the device.
    pub prefill_chunk: Option<usize>,
    /// Longest prompt a request may bring, below the context length (`ERR_CONTEXT_LENGTH`).
    pub max_prompt_tokens: Option<usize>,
    /// How long a request may take, queue included, unless it sets its own (`ERR_TIMEOUT`).
    pub request_timeout: Option<std::time::Duration>,
}

impl EngineOptions {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            device: "auto".into(),
            dtype: "auto".into(),
            context_length: None,
            threads: None,
            max_queue: 64,
            prefix_cache: PrefixCacheLimits {
                slots: 4,
                tokens: 16_384,
            },
            max_batch: 8,
            prefill_chunk: None,
            max_prompt_tokens: None,
            request_timeout: None,
        }
    }
}

fn parse_dtype(s: &str) -> Result<Option<DType>> {
    match s {
        "auto" => Ok(None),
        "f32" => Ok(Some(DType::F32)),
        "f16" => Ok(Some(DType::F16)),
        "bf16" => Ok(Some(DType::BF16)),
        _ => Err(EngineError::invalid(format!(
            "dtype must be \"auto\", \"f32\", \"f16\" or \"bf16\", got \"{s}\""
        ))),
    }
}

/// candle's CPU thread pool is process-wide and sized from the environment on first use.
fn apply_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|n| *n > 0) {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    info: ModelInfo,
    device: Device,
    defaults: SamplingParams,
    max_queue: usize,
    request_timeout: Option<std::time::Duration>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A running request: its events, in order, end with `Event::Finished` or one error.
/// Dropping it cancels the request.
pub struct Generation {
    chunks: ChunkShaper,
    events: UnboundedReceiver<Result<Event>>,
    cancel: Arc<AtomicBool>,
    done: bool,
}

impl Generation {
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.events.recv().await
    }

    pub fn blocking_next(&mut self) -> Option<Result<Event>> {
        self.events.blocking_recv()
    }

    /// Stops the request at its next token step; it then ends with `ERR_ABORTED`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// The next stream chunks for this request (OpenAI `chat.completion.chunk`s), or `None`
    /// once the stream has ended.
    pub async fn next_chunks(&mut self) -> Option<Result<Vec<serde_json::Value>>> {
        if self.done {
            return None;
        }
        let event = match self.next().await {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            None => return None,
        };
        self.done = matches!(event, Event::Finished { .. });
        Some(Ok(self.chunks.chunks(event)))
    }

    /// Waits for the whole answer as one OpenAI `chat.completion` object.
    pub async fn completion(&mut self) -> Result<serde_json::Value> {
        let mut message = AssistantMessage::default();
        while let Some(event) = self.next().await {
            if let Some((reason, usage)) = message.push(event?) {
                self.done = true;
                return Ok(self.chunks.meta().completion(&message, reason, usage));
            }
        }
        Err(EngineError::Internal(
            "the engine ended the request without an answer".into(),
        ))
    }

    /// The whole answer, blocking the calling thread (Rust callers, tests, benches).
    pub fn blocking_answer(&mut self) -> Result<(AssistantMessage, FinishReason, Usage)> {
        let mut message = AssistantMessage::default();
        while let Some(event) = self.blocking_next() {
            if let Some((reason, usage)) = message.push(event?) {
                self.done = true;
                return Ok((message, reason, usage));
            }
        }
        Err(EngineError::Internal(
            "the engine ended the request without an answer".into(),
        ))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Engine {
    /// Loads the model (blocking; call it off the JS thread) and starts the worker.
    pub fn load(options: &EngineOptions, progress: Option<&mut ProgressFn<'_>>) -> Result<Self> {
        apply_threads(options.threads);
        let selected = device::select(DeviceRequest::parse(&options.device)?)?;
        let dtype = parse_dtype(&options.dtype)?;
        let loaded = loader::load(
            &options.model_path,
            &LoadOptions {
                device: selected.device,
                cpu_fallback_reason: selected.cpu_fallback_reason,
                dtype,
                context_length: options.context_length,
            },
            progress,
        )?;
        Ok(Self::start(loaded, options))
    }

    fn start(loaded: LoadedModel, options: &EngineOptions) -> Self {
        let LoadedModel {
            model,
            tokenizer,
            template,
            eos,
            defaults,
            info,
        } = loaded;
        let device = model.device().clone();
        let limits = BatchLimits {
            max_batch: options.max_batch.max(1),
            prefill_chunk: options
                .prefill_chunk
                .unwrap_or_else(|| BatchLimits::default_prefill_chunk(&device))
                .max(1),
            max_prompt_tokens: options.max_prompt_tokens,
        };
        let shared = Arc::new(Shared::new(tokenizer, template, limits));
        let (tx, rx) = mpsc::channel::<Job>();
        let scheduler = Scheduler::new(model, eos, shared.clone(), limits, options.prefix_cache);
        let worker = std::thread::Builder::new()
            .name("qwen-engine".into())
            .spawn(move || scheduler.run(rx))
            .expect("spawning the engine thread");
        Self {
            shared,
            info,
            device,
            defaults,
            max_queue: options.max_queue.max(1),
            request_timeout: options.request_timeout,
            queue: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// What the model is and where it runs; GPU memory is read at each call.
    pub fn info(&self) -> ModelInfo {
        let mut info = self.info.clone();
        if info.gpu.is_some() {
            info.gpu = device::gpu_info(&self.device);
        }
        info
    }

    /// Queue, batch and token counters, as of now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.shared.template
    }

    /// The model's sampling defaults, applied where a request leaves a setting out.
    pub fn defaults(&self) -> &SamplingParams {
        &self.defaults
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Validates an OpenAI-shaped request body and queues it.
    pub fn submit_json(&self, body: &serde_json::Value) -> Result<Generation> {
        self.submit(ChatRequest::from_json(body, &self.defaults)?)
    }

    pub fn submit(&self, request: ChatRequest) -> Result<Generation> {
        if self.is_closed() {
            return Err(EngineError::Closed);
        }
        let queue = self
            .queue
            .lock()
            .map_err(|_| EngineError::Internal("queue lock poisoned".into()))?;
        let Some(tx) = queue.as_ref() else {
            return Err(EngineError::Closed);
        };
        // Free places in the batch are not queue: a burst that fits the batch is never refused
        // just because the engine thread has not admitted it yet.
        let queued = self.shared.queued.load(Ordering::SeqCst);
        if queued >= self.max_queue + self.shared.free_batch_places() {
            return Err(EngineError::Overloaded(format!(
                "{} requests are already waiting for this model; retry later or raise maxQueue",
                self.max_queue
            )));
        }
        let (events_tx, events_rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let include_usage = request.include_usage;
        let deadline = request
            .timeout
            .or(self.request_timeout)
            .map(|t| (std::time::Instant::now() + t, t));
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(Job {
            request,
            cancel: cancel.clone(),
            events: events_tx,
            deadline,
        })
        .map_err(|_| {
            // The worker is gone (closing): this job was never queued.
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            EngineError::Closed
        })?;
        Ok(Generation {
            chunks: ChunkShaper::new(ResponseMeta::new(&self.info.name), include_usage),
            events: events_rx,
            cancel,
            done: false,
        })
    }

    /// Stops accepting requests, ends the running and queued ones with `ERR_CLOSED`, waits for
    /// the worker and frees the model. Blocking; idempotent.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}
