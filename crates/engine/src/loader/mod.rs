//! Reading weights from disk: one naming scheme for the model, one source per file format.

mod gguf;
mod hf_dir;

pub use gguf::GgufSource;
pub use hf_dir::HfDirSource;

use crate::config::ModelConfig;
use crate::device::{self, GpuInfo};
use crate::error::{EngineError, Result};
use crate::matrix::{Embedding, Matrix};
use crate::model::Qwen2;
use crate::sampling::SamplingParams;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::path::Path;

/// Everything a model directory or file provides, ready to serve.
pub struct LoadedModel {
    pub model: Qwen2,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Token ids that end a turn.
    pub eos: Vec<u32>,
    /// The model's recommended sampling settings.
    pub defaults: SamplingParams,
    pub info: ModelInfo,
}

/// What `model.info` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    /// "gguf" or "safetensors".
    pub format: String,
    pub parameters: u64,
    pub context_length: usize,
    pub trained_context_length: usize,
    pub vocab_size: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub device: String,
    /// The GPU the model is on (memory read when `info` is asked for); `None` on the CPU.
    pub gpu: Option<GpuInfo>,
    /// Why `device: "auto"` ran on the CPU (no CUDA in this build, no driver, no GPU...).
    pub cpu_fallback_reason: Option<String>,
    /// The instruction set our CPU kernels run with ("avx512vnni", "avx2"), chosen at run time;
    /// `None` where candle's kernels run instead (a GPU, a CPU that is not x86-64).
    pub cpu_kernels: Option<String>,
    pub dtype: String,
    pub quantization: String,
    pub threads: usize,
}

/// Where and how to load.
pub struct LoadOptions {
    pub device: Device,
    /// Set when the caller asked for `auto` and got the CPU: the reason, for `info`.
    pub cpu_fallback_reason: Option<String>,
    /// Activation and dense-weight dtype; `None` picks f32 on CPU and the checkpoint's own
    /// dtype on GPUs.
    pub dtype: Option<DType>,
    /// Usable context; `None` means the model's trained context.
    pub context_length: Option<usize>,
}

impl LoadOptions {
    /// Everything at its default on `device`: the weights' own dtype rule, the trained context.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            cpu_fallback_reason: None,
            dtype: None,
            context_length: None,
        }
    }
}

/// Qwen2.5's published generation_config.json values, for files that carry none (GGUF).
pub fn qwen_defaults() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_p: 0.8,
        top_k: 20,
        seed: None,
        repetition_penalty: 1.05,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
    }
}

/// The ids that end an assistant turn: those the model declares, plus Qwen's `<|im_end|>` and
/// `<|endoftext|>` where the vocabulary has them.
pub fn end_of_turn_ids(mut declared: Vec<u32>, tokenizer: &Tokenizer) -> Vec<u32> {
    for t in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(i) = tokenizer.added_token_id(t) {
            if !declared.contains(&i) {
                declared.push(i);
            }
        }
    }
    declared
}

/// Loads a GGUF file or a Hugging Face directory.
pub fn load(
    path: &Path,
    opts: &LoadOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(EngineError::ModelNotFound(format!(
            "no model at {}: pass modelPath, set MODEL_PATH, or run `npm run fetch-model` for the default model",
            path.display()
        )));
    }
    if path.is_dir() {
        hf_dir::load(path, opts, progress)
    } else {
        gguf::load(path, opts, progress)
    }
}

/// The usable context: the requested length, capped by what the model was trained for.
fn context_length(cfg: &ModelConfig, opts: &LoadOptions) -> Result<usize> {
    match opts.context_length {
        None => Ok(cfg.max_position_embeddings),
        Some(n) if n >= 1 && n <= cfg.max_position_embeddings => Ok(n),
        Some(n) => Err(EngineError::load(format!(
            "contextLength {n} is outside 1..={} (the model's trained context)",
            cfg.max_position_embeddings
        ))),
    }
}

fn parameter_count(cfg: &ModelConfig) -> u64 {
    let (h, i, v) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        cfg.vocab_size as u64,
    );
    let kv = (cfg.num_kv_heads * cfg.head_dim) as u64;
    let attn = h * h + h + 2 * (h * kv + kv) + h * h;
    let per_layer = attn + 3 * h * i + 2 * h;
    let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
    cfg.num_layers as u64 * per_layer + heads * v * h + h
}

