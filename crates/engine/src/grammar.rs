//! Grammar-constrained decoding with llguidance: the grammars that tool calls and JSON answers
//! must follow, and the per-token masks that keep sampling inside them.

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use crate::tools::{ResponseFormat, ToolChoice, ToolSettings, ToolSpec};
use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// JSON exactly as Qwen's template writes tool calls (Python `json.dumps`): `", "` and `": "`,
/// no other whitespace, so constrained output stays in the trained format and cannot pad.
fn json_style() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The Lark rule `call`: one `<tool_call>` block naming one of `tools`, as Qwen2.5 was trained
/// to write it (`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`). One call at a
/// time: after it the model chooses freely between another `<tool_call>`, text and the end,
/// so a grammar never pushes it into calls it did not mean to make.
pub fn tool_call_lark(tools: &[&ToolSpec]) -> String {
    let variants: Vec<Value> = tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut arguments = t.parameters.clone();
            close_objects(&mut arguments);
            rebase_refs(&mut arguments, &format!("#/anyOf/{i}/properties/arguments"));
            json!({
                "type": "object",
                "properties": { "name": { "const": t.name }, "arguments": arguments },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let body = json!({ "x-guidance": json_style(), "anyOf": variants });
    format!("call: <tool_call> \"\\n\" call_body \"\\n\" </tool_call>\ncall_body: %json {body}\n")
}

/// Objects that list their properties get `additionalProperties: false` unless they say
/// otherwise, at every depth (as OpenAI's strict mode requires): a small model would otherwise
/// invent keys. Objects without `properties` stay free-form.
fn close_objects(schema: &mut Value) {
    visit_schemas(schema, &mut |map| {
        if map.contains_key("properties") && !map.contains_key("additionalProperties") {
            map.insert("additionalProperties".into(), false.into());
        }
    });
}

/// Local `$ref`s (`#/$defs/Color`, `#/definitions/...`, `#/properties/...`, `#`) point into the
/// parameters schema, which the call grammar nests at `base`: they are rewritten to point there.
fn rebase_refs(schema: &mut Value, base: &str) {
    visit_schemas(schema, &mut |map| {
        if let Some(Value::String(r)) = map.get_mut("$ref") {
            if let Some(pointer) = r.strip_prefix('#') {
                *r = format!("{base}{pointer}");
            }
        }
    });
}

/// Calls `f` on `schema` and on every schema nested in it, skipping keywords whose values are
/// data (`enum`, `const`, `default`, `examples`) but not properties that happen to be so named.
pub(crate) fn visit_schemas(
    schema: &mut Value,
    f: &mut impl FnMut(&mut serde_json::Map<String, Value>),
) {
    match schema {
        Value::Object(map) => {
            f(map);
            for (key, child) in map.iter_mut() {
                let named_schemas = matches!(
                    key.as_str(),
                    "properties" | "$defs" | "definitions" | "patternProperties"
                );
                match child {
                    Value::Object(children) if named_schemas => {
                        children.values_mut().for_each(|c| visit_schemas(c, f))
                    }
                    _ if matches!(key.as_str(), "enum" | "const" | "default" | "examples") => {}
                    _ => visit_schemas(child, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| visit_schemas(c, f)),
        _ => {}
    }
}

/// The Lark rule `answer` for a JSON answer (`response_format`).
fn json_answer_lark(format: &ResponseFormat) -> Option<String> {
    let mut schema = match format {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => json!({"type": "object"}),
        ResponseFormat::JsonSchema(s) if s.is_boolean() => json!({}),
        ResponseFormat::JsonSchema(s) => s.clone(),
    };
    if schema.get("x-guidance").is_none() {
        schema["x-guidance"] = json_style();
    }
    Some(format!("answer: %json {schema}\n"))
}

/// The grammar the answer must follow from its first token, if any: a forced call, a JSON
/// answer, or either. Plain `auto` answers are free text; see [`tool_call_grammar`].
pub fn answer_grammar(settings: &ToolSettings) -> Option<String> {
    if !settings.constrained {
        return None;
    }
    let callable = settings.callable();
    let call = (!callable.is_empty()).then(|| tool_call_lark(&callable));
    let answer = json_answer_lark(&settings.format);
    match (&settings.choice, call, answer) {
        (ToolChoice::Required | ToolChoice::Function(_), Some(call), _) => {
            Some(format!("start: call\n{call}"))
        }
        (_, Some(call), Some(answer)) => Some(format!("start: call | answer\n{call}{answer}")),
        (_, None, Some(answer)) => Some(format!("start: answer\n{answer}")),
        _ => None,
    }
}

/// The grammar of one call, for when the model starts one in free text (the `<tool_call>`
/// token, which the grammar then consumes) or is steered into one.
pub fn tool_call_grammar(settings: &ToolSettings) -> Option<String> {
    let callable = settings.callable();
    (settings.constrained && !callable.is_empty())
        .then(|| format!("start: call\n{}", tool_call_lark(&callable)))
}

struct QwenTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for QwenTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode(&String::from_utf8_lossy(s), false)
            .unwrap_or_default()
    }
}

/// Compiles grammars against one model's vocabulary. Building it indexes every token (tens of
/// milliseconds), so a model builds it once, on first use.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    /// `vocab_size` is the width of the model's logits (it may exceed the tokenizer's ids);
    /// `end_of_turn` is what the grammar allows once the answer is complete.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, end_of_turn: u32) -> Result<Self> {
        let special: std::collections::HashSet<u32> = tokenizer.added_ids().collect();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if special.contains(&id) {
                    // llguidance's marker for special tokens: never part of text, only named
                    // in grammars as `<tool_call>`.
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, end_of_turn);
        let env: TokEnv = Arc::new(QwenTokEnv {
            trie: TokTrie::from(&info, &words),
            tokenizer,
        });
        let mut factory = ParserFactory::new(
            &env,
            Default::default(),
            &SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| EngineError::Internal(format!("grammar engine: {e}")))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh constraint for one answer. A grammar that does not compile is the request's
    /// fault (its schemas), so it is reported as an invalid request.
    pub fn constraint(&self, lark: &str) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(lark.to_string()))
            .map_err(|e| {
                EngineError::invalid(format!(
                    "a tool's `parameters` or the `response_format` schema cannot be used: {e}"
                ))
            })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::invalid(format!(
                "a tool's `parameters` or the `response_format` schema cannot be used: {e}"
            )));
        }
        Ok(Constraint { matcher })
    }
}

