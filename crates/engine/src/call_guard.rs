//! The calls an `auto` answer may not make, because a small model makes them when it should
//! answer in text:
//! - a repeat of a call answered earlier in this turn (calling again instead of reading the
//!   result);
//! - a call with a *placeholder* argument: a value the tool's own schema gives as an example
//!   ("City name, e.g. London") that nothing in the conversation mentions. Asked something no
//!   tool fits ("What is 12 times 12?"), the 0.5B model still opens a call and fills it from the
//!   schema's examples: `get_weather({"location": "London"})`. The value came from the prompt's
//!   tool list, not from the user, so the call answers nothing they asked.
//!
//! An answer that makes such a call is redone as text (see `generate`).

use crate::tools::ToolSettings;
use serde_json::Value;

/// Words that introduce examples in a description.
const EXAMPLE_MARKERS: &[&str] = &[
    "e.g.",
    "e.g ",
    "eg.",
    "for example",
    "for instance",
    "such as",
];

#[derive(Debug, Default, Clone)]
pub struct CallGuard {
    /// Calls made since the user last spoke, when the conversation ends with their results.
    answered: Vec<(String, Value)>,
    /// Per tool name: its schema's example strings (lowercase) that the conversation never
    /// mentions.
    placeholders: Vec<(String, Vec<String>)>,
}

impl CallGuard {
    /// The guard for a request: empty unless it lets the model choose whether to call, under
    /// the grammar ([`ToolSettings::guards_calls`]).
    pub fn new(settings: &ToolSettings, messages: &[Value]) -> Self {
        if !settings.guards_calls() {
            return Self::default();
        }
        // Every string of the messages, keys too, as written (not JSON-escaped).
        let mut conversation = String::new();
        for m in messages {
            for_each_string(m, true, &mut |s| {
                conversation.push_str(&s.to_lowercase());
                conversation.push('\n');
            });
        }
        let placeholders = settings
            .callable()
            .into_iter()
            .filter_map(|tool| {
                let (mut examples, choices) = schema_examples(&tool.parameters);
                if let Some(d) = &tool.description {
                    examples.extend(examples_in(d));
                }
                examples.retain(|e| {
                    e.chars().count() >= 2
                        && !choices.contains(e)
                        && !conversation.contains(e.as_str())
                });
                (!examples.is_empty()).then(|| (tool.name.clone(), examples))
            })
            .collect();
        Self {
            answered: answered_calls(messages),
            placeholders,
        }
    }

    /// Nothing to reject: calls may stream as they are generated.
    pub fn is_empty(&self) -> bool {
        self.answered.is_empty() && self.placeholders.is_empty()
    }

    /// Whether a whole call (its name, its arguments as JSON) must not be made.
    pub fn rejects(&self, name: &str, arguments: &Value) -> bool {
        let repeat = self
            .answered
            .iter()
            .any(|(n, a)| n == name && a == arguments);
        repeat
            || self
                .placeholders
                .iter()
                .filter(|(tool, _)| tool == name)
                .any(|(_, examples)| {
                    let mut found = false;
                    for_each_string(arguments, false, &mut |s| {
                        found |= examples.contains(&s.trim().to_lowercase())
                    });
                    found
                })
    }
}

/// The calls made since the user last spoke, when the conversation ends with their results:
/// (name, arguments). A call that repeats one of these is the loop small models fall into.
pub fn answered_calls(messages: &[Value]) -> Vec<(String, Value)> {
    if messages.last().and_then(|m| m.get("role")) != Some(&Value::from("tool")) {
        return vec![];
    }
    messages
        .iter()
        .rev()
        .take_while(|m| m.get("role").and_then(Value::as_str) != Some("user"))
        .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .filter_map(|c| {
            let f = c.get("function")?;
            Some((
                f.get("name")?.as_str()?.to_string(),
                f.get("arguments")?.clone(),
            ))
        })
        .collect()
}

/// Calls `f` on every string in `value`, and on object keys too `with_keys`.
fn for_each_string(value: &Value, with_keys: bool, f: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| for_each_string(v, with_keys, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            if with_keys {
                f(k);
            }
            for_each_string(v, with_keys, f)
        }),
        _ => {}
    }
}

