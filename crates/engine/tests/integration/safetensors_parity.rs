//! The safetensors (Hugging Face directory) path on real weights: the default GGUF dequantized to a
//! bf16 directory by `export`, loaded by the directory loader, must predict what the GGUF predicts.
//! The quantized path also rounds activations to 8 bits, so agreement is high, not total.

use crate::common::{model_path, repo_root};
use qwen_engine::candle_core::{DType, Device, Tensor};
use qwen_engine::loader::{self, LoadOptions, LoadedModel};
use qwen_engine::prompt::prepare_prompt;
use qwen_engine::request::ChatRequest;
use serde_json::json;
use std::path::PathBuf;

fn exported_dir() -> PathBuf {
    let dir = repo_root().join("target/test-models/qwen2.5-coder-0.5b-instruct-bf16");
    let done = dir.join(".complete");
    if !done.exists() {
        qwen_engine::export::gguf_to_hf_dir(&model_path(), &dir, DType::BF16).expect("export");
        std::fs::write(&done, "").unwrap();
    }
    dir
}

fn load(path: &std::path::Path) -> LoadedModel {
    let opts = LoadOptions {
        context_length: Some(2048),
        ..LoadOptions::new(Device::Cpu)
    };
    loader::load(path, &opts, None).expect("load")
}

fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

#[test]
fn exported_safetensors_agree_with_the_gguf() {
    let gguf = load(&model_path());
    let hf = load(&exported_dir());
    assert_eq!(hf.info.format, "safetensors");
    assert_eq!(hf.info.dtype, "f32");
    assert!(hf.info.quantization.contains("bf16"));
    assert_eq!(hf.eos, gguf.eos);

    let questions = [
        "What is the capital of France? Answer in one word.",
        "Write a Python function that checks whether a number is prime.",
        "Explique em duas frases o que é uma rede neural.",
    ];
    let (mut matches, mut total, mut first_divergence) = (0, 0, Vec::new());
    for q in questions {
        let body = json!({ "messages": [{ "role": "user", "content": q }], "max_tokens": 40 });
        let request = ChatRequest::from_json(&body, &gguf.defaults).unwrap();
        let (prompt, _) =
            prepare_prompt(&gguf.tokenizer, &gguf.template, &request, 2048, None).unwrap();
        let (hf_prompt, _) =
            prepare_prompt(&hf.tokenizer, &hf.template, &request, 2048, None).unwrap();
        assert_eq!(
            prompt, hf_prompt,
            "exported tokenizer/template must give the same prompt"
        );

        // Greedy continuation from the GGUF model, token by token.
        let mut cache = gguf.model.new_cache();
        let mut logits = gguf.model.forward(&prompt, &mut cache).unwrap();
        let mut seq = prompt.clone();
        for _ in 0..40 {
            let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            if gguf.eos.contains(&next) {
                break;
            }
            seq.push(next);
            logits = gguf.model.forward(&[next], &mut cache).unwrap();
        }
        // Both models score the same sequence in one pass; compare their top-1 at each position
        // that predicts a generated token (and the one after the last).
        let score = |m: &LoadedModel| {
            let mut c = m.model.new_cache();
            let all = m.model.forward_all(&seq, &mut c).unwrap();
            argmax_rows(
                &all.narrow(0, prompt.len() - 1, seq.len() - prompt.len() + 1)
                    .unwrap(),
            )
        };
        let (g, h) = (score(&gguf), score(&hf));
        let agree = g.iter().zip(&h).filter(|(a, b)| a == b).count();
        matches += agree;
        total += g.len();
        first_divergence.push(g.iter().zip(&h).position(|(a, b)| a != b));
    }
    let rate = matches as f64 / total as f64;
    eprintln!(
        "safetensors (bf16 export) vs GGUF: top-1 agreement {matches}/{total} = {:.1}%, first divergence per prompt (token index, None = never): {first_divergence:?}",
        rate * 100.0
    );
    assert!(rate >= 0.9, "top-1 agreement {rate:.3}");
    assert!(
        first_divergence[0].is_none_or(|i| i > 1),
        "the short answer must agree"
    );
}
