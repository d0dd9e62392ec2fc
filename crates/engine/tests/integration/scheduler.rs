//! The scheduler on the real model: sequences decoded together give the tokens they give alone,
//! admission keeps `max_batch`, a cancel ends one sequence of a batch, a full queue refuses, and
//! the counters return to idle. Each test loads its own engine, so other tests' requests do not
//! share its batch.

use crate::common::model_path;
use qwen_engine::{Engine, EngineError, EngineOptions, Event, Generation, Stats};
use serde_json::json;
use std::time::{Duration, Instant};

fn engine(max_batch: usize, max_queue: usize) -> Engine {
    let mut opts = EngineOptions::new(model_path());
    opts.threads = Some(2);
    opts.max_batch = max_batch;
    opts.max_queue = max_queue;
    Engine::load(&opts, None).expect("load the default model")
}

const QUESTIONS: [&str; 3] = [
    "Name three colours of the rainbow.",
    "What is the capital of Japan? Answer in one sentence.",
    "Write a haiku about the sea.",
];

fn submit(engine: &Engine, question: &str, max_tokens: usize) -> Generation {
    engine
        .submit_json(&json!({
            "messages": [{ "role": "user", "content": question }],
            "temperature": 0, "max_tokens": max_tokens,
        }))
        .unwrap()
}

fn text(mut generation: Generation) -> String {
    generation.blocking_answer().unwrap().0.content
}

/// Polls `stats()` until `done` holds (or 60 s pass, which fails the test).
fn wait_for(engine: &Engine, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = engine.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "stats never got there: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn is_idle(s: &Stats) -> bool {
    s.running == 0 && s.queued == 0 && s.batch_size == 0
}

#[test]
fn sequences_decoded_together_give_the_tokens_they_give_alone() {
    let engine = engine(4, 64);
    let alone: Vec<String> = QUESTIONS
        .iter()
        .map(|q| text(submit(&engine, q, 32)))
        .collect();
    // All three are queued before any is read, so they are admitted and decoded together.
    let generations: Vec<Generation> = QUESTIONS.iter().map(|q| submit(&engine, q, 32)).collect();
    let seen = wait_for(&engine, |s| s.running == 3 || s.requests_finished > 3);
    assert_eq!(seen.running, 3, "{seen:?}");
    let together: Vec<String> = generations.into_iter().map(text).collect();
    assert_eq!(together, alone);
    assert!(wait_for(&engine, is_idle).generated_tokens >= 6);
}

#[test]
fn admission_keeps_max_batch_and_queue_order() {
    let engine = engine(2, 64);
    let generations: Vec<Generation> = (0..4)
        .map(|i| submit(&engine, QUESTIONS[i % 3], 24))
        .collect();
    let first = wait_for(&engine, |s| s.running > 0);
    assert!(first.running <= 2 && first.queued >= 2, "{first:?}");
    // The first two are served first: the later ones have not produced a token before them.
    let mut order = Vec::new();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, mut g) in generations.into_iter().enumerate() {
            let tx = tx.clone();
            s.spawn(move || {
                let first = g.blocking_next().unwrap().unwrap();
                assert!(matches!(first, Event::Text(_)), "{first:?}");
                tx.send(i).unwrap();
                g.blocking_answer().unwrap();
            });
        }
        drop(tx);
        order.extend(rx.iter());
        while engine.stats().running > 0 {
            assert!(engine.stats().running <= 2);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut first_two = order[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, [0, 1], "first tokens came in order {order:?}");
    let idle = wait_for(&engine, is_idle);
    assert_eq!(idle.requests_finished, 4, "{idle:?}");
}

