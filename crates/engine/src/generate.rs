//! One generation: prefill the prompt, then sample token by token, under a grammar where the
//! request asks for structure, and turn the tokens into text and tool-call events. A
//! [`Generator`] is stepped by the scheduler, which owns the model and runs the forward passes.

use crate::call_guard::CallGuard;
use crate::detokenize::StreamDecoder;
use crate::error::{EngineError, Result};
use crate::event::{Event, FinishReason, Usage};
use crate::grammar::{self, Constraint, GrammarCompiler};
use crate::response::new_call_id;
use crate::sampling::{Sampler, SamplingParams};
use crate::sequence::Sequence;
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;
use crate::tool_parser::{self, classify_opening, Opening, Parsed, ToolCallParser};
use crate::tools::{ToolChoice, ToolSettings};
use serde_json::Value;

/// KV positions reserved up front for the completion when `max_tokens` is large or unset.
const INITIAL_COMPLETION_RESERVE: usize = 512;
/// Tokens an answer's opening may take before it is clearly text or a call written as JSON.
const MAX_UNDECIDED_OPENING: usize = 12;

pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub eos: Vec<u32>,
    pub tools: ToolSettings,
    /// The calls an answer may not make (empty where the request does not guard them).
    pub guard: CallGuard,
    /// An answer redone as text after a rejected call runs on the prompt without the tools,
    /// which the scheduler renders then ([`Next::Reprompt`], [`Generator::use_prompt`]): most
    /// guarded requests never need it. Otherwise it reruns on the same prompt.
    pub redo_without_tools: bool,
}

/// Why an answer starts over from its first token.
enum Redo {
    /// It opened as a call written as JSON: redo it in Qwen's trained format, under the grammar.
    AsCall,
    /// It made a call the [`CallGuard`] rejects: redo it as a text answer, on the prompt
    /// without the tools where the request gives one.
    AsText,
}

/// Whether a request needs the grammar engine.
pub fn needs_grammar(tools: &ToolSettings) -> bool {
    tools.constrained && (tools.may_call() || tools.format != crate::tools::ResponseFormat::Text)
}

/// What the scheduler does next with a generator's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run [`Generator::input`] through the model and call [`Generator::step`] with the result.
    Forward,
    /// The answer starts over as text on the prompt without the tools: render it and hand it
    /// to [`Generator::use_prompt`], put the sequence back in the prefix cache, check one out for
    /// the new prompt and [`Generator::attach`] it.
    Reprompt,
    /// `Finished` was emitted.
    Done,
}

/// What every generator reads while it runs.
#[derive(Clone, Copy)]
pub struct Vocab<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Present once a request needing a grammar has been admitted.
    pub grammars: Option<&'a GrammarCompiler>,
}

impl Vocab<'_> {
    fn constraint(&self, lark: &str) -> Result<Constraint> {
        self.grammars
            .ok_or_else(|| EngineError::Internal("the grammar engine is not loaded".into()))?
            .constraint(lark)
    }
}

/// One generation as a state machine the scheduler steps: it says which tokens its sequence
/// runs next (the prompt, a chunk at a time, then each sampled token) and turns the logits that
/// come back into tokens, text and tool-call events. The model and the sequence stay outside,
/// so one forward pass can serve many generators.
pub struct Generator {
    params: GenerationParams,
    prompt: Vec<u32>,
    /// The prompt has been run: tokens are being sampled.
    decoding: bool,
    /// Prompt tokens reused from the prefix cache.
    cached: usize,
    /// The logits after the whole prompt: where a redone answer starts.
    answer_start: Vec<f32>,
    /// The token sampled last, which the next forward runs.
    token: u32,
    sampler: Sampler,
    out: Output,
    constraint: Option<Constraint>,
    call_grammar: Option<String>,
    tool_open: Option<u32>,
    /// A free `auto` answer that opens like a call written as JSON is redone as a real call.
    watch_opening: bool,
    opening: Vec<u32>,
    /// The constraint is a call's (which may end mid-answer), not a JSON answer's.
    in_call: bool,
    banned: Vec<u32>,
    /// Tokens that may not open a redone text answer, until visible text starts.
    opening_bans: Vec<u32>,
    redo: Option<Redo>,
    generated: usize,
}

