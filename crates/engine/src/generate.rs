//! One generation: prefill the prompt, then sample token by token, under a grammar where the
//! request asks for structure, and turn the tokens into text and tool-call events.

use crate::detokenize::StreamDecoder;
use crate::error::{EngineError, Result};
use crate::grammar::{self, Constraint, GrammarCompiler};
use crate::model::Qwen2;
use crate::prefix_cache::PrefixCache;
use crate::response::{new_call_id, FinishReason, Usage};
use crate::sampling::{Sampler, SamplingParams};
use crate::sequence::Sequence;
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;
use crate::tool_parser::{self, classify_opening, Opening, Parsed, ToolCallParser};
use crate::tools::{ToolChoice, ToolSettings};
use candle_core::Tensor;
use serde_json::Value;

/// Prompt tokens per forward pass during prefill: bounds the attention scratch memory and lets
/// a cancel land between chunks of a long prompt.
const PREFILL_CHUNK: usize = 512;
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
    /// Calls already made and answered in this turn (see [`crate::tools::answered_calls`]);
    /// empty where the request does not guard against repeats ([`ToolSettings::guards_repeats`]).
    pub answered: Vec<(String, Value)>,
    /// The prompt without the tools, for an answer redone as text after a repeated call.
    pub text_prompt: Option<Vec<u32>>,
}

/// Why an answer starts over from its first token.
enum Redo {
    /// It opened as a call written as JSON: redo it in Qwen's trained format, under the grammar.
    AsCall,
    /// It repeated a call that was just answered: redo it as a text answer, on the prompt
    /// without the tools where the request gives one.
    AsText,
}

/// What a generation reports, in order: text and tool-call pieces, then one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    /// A tool call begins; `index` counts calls in this answer from 0.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments (JSON text; the pieces concatenate).
    ToolCallArguments {
        index: usize,
        text: String,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
}

/// Whether a request needs the grammar engine.
pub fn needs_grammar(tools: &ToolSettings) -> bool {
    tools.constrained && (tools.may_call() || tools.format != crate::tools::ResponseFormat::Text)
}

