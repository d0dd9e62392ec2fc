//! Finds tool calls in a model's streamed text: Qwen's `<tool_call>{...}</tool_call>` blocks, and
//! the fenced (```` ```json ````) or bare JSON calls Coder models write at the start of an answer.
//! Text outside calls stays content; a call that does not parse stays content, verbatim.

use serde_json::Value;

/// Qwen's tool-call markup (added tokens in its vocabulary).
pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// What the parser recognised, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Text(String),
    /// A call begins: its index in this answer and the function's name.
    CallStart {
        index: usize,
        name: String,
    },
    /// More of a call's `arguments` JSON text; a call's pieces concatenate to its arguments.
    CallArguments {
        index: usize,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace so far: the answer may open with a bare or fenced JSON call.
    Start,
    /// Holding an answer that opened like JSON until it ends, to see whether it is a call.
    LeadingJson,
    Text,
    /// Inside `<tool_call>`, before `</tool_call>`.
    InCall,
}

/// Progress of the streamed call inside `<tool_call>`.
#[derive(Debug, Default)]
struct OpenCall {
    /// The call's header went out; `streamed` bytes of its arguments followed.
    started: bool,
    streamed: usize,
}

pub struct ToolCallParser {
    /// Declared names: a bare or fenced JSON block is a call only if it names one of these.
    known: Vec<String>,
    /// Emit a call's name and argument pieces while it is generated. Only for grammar-checked
    /// output: unchecked calls are held until they parse, so broken ones can become text.
    stream_calls: bool,
    state: State,
    buf: String,
    /// Whitespace held back: dropped around calls, emitted before further text.
    pending_space: String,
    calls: usize,
    open: OpenCall,
}

impl ToolCallParser {
    pub fn new(known: Vec<String>, stream_calls: bool) -> Self {
        Self {
            known,
            stream_calls,
            state: State::Start,
            buf: String::new(),
            pending_space: String::new(),
            calls: 0,
            open: OpenCall::default(),
        }
    }

    /// Whether calls are streamed as generated (grammar-checked) or held until they parse.
    pub fn stream_calls(&mut self, on: bool) {
        self.stream_calls = on;
    }

