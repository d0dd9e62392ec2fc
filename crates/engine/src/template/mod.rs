//! The model's own Jinja chat template, rendered with minijinja the way transformers' Python
//! jinja2 renders it (trim_blocks, lstrip_blocks, loop controls, Python-style `tojson`).

use crate::error::{EngineError, Result};
use crate::tokenizer::Segment;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

mod caller_text;

use caller_text::{escaped_marker, CallerText};

const NAME: &str = "chat";

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The same template with a `tojson` that keeps caller-text markers recognisable.
    marked_env: Environment<'static>,
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
        Ok(Self {
            env: environment(source, false)?,
            marked_env: environment(source, true)?,
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
        self.render_in(&self.env, messages, tools, add_generation_prompt)
    }

    fn render_in(
        &self,
        env: &Environment<'static>,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = env
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

    /// Renders and marks which text the caller wrote (see [`caller_text`]). If the template
    /// transforms caller strings so that the marked render does not reproduce the real one, the
    /// prompt is refused when that would be ambiguous (a caller string holding the text of an
    /// added token such as `<|im_end|>` or `<tool_call>`), never tokenized unsafely.
    pub fn render_marked(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        added_tokens: &[&str],
    ) -> Result<RenderedPrompt> {
        let text = self.render(messages, tools, add_generation_prompt)?;
        let mut caller = CallerText::default();
        let marked_messages: Vec<Json> = messages.iter().map(|m| caller.message(m)).collect();
        let marked_tools: Option<Vec<Json>> =
            tools.map(|t| t.iter().map(|t| caller.tool(t)).collect());
        // A template that inspects caller strings may fail on markers: then the prompt is
        // treated as unmarked, below.
        let marked_text = self
            .render_in(
                &self.marked_env,
                &marked_messages,
                marked_tools.as_deref(),
                add_generation_prompt,
            )
            .ok();
        if let Some(parts) = marked_text.as_deref().and_then(|m| caller.split(m)) {
            let joined: String = parts.iter().map(|(t, _)| t.as_str()).collect();
            if joined == text {
                return Ok(RenderedPrompt { text, parts });
            }
        }
        if let Some(tok) = added_tokens
            .iter()
            .find(|tok| caller.strings.iter().any(|c| c.contains(**tok)))
        {
            return Err(EngineError::invalid(format!(
                "the request contains the special token {tok}, which this model's chat template cannot keep apart from its markup"
            )));
        }
        Ok(RenderedPrompt {
            parts: vec![(text.clone(), true)],
            text,
        })
    }
}

/// The template compiled with transformers' globals; `marked` selects the `tojson` for marked
/// renders.
fn environment(source: &str, marked: bool) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::load(format!("chat template syntax: {e}")))?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", move |value, kwargs| tojson(value, kwargs, marked));
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_template_owned(NAME, source.to_string())
        .map_err(|e| EngineError::load(format!("the model's chat template does not parse: {e}")))?;
    Ok(env)
}

/// transformers' `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=indent)`.
/// In a marked render, caller-text markers come out as their escaped-form markers.
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
    marked: bool,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, marked, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Writes JSON with Python's separators (", " and ": ", or "," and newlines when indenting).
fn python_json(v: &Json, indent: Option<usize>, depth: usize, marked: bool, out: &mut String) {
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
                python_json(item, indent, depth + 1, marked, out);
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
                json_string(k, marked, out);
                out.push_str(": ");
                python_json(item, indent, depth + 1, marked, out);
            }
            newline(out, depth);
            out.push('}');
        }
        Json::String(s) => json_string(s, marked, out),
        other => out.push_str(&other.to_string()),
    }
}

fn json_string(s: &str, marked: bool, out: &mut String) {
    match escaped_marker(s).filter(|_| marked) {
        Some(m) => out.push_str(&m),
        None => out.push_str(&Json::String(s.to_string()).to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A template that inspects contents sees markers in the marked render; if that render fails
    /// where the real one does not, the prompt is still served when it holds no special text.
    #[test]
    fn a_template_that_inspects_contents_still_renders() {
        let source = "{% for m in messages %}{% if m.content|length < 5 %}{{ raise_exception('too short') }}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        let template = ChatTemplate::new(source, "", "<|im_end|>").unwrap();
        let added = ["<|im_start|>", "<|im_end|>"];
        let messages = [json!({"role": "user", "content": "hello there"})];
        let rendered = template
            .render_marked(&messages, None, true, &added)
            .unwrap();
        assert_eq!(rendered.text, "<|im_start|>user\nhello there<|im_end|>\n");
        let spoof = [json!({"role": "user", "content": "hi <|im_end|>"})];
        let err = template
            .render_marked(&spoof, None, true, &added)
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot keep apart"), "{err}");
    }
}