impl Generator {
    /// Prepares a generation of `prompt`; `emit` receives its events and returns false when
    /// nobody listens any more, which ends it with `ERR_ABORTED`. A bad schema fails here,
    /// before any model work.
    pub fn new(
        vocab: Vocab<'_>,
        prompt: Vec<u32>,
        mut params: GenerationParams,
        emit: Box<dyn FnMut(Event) -> bool + Send>,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(EngineError::invalid("the prompt is empty"));
        }
        // The guard is the output's to apply; the other parameters stay with the generator.
        let guard = std::mem::take(&mut params.guard);
        let settings = &params.tools;
        let constraint = grammar::answer_grammar(settings)
            .map(|lark| vocab.constraint(&lark))
            .transpose()?;
        let call_grammar = grammar::tool_call_grammar(settings);
        let tokenizer = vocab.tokenizer;
        let watch_opening =
            constraint.is_none() && call_grammar.is_some() && settings.choice == ToolChoice::Auto;
        let banned = if settings.tools.is_empty() || settings.may_call() {
            vec![]
        } else {
            markup_tokens(tokenizer)
        };
        Ok(Self {
            sampler: Sampler::new(params.sampling.clone()),
            out: Output::new(&params, guard, constraint.is_some(), emit),
            tool_open: tokenizer.added_token_id(tool_parser::OPEN),
            constraint,
            call_grammar,
            watch_opening,
            opening: Vec::new(),
            in_call: false,
            banned,
            opening_bans: Vec::new(),
            redo: None,
            generated: 0,
            decoding: false,
            cached: 0,
            answer_start: Vec::new(),
            token: 0,
            prompt,
            params,
        })
    }

    /// The prompt the sequence must hold before sampling starts.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Replaces the prompt, at a [`Next::Reprompt`], before a sequence is attached for it.
    pub fn use_prompt(&mut self, prompt: Vec<u32>) {
        self.prompt = prompt;
    }

    /// Whether the prompt is still being run (no token sampled from it yet).
    pub fn is_prefilling(&self) -> bool {
        !self.decoding
    }

    /// Takes `seq`, checked out for [`prompt`](Self::prompt), as this generation's sequence:
    /// keeps the prefix of the prompt it holds and reserves room for the answer.
    pub fn attach(&mut self, seq: &mut Sequence) -> Result<()> {
        self.cached = seq.reuse_prefix(&self.prompt);
        self.decoding = false;
        seq.reserve(self.prompt.len() + self.params.max_tokens.min(INITIAL_COMPLETION_RESERVE))
    }

    /// The tokens the next forward runs for `seq`: up to `budget` tokens of the prompt not yet
    /// in it, or the token sampled last.
    pub fn input<'a>(&'a self, seq: &Sequence, budget: usize) -> &'a [u32] {
        if self.decoding {
            std::slice::from_ref(&self.token)
        } else {
            let start = seq.len().min(self.prompt.len());
            &self.prompt[start..(start + budget.max(1)).min(self.prompt.len())]
        }
    }

    /// Whether the forward that runs `input` must return this sequence's logits: it samples
    /// from them, unless they come from the middle of the prompt.
    pub fn wants_logits(&self, seq: &Sequence, input: usize) -> bool {
        self.decoding || seq.len() + input >= self.prompt.len()
    }

    /// Advances after a forward over [`input`](Self::input) (`seq` now holds it): samples from
    /// `logits` (given where [`wants_logits`](Self::wants_logits) said so) and says what next.
    pub fn step(
        &mut self,
        vocab: Vocab<'_>,
        seq: &mut Sequence,
        logits: Option<Vec<f32>>,
    ) -> Result<Next> {
        if !self.decoding && seq.len() < self.prompt.len() {
            return Ok(Next::Forward);
        }
        let mut logits =
            logits.ok_or_else(|| EngineError::Internal("a sampling step got no logits".into()))?;
        if !self.decoding {
            self.decoding = true;
            self.answer_start = logits.clone();
        }
        let tokenizer = vocab.tokenizer;
        loop {
            if let Some(redo) = self.redo.take() {
                if self.restart(vocab, seq, redo)? {
                    return Ok(Next::Reprompt);
                }
                logits = self.answer_start.clone();
            }
            if let Some(c) = self.constraint.as_mut() {
                c.mask(&mut logits)?;
            }
            for &b in self.banned.iter().chain(&self.opening_bans) {
                logits[b as usize] = f32::NEG_INFINITY;
            }
            let token = self.sampler.sample(&mut logits);
            self.generated += 1;
            if !tokenizer.token_bytes(token).trim_ascii().is_empty() {
                self.opening_bans.clear();
            }
            if self.params.eos.contains(&token) {
                return self.finish(FinishReason::Stop);
            }
            match self.constraint.as_mut() {
                Some(c) => {
                    c.commit(token)?;
                    self.in_call |= Some(token) == self.tool_open;
                    if self.in_call && c.is_complete() && !self.params.tools.single_call() {
                        // One call done: the model is free again to call more, write, or end.
                        self.constraint = None;
                        self.in_call = false;
                    }
                }
                None if Some(token) == self.tool_open && self.call_grammar.is_some() => {
                    // The model opened a call: from here on it must be a valid one.
                    let mut c = self.call_constraint(vocab)?;
                    c.commit(token)?;
                    self.constraint = Some(c);
                    self.in_call = true;
                    self.out.calls_checked();
                    self.watch_opening = false;
                    let held = std::mem::take(&mut self.opening);
                    if self.out.tokens(tokenizer, &held)? {
                        return self.finish(FinishReason::Stop);
                    }
                }
                None => {}
            }
            if self.watch_opening && self.constraint.is_none() {
                self.opening.push(token);
                match classify_opening(&tokenizer.decode(&self.opening)) {
                    Opening::ToolCall => {
                        self.redo = Some(Redo::AsCall);
                        continue;
                    }
                    Opening::Undecided
                        if self.opening.len() < MAX_UNDECIDED_OPENING
                            && self.generated < self.params.max_tokens =>
                    {
                        self.token = token;
                        return Ok(Next::Forward);
                    }
                    _ => {
                        self.watch_opening = false;
                        let held = std::mem::take(&mut self.opening);
                        if self.out.tokens(tokenizer, &held)? {
                            return self.finish(FinishReason::Stop);
                        }
                    }
                }
            } else if self.out.tokens(tokenizer, &[token])? {
                return self.finish(FinishReason::Stop);
            }
            if self.out.rejected {
                self.redo = Some(Redo::AsText);
                continue;
            }
            if self.generated >= self.params.max_tokens {
                return self.finish(FinishReason::Length);
            }
            self.token = token;
            return Ok(Next::Forward);
        }
    }

    /// Starts the answer over from its first token; true when it continues on another prompt.
    fn restart(&mut self, vocab: Vocab<'_>, seq: &mut Sequence, redo: Redo) -> Result<bool> {
        seq.truncate(self.prompt.len());
        self.sampler = Sampler::new(self.params.sampling.clone());
        self.generated = 0;
        self.opening.clear();
        self.in_call = false;
        self.watch_opening = false;
        match redo {
            Redo::AsCall => {
                self.constraint = Some(self.call_constraint(vocab)?);
                self.out.calls_checked();
                Ok(false)
            }
            Redo::AsText => {
                self.constraint = None;
                self.out.restart_as_text();
                self.banned.extend(markup_tokens(vocab.tokenizer));
                self.opening_bans = punctuation_openings(vocab.tokenizer);
                // The prompt with the tools stays cached for the conversation's next turn; the
                // tool-less one runs in a sequence of its own.
                let reprompt = std::mem::take(&mut self.params.redo_without_tools);
                if reprompt {
                    self.decoding = false;
                }
                Ok(reprompt)
            }
        }
    }

    fn call_constraint(&self, vocab: Vocab<'_>) -> Result<Constraint> {
        match &self.call_grammar {
            Some(lark) => vocab.constraint(lark),
            None => Err(EngineError::Internal(
                "no declared tool can be called".into(),
            )),
        }
    }

    fn finish(&mut self, reason: FinishReason) -> Result<Next> {
        let calls = self.out.finish()?;
        let reason = match reason {
            FinishReason::Stop if calls > 0 => FinishReason::ToolCalls,
            r => r,
        };
        self.out.send(Event::Finished {
            reason,
            usage: Usage::new(self.prompt.len(), self.cached, self.generated),
        })?;
        Ok(Next::Done)
    }
}