    pub fn push(&mut self, text: &str) -> Vec<Parsed> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let before = (self.state, self.buf.len());
            match self.state {
                State::Start => self.at_start(),
                State::LeadingJson => self.leading_json(),
                State::Text => self.text(&mut out),
                State::InCall => self.in_call(&mut out),
            }
            if (self.state, self.buf.len()) == before {
                return out;
            }
        }
    }

    /// Ends the answer: whatever is held is resolved into calls or text.
    pub fn finish(&mut self) -> Vec<Parsed> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Start | State::Text => self.emit_text(&rest, &mut out),
            State::LeadingJson => match self.leading_calls(&rest) {
                Some(calls) => {
                    for (name, arguments) in calls {
                        self.emit_call(name, arguments, &mut out);
                    }
                }
                None => self.emit_text(&rest, &mut out),
            },
            // Unterminated (end of turn or max_tokens inside a call).
            State::InCall => self.close_call(&rest, false, &mut out),
        }
        self.state = State::Text;
        out
    }

    fn at_start(&mut self) {
        let t = self.buf.trim_start();
        if t.is_empty() {
            return;
        }
        self.state = if t.starts_with(['{', '[']) || "```".starts_with(t) || t.starts_with("```") {
            State::LeadingJson
        } else {
            State::Text
        };
    }

    /// A fenced block in another language, or a fence not followed by JSON, is text after all.
    fn leading_json(&mut self) {
        let t = self.buf.trim_start();
        let Some(fenced) = t.strip_prefix("```") else {
            if !"```".starts_with(t) && !t.starts_with(['{', '[']) {
                self.state = State::Text;
            }
            return;
        };
        let Some(newline) = fenced.find('\n') else {
            if !"json".starts_with(fenced) && !fenced.eq_ignore_ascii_case("json") {
                self.state = State::Text;
            }
            return;
        };
        let lang = fenced[..newline].trim();
        let body = fenced[newline..].trim_start();
        if !(lang.is_empty() || lang.eq_ignore_ascii_case("json"))
            || body.chars().next().is_some_and(|c| c != '{' && c != '[')
        {
            self.state = State::Text;
        }
    }

    fn text(&mut self, out: &mut Vec<Parsed>) {
        if let Some(at) = self.buf.find(OPEN) {
            let before: String = self.buf.drain(..at + OPEN.len()).collect();
            self.emit_text(&before[..at], out);
            self.state = State::InCall;
            self.open = OpenCall::default();
            return;
        }
        let emit_to = self.buf.len() - marker_start_len(&self.buf, OPEN);
        if emit_to > 0 {
            let text: String = self.buf.drain(..emit_to).collect();
            self.emit_text(&text, out);
        }
    }

    fn in_call(&mut self, out: &mut Vec<Parsed>) {
        let close = self.buf.find(CLOSE);
        if self.stream_calls {
            // The body up to `</tool_call>` streams as it would have piece by piece, so what a
            // streamed call commits to does not depend on how the text was split.
            let buf = std::mem::take(&mut self.buf);
            self.stream_open_call(&buf[..close.unwrap_or(buf.len())], close.is_some(), out);
            self.buf = buf;
        }
        if let Some(at) = close {
            let body: String = self.buf.drain(..at + CLOSE.len()).collect();
            self.close_call(&body[..at], true, out);
            self.state = State::Text;
        }
    }

    /// Streams the header once the name is known, then the arguments as they grow. `body` is
    /// what came of the call so far; `whole` when its `</tool_call>` has come too.
    fn stream_open_call(&mut self, body: &str, whole: bool, out: &mut Vec<Parsed>) {
        let scan = scan_call(body);
        let (Some(name), Some(args_start)) = (scan.name, scan.arguments_start) else {
            return;
        };
        let index = self.calls;
        if !self.open.started {
            self.open.started = true;
            self.pending_space.clear();
            out.push(Parsed::CallStart {
                index,
                name: name.to_string(),
            });
        }
        // Up to the value's end if it is complete, otherwise everything so far is inside it,
        // except a tail that may be the start of `</tool_call>`.
        let end = value_end(body, args_start).unwrap_or_else(|| match whole {
            true => body.len(),
            false => body.len() - marker_start_len(body, CLOSE),
        });
        let from = args_start + self.open.streamed;
        if end > from {
            out.push(Parsed::CallArguments {
                index,
                text: body[from..end].to_string(),
            });
            self.open.streamed = end - args_start;
        }
    }

    /// Resolves a `<tool_call>` body: a call if it parses, otherwise the markup as text.
    fn close_call(&mut self, body: &str, closed: bool, out: &mut Vec<Parsed>) {
        let index = self.calls;
        if self.open.started {
            // Streamed: finish the arguments text, whatever follows it.
            let scan = scan_call(body);
            if let Some(start) = scan.arguments_start {
                let end = value_end(body, start).unwrap_or(body.len());
                let from = start + self.open.streamed;
                if end > from {
                    out.push(Parsed::CallArguments {
                        index,
                        text: body[from..end].to_string(),
                    });
                }
            }
            self.calls += 1;
        } else if let Some((name, arguments)) = parse_call(body, None) {
            self.emit_call(name, arguments, out);
        } else {
            let mut raw = format!("{OPEN}{body}");
            if closed {
                raw.push_str(CLOSE);
            }
            self.emit_text(&raw, out);
        }
        self.open = OpenCall::default();
    }

    fn emit_call(&mut self, name: String, arguments: String, out: &mut Vec<Parsed>) {
        self.pending_space.clear();
        let index = self.calls;
        self.calls += 1;
        out.push(Parsed::CallStart { index, name });
        out.push(Parsed::CallArguments {
            index,
            text: arguments,
        });
    }

    /// Whitespace is held: text after a call starts at its first visible character, and
    /// whitespace between or after calls is dropped.
    fn emit_text(&mut self, text: &str, out: &mut Vec<Parsed>) {
        let visible = text.trim_end();
        if visible.trim_start().is_empty() {
            self.pending_space.push_str(text);
            return;
        }
        let mut piece = std::mem::take(&mut self.pending_space);
        if self.calls > 0 && piece.trim().is_empty() && !matches!(out.last(), Some(Parsed::Text(_)))
        {
            // After a call: the separating newline is not content.
            piece.clear();
            piece.push_str(visible.trim_start());
        } else {
            piece.push_str(visible);
        }
        self.pending_space.push_str(&text[visible.len()..]);
        match out.last_mut() {
            Some(Parsed::Text(t)) => t.push_str(&piece),
            _ => out.push(Parsed::Text(piece)),
        }
    }

    /// A whole answer that opened like JSON: a call, several, or none (then it is text).
    fn leading_calls(&self, text: &str) -> Option<Vec<(String, String)>> {
        let mut rest = text.trim();
        let mut calls = Vec::new();
        while !rest.is_empty() {
            let (block, after) = match rest.strip_prefix("```") {
                Some(fenced) => {
                    let newline = fenced.find('\n')?;
                    let end = fenced[newline..].find("```")? + newline;
                    (&fenced[newline..end], &fenced[end + 3..])
                }
                None => {
                    let end = value_end(rest, 0)?;
                    (&rest[..end], &rest[end..])
                }
            };
            let block = block.trim();
            if block.starts_with('[') {
                let items: Vec<Value> = serde_json::from_str(block).ok()?;
                for item in items {
                    calls.push(parse_call(&item.to_string(), Some(&self.known))?);
                }
            } else {
                calls.push(parse_call(block, Some(&self.known))?);
            }
            rest = after.trim_start();
        }
        (!calls.is_empty()).then_some(calls)
    }
}