/// Runs one generation in `seq`, reusing whatever prefix of `prompt` it already holds; `cache`
/// supplies another sequence where the answer is redone on a different prompt.
/// `interrupt` is polled before every forward pass and ends the run with its error (abort,
/// close); `emit` returns false when nobody listens any more, which ends it too.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Qwen2,
    tokenizer: &Tokenizer,
    grammars: Option<&GrammarCompiler>,
    seq: &mut Sequence,
    cache: &mut PrefixCache,
    prompt: &[u32],
    params: &GenerationParams,
    interrupt: &dyn Fn() -> Option<EngineError>,
    emit: &mut dyn FnMut(Event) -> bool,
) -> Result<()> {
    let settings = &params.tools;
    let compile = |lark: String| -> Result<Constraint> {
        grammars
            .ok_or_else(|| EngineError::Internal("the grammar engine is not loaded".into()))?
            .constraint(&lark)
    };
    // Compiled before any model work, so a bad schema fails fast.
    let mut constraint = grammar::answer_grammar(settings).map(compile).transpose()?;
    let call_grammar = grammar::tool_call_grammar(settings);
    let call_constraint = || match &call_grammar {
        Some(lark) => compile(lark.clone()),
        None => Err(EngineError::Internal(
            "no declared tool can be called".into(),
        )),
    };
    let tool_open = tokenizer.added_token_id(tool_parser::OPEN);
    // A free `auto` answer that opens like a call written as JSON is redone as a real call.
    let mut watch_opening =
        constraint.is_none() && call_grammar.is_some() && settings.choice == ToolChoice::Auto;
    let mut banned: Vec<u32> = if settings.tools.is_empty() || settings.may_call() {
        vec![]
    } else {
        [tool_parser::OPEN, tool_parser::CLOSE]
            .iter()
            .filter_map(|t| tokenizer.added_token_id(t))
            .collect()
    };

    let mut prompt = prompt;
    let (mut answer_start, mut cached) = prefill(model, seq, prompt, params.max_tokens, interrupt)?;
    let mut logits = answer_start.clone();

    let mut sampler = Sampler::new(params.sampling.clone());
    // Calls right after tool results are held until complete; a repeat starts the answer over.
    let mut out = Output::new(params, constraint.is_some(), emit);
    let mut opening: Vec<u32> = Vec::new();
    // The constraint is a call's (which may end mid-answer), not a JSON answer's.
    let mut in_call = false;
    let mut redo = None;
    // Tokens that may not open a redone text answer, until visible text starts.
    let mut opening_bans: Vec<u32> = Vec::new();
    let mut generated = 0;
    let reason = loop {
        if let Some(e) = interrupt() {
            return Err(e);
        }
        if let Some(r) = redo.take() {
            seq.truncate(prompt.len());
            logits = answer_start.clone();
            sampler = Sampler::new(params.sampling.clone());
            generated = 0;
            opening.clear();
            in_call = false;
            watch_opening = false;
            match r {
                Redo::AsCall => {
                    constraint = Some(call_constraint()?);
                    out.calls_checked();
                }
                Redo::AsText => {
                    if let Some(text_prompt) = &params.text_prompt {
                        // The prompt with the tools stays cached for the conversation's next
                        // turn; the tool-less one runs in a sequence of its own, checked out
                        // after the other is back so it can copy the part they share.
                        prompt = text_prompt;
                        cache.check_in(std::mem::replace(seq, Sequence::new(model)));
                        *seq = cache.check_out(model, prompt)?;
                        (answer_start, cached) =
                            prefill(model, seq, prompt, params.max_tokens, interrupt)?;
                        logits = answer_start.clone();
                    }
                    constraint = None;
                    out.restart_as_text();
                    banned.extend(
                        [tool_parser::OPEN, tool_parser::CLOSE]
                            .iter()
                            .filter_map(|t| tokenizer.added_token_id(t)),
                    );
                    opening_bans = punctuation_openings(tokenizer);
                }
            }
        }
        let mut values = logits.to_vec1::<f32>()?;
        if let Some(c) = constraint.as_mut() {
            c.mask(&mut values)?;
        }
        for &b in banned.iter().chain(&opening_bans) {
            values[b as usize] = f32::NEG_INFINITY;
        }
        let token = sampler.sample(&mut values);
        generated += 1;
        if !tokenizer.token_bytes(token).trim_ascii().is_empty() {
            opening_bans.clear();
        }
        if params.eos.contains(&token) {
            break FinishReason::Stop;
        }
        match constraint.as_mut() {
            Some(c) => {
                c.commit(token)?;
                in_call |= Some(token) == tool_open;
                if in_call && c.is_complete() && !settings.single_call() {
                    // One call done: the model is free again to call more, write, or end.
                    constraint = None;
                    in_call = false;
                }
            }
            None if Some(token) == tool_open && call_grammar.is_some() => {
                // The model opened a call: from here on it must be a valid one.
                let mut c = call_constraint()?;
                c.commit(token)?;
                constraint = Some(c);
                in_call = true;
                out.calls_checked();
                watch_opening = false;
                let held = std::mem::take(&mut opening);
                if out.tokens(tokenizer, &held)? {
                    break FinishReason::Stop;
                }
            }
            None => {}
        }
        if watch_opening && constraint.is_none() {
            opening.push(token);
            match classify_opening(&tokenizer.decode(&opening)) {
                Opening::ToolCall => {
                    redo = Some(Redo::AsCall);
                    continue;
                }
                Opening::Undecided
                    if opening.len() < MAX_UNDECIDED_OPENING && generated < params.max_tokens =>
                {
                    logits = seq.forward(model, &[token])?;
                    continue;
                }
                _ => {
                    watch_opening = false;
                    let held = std::mem::take(&mut opening);
                    if out.tokens(tokenizer, &held)? {
                        break FinishReason::Stop;
                    }
                }
            }
        } else if out.tokens(tokenizer, &[token])? {
            break FinishReason::Stop;
        }
        if out.repeated {
            redo = Some(Redo::AsText);
            continue;
        }
        if generated >= params.max_tokens {
            break FinishReason::Length;
        }
        logits = seq.forward(model, &[token])?;
    };
    let calls = out.finish()?;
    let reason = match reason {
        FinishReason::Stop if calls > 0 => FinishReason::ToolCalls,
        r => r,
    };
    out.send(Event::Finished {
        reason,
        usage: Usage::new(prompt.len(), cached, generated),
    })
}

