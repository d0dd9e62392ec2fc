//! Converts between the two model formats. A GGUF model as a Hugging Face directory (config.json,
//! model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json): real weights
//! for the safetensors loader where no safetensors checkpoint can be downloaded. A Hugging Face
//! directory as a quantized GGUF: quantized models of any shape, made where they are measured.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::loader::{
    end_of_turn_ids, qwen_defaults, GgufSource, HfDirSource, Placement, WeightName, WeightSource,
};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
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

/// Writes a Hugging Face directory's weights as a GGUF file at `out`, matrices quantized to
/// `quantization` (a matrix whose rows do not split into its blocks falls back to Q8_0, then F16,
/// as llama.cpp does), vectors in F32. The tokenizer and chat template come from `tokenizer_gguf`,
/// a GGUF file of the same vocabulary (tensors there are ignored): this is how the GPU check makes
/// quantized models of the Qwen2.5 shapes from random weights, with no download.
pub fn hf_dir_to_gguf(
    dir: &Path,
    tokenizer_gguf: &Path,
    quantization: GgmlDType,
    out: &Path,
) -> Result<()> {
    let config = std::fs::read_to_string(dir.join("config.json")).map_err(|e| {
        EngineError::load(format!("cannot read {}/config.json: {e}", dir.display()))
    })?;
    let cfg = ModelConfig::from_hf_json(&config)?;
    let tokenizer = read_gguf_metadata(tokenizer_gguf)?;
    let mut src = HfDirSource::open(dir, Placement::cpu())?;
    let names: Vec<WeightName> = WeightName::all(&cfg)
        .into_iter()
        .filter(|n| src.contains(*n))
        .collect();
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        tensors.push((name.gguf(), src.vector(*name)?));
    }
    let quantized = quantize_all(&names, tensors, quantization)?;

    use gguf_file::Value;
    let u32_value = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        (
            "general.name".into(),
            Value::String(format!("{} ({quantization:?})", dir.display())),
        ),
        ("qwen2.block_count".into(), u32_value(cfg.num_layers)),
        (
            "qwen2.context_length".into(),
            u32_value(cfg.max_position_embeddings),
        ),
        ("qwen2.embedding_length".into(), u32_value(cfg.hidden_size)),
        (
            "qwen2.feed_forward_length".into(),
            u32_value(cfg.intermediate_size),
        ),
        (
            "qwen2.attention.head_count".into(),
            u32_value(cfg.num_heads),
        ),
        (
            "qwen2.attention.head_count_kv".into(),
            u32_value(cfg.num_kv_heads),
        ),
        ("qwen2.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    metadata.extend(
        tokenizer
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer.")),
    );
    write_gguf(out, &metadata, &quantized)
}

/// Copies a GGUF file's metadata (tokenizer, template, hyper-parameters) without its tensors: a
/// few MB that carry a vocabulary to where [`hf_dir_to_gguf`] runs.
pub fn gguf_metadata_only(gguf: &Path, out: &Path) -> Result<()> {
    let content = read_gguf_metadata(gguf)?;
    let metadata: Vec<_> = content.metadata.into_iter().collect();
    write_gguf(out, &metadata, &[])
}

fn write_gguf(
    out: &Path,
    metadata: &[(String, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let metadata: Vec<_> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<_> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out)
            .map_err(|e| EngineError::Internal(format!("creating {}: {e}", out.display())))?,
    );
    gguf_file::write(&mut file, &metadata, &tensors)?;
    Ok(())
}

/// A GGUF file's header and metadata, without its tensors.
fn read_gguf_metadata(path: &Path) -> Result<gguf_file::Content> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| EngineError::load(format!("cannot open {}: {e}", path.display())))?;
    Ok(gguf_file::Content::read(&mut file)?)
}

/// Quantizes the matrices on every core of the kernels' pool (a 7B in k-quants is minutes on
/// one), in name order.
fn quantize_all(
    names: &[WeightName],
    tensors: Vec<(String, Tensor)>,
    quantization: GgmlDType,
) -> Result<Vec<(String, QTensor)>> {
    // Uncontended locks hand each thread its own results, as in the kernels' packing.
    let done: Vec<std::sync::Mutex<Option<Result<QTensor>>>> =
        tensors.iter().map(|_| Default::default()).collect();
    candle_core::utils::barrier_pool().execute_chunked(tensors.len(), |items| {
        for i in items {
            let result = quantize_one(names[i], &tensors[i].1, quantization);
            *done[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    });
    tensors
        .into_iter()
        .zip(done)
        .map(|((key, _), result)| {
            let result = result.into_inner().unwrap_or_else(|e| e.into_inner());
            let q =
                result.unwrap_or_else(|| Err(EngineError::Internal("quantizer stopped".into())))?;
            Ok((key, q))
        })
        .collect()
}

fn quantize_one(name: WeightName, tensor: &Tensor, quantization: GgmlDType) -> Result<QTensor> {
    let tensor = tensor.to_dtype(DType::F32)?;
    if name.is_vector() {
        return Ok(QTensor::quantize(&tensor, GgmlDType::F32)?);
    }
    let cols = tensor.dim(1)?;
    let dtype = [quantization, GgmlDType::Q8_0, GgmlDType::F16]
        .into_iter()
        .find(|d| cols % d.block_size() == 0)
        .unwrap_or(GgmlDType::F32);
    Ok(QTensor::quantize(&tensor, dtype)?)
}
