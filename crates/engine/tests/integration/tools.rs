//! Function calling on the real model, and the grammar's guarantee: whatever the logits, a
//! constrained call is valid JSON naming a declared tool with schema-valid arguments.

use crate::common::{compiler, engine, tokenizer};
use qwen_engine::grammar::answer_grammar;
use qwen_engine::sampling::Rng;
use qwen_engine::tools::ToolSettings;
use qwen_engine::{AssistantMessage, FinishReason};
use serde_json::{json, Value};

pub(crate) fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "City name in English, e.g. London"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        }, "required": ["location", "unit"]}
    }})
}

fn answer(body: Value) -> (AssistantMessage, FinishReason) {
    let (message, reason, _) = engine()
        .submit_json(&body)
        .expect("valid request")
        .blocking_answer()
        .expect("answer");
    (message, reason)
}

fn weather_request(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "What's the weather in Lisbon in celsius?"}],
        "tools": [weather_tool()], "temperature": 0, "max_tokens": 80,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn weather_question_becomes_a_get_weather_call() {
    for constrained in [true, false] {
        let (m, reason) = answer(weather_request(json!({"constrained": constrained})));
        assert_eq!(
            reason,
            FinishReason::ToolCalls,
            "constrained={constrained}: {m:?}"
        );
        assert_eq!(m.tool_calls.len(), 1, "{m:?}");
        let call = &m.tool_calls[0];
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args, json!({"location": "Lisbon", "unit": "celsius"}));
        assert!(call.id.starts_with("call_"));
        assert_eq!(m.content, "", "no markup leaks into content");
    }
}

#[test]
fn tool_choice_none_and_named_function() {
    let (m, reason) = answer(weather_request(json!({"tool_choice": "none"})));
    assert!(m.tool_calls.is_empty(), "{m:?}");
    assert!(!m.content.contains("<tool_call>"));
    assert_ne!(reason, FinishReason::ToolCalls);

    let time_tool = json!({"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}});
    let (m, reason) = answer(json!({
        "messages": [{"role": "user", "content": "Hello there!"}],
        "tools": [weather_tool(), time_tool],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "temperature": 0, "max_tokens": 60,
    }));
    assert_eq!(reason, FinishReason::ToolCalls);
    assert_eq!(m.tool_calls.len(), 1);
    assert_eq!(m.tool_calls[0].name, "get_time");
    let args: Value = serde_json::from_str(&m.tool_calls[0].arguments).unwrap();
    assert!(args["timezone"].is_string(), "{args}");
}

#[test]
fn json_schema_answer_validates() {
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["pt", "en", "es"]}}
    }, "required": ["name", "age", "languages"], "additionalProperties": false});
    let (m, reason) = answer(json!({
        "messages": [{"role": "user", "content": "Describe Ana, a 31 year old who speaks Portuguese and English, as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        "temperature": 0, "max_tokens": 80,
    }));
    assert_eq!(reason, FinishReason::Stop);
    let value: Value = serde_json::from_str(&m.content).expect("the answer is JSON");
    assert_eq!(validate(&value, &schema), Ok(()), "{value}");
}

/// A question, its get_weather call and the result (23 °C): the model's next answer should use it.
pub(crate) fn lisbon_weather_turn() -> Vec<Value> {
    let call = json!({"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"location\": \"Lisbon\", \"unit\": \"celsius\"}"}});
    vec![
        json!({"role": "user", "content": "What's the weather in Lisbon in celsius?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [call]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 23, \"unit\": \"celsius\", \"condition\": \"sunny\"}"}),
    ]
}

#[test]
fn a_call_repeated_after_its_result_becomes_a_text_answer() {
    let turn = lisbon_weather_turn();
    let system = json!({"role": "system", "content": "You are a helpful assistant. When a tool result arrives, answer the user's question in one sentence using it."});
    // Left alone, the 0.5B model calls get_weather again; the guard makes it answer, on the
    // prompt without the tools, with or without a system prompt asking for an answer.
    for messages in [turn.to_vec(), [vec![system], turn.to_vec()].concat()] {
        let (m, reason) = answer(
            json!({"messages": messages, "tools": [weather_tool()], "temperature": 0, "max_tokens": 60}),
        );
        assert_eq!(reason, FinishReason::Stop, "{m:?}");
        assert!(m.tool_calls.is_empty(), "{m:?}");
        assert!(m.content.contains("23"), "{m:?}");
    }
}