/// Runs `prompt` through the model, reusing the prefix `seq` already holds; returns the logits
/// of the first answer token and how many prompt tokens were reused.
fn prefill(
    model: &Qwen2,
    seq: &mut Sequence,
    prompt: &[u32],
    max_tokens: usize,
    interrupt: &dyn Fn() -> Option<EngineError>,
) -> Result<(Tensor, usize)> {
    let start = seq.reuse_prefix(prompt);
    seq.reserve(prompt.len() + max_tokens.min(INITIAL_COMPLETION_RESERVE))?;
    let mut logits = None;
    for chunk in prompt[start..].chunks(PREFILL_CHUNK) {
        if let Some(e) = interrupt() {
            return Err(e);
        }
        logits = Some(seq.forward(model, chunk)?);
    }
    let logits = logits.ok_or_else(|| EngineError::invalid("the prompt is empty"))?;
    Ok((logits, start))
}

/// Tokens to events: UTF-8 assembly, stop strings, then tool-call recognition.
struct Output<'a> {
    decoder: StreamDecoder,
    stop: Vec<String>,
    stops: StopMatcher,
    parser: Option<ToolCallParser>,
    /// Ids of the calls so far, by index.
    ids: Vec<String>,
    /// A stop string ended the answer.
    stopped: bool,
    /// Calls answered earlier in this turn: calls are held until complete, and one that
    /// repeats them is not emitted but reported in `repeated`.
    answered: Vec<(String, Value)>,
    repeated: bool,
    /// Something reached `emit` (an answer can no longer start over).
    emitted: bool,
    emit: &'a mut dyn FnMut(Event) -> bool,
}

impl<'a> Output<'a> {
    fn new(
        params: &GenerationParams,
        checked: bool,
        emit: &'a mut dyn FnMut(Event) -> bool,
    ) -> Self {
        let settings = &params.tools;
        let answered = params.answered.clone();
        let known = settings.callable().iter().map(|t| t.name.clone()).collect();
        Self {
            decoder: StreamDecoder::default(),
            stop: params.stop.clone(),
            stops: StopMatcher::new(params.stop.clone()),
            parser: settings
                .may_call()
                .then(|| ToolCallParser::new(known, checked && answered.is_empty())),
            ids: Vec::new(),
            stopped: false,
            answered,
            repeated: false,
            emitted: false,
            emit,
        }
    }

    /// From here on calls come from the grammar: stream them as they are generated.
    fn calls_checked(&mut self) {
        if let Some(p) = self.parser.as_mut().filter(|_| self.answered.is_empty()) {
            p.stream_calls(true);
        }
    }

    /// Forgets the discarded attempt (nothing of it was emitted); the new one is plain text.
    fn restart_as_text(&mut self) {
        self.decoder = StreamDecoder::default();
        self.stops = StopMatcher::new(self.stop.clone());
        self.parser = None;
        self.repeated = false;
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
        if self.repeats_answered_call(&parsed) {
            self.repeated = true;
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

    /// Whether `parsed` opens the answer with a call identical (same name, same arguments as
    /// JSON values) to one already answered. Held calls arrive whole: start, then arguments.
    fn repeats_answered_call(&self, parsed: &[Parsed]) -> bool {
        let Some([Parsed::CallStart { name, .. }, Parsed::CallArguments { text, .. }]) =
            parsed.get(..2)
        else {
            return false;
        };
        let Ok(arguments) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        !self.emitted
            && self
                .answered
                .iter()
                .any(|(n, a)| n == name && *a == arguments)
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
