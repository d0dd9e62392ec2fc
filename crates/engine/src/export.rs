//! Writes a GGUF model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json, generation_config.json): real weights for the safetensors loader where
//! no safetensors checkpoint can be downloaded.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::loader::{
    end_of_turn_ids, qwen_defaults, GgufSource, Placement, WeightName, WeightSource,
};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| EngineError::Internal(format!("writing {}: {e}", path.display())))
}

/// Dequantizes `gguf` into a Hugging Face directory at `out`, weights stored as `dtype`.
pub fn gguf_to_hf_dir(gguf: &Path, out: &Path, dtype: DType) -> Result<()> {
    let mut src = GgufSource::open(gguf, Placement::cpu())?;
    let cfg = ModelConfig::from_gguf(src.content())?;
    let tokenizer = Tokenizer::from_gguf(src.content())?;
    let md = &src.content().metadata;
    let template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| EngineError::load("the GGUF file has no chat template"))?;
    let eos_id = md
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok());
    let bos_id = md
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.to_u32().ok());
    std::fs::create_dir_all(out)
        .map_err(|e| EngineError::Internal(format!("creating {}: {e}", out.display())))?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in WeightName::all(&cfg) {
        if src.contains(name) {
            tensors.insert(name.hf(), src.dequantized(name)?.to_dtype(dtype)?);
        }
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;

    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": !src.contains(WeightName::LmHead),
        "use_sliding_window": false,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": torch_dtype,
    });
    write(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    write(&out.join("tokenizer.json"), tokenizer.to_hf_json()?)?;
    let token = |id: Option<u32>| id.map(|i| tokenizer.decode(&[i]));
    let tokenizer_config = json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": template,
        "bos_token": null,
        "eos_token": token(eos_id),
        "pad_token": token(bos_id),
        "model_max_length": cfg.max_position_embeddings,
    });
    write(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config).unwrap_or_default(),
    )?;
    let d = qwen_defaults();
    let eos = end_of_turn_ids(Vec::new(), &tokenizer);
    let generation = json!({
        "bos_token_id": bos_id,
        "eos_token_id": eos,
        "do_sample": true,
        "temperature": d.temperature,
        "top_p": d.top_p,
        "top_k": d.top_k,
        "repetition_penalty": d.repetition_penalty,
    });
    write(
        &out.join("generation_config.json"),
        serde_json::to_string_pretty(&generation).unwrap_or_default(),
    )
}