#[test]
fn a_question_no_tool_fits_gets_text_not_a_call_filled_from_the_schema_example() {
    // Left alone, the 0.5B model answers with get_weather({"location": "London", ...}), London
    // coming from the tool's description.
    let (m, reason) = answer(json!({
        "messages": [{"role": "user", "content": "What is 12 times 12?"}],
        "tools": [weather_tool()], "temperature": 0, "max_tokens": 40,
    }));
    assert!(m.tool_calls.is_empty(), "{m:?}");
    assert_eq!(reason, FinishReason::Stop, "{m:?}");
    assert!(m.content.contains("144"), "{m:?}");
    // Asked about London, the same call is a real one.
    let (m, reason) = answer(json!({
        "messages": [{"role": "user", "content": "What's the weather in London in celsius?"}],
        "tools": [weather_tool()], "temperature": 0, "max_tokens": 60,
    }));
    assert_eq!(reason, FinishReason::ToolCalls, "{m:?}");
    assert_eq!(m.tool_calls[0].name, "get_weather");
}

// ---- the grammar, on the real vocabulary ----

fn required_settings(tools: Value) -> ToolSettings {
    let body = json!({"tools": tools, "tool_choice": "required"});
    ToolSettings::from_body(body.as_object().unwrap()).unwrap()
}

/// Tools whose schemas use types, enums, required, nested objects and arrays.
fn schema_zoo() -> Value {
    json!([
        weather_tool(),
        {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object", "properties": {
            "from": {"type": "string"}, "to": {"type": "string"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            "class": {"type": "string", "enum": ["economy", "business"]},
            "refundable": {"type": "boolean"}
        }, "required": ["from", "to", "passengers"]}}},
        {"type": "function", "function": {"name": "create_order", "parameters": {"type": "object", "properties": {
            "customer": {"type": "object", "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"}}, "required": ["name"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "number"}}, "required": ["sku", "qty"]}, "minItems": 1}
        }, "required": ["customer", "items"]}}},
        {"type": "function", "function": {"name": "ping"}}
    ])
}

/// Property: random logits under the mask always yield calls that parse and validate.
#[test]
fn random_walks_under_the_tool_grammar_always_give_valid_calls() {
    let tools = schema_zoo();
    let settings = required_settings(tools.clone());
    let lark = answer_grammar(&settings).unwrap();
    let tok = tokenizer();
    let eot = tok.added_token_id("<|im_end|>").unwrap();
    // Seeded, so every run walks the same paths.
    let mut rng = Rng::new(7);
    let mut names_seen = std::collections::HashSet::new();
    for walk in 0..40 {
        let mut c = compiler().constraint(&lark).unwrap();
        let mut ids = vec![];
        loop {
            // Random logits; often favour short tokens so structures close and walks end.
            let mut logits: Vec<f32> = (0..151_936)
                .map(|_| (rng.next_u64() % 1000) as f32)
                .collect();
            // After a while, favour what closes strings, numbers, objects and arrays.
            if ids.len() > 24 && !rng.next_u64().is_multiple_of(4) {
                for (i, l) in logits.iter_mut().enumerate() {
                    if matches!(tok.token_bytes(i as u32), b"\"" | b"}" | b"]" | b"\n")
                        || i as u32 == eot
                    {
                        *l += 5000.0;
                    }
                }
            }
            c.mask(&mut logits).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            assert!(
                logits[best as usize].is_finite(),
                "walk {walk}: the grammar left no token"
            );
            if best == eot {
                break;
            }
            c.commit(best).unwrap();
            ids.push(best);
            assert!(
                ids.len() < 3000,
                "walk {walk} does not end: {}",
                tok.decode(&ids)
            );
        }
        let text = tok.decode(&ids);
        assert!(!text.contains("[PAD"), "{text}");
        for block in text.split("<tool_call>\n").skip(1) {
            let body = block.split("\n</tool_call>").next().unwrap();
            let call: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
            let name = call["name"].as_str().unwrap();
            let tool = tools
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["function"]["name"] == name)
                .unwrap_or_else(|| panic!("undeclared tool {name}"));
            let schema = tool["function"]
                .get("parameters")
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            assert_eq!(
                validate(&call["arguments"], &schema),
                Ok(()),
                "walk {walk}: {body}"
            );
            names_seen.insert(name.to_string());
        }
        assert!(text.starts_with("<tool_call>\n"), "{text}");
    }
    assert!(
        names_seen.len() >= 3,
        "walks explore several tools: {names_seen:?}"
    );
}

