//! The engine: one worker thread owns the model and runs queued requests; each request gets its
//! own event channel and cancel flag, and a dropped receiver cancels it.

use crate::device::{self, DeviceRequest};
use crate::error::{panic_text, EngineError, Result};
use crate::generate::{generate, needs_grammar, Event, GenerationParams};
use crate::grammar::GrammarCompiler;
use crate::loader::{self, LoadOptions, LoadedModel, ModelInfo, ProgressFn};
use crate::prefix_cache::{PrefixCache, PrefixCacheLimits};
use crate::request::ChatRequest;
use crate::response::{AssistantMessage, FinishReason, ResponseMeta, Usage};
use crate::sampling::SamplingParams;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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
    /// Requests waiting beyond this are refused with `ERR_OVERLOADED`.
    pub max_queue: usize,
    /// Finished requests' KV caches kept for prefix reuse: how many, and how many positions in all.
    pub prefix_cache: PrefixCacheLimits,
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

struct Job {
    request: ChatRequest,
    cancel: Arc<AtomicBool>,
    events: UnboundedSender<Result<Event>>,
}

/// State shared by the caller side and the worker.
struct Shared {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    info: ModelInfo,
    device: Device,
    defaults: SamplingParams,
    closed: AtomicBool,
    queued: AtomicUsize,
    max_queue: usize,
}

pub struct Engine {
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A running request: its events, in order, end with `Event::Finished` or one error.
/// Dropping it cancels the request.
pub struct Generation {
    pub meta: ResponseMeta,
    pub include_usage: bool,
    events: UnboundedReceiver<Result<Event>>,
    cancel: Arc<AtomicBool>,
    started: bool,
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
        let mut chunks = Vec::new();
        if !self.started {
            self.started = true;
            chunks.push(self.meta.role_chunk());
        }
        match event {
            Event::Text(t) => chunks.push(self.meta.content_chunk(&t)),
            Event::ToolCallStart { index, id, name } => {
                chunks.push(self.meta.tool_call_start_chunk(index, &id, &name))
            }
            Event::ToolCallArguments { index, text } => {
                chunks.push(self.meta.tool_call_arguments_chunk(index, &text))
            }
            Event::Finished { reason, usage } => {
                self.done = true;
                chunks.push(self.meta.finish_chunk(reason));
                if self.include_usage {
                    chunks.push(self.meta.usage_chunk(usage));
                }
            }
        }
        Some(Ok(chunks))
    }

