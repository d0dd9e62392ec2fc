//! The request side of function calling and structured output: declared tools, `tool_choice`,
//! `parallel_tool_calls` and `response_format`, validated once with messages naming the field.

use crate::error::{invalid, Result};
use serde_json::{json, Value};
use std::collections::HashSet;

/// One declared function: its name and the JSON schema its arguments must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// Which calls the model may make (OpenAI `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call; the tools are left out of the prompt.
    None,
    /// Answer in text or call tools, as the model decides.
    Auto,
    /// At least one call.
    Required,
    /// Exactly one call of this function.
    Function(String),
}

/// What the answer's text must be (OpenAI `response_format`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
}

/// Everything about tools and output structure in one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSettings {
    pub tools: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// Several calls in one turn (OpenAI default: true).
    pub parallel: bool,
    pub format: ResponseFormat,
    /// Restrict sampling with a grammar built from the schemas (qwen-native extension
    /// `constrained`, default true). Off, the output is only parsed.
    pub constrained: bool,
}

impl ToolSettings {
    pub fn plain() -> Self {
        Self {
            tools: vec![],
            choice: ToolChoice::Auto,
            parallel: true,
            format: ResponseFormat::Text,
            constrained: true,
        }
    }

    /// Whether the output may hold tool calls to look for.
    pub fn may_call(&self) -> bool {
        !self.tools.is_empty() && self.choice != ToolChoice::None
    }

    /// Whether calls a small model makes instead of answering are turned into a text answer
    /// (see [`crate::call_guard`]): where it chooses whether to call, under the grammar.
    pub fn guards_calls(&self) -> bool {
        self.constrained && self.choice == ToolChoice::Auto && !self.tools.is_empty()
    }

    /// The tools a call may name under `tool_choice`.
    pub fn callable(&self) -> Vec<&ToolSpec> {
        match &self.choice {
            ToolChoice::None => vec![],
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// At most one call: a named function, or `parallel_tool_calls: false`.
    pub fn single_call(&self) -> bool {
        !self.parallel || matches!(self.choice, ToolChoice::Function(_))
    }

    /// Reads `tools`, `tool_choice`, `parallel_tool_calls`, `response_format` and `constrained`
    /// from a request body.
    pub fn from_body(body: &serde_json::Map<String, Value>) -> Result<Self> {
        let tools = parse_tools(body.get("tools"))?;
        let choice = parse_choice(body.get("tool_choice"), &tools)?;
        let parallel = flag(body, "parallel_tool_calls", true)?;
        let constrained = flag(body, "constrained", true)?;
        let format = parse_format(body.get("response_format"))?;
        Ok(Self {
            tools,
            choice,
            parallel,
            format,
            constrained,
        })
    }
}

fn flag(body: &serde_json::Map<String, Value>, name: &str, default: bool) -> Result<bool> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => invalid(format!("`{name}` must be a boolean, got {v}")),
    }
}

/// A function name by OpenAI's rule: 1-64 characters of a-z, A-Z, 0-9, _ and -. `at` names
/// the field in errors.
pub(crate) fn function_name(at: &str, value: Option<&Value>) -> Result<String> {
    match value {
        Some(Value::String(n))
            if (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(n.clone())
        }
        Some(Value::String(n)) => invalid(format!(
            "{at} \"{n}\" must be 1-64 characters of a-z, A-Z, 0-9, _ and -"
        )),
        _ => invalid(format!("{at} is required and must be a string")),
    }
}

fn parse_tools(tools: Option<&Value>) -> Result<Vec<ToolSpec>> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(t)) => t,
        Some(_) => {
            return invalid("`tools` must be an array of {type: \"function\", function: {...}}")
        }
    };
    let mut names = HashSet::new();
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return invalid(format!("tools[{i}].type must be \"function\""));
            }
            let Some(f) = t.get("function").and_then(Value::as_object) else {
                return invalid(format!("tools[{i}].function must be an object"));
            };
            let name = function_name(&format!("tools[{i}].function.name"), f.get("name"))?;
            if !names.insert(name.clone()) {
                return invalid(format!(
                    "tools[{i}].function.name \"{name}\" is declared twice; tool names must be unique"
                ));
            }
            let description = match f.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(d) => {
                    return invalid(format!(
                        "tools[{i}].function.description must be a string, got {d}"
                    ))
                }
            };
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p) => check_parameters(&format!("tools[{i}].function.parameters"), p)?,
            };
            Ok(ToolSpec {
                name,
                description,
                parameters,
            })
        })
        .collect()
}

