//! The engine thread's step loop. Each step admits waiting requests (up to `max_batch` running),
//! then runs one batched forward: a decode token for every sequence that is sampling, plus up to
//! `prefill_chunk` prompt tokens of sequences still reading their prompts (shortest remainder
//! first, so a short request is not held behind a long prompt). A request is a [`Generator`]
//! with its own [`Sequence`]; a cancel, a closed receiver or an error ends that request alone.

use crate::call_guard::CallGuard;
use crate::error::{panic_text, EngineError, Result};
use crate::event::Event;
use crate::generate::{needs_grammar, GenerationParams, Generator, Next, Vocab};
use crate::grammar::GrammarCompiler;
use crate::model::Qwen2;
use crate::prefix_cache::{PrefixCache, PrefixCacheLimits};
use crate::prompt::{prepare_prompt, render_prompt};
use crate::request::ChatRequest;
use crate::sequence::Sequence;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use serde::Serialize;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How much work one step may take on.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests served at once; more wait in the queue.
    pub max_batch: usize,
    /// Prompt tokens run per step, over all sequences still reading their prompts: bounds how
    /// long a long prompt delays the other sequences' next tokens.
    pub prefill_chunk: usize,
    /// Longest prompt a request may bring (a deployer's limit below the context length).
    pub max_prompt_tokens: Option<usize>,
}

impl BatchLimits {
    /// The prompt tokens per step that keep a step to about half a second: ~64 on a laptop's or
    /// small server's CPU (100-200 prompt tokens/s for the 0.5B model on 2 cores), 512 on a GPU.
    pub fn default_prefill_chunk(device: &Device) -> usize {
        if device.is_cpu() {
            64
        } else {
            512
        }
    }
}

/// A queued request: its own event channel, cancel flag and deadline.
pub(crate) struct Job {
    pub request: ChatRequest,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<Result<Event>>,
    /// When the request must have ended, and the timeout that set it.
    pub deadline: Option<(Instant, Duration)>,
}

impl Job {
    fn fail(&self, error: EngineError) {
        let _ = self.events.send(Err(error));
    }
}

/// What the callers' side and the engine thread share.
pub(crate) struct Shared {
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    pub closed: AtomicBool,
    /// Requests submitted and not yet admitted.
    pub queued: AtomicUsize,
    pub stats: Mutex<Stats>,
}

impl Shared {
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, limits: BatchLimits) -> Self {
        Self {
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            closed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            stats: Mutex::new(Stats {
                max_batch: limits.max_batch,
                prefill_chunk: limits.prefill_chunk,
                ..Stats::default()
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Stats)) {
        if let Ok(mut stats) = self.stats.lock() {
            change(&mut stats);
        }
    }

    /// Batch places no request holds now (admission runs on the engine thread, a step later).
    pub fn free_batch_places(&self) -> usize {
        self.stats
            .lock()
            .map_or(0, |s| s.max_batch.saturating_sub(s.running))
    }

    /// The counters as of now (the token rate over the last few seconds).
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.queued = self.queued.load(Ordering::SeqCst);
        stats.tokens_per_second = stats.rate.per_second(Instant::now());
        stats
    }
}

/// What the engine is doing and has done: for `/health`, metrics and load tests.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests waiting for a place in the batch.
    pub queued: usize,
    /// Requests being served (reading their prompts or generating).
    pub running: usize,
    /// Sequences in the last forward pass.
    pub batch_size: usize,
    pub max_batch: usize,
    pub prefill_chunk: usize,
    /// Tokens generated per second over the last few seconds, all requests together.
    pub tokens_per_second: f64,
    /// Since load: requests answered, and requests ended by an error (aborts included).
    pub requests_finished: u64,
    pub requests_failed: u64,
    pub generated_tokens: u64,
    /// Prompt tokens computed, and prompt tokens whose keys and values came from the prefix cache.
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    /// Sequences the prefix cache keeps, and the positions they hold.
    pub prefix_cache_sequences: usize,
    pub prefix_cache_tokens: usize,
    #[serde(skip)]
    rate: RateWindow,
}

impl Stats {
    /// One running request has ended (before the scheduler publishes its next state).
    fn finish_one(&mut self) {
        self.running = self.running.saturating_sub(1);
        if self.running == 0 {
            self.batch_size = 0;
        }
    }
}