/// A parameters schema's example strings (its `examples` arrays and what its descriptions give
/// as examples) and the strings its `enum`s and `const`s offer, all lowercase. An offered value
/// is a choice, even when a description also gives it as an example.
fn schema_examples(parameters: &Value) -> (Vec<String>, Vec<String>) {
    let (mut examples, mut choices) = (Vec::new(), Vec::new());
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_lowercase)
                .collect(),
            Value::String(s) => vec![s.to_lowercase()],
            _ => vec![],
        }
    };
    // The grammar's walker: it tells schemas from data and from properties named like keywords.
    crate::grammar::visit_schemas(&mut parameters.clone(), &mut |schema| {
        if let Some(Value::String(d)) = schema.get("description") {
            examples.extend(examples_in(d));
        }
        if let Some(e @ Value::Array(_)) = schema.get("examples") {
            examples.extend(strings(e).iter().map(|s| s.trim().to_string()));
        }
        for key in ["enum", "const"] {
            choices.extend(schema.get(key).map(strings).unwrap_or_default());
        }
    });
    (examples, choices)
}

/// The examples a description gives after "e.g." (or "for example", "such as"), up to the end
/// of its sentence: the quoted strings there, or else the items of the list (`a, b or c`).
fn examples_in(description: &str) -> Vec<String> {
    let lower = description.to_lowercase();
    let mut out = Vec::new();
    for marker in EXAMPLE_MARKERS {
        let mut from = 0;
        while let Some(at) = lower[from..].find(marker) {
            let start = from + at + marker.len();
            from = start;
            let word_start = !lower[..from - marker.len()]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric);
            if !word_start {
                continue;
            }
            let rest = &lower[start..];
            let quoted = quoted_strings(rest);
            if !quoted.is_empty() {
                out.extend(quoted);
                continue;
            }
            let end = sentence_end(rest);
            out.extend(
                rest[..end]
                    .split([',', ';'])
                    .flat_map(|item| item.split(" or "))
                    .flat_map(|item| item.split(" and "))
                    .map(|item| {
                        item.trim()
                            .trim_matches(|c: char| "()[].:".contains(c))
                            .trim()
                            .to_string()
                    })
                    .filter(|item| !item.is_empty()),
            );
        }
    }
    out
}

/// Where the sentence that `text` continues ends: a `.` before whitespace or the end, a `)`
/// closing a parenthesis the examples sit in, a `;` or a newline.
fn sentence_end(text: &str) -> usize {
    let b = text.as_bytes();
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' if depth == 0 => return i,
            b')' => depth -= 1,
            b';' | b'\n' => return i,
            b'.' if b.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) => return i,
            _ => {}
        }
    }
    text.len()
}

