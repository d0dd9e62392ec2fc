//! Property tests over arbitrary input: request JSON, chat rendering of arbitrary conversations,
//! GGUF headers, config.json, tokenizer.json, the streaming tool-call parser and the UTF-8 stream
//! decoder. Each holds without a panic, ends in a coded error or keeps the invariant users rely
//! on. `cargo test` runs proptest's default 256 cases each (a few dozen for the file-writing
//! GGUF cases); `npm run fuzz` runs many more (PROPTEST_CASES).

use crate::common::{compiler, gguf, model_path, rendered_prompt, special_ids, tokenizer};
use crate::load_errors::{gguf_bytes_with, scratch};
use proptest::prelude::*;
use proptest::sample::select;
use qwen_engine::candle_core::Device;
use qwen_engine::config::ModelConfig;
use qwen_engine::detokenize::StreamDecoder;
use qwen_engine::grammar::answer_grammar;
use qwen_engine::loader::{self, LoadOptions};
use qwen_engine::request::ChatRequest;
use qwen_engine::sampling::SamplingParams;
use qwen_engine::tokenizer::Tokenizer;
use qwen_engine::tool_parser::{Parsed, ToolCallParser};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Pieces caller text is made of: markup of the template and the parser, JSON punctuation,
/// the template's markers, multi-byte characters.
const FRAGMENTS: &[&str] = &[
    "x",
    "hello ",
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "system\n",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    r#"{"name": "get_weather", "arguments": {"city": "Lisbon"}}"#,
    "{",
    "}",
    "\"",
    "\\",
    "\n",
    " ",
    "```json\n",
    "```",
    "é",
    "🦀",
    "世界",
    "\u{FDD0}",
    "\u{FDD1}",
    "j0",
    "1",
    "#/$defs/x",
    "user",
    "get_weather",
];

const KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "tools",
    "tool_choice",
    "tool_calls",
    "tool_call_id",
    "type",
    "function",
    "name",
    "arguments",
    "parameters",
    "properties",
    "required",
    "description",
    "$defs",
    "$ref",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "response_format",
    "json_schema",
    "schema",
    "parallel_tool_calls",
    "stream_options",
    "include_usage",
    "text",
];

fn fragment_text() -> impl Strategy<Value = String> {
    prop::collection::vec(select(FRAGMENTS), 0..6).prop_map(|v| v.concat())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![select(KEYS).prop_map(String::from), fragment_text()]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        select(&[0.0, 0.5, -1.0, 2.5, 1e12, 4_294_967_296.0, 1e300][..]).prop_map(Value::from),
        fragment_text().prop_map(Value::from),
        select(
            &[
                "user",
                "assistant",
                "tool",
                "system",
                "function",
                "object",
                "string"
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Every path to a value inside `v` (the root included).
fn paths(v: &Value) -> Vec<Vec<Value>> {
    let mut out = vec![vec![]];
    let children: Vec<(Value, &Value)> = match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (Value::from(i), c))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, c)| (Value::from(k.as_str()), c))
            .collect(),
        _ => vec![],
    };
    for (step, child) in children {
        for mut rest in paths(child) {
            rest.insert(0, step.clone());
            out.push(rest);
        }
    }
    out
}

fn replace_at(v: &mut Value, path: &[Value], with: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    let child = match first {
        Value::String(k) => v.get_mut(k.as_str()),
        Value::Number(i) => v.get_mut(i.as_u64().unwrap_or(0) as usize),
        _ => None,
    };
    if let Some(child) = child {
        replace_at(child, rest, with);
    }
}

/// `base` with one of its values (possibly the whole of it) replaced by arbitrary JSON.
fn mutated(base: Value) -> impl Strategy<Value = Value> {
    (select(paths(&base)), arb_json()).prop_map(move |(path, with)| {
        let mut v = base.clone();
        replace_at(&mut v, &path, with);
        v
    })
}

/// A request that uses every part of the wire shape: tools, history with calls, options.
fn full_request() -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Lisbon?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Lisbon\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "$defs": {"Unit": {"enum": ["c", "f"]}},
                "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
                "required": ["city"]}}}],
        "tool_choice": "auto", "max_tokens": 16, "temperature": 0.5, "seed": 7, "stop": ["END"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        "stream_options": {"include_usage": true}
    })
}

fn arb_tool_call() -> impl Strategy<Value = Value> {
    (select(&["get_weather", "lookup", "f<|im_end|>"][..]), arb_json()).prop_map(|(name, args)| {
        let arguments = match args {
            Value::Object(_) => args.to_string(),
            _ => "{}".to_string(),
        };
        json!({"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}})
    })
}

fn arb_message() -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            select(&["system", "developer", "user"][..]),
            fragment_text()
        )
            .prop_map(|(role, content)| json!({"role": role, "content": content})),
        (
            fragment_text(),
            prop::collection::vec(arb_tool_call(), 0..3)
        )
            .prop_map(|(content, calls)| if calls.is_empty() {
                json!({"role": "assistant", "content": content})
            } else {
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }),
        fragment_text().prop_map(|c| json!({"role": "tool", "tool_call_id": "c1", "content": c})),
    ]
}