/// Tokens generated per step over a sliding window of a few seconds.
#[derive(Debug, Clone, Default)]
struct RateWindow {
    steps: VecDeque<(Instant, usize)>,
}

impl RateWindow {
    const SPAN: Duration = Duration::from_secs(5);

    fn record(&mut self, now: Instant, tokens: usize) {
        self.steps.push_back((now, tokens));
        while self
            .steps
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::SPAN)
        {
            self.steps.pop_front();
        }
    }

    fn per_second(&self, now: Instant) -> f64 {
        let recent = self
            .steps
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Self::SPAN);
        let (first, tokens) = recent.fold((None, 0), |(first, sum), (t, n)| {
            (first.or(Some(*t)), sum + n)
        });
        match first {
            // Over the whole window once it is full, so a burst does not read as a high rate.
            Some(first) => {
                let span = now.duration_since(first).max(Duration::from_secs(1));
                tokens as f64 / span.as_secs_f64()
            }
            None => 0.0,
        }
    }
}

/// A request being served.
struct Active {
    job: Job,
    generator: Generator,
    seq: Sequence,
}

pub(crate) struct Scheduler {
    model: Qwen2,
    eos: Vec<u32>,
    shared: Arc<Shared>,
    limits: BatchLimits,
    /// Finished requests' sequences, for prefix reuse.
    cache: PrefixCache,
    /// Built on the first request that needs a grammar.
    grammars: Option<GrammarCompiler>,
    waiting: VecDeque<Job>,
    /// In admission order.
    active: Vec<Active>,
}

impl Scheduler {
    pub fn new(
        model: Qwen2,
        eos: Vec<u32>,
        shared: Arc<Shared>,
        limits: BatchLimits,
        cache: PrefixCacheLimits,
    ) -> Self {
        Self {
            model,
            eos,
            shared,
            limits,
            cache: PrefixCache::new(cache),
            grammars: None,
            waiting: VecDeque::new(),
            active: Vec::new(),
        }
    }

