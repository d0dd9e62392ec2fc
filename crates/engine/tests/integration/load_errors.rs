//! Loading fails with a code and a message saying what is wrong, never a panic.

use qwen_engine::candle_core::Device;
use qwen_engine::loader::{self, LoadOptions};
use qwen_engine::EngineError;
use std::path::{Path, PathBuf};

fn load_err(path: &Path) -> EngineError {
    let opts = LoadOptions::new(Device::Cpu);
    match loader::load(path, &opts, None) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-engine-load-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A minimal GGUF v3 file: string metadata and one 32-element tensor of GGML type `ggml_type`.
fn gguf_bytes(arch: &str, ggml_type: u32, data_len: usize) -> Vec<u8> {
    gguf_bytes_with(arch, ggml_type, data_len, None)
}

/// A GGUF of one tensor, with `general.alignment` (a u32) when given.
pub(crate) fn gguf_bytes_with(
    arch: &str,
    ggml_type: u32,
    data_len: usize,
    alignment: Option<u32>,
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend((1 + alignment.is_some() as u64).to_le_bytes()); // metadata entries
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // GGUF string
    string(&mut b, arch);
    if let Some(alignment) = alignment {
        string(&mut b, "general.alignment");
        b.extend(4u32.to_le_bytes()); // GGUF u32
        b.extend(alignment.to_le_bytes());
    }
    string(&mut b, "token_embd.weight");
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(ggml_type.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    b
}

#[test]
fn missing_path_is_model_not_found() {
    let e = load_err(Path::new("models/nothing-here.gguf"));
    assert_eq!(e.code(), "ERR_MODEL_NOT_FOUND");
    assert!(e.to_string().contains("fetch-model"));
}

#[test]
fn another_architecture_is_refused() {
    let path = scratch("llama.gguf");
    std::fs::write(&path, gguf_bytes("llama", 0, 128)).unwrap();
    let e = load_err(&path);
    assert_eq!(e.code(), "ERR_MODEL_LOAD");
    assert!(
        e.to_string().contains("unsupported architecture `llama`"),
        "{e}"
    );

    let dir = scratch("llama-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
        "max_position_embeddings": 8, "rms_norm_eps": 1e-6}"#,
    )
    .unwrap();
    let e = load_err(&dir);
    assert_eq!(e.code(), "ERR_MODEL_LOAD");
    assert!(e.to_string().contains("unsupported model_type"), "{e}");
}

#[test]
fn unsupported_quantization_and_truncation_are_refused() {
    // GGML type 16 is IQ2_XXS, which candle cannot read.
    let path = scratch("iq2.gguf");
    std::fs::write(&path, gguf_bytes("qwen2", 16, 128)).unwrap();
    let e = load_err(&path);
    assert_eq!(e.code(), "ERR_MODEL_LOAD");
    assert!(e.to_string().contains("tensor type 16"), "{e}");

    // An F32 tensor of 32 elements needs 128 bytes; give it 64.
    let path = scratch("short.gguf");
    std::fs::write(&path, gguf_bytes("qwen2", 0, 64)).unwrap();
    let e = load_err(&path);
    assert_eq!(e.code(), "ERR_MODEL_LOAD");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn a_zero_alignment_is_a_load_error_not_a_panic() {
    for (alignment, name) in [(0, "zero-align.gguf"), (12, "odd-align.gguf")] {
        let path = scratch(name);
        std::fs::write(&path, gguf_bytes_with("qwen2", 0, 128, Some(alignment))).unwrap();
        let e = load_err(&path);
        assert_eq!(e.code(), "ERR_MODEL_LOAD");
        assert!(e.to_string().contains("general.alignment is"), "{e}");
    }
}
