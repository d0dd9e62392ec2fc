//! Hugging Face model directories: `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped, converted to the compute dtype per tensor.

use super::{
    end_of_turn_ids, finish, qwen_defaults, release_mapped, LoadOptions, LoadedModel, Placement,
    ProgressFn, WeightName, WeightSource,
};
use crate::config::ModelConfig;
use crate::error::{candle_cause, EngineError, Result};
use crate::matrix::Matrix;
use crate::sampling::SamplingParams;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Tensor};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub struct HfDirSource<'p> {
    tensors: MmapedSafetensors,
    stored: DType,
    placement: Placement<'p>,
}

/// The safetensors files of a model directory, in shard order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| EngineError::load(format!("cannot read {}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::load(format!("{} is not JSON: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::load(format!("{} has no weight_map", index.display())))?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(EngineError::load(format!(
                        "shard {} listed in model.safetensors.index.json is missing",
                        p.display()
                    )))
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(EngineError::load(format!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )))
}

impl<'p> HfDirSource<'p> {
    pub fn open(dir: &Path, mut placement: Placement<'p>) -> Result<Self> {
        let files = weight_files(dir)?;
        // SAFETY: read-only mappings kept alive by `MmapedSafetensors`.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::load(format!(
                "cannot read safetensors in {}: {} (truncated or corrupt file?)",
                dir.display(),
                candle_cause(&e)
            ))
        })?;
        let total = tensors
            .tensors()
            .iter()
            .map(|(_, v)| v.data().len() as u64)
            .sum();
        placement.total = total;
        let stored = tensors
            .get(&WeightName::TokenEmbedding.hf())
            .ok()
            .and_then(|v| DType::try_from(v.dtype()).ok())
            .unwrap_or(DType::F32);
        placement.resolve_dtype(stored);
        Ok(Self {
            tensors,
            stored,
            placement,
        })
    }

    /// The checkpoint's stored dtype (of its embedding).
    pub fn stored_dtype(&self) -> DType {
        self.stored
    }

    fn read(&mut self, name: WeightName) -> Result<Tensor> {
        let key = name.hf();
        let view = self
            .tensors
            .get(&key)
            .map_err(|_| EngineError::load(format!("safetensors lack tensor {key}")))?;
        let data = view.data();
        let t = self
            .tensors
            .load(&key, &self.placement.device)
            .and_then(|t| t.to_dtype(self.placement.dtype()))
            .map_err(|e| {
                EngineError::load(format!("cannot load tensor {key}: {}", candle_cause(&e)))
            })?;
        release_mapped(data);
        self.placement.advance(data.len() as u64);
        Ok(t)
    }
}

impl WeightSource for HfDirSource<'_> {
    fn dtype(&self) -> DType {
        self.placement.dtype()
    }

    fn contains(&self, name: WeightName) -> bool {
        self.tensors.get(&name.hf()).is_ok()
    }

    fn matrix(&mut self, name: WeightName) -> Result<Matrix> {
        Ok(Matrix::Candle(QMatMul::Tensor(self.read(name)?)))
    }

    fn vector(&mut self, name: WeightName) -> Result<Tensor> {
        self.read(name)
    }
}

fn read_text(dir: &Path, file: &str) -> Result<Option<String>> {
    let p = dir.join(file);
    if !p.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(&p)
        .map(Some)
        .map_err(|e| EngineError::load(format!("cannot read {}: {e}", p.display())))
}

fn read_json(dir: &Path, file: &str) -> Result<Option<Value>> {
    match read_text(dir, file)? {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
            EngineError::load(format!("{file} in {} is not JSON: {e}", dir.display()))
        }),
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The chat template: `chat_template.jinja`, or tokenizer_config.json's `chat_template` (a string,
/// or named templates of which "default" is used).
fn chat_template_source(dir: &Path, tok_cfg: &Value) -> Result<String> {
    if let Some(t) = read_text(dir, "chat_template.jinja")? {
        return Ok(t);
    }
    match tok_cfg.get("chat_template") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_string)
            .ok_or_else(|| {
                EngineError::load("tokenizer_config.json has no \"default\" chat template")
            }),
        _ => Err(EngineError::load(format!(
            "{} has no chat template (tokenizer_config.json chat_template or chat_template.jinja)",
            dir.display()
        ))),
    }
}

/// Sampling defaults and end-of-turn ids from generation_config.json, where present.
fn generation_config(gen: Option<&Value>, tokenizer: &Tokenizer) -> (SamplingParams, Vec<u32>) {
    let mut defaults = qwen_defaults();
    let mut eos = Vec::new();
    if let Some(g) = gen {
        let num = |k: &str| g.get(k).and_then(Value::as_f64).map(|x| x as f32);
        if let Some(t) = num("temperature") {
            defaults.temperature = t;
        }
        if let Some(p) = num("top_p") {
            defaults.top_p = p;
        }
        if let Some(k) = g.get("top_k").and_then(Value::as_u64) {
            defaults.top_k = k as usize;
        }
        if let Some(r) = num("repetition_penalty") {
            defaults.repetition_penalty = r;
        }
        if g.get("do_sample").and_then(Value::as_bool) == Some(false) {
            defaults.temperature = 0.0;
        }
        match g.get("eos_token_id") {
            Some(Value::Number(n)) => eos.extend(n.as_u64().map(|i| i as u32)),
            Some(Value::Array(a)) => {
                eos.extend(a.iter().filter_map(Value::as_u64).map(|i| i as u32))
            }
            _ => {}
        }
    }
    (defaults, end_of_turn_ids(eos, tokenizer))
}

pub(super) fn load(
    dir: &Path,
    opts: &LoadOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<LoadedModel> {
    let config = read_text(dir, "config.json")?.ok_or_else(|| {
        EngineError::load(format!(
            "{} is not a model directory: it has no config.json",
            dir.display()
        ))
    })?;
    let cfg = ModelConfig::from_hf_json(&config)?;
    let tokenizer_json = read_text(dir, "tokenizer.json")?
        .ok_or_else(|| EngineError::load(format!("{} has no tokenizer.json", dir.display())))?;
    let tokenizer = Tokenizer::from_json(&tokenizer_json)?;
    let tok_cfg = read_json(dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
    let template = ChatTemplate::new(
        &chat_template_source(dir, &tok_cfg)?,
        &token_string(tok_cfg.get("bos_token")),
        &token_string(tok_cfg.get("eos_token")),
    )?;
    let (defaults, eos) = generation_config(
        read_json(dir, "generation_config.json")?.as_ref(),
        &tokenizer,
    );
    let mut src = HfDirSource::open(dir, Placement::for_load(opts, progress))?;
    let stored = src.stored_dtype();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let quantization = format!("none ({} weights)", stored.as_str());
    finish(
        &cfg,
        &mut src,
        tokenizer,
        template,
        eos,
        defaults,
        opts,
        (name, "safetensors", quantization),
    )
}
