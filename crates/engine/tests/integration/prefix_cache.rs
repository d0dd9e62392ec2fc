//! The prefix cache on the real model: conversations taking turns each find their own prefix, and
//! a cache of one slot shows what the other slots save. Each test loads its own engine, so
//! requests of other tests cannot evict its slots.

use crate::common::model_path;
use qwen_engine::prefix_cache::PrefixCacheLimits;
use qwen_engine::{AssistantMessage, Engine, EngineOptions, Usage};
use serde_json::{json, Value};

fn engine(slots: usize) -> Engine {
    let mut opts = EngineOptions::new(model_path());
    opts.threads = Some(2);
    opts.prefix_cache = PrefixCacheLimits {
        slots,
        tokens: 16_384,
    };
    Engine::load(&opts, None).expect("load the default model")
}

/// A system prompt of a few hundred tokens, different per `who`.
fn system(who: &str) -> Value {
    let rules = format!("{who} answers briefly and politely, in plain English. ").repeat(30);
    json!({ "role": "system", "content": rules })
}

fn answer(engine: &Engine, body: Value) -> (AssistantMessage, Usage) {
    let (message, _, usage) = engine
        .submit_json(&body)
        .unwrap()
        .blocking_answer()
        .unwrap();
    (message, usage)
}

/// Sends `messages`, appends the answer to them, and returns the usage.
fn turn(engine: &Engine, messages: &mut Vec<Value>, question: &str) -> Usage {
    messages.push(json!({ "role": "user", "content": question }));
    let body = json!({ "messages": messages, "temperature": 0, "max_tokens": 8 });
    let (message, usage) = answer(engine, body);
    messages.push(json!({ "role": "assistant", "content": message.content }));
    usage
}

fn computed(u: &Usage) -> usize {
    u.prompt_tokens - u.prompt_tokens_details.cached_tokens
}

#[test]
fn conversations_taking_turns_each_reuse_their_own_prefix() {
    let engine = engine(4);
    let (mut a, mut b) = (vec![system("Ann")], vec![system("Bob")]);
    let a1 = turn(&engine, &mut a, "Say hi.");
    let b1 = turn(&engine, &mut b, "Say hello.");
    assert!(a1.prompt_tokens > 300, "{a1:?}");
    // The two system prompts differ from their first words: B computed nearly all of its prompt.
    assert!(computed(&b1) > 300, "{b1:?}");
    let a2 = turn(&engine, &mut a, "Once more.");
    let b2 = turn(&engine, &mut b, "Once more.");
    for (later, earlier) in [(a2, a1), (b2, b1)] {
        assert!(computed(&later) < 40, "{later:?}");
        assert!(later.prompt_tokens_details.cached_tokens >= earlier.prompt_tokens);
    }
}

#[test]
fn with_one_slot_conversations_evict_each_other() {
    let engine = engine(1);
    let (mut a, mut b) = (vec![system("Ann")], vec![system("Bob")]);
    turn(&engine, &mut a, "Say hi.");
    turn(&engine, &mut b, "Say hello.");
    let a2 = turn(&engine, &mut a, "Once more.");
    assert!(computed(&a2) > 300, "{a2:?}");
}

#[test]
fn the_repeat_guards_tool_less_redo_keeps_the_tool_prompt_cached() {
    let engine = engine(4);
    let mut messages = crate::tools::lisbon_weather_turn();
    let tools = json!([crate::tools::weather_tool()]);
    // The 0.5B model repeats the call; the guard redoes the answer on the prompt without tools.
    let body = json!({ "messages": messages, "tools": tools, "temperature": 0, "max_tokens": 60 });
    let (message, redone) = answer(&engine, body);
    assert!(
        message.tool_calls.is_empty() && message.content.contains("23"),
        "{message:?}"
    );
    // The next turn's prompt has the tools again: it continues the tool prompt, still cached.
    messages.push(json!({ "role": "assistant", "content": message.content }));
    messages.push(json!({ "role": "user", "content": "And in Porto?" }));
    let body = json!({ "messages": messages, "tools": tools, "temperature": 0, "max_tokens": 4 });
    let (_, next) = answer(&engine, body);
    assert!(
        next.prompt_tokens_details.cached_tokens > redone.prompt_tokens,
        "{next:?} after {redone:?}"
    );
}

