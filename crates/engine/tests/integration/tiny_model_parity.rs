//! Exactness of the forward pass: a tiny Qwen2 with random weights, made and run by HF
//! transformers (scripts/reference/tiny_qwen2.py), loaded here through the safetensors path. The
//! engine's logits must match transformers' in one pass and token by token through the KV cache.

use crate::common::repo_root;
use qwen_engine::candle_core::{DType, Device, Tensor};
use qwen_engine::config::ModelConfig;
use qwen_engine::loader::{HfDirSource, Placement};
use qwen_engine::model::Qwen2;
use serde_json::Value;

fn max_abs_diff(got: &Tensor, expected: &[Vec<f32>]) -> f32 {
    let got = got.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), expected.len());
    got.iter()
        .zip(expected)
        .flat_map(|(g, e)| g.iter().zip(e).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max)
}

struct Fixture {
    dir: std::path::PathBuf,
    reference: Value,
    ids: Vec<u32>,
    expected: Vec<Vec<f32>>,
    cfg: ModelConfig,
}

/// The checkpoint directory, transformers' input ids and logits, and the parsed config.
fn fixture() -> Fixture {
    let dir = repo_root().join("crates/engine/tests/fixtures/tiny-qwen2");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let reference: Value = serde_json::from_str(&read("reference.json")).unwrap();
    Fixture {
        ids: serde_json::from_value(reference["input_ids"].clone()).unwrap(),
        expected: serde_json::from_value(reference["logits"].clone()).unwrap(),
        cfg: ModelConfig::from_hf_json(&read("config.json")).unwrap(),
        reference,
        dir,
    }
}

#[test]
fn tiny_random_qwen2_reproduces_transformers_logits() {
    let Fixture {
        dir,
        reference,
        ids,
        expected,
        cfg,
    } = fixture();
    assert_eq!(cfg.rope_theta, 10_000.0);
    let mut src = HfDirSource::open(&dir, Placement::cpu()).unwrap();
    let model = Qwen2::load(&cfg, &mut src, 128, DType::F32, &Device::Cpu).unwrap();

    let mut cache = model.new_cache();
    let all = model.forward_all(&ids, &mut cache).unwrap();
    let one_pass = max_abs_diff(&all, &expected);

    // Prefill half, then one token at a time through the cache.
    let mut cache = model.new_cache();
    let mut rows = vec![model.forward_all(&ids[..10], &mut cache).unwrap()];
    for &id in &ids[10..] {
        rows.push(model.forward_all(&[id], &mut cache).unwrap());
    }
    let incremental = max_abs_diff(&Tensor::cat(&rows, 0).unwrap(), &expected);
    eprintln!(
        "tiny Qwen2 vs transformers: max |logit diff| one pass {one_pass:.2e}, incremental {incremental:.2e} ({})",
        reference["generator"]
    );
    assert!(one_pass < 1e-4, "one pass: {one_pass}");
    assert!(incremental < 1e-4, "incremental: {incremental}");
}

/// The same tiny checkpoint written as GGUF files (F32, F16, Q8_0 matrices; vectors in F32, as
/// llama.cpp writes them) and loaded through the GGUF path.
#[test]
fn tiny_qwen2_through_gguf_storage_types() {
    use qwen_engine::candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use qwen_engine::loader::{GgufSource, WeightName, WeightSource};

    let Fixture {
        dir,
        reference: _,
        ids,
        expected,
        cfg,
    } = fixture();
    let mut hf = HfDirSource::open(&dir, Placement::cpu()).unwrap();
    let present: Vec<WeightName> = WeightName::all(&cfg)
        .into_iter()
        .filter(|n| hf.contains(*n))
        .collect();
    let dense: Vec<(String, bool, Tensor)> = present
        .into_iter()
        .map(|n| (n.gguf(), n.is_vector(), hf.vector(n).unwrap()))
        .collect();
    let u32v = |v: usize| gguf_file::Value::U32(v as u32);
    let metadata = [
        (
            "general.architecture",
            gguf_file::Value::String("qwen2".into()),
        ),
        ("qwen2.embedding_length", u32v(cfg.hidden_size)),
        ("qwen2.feed_forward_length", u32v(cfg.intermediate_size)),
        ("qwen2.block_count", u32v(cfg.num_layers)),
        ("qwen2.attention.head_count", u32v(cfg.num_heads)),
        ("qwen2.attention.head_count_kv", u32v(cfg.num_kv_heads)),
        ("qwen2.context_length", u32v(cfg.max_position_embeddings)),
        (
            "qwen2.rope.freq_base",
            gguf_file::Value::F32(cfg.rope_theta),
        ),
        (
            "qwen2.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    let mut report = Vec::new();
    for (dtype, tolerance) in [
        (GgmlDType::F32, 1e-4),
        (GgmlDType::F16, 0.05),
        (GgmlDType::Q8_0, 0.5),
    ] {
        let tensors: Vec<(String, QTensor)> = dense
            .iter()
            .map(|(name, vector, t)| {
                let storage = if *vector { GgmlDType::F32 } else { dtype };
                (name.clone(), QTensor::quantize(t, storage).unwrap())
            })
            .collect();
        let path =
            std::env::temp_dir().join(format!("tiny-qwen2-{dtype:?}-{}.gguf", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut file, &md, &ts).unwrap();
        drop(file);

        let mut src = GgufSource::open(&path, Placement::cpu()).unwrap();
        let gguf_cfg = ModelConfig::from_gguf(src.content()).unwrap();
        // GGUF stores epsilon as f32.
        assert_eq!(
            gguf_cfg,
            ModelConfig {
                rms_norm_eps: gguf_cfg.rms_norm_eps,
                ..cfg.clone()
            }
        );
        assert!((gguf_cfg.rms_norm_eps - cfg.rms_norm_eps).abs() < 1e-12);
        let model = Qwen2::load(&gguf_cfg, &mut src, 128, DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward_all(&ids, &mut model.new_cache()).unwrap();
        let diff = max_abs_diff(&logits, &expected);
        let top1 = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let agree = top1
            .iter()
            .zip(&expected)
            .filter(|(t, row)| {
                let best = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                **t as usize == best
            })
            .count();
        report.push(format!(
            "{dtype:?}: max diff {diff:.2e}, top-1 {agree}/{}",
            ids.len()
        ));
        assert!(diff < tolerance, "{dtype:?}: max diff {diff}");
        assert!(
            agree * 10 >= ids.len() * 9,
            "{dtype:?}: top-1 agreement {agree}/{}",
            ids.len()
        );
        std::fs::remove_file(&path).ok();
    }
    eprintln!(
        "tiny Qwen2 through GGUF vs transformers: {}",
        report.join("; ")
    );
}
