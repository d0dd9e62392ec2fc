//! Serving benchmark: several requests at once against one engine, in process. Reports aggregate
//! tokens per second against one stream alone, each stream's inter-token gaps and time to first
//! token, a short request's first token while a long prompt is being read, and the engine's
//! counters.

use super::{percentile, BenchResult};
use qwen_engine::{Engine, EngineOptions, Event};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Topics for distinct prompts: each stream asks about a different one.
const TOPICS: [&str; 8] = [
    "lighthouses",
    "volcanoes",
    "honeybees",
    "glaciers",
    "railways",
    "coral reefs",
    "comets",
    "windmills",
];

/// What one stream saw: when it was submitted, when each piece of text arrived.
struct Trace {
    submitted: Instant,
    arrivals: Vec<Instant>,
    completion_tokens: usize,
    cached_tokens: usize,
}

impl Trace {
    fn ttft_ms(&self) -> f64 {
        self.arrivals
            .first()
            .map_or(f64::NAN, |t| (*t - self.submitted).as_secs_f64() * 1e3)
    }

    /// Gaps between consecutive pieces of text, in ms.
    fn gaps_ms(&self) -> Vec<f64> {
        self.arrivals
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect()
    }
}

fn essay(topic: &str, max_tokens: usize) -> Value {
    json!({
        "messages": [{"role": "user", "content": format!("Write a long, detailed essay about {topic}.")}],
        "temperature": 0, "max_tokens": max_tokens,
    })
}

/// Submits `body` after `delay` and records its stream (on the caller's thread).
fn run_stream(engine: &Engine, body: &Value, delay: Duration) -> Result<Trace, String> {
    std::thread::sleep(delay);
    let submitted = Instant::now();
    let mut generation = engine.submit_json(body).map_err(|e| e.to_string())?;
    let mut arrivals = Vec::new();
    while let Some(event) = generation.blocking_next() {
        match event.map_err(|e| e.to_string())? {
            Event::Finished { usage, .. } => {
                return Ok(Trace {
                    submitted,
                    arrivals,
                    completion_tokens: usage.completion_tokens,
                    cached_tokens: usage.prompt_tokens_details.cached_tokens,
                })
            }
            _ => arrivals.push(Instant::now()),
        }
    }
    Err("the stream ended without finishing".into())
}

/// Runs the bodies at once (each after its delay); returns their traces and the wall time.
fn concurrently(engine: &Engine, bodies: &[(Value, Duration)]) -> BenchResult<(Vec<Trace>, f64)> {
    let t0 = Instant::now();
    let traces = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|(body, delay)| s.spawn(move || run_stream(engine, body, *delay)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a stream thread panicked".to_string())?
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    Ok((traces, t0.elapsed().as_secs_f64()))
}

fn summary(traces: &[Trace], wall_s: f64) -> Value {
    let tokens: usize = traces.iter().map(|t| t.completion_tokens).sum();
    let per_stream: Vec<Value> = traces
        .iter()
        .map(|t| {
            let mut gaps = t.gaps_ms();
            gaps.sort_by(f64::total_cmp);
            json!({
                "completion_tokens": t.completion_tokens,
                "cached_tokens": t.cached_tokens,
                "ttft_ms": t.ttft_ms(),
                "inter_token_ms_p50": (!gaps.is_empty()).then(|| percentile(&gaps, 0.5)),
                "inter_token_ms_p95": (!gaps.is_empty()).then(|| percentile(&gaps, 0.95)),
            })
        })
        .collect();
    json!({
        "streams": traces.len(),
        "completion_tokens": tokens,
        "wall_s": wall_s,
        "aggregate_tok_s": tokens as f64 / wall_s,
        "per_stream": per_stream,
    })
}

/// One stream alone, then `streams` at once with distinct prompts, then a short request sent
/// while a prompt of `long_prompt_tokens` is being read.
pub fn serve(
    opts: &EngineOptions,
    streams: usize,
    gen_tokens: usize,
    long_prompt_tokens: usize,
) -> BenchResult<String> {
    let engine = Engine::load(opts, None)?;
    // Warm-up: the first request of a process pays one-time costs.
    concurrently(&engine, &[(essay("tea", 8), Duration::ZERO)])?;
    let (alone, alone_s) = concurrently(&engine, &[(essay("rivers", gen_tokens), Duration::ZERO)])?;
    let bodies: Vec<(Value, Duration)> = (0..streams)
        .map(|i| (essay(TOPICS[i % TOPICS.len()], gen_tokens), Duration::ZERO))
        .collect();
    let (together, together_s) = concurrently(&engine, &bodies)?;

    let filler = "The engineers measured every token the model read and wrote, and wrote it down. "
        .repeat(long_prompt_tokens / 15 + 1);
    let long: String = engine
        .tokenizer()
        .decode(&engine.tokenizer().encode(&filler, false)?[..long_prompt_tokens]);
    let long_body = json!({
        "messages": [{"role": "user", "content": format!("{long}\nSummarize the text above in one sentence.")}],
        "temperature": 0, "max_tokens": 16,
    });
    let short_body = json!({
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0, "max_tokens": 8,
    });
    let (mixed, _) = concurrently(
        &engine,
        &[
            (long_body, Duration::ZERO),
            (short_body, Duration::from_millis(300)),
        ],
    )?;
    let single = summary(&alone, alone_s);
    let multi = summary(&together, together_s);
    let speedup = multi["aggregate_tok_s"].as_f64().unwrap_or(0.0)
        / single["aggregate_tok_s"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "engine": "qwen-native",
        "threads": engine.info().threads,
        "max_batch": opts.max_batch,
        "prefill_chunk": opts.prefill_chunk,
        "alone": single,
        "together": multi,
        "aggregate_speedup": speedup,
        "long_prompt_tokens": long_prompt_tokens,
        "long_prompt_ttft_ms": mixed[0].ttft_ms(),
        "short_during_long_ttft_ms": mixed[1].ttft_ms(),
        "stats": engine.stats(),
    })
    .to_string())
}