/// Drops the pages of a memory-mapped tensor from this process's resident set once the tensor
/// has been copied out (to the GPU, or into converted host memory): without it a 15 GB checkpoint
/// stays resident in the process after its upload. The file stays in the OS page cache, and a
/// page touched again is read back from the file, so this never changes what is read.
fn release_mapped(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = bytes.as_ptr() as usize / page * page;
        let end = bytes.as_ptr() as usize + bytes.len();
        // SAFETY: the range lies within a read-only file mapping that stays mapped; MADV_DONTNEED
        // on such a mapping only discards pages that are re-read from the file on next access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Assembles the loaded pieces and the info object that describes them.
#[allow(clippy::too_many_arguments)]
fn finish(
    cfg: &ModelConfig,
    src: &mut dyn WeightSource,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    defaults: SamplingParams,
    opts: &LoadOptions,
    identity: (String, &str, String),
) -> Result<LoadedModel> {
    let dtype = src.dtype();
    let ctx = context_length(cfg, opts)?;
    let model = Qwen2::load(cfg, src, ctx, dtype, &opts.device)?;
    if !opts.device.is_cpu() {
        model.warm_up()?;
    }
    let (name, format, quantization) = identity;
    let info = ModelInfo {
        architecture: "qwen2".into(),
        name,
        format: format.into(),
        parameters: parameter_count(cfg),
        context_length: ctx,
        trained_context_length: cfg.max_position_embeddings,
        vocab_size: cfg.vocab_size,
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        device: device::name(&opts.device),
        gpu: device::gpu_info(&opts.device),
        cpu_fallback_reason: opts.cpu_fallback_reason.clone(),
        cpu_kernels: (opts.device.is_cpu()
            && crate::kernels::level() > crate::kernels::Level::Scalar)
            .then(|| crate::kernels::level().name().to_string()),
        dtype: dtype.as_str().to_string(),
        quantization,
        threads: candle_core::utils::get_num_threads(),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        eos,
        defaults,
        info,
    })
}

