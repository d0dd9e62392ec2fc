//! Qwen2 hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The context window the model was trained for.
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Reads `qwen2.*` keys; fails with `ERR_MODEL_LOAD` for any other architecture.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| EngineError::load("GGUF file has no general.architecture"))?;
        if arch != "qwen2" {
            return Err(EngineError::load(format!(
                "unsupported architecture `{arch}`: qwen-native runs Qwen2/Qwen2.5 models (architecture `qwen2`)"
            )));
        }
        let get = |key: &str| -> Result<&gguf_file::Value> {
            md.get(&format!("qwen2.{key}"))
                .ok_or_else(|| EngineError::load(format!("GGUF metadata lacks qwen2.{key}")))
        };
        let usize_of = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| EngineError::load(format!("qwen2.{key}: {e}")))
        };
        let f32_of = |key: &str| -> Result<f32> {
            get(key)?
                .to_f32()
                .map_err(|e| EngineError::load(format!("qwen2.{key}: {e}")))
        };
        let hidden_size = usize_of("embedding_length")?;
        let num_heads = usize_of("attention.head_count")?;
        // candle lists GGUF dims row-major: the embedding is (vocab, hidden).
        let vocab_size = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| EngineError::load("GGUF file has no token_embd.weight tensor"))?;
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_layers: usize_of("block_count")?,
            num_heads,
            num_kv_heads: usize_of("attention.head_count_kv")?,
            head_dim: hidden_size / num_heads,
            max_position_embeddings: usize_of("context_length")?,
            rope_theta: f32_of("rope.freq_base").unwrap_or(1_000_000.0),
            rms_norm_eps: f32_of("attention.layer_norm_rms_epsilon")? as f64,
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        })
    }

    /// Parses a Hugging Face `config.json`; fails with `ERR_MODEL_LOAD` unless it describes a Qwen2 model.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            max_position_embeddings: usize,
            rope_theta: Option<f32>,
            /// transformers >= 5 writes `{"rope_theta": ..., "rope_type": ...}` here.
            rope_parameters: Option<RopeParameters>,
            rope_scaling: Option<RopeParameters>,
            rms_norm_eps: f64,
            tie_word_embeddings: Option<bool>,
            use_sliding_window: Option<bool>,
        }
        #[derive(Deserialize)]
        struct RopeParameters {
            rope_theta: Option<f32>,
            rope_type: Option<String>,
            #[serde(rename = "type")]
            legacy_type: Option<String>,
        }
        let hf: Hf = serde_json::from_str(json)
            .map_err(|e| EngineError::load(format!("config.json is not a Qwen2 config: {e}")))?;
        match hf.model_type.as_deref() {
            Some("qwen2") => {}
            other => {
                return Err(EngineError::load(format!(
                    "unsupported model_type {other:?} in config.json: qwen-native runs Qwen2/Qwen2.5 models (model_type \"qwen2\")"
                )))
            }
        }
        for rope in [&hf.rope_parameters, &hf.rope_scaling]
            .into_iter()
            .flatten()
        {
            match rope.rope_type.as_deref().or(rope.legacy_type.as_deref()) {
                None | Some("default") => {}
                Some(other) => {
                    return Err(EngineError::load(format!(
                        "config.json asks for `{other}` RoPE scaling, which qwen-native does not implement; remove rope_scaling to run at the trained context"
                    )))
                }
            }
        }
        if hf.use_sliding_window == Some(true) {
            return Err(EngineError::load(
                "config.json enables sliding-window attention, which qwen-native does not implement",
            ));
        }
        let rope_theta = hf
            .rope_theta
            .or_else(|| hf.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(1_000_000.0);
        Ok(Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.hidden_size / hf.num_attention_heads,
            max_position_embeddings: hf.max_position_embeddings,
            rope_theta,
            rms_norm_eps: hf.rms_norm_eps,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        })
    }

    /// Rejects shapes the forward pass cannot run, so a bad file fails at load, not mid-request.
    pub fn validate(&self) -> Result<()> {
        let ok = self.num_heads > 0
            && self.num_kv_heads > 0
            && self.num_heads.is_multiple_of(self.num_kv_heads)
            && self.hidden_size.is_multiple_of(self.num_heads)
            && self.head_dim.is_multiple_of(2)
            && self.num_layers > 0
            && self.vocab_size > 0;
        if ok {
            Ok(())
        } else {
            Err(EngineError::load(format!(
                "inconsistent model hyper-parameters: {self:?}"
            )))
        }
    }
}