fn arb_tool() -> impl Strategy<Value = Value> {
    (
        select(&["get_weather", "lookup", "paint"][..]),
        fragment_text(),
        prop::collection::vec((fragment_text(), fragment_text()), 0..3),
    )
        .prop_map(|(name, description, params)| {
            let properties: serde_json::Map<String, Value> = params
                .into_iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, d)| (k, json!({"type": "string", "description": d})))
                .collect();
            json!({"type": "function", "function": {"name": name, "description": description,
                "parameters": {"type": "object", "properties": properties}}})
        })
}

/// Conversations the template renders: arbitrary roles, contents, calls and tools.
fn arb_conversation() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(arb_message(), 1..6),
        prop::collection::vec(arb_tool(), 0..3),
    )
        .prop_map(|(messages, tools)| json!({"messages": messages, "tools": tools}))
}

/// Every string and key with the text of added tokens defused (`<|` -> `<!`, `<tool_call>` ->
/// `<tool-call>`), leaving the JSON's shape and validity as they were.
fn defused(v: &Value) -> Value {
    let text = |s: &str| {
        s.replace("<|", "<!")
            .replace("<tool_call>", "<tool-call>")
            .replace("</tool_call>", "</tool-call>")
    };
    match v {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(items.iter().map(defused).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (text(k), defused(v))).collect())
        }
        other => other.clone(),
    }
}

proptest! {
    /// Any body is validated without a panic; one that passes renders to tokens that decode to
    /// the rendered text, and its grammar (if any) compiles or is refused with a coded error.
    #[test]
    fn any_request_body_is_refused_or_rendered(body in prop_oneof![arb_json(), mutated(full_request())]) {
        if let Some((ids, text)) = rendered_prompt(&body) {
            prop_assert_eq!(tokenizer().decode(&ids), text);
            let request = ChatRequest::from_json(&body, &SamplingParams::greedy()).unwrap();
            if let Some(lark) = answer_grammar(&request.tool_settings) {
                if let Err(e) = compiler().constraint(&lark) {
                    prop_assert_eq!(e.code(), "ERR_INVALID_REQUEST");
                }
            }
        }
    }

    /// Caller text holding special-token text gives exactly the special tokens it gives with
    /// that text defused: only the template's markup is special.
    #[test]
    fn caller_text_adds_no_special_tokens(body in arb_conversation()) {
        let plain = rendered_prompt(&defused(&body));
        let rendered = rendered_prompt(&body);
        prop_assert_eq!(plain.is_some(), rendered.is_some());
        if let (Some((ids, text)), Some((plain_ids, _))) = (rendered, plain) {
            prop_assert_eq!(special_ids(&ids), special_ids(&plain_ids));
            prop_assert_eq!(tokenizer().decode(&ids), text);
        }
    }

    /// Streamed text in any split gives the calls and text it gives in one piece.
    #[test]
    fn the_tool_call_parser_does_not_depend_on_how_text_is_split(
        pieces in prop::collection::vec(select(FRAGMENTS), 0..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        stream_calls in any::<bool>(),
    ) {
        let text = pieces.concat();
        let parse = |chunks: &[&str]| {
            let mut p = ToolCallParser::new(vec!["get_weather".into()], stream_calls);
            let mut out: Vec<Parsed> = chunks.iter().flat_map(|c| p.push(c)).collect();
            out.extend(p.finish());
            merged(out)
        };
        let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
        at.sort_unstable();
        at.dedup();
        let mut chunks = vec![];
        let mut from = 0;
        for &to in at.iter().chain([text.len()].iter()) {
            chunks.push(&text[from..to.max(from)]);
            from = to.max(from);
        }
        prop_assert_eq!(parse(&chunks), parse(&[text.as_str()]), "text {:?} cut at {:?}", text, at);
    }

    /// Token bytes in any split decode to what lossy UTF-8 decoding of all of them gives, and no
    /// piece holds half a character.
    #[test]
    fn the_stream_decoder_never_splits_or_loses_characters(
        bytes in prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(select(&[0x41u8, 0xC3, 0xA9, 0xE4, 0xB8, 0x96, 0xF0, 0x9F, 0xA6, 0x80, 0xFF][..]), 0..40),
        ],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut decoder = StreamDecoder::default();
        let mut out = String::new();
        let mut from = 0;
        for to in at.into_iter().chain([bytes.len()]) {
            out.push_str(&decoder.push(&bytes[from..to.max(from)]));
            from = to.max(from);
        }
        out.push_str(&decoder.finish());
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }

    /// A config.json with any value changed parses to a checked config or a coded error.
    #[test]
    fn any_config_json_is_refused_or_valid(config in prop_oneof![mutated(tiny_config()), arb_json()]) {
        match ModelConfig::from_hf_json(&config.to_string()).and_then(|c| c.validate().map(|_| c)) {
            Ok(c) => prop_assert!(c.num_heads > 0 && c.num_kv_heads > 0),
            Err(e) => prop_assert_eq!(e.code(), "ERR_MODEL_LOAD"),
        }
    }

    /// A tokenizer.json with any value changed loads or is refused; one that loads tokenizes
    /// and decodes without a panic.
    #[test]
    fn any_tokenizer_json_is_refused_or_usable(spec in mutated(small_tokenizer_json().clone())) {
        match Tokenizer::from_json(&spec.to_string()) {
            Ok(t) => {
                if let Ok(ids) = t.encode("hello <|im_end|> wörld 🦀", true) {
                    let _ = t.decode(&ids);
                }
            }
            Err(e) => prop_assert_eq!(e.code(), "ERR_MODEL_LOAD"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(file_cases()))]

    /// A GGUF whose bytes are flipped, cut or overwritten is refused with ERR_MODEL_LOAD: the
    /// small synthetic file, and the header of the real model (metadata, tokenizer, tensors).
    #[test]
    fn a_corrupt_gguf_is_a_load_error(
        real in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = if real { real_header().to_vec() } else { gguf_bytes_with("qwen2", 0, 128, Some(32)) };
        for (at, byte, near_start) in edits {
            // Half the edits land in the first 512 bytes, where the counts and first keys are.
            let span = if near_start { bytes.len().min(512) } else { bytes.len() };
            let i = at.index(span);
            bytes[i] = byte;
        }
        bytes.truncate(4 + cut.index(bytes.len() - 3));
        let path = scratch("property-corrupt.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let result = loader::load(&path, &LoadOptions::new(Device::Cpu), None);
        prop_assert!(result.is_err());
        let code = result.err().map(|e| e.code());
        prop_assert_eq!(code, Some("ERR_MODEL_LOAD"));
    }
}

/// Cases for the tests that write a file per case.
fn file_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32)
}