#[test]
fn a_cancel_ends_one_sequence_of_a_batch_and_not_the_others() {
    let engine = engine(4, 64);
    let alone = [
        text(submit(&engine, QUESTIONS[0], 24)),
        text(submit(&engine, QUESTIONS[2], 24)),
    ];
    let a = submit(&engine, QUESTIONS[0], 24);
    let mut doomed = submit(&engine, QUESTIONS[1], 200);
    let c = submit(&engine, QUESTIONS[2], 24);
    // Cancelled after its first piece of text, while the batch is decoding.
    assert!(matches!(doomed.blocking_next(), Some(Ok(Event::Text(_)))));
    doomed.cancel();
    let rest: Vec<_> = std::iter::from_fn(|| doomed.blocking_next()).collect();
    assert!(
        matches!(rest.last(), Some(Err(EngineError::Aborted))),
        "the cancelled request ends with ERR_ABORTED: {rest:?}"
    );
    // The others finish with the answers they give alone.
    assert_eq!([text(a), text(c)], alone);
    let idle = wait_for(&engine, is_idle);
    assert_eq!(idle.requests_failed, 1, "{idle:?}");
}

#[test]
fn a_full_queue_refuses_with_overloaded() {
    let engine = engine(1, 1);
    let running = submit(&engine, QUESTIONS[0], 200);
    wait_for(&engine, |s| s.running == 1);
    let queued = submit(&engine, QUESTIONS[1], 8);
    let refused = engine.submit_json(&json!({
        "messages": [{ "role": "user", "content": "Hi" }],
    }));
    assert!(
        matches!(refused, Err(EngineError::Overloaded(_))),
        "a third request with maxQueue 1 is refused"
    );
    drop(running);
    // Once the running one is gone, the queued one is served.
    assert!(!text(queued).is_empty());
    wait_for(&engine, is_idle);
}

/// A sequence's logits in a batch are its logits alone, bit for bit, where our CPU kernels run
/// (x86-64): each row is computed the same way however many rows share the pass. Elsewhere
/// (candle's kernels, which take other paths for several rows than for one) they may differ at
/// rounding level, and the top token only where the two best are nearly tied.
#[test]
fn a_batched_step_gives_the_logits_of_the_step_alone() {
    use qwen_engine::candle_core::Device;
    use qwen_engine::loader::{self, LoadOptions};
    use qwen_engine::model::BatchInput;
    use qwen_engine::prompt::prepare_prompt;
    use qwen_engine::request::ChatRequest;

    let loaded = loader::load(
        &model_path(),
        &LoadOptions {
            context_length: Some(1024),
            ..LoadOptions::new(Device::Cpu)
        },
        None,
    )
    .unwrap();
    let model = &loaded.model;
    let prompt = |q: &str| {
        let body = json!({ "messages": [{ "role": "user", "content": q }] });
        let request = ChatRequest::from_json(&body, &loaded.defaults).unwrap();
        prepare_prompt(&loaded.tokenizer, &loaded.template, &request, 1024, None)
            .unwrap()
            .0
    };
    let row = |t: &qwen_engine::candle_core::Tensor| t.to_vec1::<f32>().unwrap();
    let top2 = |v: &[f32]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        (s[0], s[1])
    };
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let (a, b) = (prompt(QUESTIONS[0]), prompt(QUESTIONS[2]));
    let (mut alone, mut batched, mut other) =
        (model.new_cache(), model.new_cache(), model.new_cache());
    let mut la = row(&model.forward(&a, &mut alone).unwrap());
    let mut lb = row(&model.forward(&a, &mut batched).unwrap());
    let mut lo = row(&model.forward(&b, &mut other).unwrap());
    let (mut worst, mut scale, mut flips) = (0f32, 0f32, Vec::new());
    for step in 0..24 {
        let diff = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        scale = scale.max(la.iter().fold(0.0, |m, x| m.max(x.abs())));
        let (best, second) = top2(&la);
        if argmax(&la) != argmax(&lb) {
            flips.push((step, best - second, diff));
        }
        // Both runs take the alone run's token, so each step compares like with like.
        let token = argmax(&la) as u32;
        let other_token = argmax(&lo) as u32;
        la = row(&model.forward(&[token], &mut alone).unwrap());
        let mut batch = [
            BatchInput {
                tokens: &[token],
                cache: &mut batched,
                logits: true,
            },
            BatchInput {
                tokens: &[other_token],
                cache: &mut other,
                logits: true,
            },
        ];
        let both = model.forward_batch(&mut batch).unwrap().unwrap();
        lb = row(&both.get(0).unwrap());
        lo = row(&both.get(1).unwrap());
    }
    eprintln!(
        "batched vs alone over 24 steps: max |Δlogit| {worst:.4} (largest |logit| {scale:.1}); top-1 changes (step, alone top-2 margin, max |Δ|): {flips:?}"
    );
    if qwen_engine::kernels::level() > qwen_engine::kernels::Level::Scalar {
        assert_eq!(worst, 0.0, "a batched step changed the logits");
    }
    assert!(
        worst < 0.05 * scale,
        "max |Δlogit| {worst} against |logit| up to {scale}"
    );
    for (_, margin, diff) in &flips {
        assert!(
            margin <= &(2.0 * diff),
            "a top-1 change with a clear margin: {flips:?}"
        );
    }
}