/// Property: valid calls are accepted and each kind of schema violation is refused.
#[test]
fn the_grammar_accepts_valid_calls_and_refuses_violations() {
    let settings = required_settings(schema_zoo());
    let lark = answer_grammar(&settings).unwrap();
    let tok = tokenizer();
    let accepts = |body: &str| {
        let text = format!("<tool_call>\n{body}\n</tool_call>");
        compiler()
            .constraint(&lark)
            .unwrap()
            .accepts(&tok.encode(&text, true).unwrap())
    };
    for ok in [
        r#"{"name": "get_weather", "arguments": {"location": "Lisbon", "unit": "celsius"}}"#,
        r#"{"name": "book_flight", "arguments": {"from": "LIS", "to": "OPO", "passengers": 2, "class": "business"}}"#,
        r#"{"name": "create_order", "arguments": {"customer": {"name": "Ana"}, "items": [{"sku": "A1", "qty": 1.5}]}}"#,
        r#"{"name": "ping", "arguments": {}}"#,
    ] {
        assert!(accepts(ok), "refused a valid call: {ok}");
    }
    for bad in [
        r#"{"name": "get_wether", "arguments": {"location": "Lisbon", "unit": "celsius"}}"#,
        r#"{"name": "get_weather", "arguments": {"location": "Lisbon", "unit": "kelvin"}}"#,
        r#"{"name": "get_weather", "arguments": {"location": "Lisbon"}}"#,
        r#"{"name": "book_flight", "arguments": {"from": "LIS", "to": "OPO", "passengers": "two"}}"#,
        r#"{"name": "book_flight", "arguments": {"from": "LIS", "to": "OPO", "passengers": 12}}"#,
        r#"{"name": "create_order", "arguments": {"customer": {"name": "Ana"}, "items": []}}"#,
        r#"{"name": "create_order", "arguments": {"customer": {}, "items": [{"sku": "A1", "qty": 1}]}}"#,
        r#"{"name": "ping", "arguments": {"extra": 1}}"#,
        r#"{"name": "ping", "arguments": {}"#,
    ] {
        assert!(!accepts(bad), "accepted an invalid call: {bad}");
    }
}

/// Pydantic writes `#/$defs/...` refs, zod-to-json-schema `#/definitions/...` and pointers into
/// the schema itself; each resolves within its own tool's parameters, even when two tools
/// define the same name differently.
#[test]
fn refs_in_tool_parameters_resolve_within_their_tool() {
    let tools = json!([
        {"type": "function", "function": {"name": "paint", "parameters": {
            "$defs": {"Color": {"type": "string", "enum": ["red", "blue"]}},
            "type": "object", "properties": {"color": {"$ref": "#/$defs/Color"}}, "required": ["color"]}}},
        {"type": "function", "function": {"name": "dye", "parameters": {
            "definitions": {"Color": {"type": "integer"}},
            "type": "object", "properties": {
                "color": {"$ref": "#/definitions/Color"},
                "again": {"$ref": "#/properties/color"}},
            "required": ["color"]}}}
    ]);
    let lark = answer_grammar(&required_settings(tools)).unwrap();
    let tok = tokenizer();
    let accepts = |body: &str| {
        let text = format!("<tool_call>\n{body}\n</tool_call>");
        compiler()
            .constraint(&lark)
            .unwrap_or_else(|e| panic!("{e}"))
            .accepts(&tok.encode(&text, true).unwrap())
    };
    assert!(accepts(
        r#"{"name": "paint", "arguments": {"color": "red"}}"#
    ));
    assert!(accepts(
        r#"{"name": "dye", "arguments": {"color": 3, "again": 4}}"#
    ));
    assert!(!accepts(
        r#"{"name": "paint", "arguments": {"color": "green"}}"#
    ));
    assert!(!accepts(r#"{"name": "paint", "arguments": {"color": 3}}"#));
    assert!(!accepts(
        r#"{"name": "dye", "arguments": {"color": "red"}}"#
    ));
    assert!(!accepts(
        r#"{"name": "dye", "arguments": {"color": 3, "again": "red"}}"#
    ));
}

#[test]
fn a_schema_that_cannot_compile_is_an_invalid_request() {
    let body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "string", "pattern": "(unclosed"}}, "required": ["x"]}}}],
        "tool_choice": "required",
    });
    let err = engine()
        .submit_json(&body)
        .unwrap()
        .blocking_answer()
        .unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_REQUEST", "{err}");
}

/// A small JSON-schema check for what these tests use: type, enum, required, properties,
/// additionalProperties, items, minItems, minimum/maximum.
fn validate(v: &Value, s: &Value) -> Result<(), String> {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{v} not in {s}"));
        }
    }
    let ok = match s.get("type").and_then(Value::as_str) {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{v} is not {s}"));
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
            || s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n > m)
        {
            return Err(format!("{n} out of range in {s}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                return Err(format!("missing {r}"));
            }
        }
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(x, ps)?,
                None if s.get("additionalProperties") == Some(&Value::Bool(true)) => {}
                None => return Err(format!("unexpected key {k}")),
            }
        }
    }
    if let Some(items) = v.as_array() {
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| (items.len() as u64) < m)
        {
            return Err("too few items".into());
        }
        if let Some(is) = s.get("items") {
            items.iter().try_for_each(|x| validate(x, is))?;
        }
    }
    Ok(())
}