    /// Waits for the whole answer as one OpenAI `chat.completion` object.
    pub async fn completion(&mut self) -> Result<serde_json::Value> {
        let mut message = AssistantMessage::default();
        while let Some(event) = self.next().await {
            if let Some((reason, usage)) = message.push(event?) {
                self.done = true;
                return Ok(self.meta.completion(&message, reason, usage));
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
        Ok(Self::start(loaded, options.max_queue, options.prefix_cache))
    }

    fn start(loaded: LoadedModel, max_queue: usize, prefix_cache: PrefixCacheLimits) -> Self {
        let LoadedModel {
            model,
            tokenizer,
            template,
            eos,
            defaults,
            info,
        } = loaded;
        let shared = Arc::new(Shared {
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            info,
            device: model.device().clone(),
            defaults,
            closed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            max_queue: max_queue.max(1),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("qwen-engine".into())
            .spawn(move || {
                let mut worker = Worker {
                    cache: PrefixCache::new(prefix_cache),
                    model,
                    eos,
                    shared: worker_shared,
                    grammars: None,
                };
                while let Ok(job) = rx.recv() {
                    worker.run(job);
                    worker.shared.queued.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .expect("spawning the engine thread");
        Self {
            shared,
            queue: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// What the model is and where it runs; GPU memory is read at each call.
    pub fn info(&self) -> ModelInfo {
        let mut info = self.shared.info.clone();
        if info.gpu.is_some() {
            info.gpu = device::gpu_info(&self.shared.device);
        }
        info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.shared.template
    }

    /// The model's sampling defaults, applied where a request leaves a setting out.
    pub fn defaults(&self) -> &SamplingParams {
        &self.shared.defaults
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Validates an OpenAI-shaped request body and queues it.
    pub fn submit_json(&self, body: &serde_json::Value) -> Result<Generation> {
        self.submit(ChatRequest::from_json(body, &self.shared.defaults)?)
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
        if self.shared.queued.load(Ordering::SeqCst) >= self.shared.max_queue {
            return Err(EngineError::Overloaded(format!(
                "{} requests are already waiting for this model; retry later or raise maxQueue",
                self.shared.max_queue
            )));
        }
        let (events_tx, events_rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let include_usage = request.include_usage;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(Job {
            request,
            cancel: cancel.clone(),
            events: events_tx,
        })
        .map_err(|_| {
            // The worker is gone (closing): this job was never queued.
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            EngineError::Closed
        })?;
        Ok(Generation {
            meta: ResponseMeta::new(&self.shared.info.name),
            include_usage,
            events: events_rx,
            cancel,
            started: false,
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

/// Renders and tokenizes a request, and fixes how many tokens it may generate.
pub fn prepare_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    request: &ChatRequest,
    context_length: usize,
) -> Result<(Vec<u32>, usize)> {
    let prompt = render_prompt(tokenizer, template, request, request.tools.as_deref())?;
    let room = context_length.saturating_sub(prompt.len());
    match request.max_tokens {
        Some(max) if max <= room => Ok((prompt, max)),
        None if room >= 1 => Ok((prompt, room)),
        requested => Err(EngineError::ContextLength(format!(
            "this model's context is {context_length} tokens, but the request needs {} ({} in the messages, {} to generate); shorten the conversation{}",
            prompt.len() + requested.unwrap_or(1),
            prompt.len(),
            requested.unwrap_or(1),
            if requested.is_some() { " or lower max_tokens" } else { "" }
        ))),
    }
}

/// The prompt tokens of `request`'s messages with `tools` in the system prompt.
fn render_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    request: &ChatRequest,
    tools: Option<&[serde_json::Value]>,
) -> Result<Vec<u32>> {
    let rendered =
        template.render_marked(&request.messages, tools, true, &tokenizer.control_tokens())?;
    tokenizer.encode_segments(&rendered.segments())
}

struct Worker {
    model: crate::model::Qwen2,
    eos: Vec<u32>,
    shared: Arc<Shared>,
    /// Recent requests' tokens and KV caches: a new prompt reuses the longest common prefix.
    cache: PrefixCache,
    /// Built on the first request that needs a grammar.
    grammars: Option<GrammarCompiler>,
}

impl Worker {
    fn run(&mut self, job: Job) {
        let events = job.events.clone();
        let outcome =
            catch_unwind(AssertUnwindSafe(|| self.run_job(&job))).unwrap_or_else(|panic| {
                // The request's own sequence, maybe half-written, was dropped with the unwind;
                // the kept ones were not touched.
                Err(EngineError::Internal(panic_message(&panic)))
            });
        if let Err(e) = outcome {
            let _ = events.send(Err(e));
        }
    }

    fn run_job(&mut self, job: &Job) -> Result<()> {
        let shared = self.shared.clone();
        let interrupt = || {
            if shared.closed.load(Ordering::SeqCst) {
                Some(EngineError::Closed)
            } else if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
                Some(EngineError::Aborted)
            } else {
                None
            }
        };
        if let Some(e) = interrupt() {
            return Err(e);
        }
        let (prompt, max_tokens) = prepare_prompt(
            &shared.tokenizer,
            &shared.template,
            &job.request,
            self.model.max_positions(),
        )?;
        // Calls already answered matter only where a repeat of one is turned into a text answer;
        // that answer is redone on the prompt without the tools, which a small model otherwise
        // keeps reaching for. (A guarded request may call, so its prompt holds the tools.)
        let (answered, text_prompt) = match crate::tools::answered_calls(&job.request.messages) {
            calls if job.request.tool_settings.guards_repeats() && !calls.is_empty() => {
                let text_prompt =
                    render_prompt(&shared.tokenizer, &shared.template, &job.request, None)?;
                (calls, Some(text_prompt))
            }
            _ => (vec![], None),
        };
        let params = GenerationParams {
            max_tokens,
            sampling: job.request.sampling.clone(),
            stop: job.request.stop.clone(),
            eos: self.eos.clone(),
            tools: job.request.tool_settings.clone(),
            answered,
            text_prompt,
        };
        if needs_grammar(&params.tools) && self.grammars.is_none() {
            let end_of_turn = shared
                .tokenizer
                .added_token_id("<|im_end|>")
                .or(self.eos.first().copied())
                .ok_or_else(|| {
                    EngineError::Internal("the model has no end-of-turn token".into())
                })?;
            self.grammars = Some(GrammarCompiler::new(
                shared.tokenizer.clone(),
                self.model.config().vocab_size,
                end_of_turn,
            )?);
        }
        let mut seq = self.cache.check_out(&self.model, &prompt)?;
        let result = generate(
            &self.model,
            &shared.tokenizer,
            self.grammars.as_ref(),
            &mut seq,
            &mut self.cache,
            &prompt,
            &params,
            &interrupt,
            &mut |event| job.events.send(Ok(event)).is_ok(),
        );
        // Kept whatever the outcome: its tokens and KV cache always agree.
        self.cache.check_in(seq);
        result
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    format!(
        "the engine panicked while serving a request ({}); the model keeps serving",
        panic_text(panic.as_ref())
    )
}