/// `max_queue` counts requests waiting for a batch place: a burst that fits the free places is
/// served even before the engine thread has admitted it.
#[test]
fn free_batch_places_are_not_counted_as_queue() {
    let engine = engine(2, 1);
    let running = submit(&engine, QUESTIONS[0], 200);
    wait_for(&engine, |s| s.running == 1);
    // Back to back, within one step: one takes the free place, one waits.
    let second = submit(&engine, QUESTIONS[1], 8);
    let third = submit(&engine, QUESTIONS[2], 8);
    let refused = engine.submit_json(&json!({"messages": [{ "role": "user", "content": "Hi" }]}));
    assert!(
        matches!(refused, Err(EngineError::Overloaded(_))),
        "the batch is full and one request waits"
    );
    drop(running);
    assert!(!text(second).is_empty());
    assert!(!text(third).is_empty());
    wait_for(&engine, is_idle);
}

/// Deployer limits on work per request: a deadline ends a running or a waiting request with
/// ERR_TIMEOUT without harming the others, and a prompt over `max_prompt_tokens` is refused.
#[test]
fn deadlines_and_prompt_limits_end_only_their_request() {
    use qwen_engine::request::ChatRequest;
    use qwen_engine::sampling::SamplingParams;
    let mut opts = EngineOptions::new(model_path());
    opts.threads = Some(2);
    opts.max_batch = 1;
    opts.max_prompt_tokens = Some(200);
    let engine = Engine::load(&opts, None).unwrap();
    let with_timeout = |question: &str, max_tokens: usize, ms: u64| {
        let body = json!({
            "messages": [{ "role": "user", "content": question }],
            "temperature": 0, "max_tokens": max_tokens,
        });
        let mut request = ChatRequest::from_json(&body, &SamplingParams::greedy()).unwrap();
        request.timeout = Some(Duration::from_millis(ms));
        engine.submit(request).unwrap()
    };
    let running = submit(&engine, QUESTIONS[0], 150);
    wait_for(&engine, |s| s.running == 1);
    // Waits behind `running` (max_batch 1) and times out there.
    let mut waiting = with_timeout(QUESTIONS[1], 8, 100);
    assert!(matches!(
        waiting.blocking_answer(),
        Err(EngineError::Timeout(_))
    ));
    assert_eq!(engine.stats().running, 1, "the running request goes on");
    assert!(!text(running).is_empty());
    // Times out while generating.
    let mut long = with_timeout("Write a long story about a dragon.", 2000, 500);
    let err = long.blocking_answer().unwrap_err();
    assert_eq!(err.code(), "ERR_TIMEOUT", "{err}");
    assert!(err.to_string().contains("500 ms"), "{err}");
    // A prompt over the limit is refused; one under it is answered.
    let long_prompt = "Repeat after me: the quick brown fox. ".repeat(40);
    let err = submit(&engine, &long_prompt, 8)
        .blocking_answer()
        .unwrap_err();
    assert_eq!(err.code(), "ERR_CONTEXT_LENGTH", "{err}");
    assert!(err.to_string().contains("maxPromptTokens"), "{err}");
    assert!(!text(submit(&engine, QUESTIONS[1], 8)).is_empty());
    let idle = wait_for(&engine, is_idle);
    assert_eq!(idle.requests_failed, 3, "{idle:?}");
}