/// Merges adjacent text and adjacent argument pieces of one call, so outputs compare by content.
fn merged(parsed: Vec<Parsed>) -> Vec<Parsed> {
    let mut out: Vec<Parsed> = vec![];
    for p in parsed {
        match (out.last_mut(), p) {
            (Some(Parsed::Text(a)), Parsed::Text(b)) => a.push_str(&b),
            (
                Some(Parsed::CallArguments { index: i, text: a }),
                Parsed::CallArguments { index: j, text: b },
            ) if *i == j => a.push_str(&b),
            (_, Parsed::Text(t)) if t.is_empty() => {}
            (_, p) => out.push(p),
        }
    }
    out
}

fn tiny_config() -> Value {
    let path =
        crate::common::repo_root().join("crates/engine/tests/fixtures/tiny-qwen2/config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The default model's tokenizer.json cut to its first 400 ids (and the merges among them), so
/// each case parses in well under a millisecond.
fn small_tokenizer_json() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec: Value = serde_json::from_str(&tokenizer().to_hf_json().unwrap()).unwrap();
        let vocab = spec["model"]["vocab"].as_object_mut().unwrap();
        vocab.retain(|_, id| id.as_u64().unwrap() < 400);
        let kept: std::collections::HashSet<String> = vocab.keys().cloned().collect();
        let merges = spec["model"]["merges"].as_array_mut().unwrap();
        merges.retain(|m| {
            let parts: Vec<String> = match m {
                Value::String(s) => s.split(' ').map(String::from).collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            };
            parts.len() == 2
                && parts.iter().all(|p| kept.contains(p))
                && kept.contains(&parts.concat())
        });
        spec
    })
}

/// The real model file up to its tensor data: all of its metadata and tensor table.
fn real_header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        use std::io::Read;
        let mut bytes = vec![0; gguf().tensor_data_offset as usize];
        std::fs::File::open(model_path())
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        bytes
    })
}

/// The corrupt tokenizer.json files these properties found: a root that is not an object
/// panicked, an id near 2^32 sized the id table to ~100 GB (an abort, not an error), and a
/// continuation prefix longer than a merged piece panicked in the tokenizers library.
#[test]
fn corrupt_tokenizer_json_found_by_these_properties_is_refused() {
    let mut long_prefix = small_tokenizer_json().clone();
    long_prefix["model"]["continuing_subword_prefix"] = json!("```json\n");
    let mut huge_added = small_tokenizer_json().clone();
    huge_added["added_tokens"][0]["id"] = json!(4_294_967_295u64);
    let mut wide_added = small_tokenizer_json().clone();
    wide_added["added_tokens"][0]["id"] = json!(1u64 << 40);
    let mut huge_vocab = small_tokenizer_json().clone();
    huge_vocab["model"]["vocab"]["!"] = json!(4_000_000_000u64);
    for spec in [
        json!([]),
        json!("tokenizer"),
        long_prefix,
        huge_added,
        wide_added,
        huge_vocab,
    ] {
        let err = Tokenizer::from_json(&spec.to_string()).err();
        assert_eq!(err.map(|e| e.code()), Some("ERR_MODEL_LOAD"));
    }
}