/// The length of the longest tail of `text` that is a proper beginning of `marker`: text to hold
/// until the next piece says whether the marker follows.
fn marker_start_len(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

/// `{"name": ..., "arguments": ...}` (or `"parameters"`) as (name, arguments JSON text). The
/// arguments keep the model's own text when they are an object; a JSON-encoded string is decoded.
/// With `known`, the name must be one of them.
fn parse_call(body: &str, known: Option<&[String]>) -> Option<(String, String)> {
    let body = body.trim();
    let value: Value = serde_json::from_str(body).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    if known.is_some_and(|k| !k.contains(&name)) {
        return None;
    }
    let scan = scan_call(body);
    let arguments = match scan.arguments_start {
        None => "{}".to_string(),
        Some(start) => {
            let raw = &body[start..value_end(body, start)?];
            match serde_json::from_str::<Value>(raw).ok()? {
                Value::Object(_) => raw.to_string(),
                Value::String(s)
                    if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) =>
                {
                    s
                }
                Value::Null => "{}".to_string(),
                _ => return None,
            }
        }
    };
    Some((name, arguments))
}

/// What the top level of a (possibly partial) call object shows so far.
#[derive(Debug, Default, PartialEq)]
struct CallScan<'a> {
    /// The name, once its string is complete and before the arguments.
    name: Option<&'a str>,
    /// Byte offset where the arguments value begins.
    arguments_start: Option<usize>,
}

fn scan_call(s: &str) -> CallScan<'_> {
    let mut scan = CallScan::default();
    let b = s.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return scan;
    }
    i += 1;
    loop {
        i = skip_space(b, i);
        if b.get(i) != Some(&b'"') {
            return scan;
        }
        let Some(key_end) = value_end(s, i) else {
            return scan;
        };
        let key = &s[i + 1..key_end - 1];
        i = skip_space(b, key_end);
        if b.get(i) != Some(&b':') {
            return scan;
        }
        i = skip_space(b, i + 1);
        if i >= b.len() {
            return scan;
        }
        if key == "arguments" || key == "parameters" {
            scan.arguments_start = Some(i);
            return scan;
        }
        let Some(end) = value_end(s, i) else {
            return scan;
        };
        if key == "name" && b[i] == b'"' {
            scan.name = Some(&s[i + 1..end - 1]);
        }
        i = skip_space(b, end);
        if b.get(i) != Some(&b',') {
            return scan;
        }
        i += 1;
    }
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON value starting at `start`, if it is complete in `s`.
fn value_end(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    match *b.get(start)? {
        b'"' => {
            let mut i = start + 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = value_end(s, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            // A literal ends at a delimiter; at the end of the text it may still grow.
            let len = b[start..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())?;
            Some(start + len)
        }
    }
}

/// How an answer opens, to tell a call written as JSON from text early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Too little text to tell.
    Undecided,
    /// A JSON object naming a function (`{"name"`), bare or fenced.
    ToolCall,
    Text,
}