mod invariants {
    //! Slot choice, copying and eviction on the tiny random Qwen2 (fast, exact in f32).
    use crate::common::repo_root;
    use qwen_engine::candle_core::{DType, Device};
    use qwen_engine::config::ModelConfig;
    use qwen_engine::loader::{HfDirSource, Placement};
    use qwen_engine::model::Qwen2;
    use qwen_engine::prefix_cache::{PrefixCache, PrefixCacheLimits};
    use qwen_engine::sequence::Sequence;

    fn tiny() -> Qwen2 {
        let dir = repo_root().join("crates/engine/tests/fixtures/tiny-qwen2");
        let cfg =
            ModelConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let mut src = HfDirSource::open(&dir, Placement::cpu()).unwrap();
        Qwen2::load(&cfg, &mut src, 128, DType::F32, &Device::Cpu).unwrap()
    }

    /// Checks out `prompt`, runs what is not cached, checks the sequence back in; returns the
    /// positions reused and the last logits.
    fn serve(model: &Qwen2, cache: &mut PrefixCache, prompt: &[u32]) -> (usize, Vec<f32>) {
        let mut seq = cache.check_out(model, prompt).unwrap();
        let reused = seq.len();
        let logits = seq.forward(model, &prompt[reused..]).unwrap();
        cache.check_in(seq);
        (reused, logits.to_vec1().unwrap())
    }

    fn limits(slots: usize, tokens: usize) -> PrefixCacheLimits {
        PrefixCacheLimits { slots, tokens }
    }

    #[test]
    fn a_continued_prompt_reuses_all_and_a_forked_one_copies_without_harming_the_original() {
        let model = tiny();
        let mut cache = PrefixCache::new(limits(4, 4096));
        let a: Vec<u32> = (1..40).collect();
        assert_eq!(serve(&model, &mut cache, &a).0, 0);
        // Continues `a`: all of it is reused, and the one sequence grows.
        let a2: Vec<u32> = (1..60).collect();
        assert_eq!(serve(&model, &mut cache, &a2).0, a.len());
        assert_eq!((cache.len(), cache.cached_tokens()), (1, a2.len()));
        // Shares 20 tokens, then goes another way: a copy of the 20, and a2 stays whole.
        let fork: Vec<u32> = (1..21).chain(100..110).collect();
        let (reused, forked_logits) = serve(&model, &mut cache, &fork);
        assert_eq!(reused, 20);
        assert_eq!(cache.len(), 2);
        assert_eq!(serve(&model, &mut cache, &a2).0, a2.len() - 1);
        // The copy holds exactly the source's keys and values: the same logits, bit for bit, as
        // the source's own computation (a, then the rest of a2) cut back to 20 in place.
        let mut fresh = Sequence::new(&model);
        fresh.forward(&model, &a).unwrap();
        fresh.forward(&model, &a2[a.len()..]).unwrap();
        fresh.truncate(20);
        let direct: Vec<f32> = fresh
            .forward(&model, &fork[20..])
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(forked_logits, direct);
        assert_eq!(cache.hit_tokens(), (a.len() + 20 + a2.len() - 1) as u64);
    }

    #[test]
    fn the_least_recently_used_is_evicted_by_slots_and_by_tokens() {
        let model = tiny();
        let prompt = |first: u32| -> Vec<u32> { (first..first + 30).collect() };
        let mut cache = PrefixCache::new(limits(2, 4096));
        for p in [prompt(1), prompt(50), prompt(100)] {
            serve(&model, &mut cache, &p);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(serve(&model, &mut cache, &prompt(1)).0, 0, "evicted first");
        assert_eq!(serve(&model, &mut cache, &prompt(100)).0, 29, "still kept");
        // Each sequence allocates 256 positions: a 600-token budget keeps two of them.
        let mut cache = PrefixCache::new(limits(8, 600));
        for p in [prompt(1), prompt(50), prompt(100)] {
            serve(&model, &mut cache, &p);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(serve(&model, &mut cache, &prompt(1)).0, 0);
        // A sequence over the whole budget is released when it ends, even alone.
        let mut cache = PrefixCache::new(limits(8, 200));
        serve(&model, &mut cache, &prompt(1));
        assert_eq!((cache.len(), cache.cached_tokens()), (0, 0));
    }
}