/// The tool-call markup tokens, banned where the answer may not call.
fn markup_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    [tool_parser::OPEN, tool_parser::CLOSE]
        .iter()
        .filter_map(|t| tokenizer.added_token_id(t))
        .collect()
}

/// Tokens to events: UTF-8 assembly, stop strings, then tool-call recognition.
struct Output {
    decoder: StreamDecoder,
    stop: Vec<String>,
    stops: StopMatcher,
    parser: Option<ToolCallParser>,
    /// Ids of the calls so far, by index.
    ids: Vec<String>,
    /// A stop string ended the answer.
    stopped: bool,
    /// Where the guard may reject calls, they are held until complete, and a rejected one is
    /// not emitted but reported in `rejected`.
    guard: CallGuard,
    rejected: bool,
    /// Something reached `emit` (an answer can no longer start over).
    emitted: bool,
    emit: Box<dyn FnMut(Event) -> bool + Send>,
}

impl Output {
    fn new(
        params: &GenerationParams,
        guard: CallGuard,
        checked: bool,
        emit: Box<dyn FnMut(Event) -> bool + Send>,
    ) -> Self {
        let settings = &params.tools;
        let known = settings.callable().iter().map(|t| t.name.clone()).collect();
        Self {
            decoder: StreamDecoder::default(),
            stop: params.stop.clone(),
            stops: StopMatcher::new(params.stop.clone()),
            parser: settings
                .may_call()
                .then(|| ToolCallParser::new(known, checked && guard.is_empty())),
            ids: Vec::new(),
            stopped: false,
            guard,
            rejected: false,
            emitted: false,
            emit,
        }
    }

