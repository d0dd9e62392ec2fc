//! The safetensors (Hugging Face directory) path on real weights: the default GGUF dequantized to a
//! bf16 directory by `export`, loaded by the directory loader, must predict what the GGUF predicts.
//! The quantized path also rounds activations to 8 bits, so agreement is high, not total.

use crate::common::{model_path, repo_root};
use qwen_engine::candle_core::quantized::GgmlDType;
use qwen_engine::candle_core::{DType, Device, Tensor};
use qwen_engine::loader::{self, LoadOptions, LoadedModel};
use qwen_engine::prompt::prepare_prompt;
use qwen_engine::request::ChatRequest;
use serde_json::json;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The default model exported once (and once per process: tests run in parallel).
fn exported_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("target/test-models/qwen2.5-coder-0.5b-instruct-bf16");
        let done = dir.join(".complete");
        if !done.exists() {
            qwen_engine::export::gguf_to_hf_dir(&model_path(), &dir, DType::BF16).expect("export");
            std::fs::write(&done, "").unwrap();
        }
        dir
    })
    .clone()
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

/// Top-1 agreement of `other` with `reference` over the reference's greedy answers to a few
/// questions (both score the same sequences), and per question the first position they differ.
fn agreement(reference: &LoadedModel, other: &LoadedModel) -> (f64, Vec<Option<usize>>) {
    let questions = [
        "What is the capital of France? Answer in one word.",
        "Write a Python function that checks whether a number is prime.",
        "Explique em duas frases o que é uma rede neural.",
    ];
    let (mut matches, mut total, mut first_divergence) = (0, 0, Vec::new());
    for q in questions {
        let body = json!({ "messages": [{ "role": "user", "content": q }], "max_tokens": 40 });
        let request = ChatRequest::from_json(&body, &reference.defaults).unwrap();
        let (prompt, _) = prepare_prompt(
            &reference.tokenizer,
            &reference.template,
            &request,
            2048,
            None,
        )
        .unwrap();
        let (other_prompt, _) =
            prepare_prompt(&other.tokenizer, &other.template, &request, 2048, None).unwrap();
        assert_eq!(
            prompt, other_prompt,
            "the converted tokenizer/template must give the same prompt"
        );

        // Greedy continuation from the reference model, token by token.
        let mut cache = reference.model.new_cache();
        let mut logits = reference.model.forward(&prompt, &mut cache).unwrap();
        let mut seq = prompt.clone();
        for _ in 0..40 {
            let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            if reference.eos.contains(&next) {
                break;
            }
            seq.push(next);
            logits = reference.model.forward(&[next], &mut cache).unwrap();
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
        let (a, b) = (score(reference), score(other));
        matches += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        total += a.len();
        first_divergence.push(a.iter().zip(&b).position(|(x, y)| x != y));
    }
    (matches as f64 / total as f64, first_divergence)
}

#[test]
fn exported_safetensors_agree_with_the_gguf() {
    let gguf = load(&model_path());
    let hf = load(&exported_dir());
    assert_eq!(hf.info.format, "safetensors");
    assert_eq!(hf.info.dtype, "f32");
    assert!(hf.info.quantization.contains("bf16"));
    assert_eq!(hf.eos, gguf.eos);
    let (rate, first_divergence) = agreement(&gguf, &hf);
    eprintln!(
        "safetensors (bf16 export) vs GGUF: top-1 agreement {:.1}%, first divergence per prompt (token index, None = never): {first_divergence:?}",
        rate * 100.0
    );
    assert!(rate >= 0.9, "top-1 agreement {rate:.3}");
    assert!(
        first_divergence[0].is_none_or(|i| i > 1),
        "the short answer must agree"
    );
}

/// The other direction, as the GPU check uses it to make quantized models: the exported directory
/// written back as a GGUF (Q8_0 where Q4_K does not fit the rows), with the original's tokenizer
/// and template, loads and predicts what the original predicts.
#[test]
fn a_gguf_written_from_the_exported_directory_agrees_with_the_original() {
    let out = repo_root().join("target/test-models/qwen2.5-coder-0.5b-instruct-requantized.gguf");
    qwen_engine::export::hf_dir_to_gguf(&exported_dir(), &model_path(), GgmlDType::Q4K, &out)
        .expect("write the GGUF");
    let original = load(&model_path());
    let written = load(&out);
    assert_eq!(written.info.format, "gguf");
    assert_eq!(written.model.config(), original.model.config());
    assert_eq!(written.eos, original.eos);
    let (rate, first_divergence) = agreement(&original, &written);
    eprintln!(
        "re-quantized GGUF vs the original: top-1 agreement {:.1}%, first divergence per prompt: {first_divergence:?}",
        rate * 100.0
    );
    assert!(rate >= 0.9, "top-1 agreement {rate:.3}");
}