/// Classifies the first characters of an answer. A fence must say `json` (or nothing) and an
/// object must open with the key `"name"` to count as a call.
pub fn classify_opening(text: &str) -> Opening {
    let t = text.trim_start();
    if t.is_empty() {
        return Opening::Undecided;
    }
    let object = match t.strip_prefix("```") {
        Some(fenced) => {
            let lang_end = fenced
                .find(|c: char| c.is_whitespace())
                .unwrap_or(fenced.len());
            let lang = &fenced[..lang_end];
            if !"json".starts_with(lang) && !lang.eq_ignore_ascii_case("json") {
                return Opening::Text;
            }
            if lang_end == fenced.len() {
                return Opening::Undecided;
            }
            fenced[lang_end..].trim_start()
        }
        None if "```".starts_with(t) => return Opening::Undecided,
        None => t,
    };
    let object = object.strip_prefix('[').map_or(object, str::trim_start);
    if object.is_empty() {
        return Opening::Undecided;
    }
    let Some(inside) = object.strip_prefix('{') else {
        return Opening::Text;
    };
    let key = inside.trim_start();
    if key.starts_with("\"name\"") {
        Opening::ToolCall
    } else if "\"name\"".starts_with(key) {
        Opening::Undecided
    } else {
        Opening::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` fed in the given pieces and folds the events into (content, calls).
    fn run(pieces: &[&str], known: &[&str], stream: bool) -> (String, Vec<(String, String)>) {
        let mut p = ToolCallParser::new(known.iter().map(|s| s.to_string()).collect(), stream);
        let mut events: Vec<Parsed> = pieces.iter().flat_map(|s| p.push(s)).collect();
        events.extend(p.finish());
        fold(events)
    }

    fn fold(events: Vec<Parsed>) -> (String, Vec<(String, String)>) {
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = vec![];
        for e in events {
            match e {
                Parsed::Text(t) => content.push_str(&t),
                Parsed::CallStart { index, name } => {
                    assert_eq!(index, calls.len(), "call indices count up from 0");
                    calls.push((name, String::new()));
                }
                Parsed::CallArguments { index, text } => calls[index].1.push_str(&text),
            }
        }
        (content, calls)
    }

    /// Every way of cutting `text` in two, at every byte that is a char boundary, and one byte
    /// at a time, gives the same result as the whole text at once.
    fn same_at_every_split(
        text: &str,
        known: &[&str],
        stream: bool,
    ) -> (String, Vec<(String, String)>) {
        let whole = run(&[text], known, stream);
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(
                run(&[&text[..cut], &text[cut..]], known, stream),
                whole,
                "cut at {cut} of {text:?}"
            );
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&pieces, known, stream), whole, "char by char: {text:?}");
        whole
    }

    fn call(name: &str, args: &str) -> (String, String) {
        (name.into(), args.into())
    }

    #[test]
    fn qwen_tool_call_blocks_streamed_or_held() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Lisbon\", \"unit\": \"celsius\"}}\n</tool_call>";
        for stream in [true, false] {
            let (content, calls) = same_at_every_split(text, &[], stream);
            assert_eq!(content, "");
            assert_eq!(
                calls,
                vec![call(
                    "get_weather",
                    r#"{"location": "Lisbon", "unit": "celsius"}"#
                )]
            );
        }
    }

    #[test]
    fn parallel_calls_and_text_around_them() {
        let text = "Let me check both.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"}{\\\"\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
        for stream in [true, false] {
            let (content, calls) = same_at_every_split(text, &[], stream);
            assert_eq!(content, "Let me check both.");
            assert_eq!(calls, vec![call("a", r#"{"q": "}{\""}"#), call("b", "{}")]);
        }
    }

    #[test]
    fn fenced_and_bare_json_calls_of_declared_tools() {
        let fenced =
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Lisbon\"}}\n```";
        assert_eq!(
            same_at_every_split(fenced, &["get_weather"], false),
            (
                String::new(),
                vec![call("get_weather", r#"{"location": "Lisbon"}"#)]
            )
        );
        let bare = "{\"name\": \"f\", \"parameters\": {\"x\": 1}}\n{\"name\": \"g\", \"arguments\": \"{\\\"y\\\": 2}\"}";
        assert_eq!(
            same_at_every_split(bare, &["f", "g"], false),
            (
                String::new(),
                vec![call("f", r#"{"x": 1}"#), call("g", r#"{"y": 2}"#)]
            )
        );
        let list = "[{\"name\": \"f\", \"arguments\": {}}]";
        assert_eq!(run(&[list], &["f"], false).1, vec![call("f", "{}")]);
    }

    #[test]
    fn json_that_is_not_a_declared_call_stays_content() {
        for text in [
            "{\"name\": \"unknown\", \"arguments\": {}}",
            "{\"city\": \"Lisbon\"}",
            "```python\nprint({'a': 1})\n```",
            "```json\n{\"name\": \"f\", \"arguments\": {\"broken\": }\n```",
            "[1, 2, 3]",
        ] {
            assert_eq!(
                same_at_every_split(text, &["f"], false),
                (text.to_string(), vec![])
            );
        }
    }

    #[test]
    fn broken_tool_call_markup_is_kept_as_content() {
        for text in [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>",
            "<tool_call>\nnot json at all",
            "A < B and <tool_ca",
        ] {
            assert_eq!(
                same_at_every_split(text, &["f"], false),
                (text.to_string(), vec![])
            );
        }
    }

    #[test]
    fn plain_text_passes_through_unchanged() {
        let text = "  Hello, <b>world</b> — 100% {not json} ``` ok\n";
        assert_eq!(same_at_every_split(text, &["f"], true).0, text.trim_end());
    }

    #[test]
    fn openings_are_classified_early() {
        use Opening::*;
        assert_eq!(classify_opening(""), Undecided);
        assert_eq!(classify_opening("``"), Undecided);
        assert_eq!(classify_opening("```js"), Undecided);
        assert_eq!(classify_opening("```json\n{\"na"), Undecided);
        assert_eq!(classify_opening("```json\n{\"name\""), ToolCall);
        assert_eq!(classify_opening(" {\"name\": \"f\""), ToolCall);
        assert_eq!(classify_opening("[{\"name\""), ToolCall);
        assert_eq!(classify_opening("```python\n"), Text);
        assert_eq!(classify_opening("{\"city\""), Text);
        assert_eq!(classify_opening("The weather"), Text);
    }
}