    /// Serves requests until the engine closes and its queue is dropped.
    pub fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            if self.shared.closed.load(Ordering::SeqCst) {
                // Everything left ends with ERR_CLOSED, including what arrives until the
                // queue's sender is dropped.
                let active = std::mem::take(&mut self.active);
                for a in active {
                    self.end(a, Err(EngineError::Closed));
                }
                for job in self.waiting.drain(..).chain(jobs.iter()) {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    job.fail(EngineError::Closed);
                }
                return;
            }
            self.admit();
            self.drop_interrupted();
            self.publish();
            if !self.active.is_empty() {
                self.step();
            }
            self.publish();
        }
    }

    /// Moves waiting requests into the batch while there is room.
    fn admit(&mut self) {
        while self.active.len() < self.limits.max_batch.max(1) {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            if let Some(e) = interruption(&job) {
                job.fail(e);
                self.count_failed();
                continue;
            }
            let started = catch_unwind(AssertUnwindSafe(|| self.start(&job)))
                .unwrap_or_else(|panic| Err(panic_error(panic)));
            match started {
                Ok((generator, seq)) => self.active.push(Active {
                    job,
                    generator,
                    seq,
                }),
                Err(e) => {
                    job.fail(e);
                    self.count_failed();
                }
            }
        }
    }

    /// Renders the request's prompt and sets up its generator and sequence.
    fn start(&mut self, job: &Job) -> Result<(Generator, Sequence)> {
        let shared = self.shared.clone();
        let request = &job.request;
        let (prompt, max_tokens) = prepare_prompt(
            &shared.tokenizer,
            &shared.template,
            request,
            self.model.max_positions(),
            self.limits.max_prompt_tokens,
        )?;
        // A rejected call is redone as text on the prompt without the tools, which a small
        // model otherwise keeps reaching for. (A guarded request may call, so its prompt holds
        // the tools.)
        let guard = CallGuard::new(&request.tool_settings, &request.messages);
        let redo_without_tools = !guard.is_empty();
        let params = GenerationParams {
            max_tokens,
            sampling: request.sampling.clone(),
            stop: request.stop.clone(),
            eos: self.eos.clone(),
            tools: request.tool_settings.clone(),
            guard,
            redo_without_tools,
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
        let events = job.events.clone();
        let counters = self.shared.clone();
        let emit = Box::new(move |event: Event| {
            // Counted before the answer's end goes out, so a caller that reads `stats()` once
            // it has the answer sees it finished.
            let finished = matches!(event, Event::Finished { .. });
            if finished {
                counters.update(|s| {
                    s.requests_finished += 1;
                    s.finish_one();
                });
            }
            let sent = events.send(Ok(event)).is_ok();
            if finished && !sent {
                // Not answered after all: `end` counts it as failed and no longer running.
                counters.update(|s| {
                    s.requests_finished -= 1;
                    s.running += 1;
                });
            }
            sent
        });
        let vocab = Vocab {
            tokenizer: &shared.tokenizer,
            grammars: self.grammars.as_ref(),
        };
        let mut generator = Generator::new(vocab, prompt, params, emit)?;
        let mut seq = self.cache.check_out(&self.model, generator.prompt())?;
        if let Err(e) = generator.attach(&mut seq) {
            self.cache.check_in(seq);
            return Err(e);
        }
        self.count_prompt(&generator, &seq);
        Ok((generator, seq))
    }

    /// Ends the requests that were cancelled, lost their listener, or that the engine closes.
    fn drop_interrupted(&mut self) {
        // Waiting requests end too, so a cancel or a deadline does not wait for a batch place.
        let mut i = 0;
        while i < self.waiting.len() {
            match interruption(&self.waiting[i]) {
                Some(e) => {
                    if let Some(job) = self.waiting.remove(i) {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        job.fail(e);
                        self.count_failed();
                    }
                }
                None => i += 1,
            }
        }
        let mut i = 0;
        while i < self.active.len() {
            match interruption(&self.active[i].job) {
                Some(e) => {
                    let a = self.active.remove(i);
                    self.end(a, Err(e));
                }
                None => i += 1,
            }
        }
    }

    /// One batched forward over every running sequence, then one step of each generator.
    fn step(&mut self) {
        let plan = self.plan();
        let logits = self.forward(&plan);
        let vocab = Vocab {
            tokenizer: &self.shared.tokenizer,
            grammars: self.grammars.as_ref(),
        };
        // Each set of logits is one token sampled (counted before the tokens go out).
        let sampled = logits.iter().filter(|l| matches!(l, Ok(Some(_)))).count();
        self.shared.update(|s| {
            s.batch_size = plan.len();
            s.generated_tokens += sampled as u64;
            s.rate.record(Instant::now(), sampled);
        });
        let mut outcomes = Vec::with_capacity(plan.len());
        for (&i, logits) in plan.iter().map(|(i, _)| i).zip(logits) {
            let a = &mut self.active[i];
            let outcome = logits.and_then(|logits| {
                catch_unwind(AssertUnwindSafe(|| {
                    a.generator.step(vocab, &mut a.seq, logits)
                }))
                .unwrap_or_else(|panic| Err(panic_error(panic)))
            });
            outcomes.push((i, outcome));
        }
        // Highest index first, so removals do not shift the ones still to handle.
        for (i, outcome) in outcomes.into_iter().rev() {
            match outcome {
                Ok(Next::Forward) => {}
                Ok(Next::Reprompt) => {
                    if let Err(e) = self.reprompt(i) {
                        let a = self.active.remove(i);
                        self.end(a, Err(e));
                    }
                }
                Ok(Next::Done) => {
                    let a = self.active.remove(i);
                    self.end(a, Ok(()));
                }
                Err(e) => {
                    let a = self.active.remove(i);
                    self.end(a, Err(e));
                }
            }
        }
    }

    /// Which sequences run in this step, and how many tokens each: one for every sampling
    /// sequence; the prompt budget to prompts in order of what they have left, shortest first.
    fn plan(&self) -> Vec<(usize, usize)> {
        let mut plan = Vec::with_capacity(self.active.len());
        let mut prefilling = Vec::new();
        for (i, a) in self.active.iter().enumerate() {
            if a.generator.is_prefilling() {
                prefilling.push((a.generator.prompt().len() - a.seq.len(), i));
            } else {
                plan.push((i, 1));
            }
        }
        prefilling.sort();
        let mut budget = self.limits.prefill_chunk.max(1);
        for (left, i) in prefilling {
            if budget == 0 {
                break;
            }
            let n = left.min(budget);
            plan.push((i, n));
            budget -= n;
        }
        plan.sort();
        plan
    }

    /// Runs the planned tokens in one forward; returns each planned sequence's logits (where
    /// its generator samples from them) or the error that ends it. When the batched forward
    /// fails, each sequence is run alone, so one bad sequence does not end the others.
    fn forward(&mut self, plan: &[(usize, usize)]) -> Vec<Result<Option<Vec<f32>>>> {
        let batch = self.forward_rows(plan);
        match batch {
            Ok(logits) => logits.into_iter().map(Ok).collect(),
            Err(e) if plan.len() == 1 => vec![Err(e)],
            Err(_) => plan
                .iter()
                .map(|&row| self.forward_rows(&[row]).map(|mut l| l.remove(0)))
                .collect(),
        }
    }

    fn forward_rows(&mut self, plan: &[(usize, usize)]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut rows = Vec::with_capacity(plan.len());
        let mut planned = plan.iter().peekable();
        for (i, a) in self.active.iter_mut().enumerate() {
            let Some(&(_, budget)) = planned.next_if(|(p, _)| *p == i) else {
                continue;
            };
            let input = a.generator.input(&a.seq, budget);
            let wants = a.generator.wants_logits(&a.seq, input.len());
            rows.push((&mut a.seq, input, wants));
        }
        let wants: Vec<bool> = rows.iter().map(|r| r.2).collect();
        let model = &self.model;
        let logits = catch_unwind(AssertUnwindSafe(|| {
            Sequence::forward_batch(model, &mut rows)
        }))
        .unwrap_or_else(|panic| Err(panic_error(panic)))?;
        let mut logits = match logits {
            Some(l) => l.to_vec2::<f32>()?.into_iter(),
            None => Vec::new().into_iter(),
        };
        Ok(wants
            .into_iter()
            .map(|w| if w { logits.next() } else { None })
            .collect())
    }

    /// Renders the request's prompt without the tools for the generator (an answer redone as
    /// text), gives the sequence back to the prefix cache and checks out one for the new prompt.
    fn reprompt(&mut self, i: usize) -> Result<()> {
        let a = &mut self.active[i];
        let shared = &self.shared;
        let text_prompt = render_prompt(&shared.tokenizer, &shared.template, &a.job.request, None)?;
        a.generator.use_prompt(text_prompt);
        let done = std::mem::replace(&mut a.seq, Sequence::new(&self.model));
        self.cache.check_in(done);
        a.seq = self.cache.check_out(&self.model, a.generator.prompt())?;
        a.generator.attach(&mut a.seq)?;
        let a = &self.active[i];
        self.count_prompt(&a.generator, &a.seq);
        Ok(())
    }

    /// Finishes a request: reports an error if it has one, keeps its sequence for reuse (its
    /// tokens and cache always agree, whatever the outcome). An answered request was counted
    /// when its end was sent.
    fn end(&mut self, a: Active, outcome: Result<()>) {
        self.cache.check_in(a.seq);
        if let Err(e) = outcome {
            self.shared.update(|s| {
                s.requests_failed += 1;
                s.finish_one();
            });
            a.job.fail(e);
        }
    }

    fn count_failed(&self) {
        self.shared.update(|s| s.requests_failed += 1);
    }

    fn count_prompt(&self, generator: &Generator, seq: &Sequence) {
        self.shared.update(|s| {
            s.prompt_tokens += (generator.prompt().len() - seq.len()) as u64;
            s.cached_prompt_tokens += seq.len() as u64;
        });
    }

    /// Makes the state after this step visible to `stats()`.
    fn publish(&self) {
        self.shared.update(|s| {
            s.running = self.active.len();
            if self.active.is_empty() {
                s.batch_size = 0;
            }
            s.prefix_cache_sequences = self.cache.len();
            s.prefix_cache_tokens = self.cache.cached_tokens();
        });
    }
}

/// Why a request must stop now, if it must.
fn interruption(job: &Job) -> Option<EngineError> {
    if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
        return Some(EngineError::Aborted);
    }
    let (at, timeout) = job.deadline?;
    (Instant::now() >= at).then(|| {
        EngineError::Timeout(format!(
            "the request did not finish within its {} ms deadline",
            timeout.as_millis()
        ))
    })
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> EngineError {
    EngineError::Internal(format!(
        "the engine panicked while serving a request ({}); the model keeps serving",
        panic_text(panic.as_ref())
    ))
}