/// The strings quoted (with `"`, `'` or `` ` ``) in the sentence that `text` continues.
fn quoted_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while let Some(q) = rest.chars().next().filter(|c| "\"'`".contains(*c)) {
        let Some(close) = rest[1..].find(q) else {
            break;
        };
        out.push(rest[1..1 + close].trim().to_string());
        rest = rest[close + 2..].trim_start();
        // The next item follows a list separator, or the list is over.
        let after = [",", " or ", " and ", "or ", "and "]
            .iter()
            .find_map(|sep| rest.strip_prefix(sep.trim_start()));
        match after {
            Some(next) => rest = next.trim_start(),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn examples_come_from_description_lists_and_quotes() {
        assert_eq!(examples_in("City name in English, e.g. London"), ["london"]);
        assert_eq!(
            examples_in("IANA time zone, e.g. Europe/Lisbon, America/New_York, Asia/Tokyo or UTC"),
            ["europe/lisbon", "america/new_york", "asia/tokyo", "utc"]
        );
        assert_eq!(
            examples_in(
                r#"Evaluate an expression exactly, e.g. "(12.5 * 4) / 3", "2^10" or "sqrt(2)""#
            ),
            ["(12.5 * 4) / 3", "2^10", "sqrt(2)"]
        );
        assert_eq!(
            examples_in("A file (for example notes/todo.md). Relative to the sandbox."),
            ["notes/todo.md"]
        );
        assert_eq!(
            examples_in("Price such as 12.5 in euros"),
            ["12.5 in euros"]
        );
        assert!(examples_in("YYYY-MM-DD").is_empty());
        assert!(examples_in("Length of the leg. Metres").is_empty());
    }

    fn guard(messages: Value) -> CallGuard {
        let body = json!({"tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "City name, e.g. London"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "for example celsius"}
            }}
        }}]});
        let settings = ToolSettings::from_body(body.as_object().unwrap()).unwrap();
        CallGuard::new(&settings, messages.as_array().unwrap())
    }

    #[test]
    fn a_schema_example_nobody_mentioned_is_a_placeholder() {
        let g = guard(json!([{"role": "user", "content": "What is 12 times 12?"}]));
        assert!(g.rejects("get_weather", &json!({"location": "London"})));
        assert!(g.rejects("get_weather", &json!({"location": " london "})));
        assert!(!g.rejects("get_weather", &json!({"location": "Lisbon"})));
        assert!(!g.rejects("other", &json!({"location": "London"})));
        // Mentioned by the user: a real request.
        let g = guard(json!([{"role": "user", "content": "Weather in London?"}]));
        assert!(!g.rejects("get_weather", &json!({"location": "London"})));
        assert!(!g.rejects(
            "get_weather",
            &json!({"location": "London", "unit": "celsius"})
        ));
        // An example that is one of an enum's values is a choice the model is offered.
        let g = guard(json!([{"role": "user", "content": "Weather in Lisbon?"}]));
        assert!(!g.rejects(
            "get_weather",
            &json!({"location": "Lisbon", "unit": "celsius"})
        ));
    }

    #[test]
    fn the_conversation_is_compared_as_written_not_json_escaped() {
        let body = json!({"tools": [{"type": "function", "function": {
            "name": "read_file",
            "parameters": {"type": "object", "properties": {
                "path": {"type": "string", "description": "A file, e.g. C:\\data\\notes.txt"}
            }}
        }}]});
        let settings = ToolSettings::from_body(body.as_object().unwrap()).unwrap();
        let args = json!({"path": "C:\\data\\notes.txt"});
        let asked = [json!({"role": "user", "content": "Read C:\\data\\notes.txt"})];
        assert!(!CallGuard::new(&settings, &asked).rejects("read_file", &args));
        let unasked = [json!({"role": "user", "content": "Read my notes"})];
        assert!(CallGuard::new(&settings, &unasked).rejects("read_file", &args));
    }

    #[test]
    fn properties_named_like_keywords_are_schemas_not_data() {
        let (examples, choices) = schema_examples(&json!({"type": "object", "properties": {
            "enum": {"type": "string", "description": "e.g. alpha"},
            "default": {"type": "string", "examples": ["Beta"]},
            "mode": {"type": "string", "enum": ["Fast", "slow"], "default": "e.g. not_me"}
        }}));
        assert_eq!(examples, ["alpha", "beta"]);
        assert_eq!(choices, ["fast", "slow"]);
    }

    #[test]
    fn a_repeat_of_an_answered_call_is_rejected() {
        let call = json!({"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Lisbon"}}});
        let g = guard(json!([
            {"role": "user", "content": "Weather in Lisbon?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "content": "{\"temperature\": 22}"},
        ]));
        assert!(g.rejects("get_weather", &json!({"location": "Lisbon"})));
        assert!(!g.rejects("get_weather", &json!({"location": "Porto"})));
    }

    #[test]
    fn answered_calls_are_those_since_the_last_user_message() {
        let call = |n: &str, a: Value| json!({"type": "function", "function": {"name": n, "arguments": a}});
        let mut messages = vec![
            json!({"role": "user", "content": "old"}),
            json!({"role": "assistant", "content": null, "tool_calls": [call("old", json!({}))]}),
            json!({"role": "tool", "content": "1"}),
            json!({"role": "user", "content": "new"}),
            json!({"role": "assistant", "content": null, "tool_calls": [call("a", json!({"x": 1})), call("b", json!({}))]}),
            json!({"role": "tool", "content": "2"}),
            json!({"role": "tool", "content": "3"}),
        ];
        assert_eq!(
            answered_calls(&messages),
            vec![
                ("a".to_string(), json!({"x": 1})),
                ("b".to_string(), json!({}))
            ]
        );
        messages.push(json!({"role": "assistant", "content": "done"}));
        assert!(
            answered_calls(&messages).is_empty(),
            "only right after tool results"
        );
    }

    #[test]
    fn forced_calls_and_free_decoding_are_not_guarded() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "description": "e.g. x1"}}}}}]);
        for extra in [
            json!({"tool_choice": "required"}),
            json!({"constrained": false}),
        ] {
            let mut body = json!({"tools": tools});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let settings = ToolSettings::from_body(body.as_object().unwrap()).unwrap();
            assert!(
                CallGuard::new(&settings, &[json!({"role": "user", "content": "hi"})]).is_empty()
            );
        }
    }
}
