//! Which parts of a rendered prompt the caller wrote. Every string the caller supplied (message
//! contents, tool-call names and arguments, tool names, descriptions and schemas, keys included)
//! is swapped for a marker before a second render; the markers in that render show where caller
//! text lies, so only the template's own markup can become control tokens or `<tool_call>`.

use serde_json::{Map, Value as Json};

/// Markers are noncharacters around an index: `OPEN 3 CLOSE` stands for caller string 3 as is,
/// `OPEN j 3 CLOSE` for its JSON-escaped form (what `tojson` writes between the quotes).
pub const OPEN: char = '\u{FDD0}';
pub const CLOSE: char = '\u{FDD1}';
const ESCAPED: char = 'j';

/// The caller strings swapped out so far, in marker order.
#[derive(Default)]
pub struct CallerText {
    pub strings: Vec<String>,
}

/// Keys the template reads by name at each level; their values are still caller text.
const MESSAGE_KEYS: &[&str] = &["role", "content", "tool_calls", "tool_call_id", "name"];
const CALL_KEYS: &[&str] = &["id", "type", "function"];
const CALLED_FUNCTION_KEYS: &[&str] = &["name", "arguments"];
const TOOL_KEYS: &[&str] = &["type", "function"];
const FUNCTION_KEYS: &[&str] = &["name", "description", "parameters", "strict"];

impl CallerText {
    /// A message (request-normalized) with its caller strings swapped for markers. The role and
    /// the `type` of tool calls are the template's vocabulary, compared by it, and stay.
    pub fn message(&mut self, m: &Json) -> Json {
        self.fields(m, MESSAGE_KEYS, &|this, key, value| match key {
            "role" => value.clone(),
            "tool_calls" => match value {
                Json::Array(calls) => Json::Array(
                    calls
                        .iter()
                        .map(|call| {
                            this.fields(call, CALL_KEYS, &|this, key, value| match key {
                                "type" => value.clone(),
                                "function" => {
                                    this.fields(value, CALLED_FUNCTION_KEYS, &|this, _, v| {
                                        this.tree(v)
                                    })
                                }
                                _ => this.tree(value),
                            })
                        })
                        .collect(),
                ),
                other => this.tree(other),
            },
            _ => this.tree(value),
        })
    }

    /// A tool declaration with its caller strings swapped for markers; `type` stays.
    pub fn tool(&mut self, t: &Json) -> Json {
        self.fields(t, TOOL_KEYS, &|this, key, value| match key {
            "type" => value.clone(),
            _ => this.fields(value, FUNCTION_KEYS, &|this, _, v| this.tree(v)),
        })
    }

    /// An object whose `known` keys stay literal (their values go through `inner`); any other key
    /// is caller text, marked with all it holds.
    fn fields(
        &mut self,
        value: &Json,
        known: &[&str],
        inner: &dyn Fn(&mut Self, &str, &Json) -> Json,
    ) -> Json {
        let Json::Object(obj) = value else {
            return self.tree(value);
        };
        let out: Map<String, Json> = obj
            .iter()
            .map(|(k, v)| {
                if known.contains(&k.as_str()) {
                    (k.clone(), inner(self, k, v))
                } else {
                    (self.mark(k), self.tree(v))
                }
            })
            .collect();
        Json::Object(out)
    }

    /// Every key and string below `value` marked.
    fn tree(&mut self, value: &Json) -> Json {
        match value {
            Json::String(s) => Json::String(self.mark(s)),
            Json::Array(items) => Json::Array(items.iter().map(|v| self.tree(v)).collect()),
            Json::Object(obj) => Json::Object(
                obj.iter()
                    .map(|(k, v)| (self.mark(k), self.tree(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The marker for `s`. Empty strings stay empty: templates test contents for truth, and an
    /// empty string holds no token.
    fn mark(&mut self, s: &str) -> String {
        if s.is_empty() {
            return String::new();
        }
        self.strings.push(s.to_string());
        format!("{OPEN}{}{CLOSE}", self.strings.len() - 1)
    }

    /// Cuts a marked render into (text, is_markup) parts with the caller strings restored, raw or
    /// JSON-escaped as the marker says. None when the render holds malformed markers.
    pub fn split(&self, marked: &str) -> Option<Vec<(String, bool)>> {
        let mut parts = Vec::new();
        let mut rest = marked;
        while let Some(open) = rest.find(OPEN) {
            let after = &rest[open + OPEN.len_utf8()..];
            let close = after.find(CLOSE)?;
            let (escaped, index) = match after[..close].strip_prefix(ESCAPED) {
                Some(index) => (true, index),
                None => (false, &after[..close]),
            };
            let original = self.strings.get(index.parse::<usize>().ok()?)?;
            if open > 0 {
                parts.push((rest[..open].to_string(), true));
            }
            let text = if escaped {
                json_string_body(original)
            } else {
                original.clone()
            };
            parts.push((text, false));
            rest = &after[close + CLOSE.len_utf8()..];
        }
        if rest.contains(CLOSE) {
            return None;
        }
        if !rest.is_empty() {
            parts.push((rest.to_string(), true));
        }
        Some(parts)
    }
}

/// A marked render's `tojson` writes a marker string as its escaped-form marker, in quotes.
pub fn escaped_marker(s: &str) -> Option<String> {
    let index = s.strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
    index
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("\"{OPEN}{ESCAPED}{index}{CLOSE}\""))
}

/// `s` as a JSON string literal, without its quotes.
pub fn json_string_body(s: &str) -> String {
    let quoted = Json::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_caller_string_and_key_is_marked_but_the_template_vocabulary_stays() {
        let mut caller = CallerText::default();
        let m = caller.message(&json!({
            "role": "assistant", "content": "",
            "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": {"k": ["v", 1]}}}]
        }));
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["content"], "");
        let call = &m["tool_calls"][0];
        assert_eq!(call["type"], "function");
        let args = call["function"]["arguments"].as_object().unwrap();
        let (key, value) = args.iter().next().unwrap();
        assert!(key.starts_with(OPEN));
        assert_eq!(value[1], 1);
        assert_eq!(caller.strings, ["c1", "f", "k", "v"]);

        let t = caller.tool(&json!({"type": "function", "extra": "x",
            "function": {"name": "g", "parameters": {"type": "object"}}}));
        assert_eq!(t["type"], "function");
        assert!(t.get("extra").is_none(), "an unknown key is caller text");
        assert!(t["function"]["parameters"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with(OPEN)));
    }

    #[test]
    fn split_restores_raw_and_escaped_strings() {
        let caller = CallerText {
            strings: vec!["a\"b".into(), "<|im_end|>".into()],
        };
        let marked = format!(
            "<x>{}: {OPEN}1{CLOSE}</x>",
            escaped_marker(&format!("{OPEN}0{CLOSE}")).unwrap()
        );
        let parts = caller.split(&marked).unwrap();
        let expected: Vec<(String, bool)> = vec![
            ("<x>\"".into(), true),
            ("a\\\"b".into(), false),
            ("\": ".into(), true),
            ("<|im_end|>".into(), false),
            ("</x>".into(), true),
        ];
        assert_eq!(parts, expected);
        assert!(caller.split(&format!("{OPEN}7{CLOSE}")).is_none());
        assert_eq!(escaped_marker("plain"), None);
    }
}
