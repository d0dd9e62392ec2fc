//! The model's own Jinja chat template, rendered with minijinja the way transformers' Python
//! jinja2 renders it (trim_blocks, lstrip_blocks, loop controls, Python-style `tojson`).

use crate::error::{EngineError, Result};
use crate::tokenizer::Segment;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

const NAME: &str = "chat";
/// Message contents are swapped for these noncharacter-delimited markers while rendering, so the
/// output can be split into template markup and caller text.
const OPEN: char = '\u{FDD0}';
const CLOSE: char = '\u{FDD1}';

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A rendered prompt: the full text, and the same text cut into markup and caller content.
pub struct RenderedPrompt {
    pub text: String,
    parts: Vec<(String, bool)>,
}

impl RenderedPrompt {
    pub fn segments(&self) -> Vec<Segment<'_>> {
        self.parts
            .iter()
            .map(|(text, markup)| Segment {
                text,
                markup: *markup,
            })
            .collect()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| EngineError::load(format!("chat template syntax: {e}")))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| {
                EngineError::load(format!("the model's chat template does not parse: {e}"))
            })?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders `messages` (template-shaped: role, content, tool_calls, ...) and `tools`.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            tools => tools.map(|t| Value::from(Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => EngineError::invalid(format!(
                "chat template: {}",
                e.detail().unwrap_or("rejected the conversation")
            )),
            _ => EngineError::invalid(format!(
                "chat template could not render the conversation: {e}"
            )),
        })
    }

    /// Renders and marks which text came from message contents. Contents are swapped for markers,
    /// rendered, and swapped back; if the template inspects contents so that the marked render
    /// differs from the real one, the prompt is refused only when it would be ambiguous (a content
    /// holding control-token text), never tokenized unsafely.
    pub fn render_marked(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        control_tokens: &[&str],
    ) -> Result<RenderedPrompt> {
        let text = self.render(messages, tools, add_generation_prompt)?;
        let mut contents = Vec::new();
        let marked: Vec<Json> = messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(Json::String(s)) = m.get_mut("content") {
                    if !s.is_empty() {
                        let original =
                            std::mem::replace(s, format!("{OPEN}{}{CLOSE}", contents.len()));
                        contents.push(original);
                    }
                }
                m
            })
            .collect();
        let marked_text = self.render(&marked, tools, add_generation_prompt)?;
        if let Some(parts) = split_markers(&marked_text, &contents) {
            let joined: String = parts.iter().map(|(t, _)| t.as_str()).collect();
            if joined == text {
                return Ok(RenderedPrompt { text, parts });
            }
        }
        if let Some(tok) = control_tokens
            .iter()
            .find(|tok| contents.iter().any(|c| c.contains(**tok)))
        {
            return Err(EngineError::invalid(format!(
                "a message content contains the control token {tok}, which this model's chat template cannot keep apart from its markup"
            )));
        }
        Ok(RenderedPrompt {
            parts: vec![(text.clone(), true)],
            text,
        })
    }
}

/// Cuts a marked render into (text, is_markup) parts, restoring the original contents.
fn split_markers(marked: &str, contents: &[String]) -> Option<Vec<(String, bool)>> {
    let mut parts = Vec::new();
    let mut rest = marked;
    while let Some(open) = rest.find(OPEN) {
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after.find(CLOSE)?;
        let index: usize = after[..close].parse().ok()?;
        if open > 0 {
            parts.push((rest[..open].to_string(), true));
        }
        parts.push((contents.get(index)?.clone(), false));
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

/// transformers' `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Writes JSON with Python's separators (", " and ": ", or "," and newlines when indenting).
fn python_json(v: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)` as transformers provides it, for templates that print today's date.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