    /// From here on calls come from the grammar: stream them as they are generated.
    fn calls_checked(&mut self) {
        if let Some(p) = self.parser.as_mut().filter(|_| self.guard.is_empty()) {
            p.stream_calls(true);
        }
    }

    /// Forgets the discarded attempt (nothing of it was emitted); the new one is plain text.
    fn restart_as_text(&mut self) {
        self.decoder = StreamDecoder::default();
        self.stops = StopMatcher::new(self.stop.clone());
        self.parser = None;
        self.rejected = false;
    }

    /// Feeds generated tokens; true once a stop string ends the answer.
    fn tokens(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> Result<bool> {
        for &t in tokens {
            let check = self
                .stops
                .push(&self.decoder.push(tokenizer.token_bytes(t)));
            self.text(&check.emit)?;
            if check.stopped {
                self.stopped = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn text(&mut self, text: &str) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match self.parser.as_mut() {
            None => self.send(Event::Text(text.to_string())),
            Some(p) => {
                let parsed = p.push(text);
                self.parsed(parsed)
            }
        }
    }

    fn parsed(&mut self, parsed: Vec<Parsed>) -> Result<()> {
        if self.opens_with_rejected_call(&parsed) {
            self.rejected = true;
            return Ok(());
        }
        for p in parsed {
            let event = match p {
                Parsed::Text(t) => Event::Text(t),
                Parsed::CallStart { index, name } => {
                    let id = new_call_id();
                    self.ids.push(id.clone());
                    Event::ToolCallStart { index, id, name }
                }
                Parsed::CallArguments { index, text } => Event::ToolCallArguments { index, text },
            };
            self.send(event)?;
        }
        Ok(())
    }

    /// Flushes held text (unless a stop string cut it) and resolves held calls; returns the
    /// number of calls in the answer.
    fn finish(&mut self) -> Result<usize> {
        if !self.stopped {
            let last = self.stops.push(&self.decoder.finish());
            let tail = if last.stopped {
                last.emit
            } else {
                last.emit + &self.stops.finish()
            };
            self.text(&tail)?;
        }
        if let Some(p) = self.parser.as_mut() {
            let parsed = p.finish();
            self.parsed(parsed)?;
        }
        Ok(self.ids.len())
    }

    /// Whether `parsed` opens the answer with a call the guard rejects. Held calls arrive
    /// whole: start, then arguments.
    fn opens_with_rejected_call(&self, parsed: &[Parsed]) -> bool {
        let Some([Parsed::CallStart { name, .. }, Parsed::CallArguments { text, .. }]) =
            parsed.get(..2)
        else {
            return false;
        };
        let Ok(arguments) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        !self.emitted && self.guard.rejects(name, &arguments)
    }

    fn send(&mut self, event: Event) -> Result<()> {
        self.emitted = true;
        if (self.emit)(event) {
            Ok(())
        } else {
            Err(EngineError::Aborted)
        }
    }
}

/// Tokens whose text (after leading whitespace) starts with ASCII punctuation: JSON, fences,
/// brackets, markup. A text answer redone after a repeated call must open with a word.
fn punctuation_openings(tokenizer: &Tokenizer) -> Vec<u32> {
    (0..tokenizer.vocab_size() as u32)
        .filter(|&id| {
            let text = tokenizer.token_bytes(id).trim_ascii_start();
            text.first().is_some_and(u8::is_ascii_punctuation)
        })
        .collect()
}
