//! Chat requests in the OpenAI Chat Completions wire shape, validated once at the edge.
//! Every rule has its own message naming the field and what to change.

use crate::error::{invalid, EngineError, Result};
use crate::sampling::SamplingParams;
use crate::tools::{function_name, ToolSettings};
use serde_json::{Map, Value};

/// A validated chat request. Messages are already in the shape chat templates expect.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `stream_options.include_usage`: a final chunk carries `usage`.
    pub include_usage: bool,
    pub tool_settings: ToolSettings,
    /// How long the request may take, queue included; not part of the body (library option
    /// `timeoutMs`). None: the engine's `request_timeout`.
    pub timeout: Option<std::time::Duration>,
}

/// The model's recommended sampling settings, used where a request leaves one out.
pub type GenerationDefaults = SamplingParams;

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];
const MAX_STOP: usize = 16;

impl ChatRequest {
    pub fn from_json(body: &Value, defaults: &GenerationDefaults) -> Result<Self> {
        let Some(body) = body.as_object() else {
            return invalid("the request must be an object with a `messages` array");
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m
                .iter()
                .enumerate()
                .map(|(i, m)| normalize_message(i, m))
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Array(_)) => {
                return invalid("`messages` must contain at least one message")
            }
            Some(_) => return invalid("`messages` must be an array of message objects"),
            None => return invalid("`messages` is required"),
        };
        // Refused rather than answered with `logprobs: null`, which reads as "none were likely".
        match body.get("logprobs") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => return invalid(
                "`logprobs` is not supported by qwen-native yet; leave it out or set it to false",
            ),
            Some(_) => return invalid("`logprobs` must be a boolean"),
        }
        if body.get("top_logprobs").is_some_and(|v| !v.is_null()) {
            return invalid(
                "`top_logprobs` is not supported by qwen-native yet (it needs `logprobs`)",
            );
        }
        if let Some(n) = body.get("n").filter(|v| !v.is_null()) {
            if integer(n) != Some(1) {
                return invalid("`n` must be 1: qwen-native returns one choice per request");
            }
        }
        let tool_settings = ToolSettings::from_body(body)?;
        // The template shows the tools unless they may not be called.
        let tools = match body.get("tools") {
            Some(Value::Array(t)) if tool_settings.may_call() => Some(t.clone()),
            _ => None,
        };
        let max_tokens = match (body.get("max_completion_tokens"), body.get("max_tokens")) {
            (Some(v), _) if !v.is_null() => Some(positive_int(v, "max_completion_tokens")?),
            (_, Some(v)) if !v.is_null() => Some(positive_int(v, "max_tokens")?),
            _ => None,
        };
        let sampling = SamplingParams {
            temperature: number_in(body, "temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature),
            top_p: match number_in(body, "top_p", 0.0, 1.0)? {
                Some(p) if p <= 0.0 => {
                    return invalid("`top_p` must be greater than 0 and at most 1")
                }
                Some(p) => p,
                None => defaults.top_p,
            },
            top_k: match body.get("top_k").filter(|v| !v.is_null()) {
                Some(v) => match integer(v) {
                    Some(k) if k >= 0 => usize::try_from(k).unwrap_or(usize::MAX),
                    _ => {
                        return invalid(format!("`top_k` must be a non-negative integer, got {v}"))
                    }
                },
                None => defaults.top_k,
            },
            seed: match body.get("seed").filter(|v| !v.is_null()) {
                // Any 64-bit integer, signed or not (clients send `Date.now()` and random
                // 63-bit values); negative ones keep their bits.
                Some(v) => match integer(v) {
                    Some(s) if (i64::MIN as i128..=u64::MAX as i128).contains(&s) => Some(s as u64),
                    _ => {
                        return invalid(format!(
                            "`seed` must be an integer from -2^63 to 2^64 - 1, got {v}"
                        ))
                    }
                },
                None => None,
            },
            repetition_penalty: match number_in(body, "repetition_penalty", 0.0, 10.0)? {
                Some(p) if p <= 0.0 => {
                    return invalid("`repetition_penalty` must be greater than 0")
                }
                Some(p) => p,
                None => defaults.repetition_penalty,
            },
            presence_penalty: number_in(body, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
            frequency_penalty: number_in(body, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        };
        let stop = match body.get("stop") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= MAX_STOP => a
                .iter()
                .map(|s| match s.as_str() {
                    Some(s) if !s.is_empty() => Ok(s.to_string()),
                    _ => invalid("`stop` entries must be non-empty strings"),
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return invalid(format!(
                    "`stop` must be a non-empty string or an array of at most {MAX_STOP} non-empty strings"
                ))
            }
        };
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            messages,
            tools,
            max_tokens,
            sampling,
            stop,
            include_usage,
            tool_settings,
            timeout: None,
        })
    }
}