/// A weight of the Qwen2 network, named independently of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightName {
    TokenEmbedding,
    OutputNorm,
    LmHead,
    Layer(usize, LayerWeight),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerWeight {
    AttnNorm,
    Q,
    QBias,
    K,
    KBias,
    V,
    VBias,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl WeightName {
    /// Every weight a Qwen2 network of `cfg`'s shape can have (biases and LM head included).
    pub fn all(cfg: &ModelConfig) -> Vec<WeightName> {
        use LayerWeight::*;
        let mut names = vec![Self::TokenEmbedding, Self::OutputNorm, Self::LmHead];
        for i in 0..cfg.num_layers {
            for w in [
                AttnNorm, Q, QBias, K, KBias, V, VBias, O, FfnNorm, Gate, Up, Down,
            ] {
                names.push(Self::Layer(i, w));
            }
        }
        names
    }

    /// True for the 1-D weights (norms, biases), which GGUF files keep in F32.
    pub fn is_vector(&self) -> bool {
        use LayerWeight::*;
        matches!(
            self,
            Self::OutputNorm | Self::Layer(_, AttnNorm | FfnNorm | QBias | KBias | VBias)
        )
    }

    pub fn gguf(&self) -> String {
        use LayerWeight::*;
        match self {
            Self::TokenEmbedding => "token_embd.weight".into(),
            Self::OutputNorm => "output_norm.weight".into(),
            Self::LmHead => "output.weight".into(),
            Self::Layer(i, w) => {
                let leaf = match w {
                    AttnNorm => "attn_norm.weight",
                    Q => "attn_q.weight",
                    QBias => "attn_q.bias",
                    K => "attn_k.weight",
                    KBias => "attn_k.bias",
                    V => "attn_v.weight",
                    VBias => "attn_v.bias",
                    O => "attn_output.weight",
                    FfnNorm => "ffn_norm.weight",
                    Gate => "ffn_gate.weight",
                    Up => "ffn_up.weight",
                    Down => "ffn_down.weight",
                };
                format!("blk.{i}.{leaf}")
            }
        }
    }

    pub fn hf(&self) -> String {
        use LayerWeight::*;
        match self {
            Self::TokenEmbedding => "model.embed_tokens.weight".into(),
            Self::OutputNorm => "model.norm.weight".into(),
            Self::LmHead => "lm_head.weight".into(),
            Self::Layer(i, w) => {
                let leaf = match w {
                    AttnNorm => "input_layernorm.weight",
                    Q => "self_attn.q_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    K => "self_attn.k_proj.weight",
                    KBias => "self_attn.k_proj.bias",
                    V => "self_attn.v_proj.weight",
                    VBias => "self_attn.v_proj.bias",
                    O => "self_attn.o_proj.weight",
                    FfnNorm => "post_attention_layernorm.weight",
                    Gate => "mlp.gate_proj.weight",
                    Up => "mlp.up_proj.weight",
                    Down => "mlp.down_proj.weight",
                };
                format!("model.layers.{i}.{leaf}")
            }
        }
    }
}

/// Bytes of weights loaded so far, out of the total, for progress reporting.
pub type ProgressFn<'a> = dyn FnMut(u64, u64) + 'a;

/// A file format the model's weights can come from. Matrices keep their storage type where the
/// backend has a kernel for it; vectors (norms, biases) come back in the compute dtype.
pub trait WeightSource {
    /// The dtype dense weights and activations use.
    fn dtype(&self) -> DType;
    fn contains(&self, name: WeightName) -> bool;
    fn matrix(&mut self, name: WeightName) -> Result<Matrix>;
    /// A matrix only read by rows (an embedding that is not also the LM head).
    fn embedding(&mut self, name: WeightName) -> Result<Embedding> {
        Ok(Embedding::Matrix(self.matrix(name)?))
    }
    fn vector(&mut self, name: WeightName) -> Result<Tensor>;
}

/// Where loaded weights go (device, dense dtype) and who hears about progress.
pub struct Placement<'p> {
    pub device: Device,
    /// `None`: f32 on CPU (candle has no bf16 CPU matmul kernel), the checkpoint's own dtype on GPU.
    dtype: Option<DType>,
    loaded: u64,
    total: u64,
    callback: Option<&'p mut ProgressFn<'p>>,
}

impl<'p> Placement<'p> {
    pub fn new(device: &Device, dtype: Option<DType>) -> Self {
        Self {
            device: device.clone(),
            dtype,
            loaded: 0,
            total: 0,
            callback: None,
        }
    }

    pub fn cpu() -> Self {
        Self::new(&Device::Cpu, Some(DType::F32))
    }

    /// Device and dtype of `opts`, reporting to `progress`.
    pub fn for_load(opts: &LoadOptions, progress: Option<&'p mut ProgressFn<'_>>) -> Self {
        let mut placement = Self::new(&opts.device, opts.dtype);
        if let Some(p) = progress {
            placement.callback = Some(p);
        }
        placement
    }

    /// Fixes the dtype given the checkpoint's stored one, and returns it.
    fn resolve_dtype(&mut self, stored: DType) -> DType {
        let dtype = self.dtype.unwrap_or(if self.device.is_cpu() {
            DType::F32
        } else {
            stored
        });
        self.dtype = Some(dtype);
        dtype
    }

    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(DType::F32)
    }

    fn advance(&mut self, bytes: u64) {
        self.loaded += bytes;
        if let Some(f) = self.callback.as_mut() {
            f(self.loaded, self.total);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::release_mapped;

    /// Resident KiB of the mapping that contains `addr`, from /proc/self/smaps.
    fn mapping_rss_kib(addr: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let addr = addr as u64;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("Rss:") {
                    return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}")
    }

    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_unchanged() {
        let path = std::env::temp_dir().join(format!("qwen-release-{}.bin", std::process::id()));
        let bytes: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only mapping of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let sum = |m: &[u8]| m.iter().map(|&b| b as u64).sum::<u64>();
        let expected = sum(&bytes);
        assert_eq!(sum(&map), expected); // touches every page
        assert!(mapping_rss_kib(map.as_ptr()) >= 15 << 10);
        release_mapped(&map[..]);
        assert!(mapping_rss_kib(map.as_ptr()) < 1 << 10);
        assert_eq!(sum(&map), expected);
        std::fs::remove_file(&path).unwrap();
    }
}
