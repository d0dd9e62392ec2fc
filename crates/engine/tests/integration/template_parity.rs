//! The chat template rendered by minijinja against HF transformers' apply_chat_template (Python
//! jinja2), byte for byte, and the prompt's token ids against HF `tokenizers`. Fixtures come from
//! scripts/reference/template_fixtures.py.

use crate::common::{chat_template_source, gguf, repo_root};
use qwen_engine::template::ChatTemplate;
use qwen_engine::tokenizer::Tokenizer;
use serde_json::Value;

#[test]
fn renders_and_tokenizes_like_transformers() {
    let path = repo_root().join("crates/engine/tests/fixtures/chat_template_cases.json");
    let fixtures: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let template = ChatTemplate::new(&chat_template_source(), "", "<|im_end|>").unwrap();
    let tokenizer = Tokenizer::from_gguf(gguf()).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().map(|t| t.as_slice());
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template
            .render_marked(messages, tools, add, &tokenizer.added_tokens())
            .unwrap();
        assert_eq!(
            rendered.text,
            case["expected"].as_str().unwrap(),
            "render of case {name:?}"
        );
        let expected_ids: Vec<u32> = case["expected_ids"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|s| s.parse().unwrap())
            .collect();
        let ids = tokenizer.encode_segments(&rendered.segments()).unwrap();
        assert_eq!(ids, expected_ids, "prompt tokens of case {name:?}");
    }
}