/// A positive integer; values beyond the address space become `usize::MAX` (the prompt check then
/// reports that they do not fit the context).
fn positive_int(v: &Value, name: &str) -> Result<usize> {
    match integer(v) {
        Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => invalid(format!("`{name}` must be a positive integer, got {v}")),
    }
}

/// A JSON number that is a whole number, also when it arrives as a float: JavaScript numbers
/// above 2^31 (`Date.now()`, `2 ** 63`) cross napi as f64.
fn integer(v: &Value) -> Option<i128> {
    if let Some(n) = v.as_i64() {
        return Some(n.into());
    }
    if let Some(n) = v.as_u64() {
        return Some(n.into());
    }
    let x = v.as_f64()?;
    // Beyond 2^100 no seed or count makes sense, and the cast stays exact below it.
    (x.fract() == 0.0 && x.abs() < 2f64.powi(100)).then_some(x as i128)
}

fn number_in(body: &Map<String, Value>, name: &str, lo: f64, hi: f64) -> Result<Option<f32>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as f32)),
            _ => invalid(format!(
                "`{name}` must be a number from {lo} to {hi}, got {v}"
            )),
        },
    }
}

/// Text of a content field: a string, or an array of `{type: "text", text}` parts.
fn content_text(i: usize, content: &Value) -> Result<Option<String>> {
    match content {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                (Some(kind), _) if kind != "text" => invalid(format!(
                    "messages[{i}].content has a `{kind}` part; this model reads text parts only"
                )),
                _ => invalid(format!("messages[{i}].content parts must be {{\"type\": \"text\", \"text\": string}}")),
            })
            .collect::<Result<Vec<_>>>()
            .map(|t| Some(t.concat())),
        other => invalid(format!(
            "messages[{i}].content must be a string or an array of text parts, got {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one OpenAI message and rewrites it into the template's shape: string content,
/// `developer` as `system`, tool-call arguments parsed from their JSON string.
fn normalize_message(i: usize, m: &Value) -> Result<Value> {
    let Some(obj) = m.as_object() else {
        return invalid(format!(
            "messages[{i}] must be an object with `role` and `content`"
        ));
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some(r) if ROLES.contains(&r) => r,
        Some(r) => {
            return invalid(format!(
                "messages[{i}].role must be one of system, developer, user, assistant, tool; got \"{r}\""
            ))
        }
        None => return invalid(format!("messages[{i}].role is required and must be a string")),
    };
    let content = content_text(i, obj.get("content").unwrap_or(&Value::Null))?;
    let tool_calls = match obj.get("tool_calls") {
        Some(Value::Array(calls)) if role == "assistant" => Some(
            calls
                .iter()
                .enumerate()
                .map(|(j, c)| normalize_tool_call(i, j, c))
                .collect::<Result<Vec<_>>>()?,
        ),
        None | Some(Value::Null) => None,
        Some(_) if role != "assistant" => {
            return invalid(format!(
                "messages[{i}].tool_calls is only allowed on assistant messages"
            ))
        }
        Some(_) => return invalid(format!("messages[{i}].tool_calls must be an array")),
    };
    if content.is_none() && tool_calls.is_none() {
        return invalid(format!(
            "messages[{i}].content is required (a string) for a {role} message"
        ));
    }
    let mut out = Map::new();
    let role = if role == "developer" { "system" } else { role };
    out.insert("role".into(), role.into());
    out.insert("content".into(), content.map_or(Value::Null, Value::String));
    if let Some(calls) = tool_calls {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if role == "tool" {
        match obj.get("tool_call_id") {
            Some(Value::String(id)) => {
                out.insert("tool_call_id".into(), id.clone().into());
            }
            None | Some(Value::Null) => {}
            Some(_) => return invalid(format!("messages[{i}].tool_call_id must be a string")),
        }
    }
    if let Some(name) = obj.get("name") {
        match name.as_str() {
            Some(n) => {
                out.insert("name".into(), n.into());
            }
            None => return invalid(format!("messages[{i}].name must be a string")),
        }
    }
    Ok(Value::Object(out))
}

fn normalize_tool_call(i: usize, j: usize, call: &Value) -> Result<Value> {
    let at = format!("messages[{i}].tool_calls[{j}]");
    let function = call
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| EngineError::invalid(format!("{at}.function must be an object")))?;
    let name = function_name(&format!("{at}.function.name"), function.get("name"))?;
    // OpenAI sends arguments as a JSON string; chat templates expect the object.
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
            EngineError::invalid(format!("{at}.function.arguments is not valid JSON: {e}"))
        })?,
        Some(v @ Value::Object(_)) => v.clone(),
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => return invalid(format!("{at}.function.arguments must be a JSON string")),
    };
    let mut out = Map::new();
    if let Some(id) = call.get("id") {
        out.insert("id".into(), id.clone());
    }
    out.insert("type".into(), "function".into());
    out.insert(
        "function".into(),
        serde_json::json!({ "name": name, "arguments": arguments }),
    );
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<ChatRequest> {
        ChatRequest::from_json(&body, &SamplingParams::greedy())
    }

    fn message_of(body: Value) -> String {
        check(body).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_requests_naming_the_field() {
        assert!(message_of(json!({})).contains("`messages` is required"));
        assert!(message_of(json!({"messages": []})).contains("at least one"));
        assert!(
            message_of(json!({"messages": [{"role": "robot", "content": "x"}]}))
                .contains("messages[0].role")
        );
        assert!(
            message_of(json!({"messages": [{"role": "user", "content": 42}]})).contains("a number")
        );
        assert!(message_of(
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1})
        )
        .contains("max_tokens"));
        assert!(message_of(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3})
        )
        .contains("temperature"));
        assert!(message_of(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})
        )
        .contains("no `tools`"));
    }

    #[test]
    fn normalizes_openai_messages_for_the_template() {
        let r = check(json!({
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}
            ],
            "stop": "END", "max_tokens": 5
        }))
        .unwrap();
        assert_eq!(
            r.messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            r.messages[1]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(r.stop, vec!["END"]);
        assert_eq!(r.max_tokens, Some(5));
    }

    #[test]
    fn whole_numbers_beyond_32_bits_are_integers() {
        let with = |field: &str, value: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
            body[field] = value;
            body
        };
        // JavaScript numbers above 2^31 cross napi as floats.
        let seed = |v: Value| check(with("seed", v)).unwrap().sampling.seed;
        assert_eq!(seed(json!(1_732_800_000_000.0f64)), Some(1_732_800_000_000));
        assert_eq!(seed(json!(9.223372036854776e18)), Some(1 << 63));
        assert_eq!(seed(json!(-5)), Some(-5i64 as u64));
        assert!(message_of(with("seed", json!(1.5))).contains("`seed` must be an integer"));
        assert!(message_of(with("seed", json!(1e30))).contains("`seed` must be an integer"));
        let r = check(with("max_tokens", json!(1e12))).unwrap();
        assert_eq!(r.max_tokens, Some(1_000_000_000_000));
        assert_eq!(check(with("n", json!(1.0))).unwrap().messages.len(), 1);
    }

    #[test]
    fn logprobs_are_refused_not_answered_with_null() {
        let with = |fields: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            body
        };
        assert!(message_of(with(json!({"logprobs": true}))).contains("`logprobs` is not supported"));
        assert!(message_of(with(json!({"logprobs": 1}))).contains("`logprobs` must be a boolean"));
        assert!(message_of(with(json!({"top_logprobs": 3}))).contains("`top_logprobs`"));
        assert!(check(with(json!({"logprobs": false, "top_logprobs": null}))).is_ok());
    }
}