/// The grammar state of one answer.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Sets the logits of every token the grammar forbids next to -inf. Once the grammar is
    /// complete only the end-of-turn token remains.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
        for (id, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar past a sampled token.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(grammar_error)
    }

    /// The grammar is complete and allows nothing more but the end of the turn.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether `text` is a complete answer of this grammar (for tests and tools).
    pub fn accepts(&mut self, tokens: &[u32]) -> bool {
        self.matcher.consume_tokens(tokens).is_ok() && self.matcher.is_accepting().unwrap_or(false)
    }
}

fn grammar_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("grammar-constrained decoding failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_with_properties_are_closed_at_every_depth() {
        let mut s = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "free": {"type": "object"},
            "open": {"type": "object", "properties": {}, "additionalProperties": true},
            "list": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}},
            "properties": {"type": "object", "properties": {"x": {}}}
        }, "$defs": {"d": {"type": "object", "properties": {"e": {}}}},
           "default": {"type": "object", "properties": {}}});
        close_objects(&mut s);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(s["properties"]["free"].get("additionalProperties"), None);
        assert_eq!(s["properties"]["open"]["additionalProperties"], true);
        assert_eq!(
            s["properties"]["list"]["items"]["additionalProperties"],
            false
        );
        assert_eq!(s["properties"]["properties"]["additionalProperties"], false);
        assert_eq!(s["$defs"]["d"]["additionalProperties"], false);
        assert_eq!(
            s["default"].get("additionalProperties"),
            None,
            "data is not a schema"
        );
    }
}