/// Arguments are always a JSON object (OpenAI's rule); the schema compiler checks the rest.
fn check_parameters(at: &str, p: &Value) -> Result<Value> {
    let Some(obj) = p.as_object() else {
        return invalid(format!("{at} must be a JSON schema object, got {p}"));
    };
    match obj.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        None => {}
        Some(t) => {
            return invalid(format!(
                "{at}.type must be \"object\" (function arguments are a JSON object), got {t}"
            ))
        }
    }
    if let Some(props) = obj.get("properties").filter(|v| !v.is_object()) {
        return invalid(format!("{at}.properties must be an object, got {props}"));
    }
    if let Some(req) = obj.get("required") {
        let listed = req.as_array().filter(|r| r.iter().all(Value::is_string));
        if listed.is_none() {
            return invalid(format!("{at}.required must be an array of property names"));
        }
    }
    let mut schema = p.clone();
    schema["type"] = "object".into();
    Ok(schema)
}

fn parse_choice(choice: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice> {
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return invalid(format!(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got \"{other}\""
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"));
            match name {
                Some(n) => ToolChoice::Function(n.to_string()),
                None => {
                    return invalid(format!(
                        "`tool_choice` object must be {{\"type\": \"function\", \"function\": {{\"name\": string}}}}, got {v}"
                    ))
                }
            }
        }
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            invalid("`tool_choice` is \"required\" but no `tools` are declared")
        }
        ToolChoice::Function(n) if !tools.iter().any(|t| &t.name == n) => invalid(format!(
            "`tool_choice` names function \"{n}\", which is not among the declared `tools`"
        )),
        _ => Ok(choice),
    }
}

fn parse_format(format: Option<&Value>) -> Result<ResponseFormat> {
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => match f.get("json_schema").and_then(|s| s.get("schema")) {
            Some(schema) if schema.is_object() || schema.is_boolean() => {
                Ok(ResponseFormat::JsonSchema(schema.clone()))
            }
            _ => invalid(
                "`response_format.json_schema.schema` must be a JSON schema object ({\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}})",
            ),
        },
        _ => invalid(format!(
            "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", got {f}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: Value) -> Result<ToolSettings> {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ToolSettings::from_body(body.as_object().unwrap())
    }

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}})
    }

    fn error_of(extra: Value) -> String {
        settings(extra).unwrap_err().to_string()
    }

    #[test]
    fn invalid_tool_definitions_name_the_problem() {
        assert!(error_of(json!({"tools": [tool("a"), tool("a")]})).contains("declared twice"));
        assert!(
            error_of(json!({"tools": [{"type": "function", "function": {}}]}))
                .contains("tools[0].function.name is required")
        );
        assert!(error_of(json!({"tools": [tool("has space")]})).contains("1-64 characters"));
        assert!(error_of(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}))
            .contains("tools[0].function.parameters.type"));
        assert!(error_of(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}]}))
            .contains("properties must be an object"));
        assert!(error_of(json!({"tools": [{"type": "retrieval"}]})).contains("tools[0].type"));
    }

    #[test]
    fn tool_choice_variants() {
        let tools = json!([tool("a"), tool("b")]);
        assert_eq!(
            settings(json!({"tools": tools, "tool_choice": "required"}))
                .unwrap()
                .choice,
            ToolChoice::Required
        );
        let named = settings(
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "b"}}}),
        )
        .unwrap();
        assert_eq!(named.choice, ToolChoice::Function("b".into()));
        assert_eq!(named.callable().len(), 1);
        assert!(named.single_call());
        assert!(error_of(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "zzz"}}})).contains("\"zzz\""));
        assert!(error_of(json!({"tool_choice": "required"})).contains("no `tools`"));
        assert!(error_of(json!({"tools": tools, "tool_choice": "always"})).contains("tool_choice"));
        let none = settings(json!({"tools": tools, "tool_choice": "none"})).unwrap();
        assert!(!none.may_call());
    }

    #[test]
    fn response_formats() {
        assert_eq!(
            settings(json!({"response_format": {"type": "json_object"}}))
                .unwrap()
                .format,
            ResponseFormat::JsonObject
        );
        assert!(error_of(json!({"response_format": {"type": "json_schema"}})).contains("schema"));
        assert!(error_of(json!({"response_format": {"type": "yaml"}})).contains("yaml"));
    }
}
