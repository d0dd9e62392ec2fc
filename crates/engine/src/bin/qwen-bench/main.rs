//! Benchmarks the engine with no Node. Prints one JSON object on stdout.
//!
//!   qwen-bench --model PATH [--device auto|cpu|cuda[:N]] [--threads N]
//!              [--prompt-tokens 512] [--gen-tokens 64]      speed of the forward pass
//!   qwen-bench --model PATH --chat "question" [--gen-tokens N]   one streamed answer
//!   qwen-bench --model PATH --request body.json [--repeat N]     one OpenAI request body
//!   qwen-bench --parity DIR [--device cuda] [--steps 32]         CPU vs device on a tiny checkpoint
//!   qwen-bench --model PATH --serve 4 [--gen-tokens 128] [--long-prompt 1000]
//!              [--max-batch 8] [--prefill-chunk N]              concurrent streams (see serve.rs)
//!
//! Speed mode reports load time, resident memory after load, the first prefill of the process
//! (kernel compilation included), a warm prefill and the time to the first token on a fresh cache,
//! and greedy decode at the prompt's context, per step.

use qwen_engine::candle_core::{DType, Device, Tensor};
use qwen_engine::config::ModelConfig;
use qwen_engine::device::{self, DeviceRequest};
use qwen_engine::engine::EngineOptions;
use qwen_engine::kv_cache::KvCache;
use qwen_engine::loader::{self, HfDirSource, LoadOptions, Placement};
use qwen_engine::model::Qwen2;
use qwen_engine::{Engine, Event};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

mod serve;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Prefill runs in chunks of this many tokens, as the engine does.
const PREFILL_CHUNK: usize = 512;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> BenchResult<usize> {
    Ok(arg(args, name).map_or(Ok(default), |t| t.parse())?)
}

/// A field of /proc/self/status in MiB (VmRSS: now, VmHWM: peak); 0 where there is none.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let device_arg = arg(&args, "--device").unwrap_or_else(|| "auto".into());
    if let Some(n) = arg(&args, "--threads") {
        // Before candle's pool starts: it is sized once per process.
        std::env::set_var("CANDLE_NUM_THREADS", &n);
        std::env::set_var("RAYON_NUM_THREADS", &n);
    }
    if let Some(dir) = arg(&args, "--parity") {
        let report = parity(Path::new(&dir), &device_arg, num(&args, "--steps", 32)?)?;
        println!("{report}");
        return Ok(());
    }
    let model = arg(&args, "--model").ok_or("--model PATH (or --parity DIR) is required")?;
    let mut opts = EngineOptions::new(&model);
    opts.device = device_arg;
    if let Some(file) = arg(&args, "--request") {
        return request(&opts, &file, num(&args, "--repeat", 1)?);
    }
    opts.max_batch = num(&args, "--max-batch", opts.max_batch)?;
    opts.prefill_chunk = arg(&args, "--prefill-chunk")
        .map(|n| n.parse())
        .transpose()?;
    if let Some(streams) = arg(&args, "--serve") {
        let report = serve::serve(
            &opts,
            streams.parse()?,
            num(&args, "--gen-tokens", 128)?,
            num(&args, "--long-prompt", 1000)?,
        )?;
        println!("{report}");
        return Ok(());
    }
    if let Some(question) = arg(&args, "--chat") {
        return chat(&opts, &question, num(&args, "--gen-tokens", 128)?);
    }
    let report = speed(
        &opts,
        num(&args, "--prompt-tokens", 512)?,
        num(&args, "--gen-tokens", 64)?,
    )?;
    println!("{report}");
    Ok(())
}

/// One OpenAI-shaped request body from a file; prints the answer and how it ended. With
/// --repeat N, later runs reuse the cached prompt, so their rate is decode speed (grammar masks
/// included when the request is constrained).
fn request(opts: &EngineOptions, file: &str, repeat: usize) -> BenchResult<()> {
    let engine = Engine::load(opts, None)?;
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    for run in 0..repeat.max(1) {
        let t0 = Instant::now();
        let (message, reason, usage) = engine.submit_json(&body)?.blocking_answer()?;
        let secs = t0.elapsed().as_secs_f64();
        if run == 0 {
            println!("{}", message.to_json());
        }
        println!(
            "{}",
            json!({
                "run": run, "finish_reason": reason, "completion_tokens": usage.completion_tokens,
                "seconds": secs, "tok_s": usage.completion_tokens as f64 / secs,
            })
        );
    }
    Ok(())
}

fn chat(opts: &EngineOptions, question: &str, max_tokens: usize) -> BenchResult<()> {
    let engine = Engine::load(opts, None)?;
    let body = json!({
        "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": max_tokens,
    });
    let mut generation = engine.submit_json(&body)?;
    while let Some(event) = generation.blocking_next() {
        match event? {
            Event::Text(t) => print!("{t}"),
            Event::Finished { reason, usage } => println!("\n[{reason:?} {usage:?}]"),
            call => println!("\n{call:?}"),
        }
    }
    Ok(())
}

/// The greedy next token, computed where the logits are: only the id crosses to the host.
fn greedy(logits: &Tensor) -> BenchResult<u32> {
    Ok(logits.argmax(0)?.to_scalar::<u32>()?)
}

/// Prefills `prompt` on `cache` in engine-sized chunks and returns the first token.
fn prefill(model: &Qwen2, prompt: &[u32], cache: &mut KvCache) -> BenchResult<u32> {
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        logits = Some(model.forward(chunk, cache)?);
    }
    greedy(&logits.ok_or("empty prompt")?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn speed(opts: &EngineOptions, prompt_tokens: usize, gen_tokens: usize) -> BenchResult<String> {
    let t0 = Instant::now();
    let selected = device::select(DeviceRequest::parse(&opts.device)?)?;
    let loaded = loader::load(
        Path::new(&opts.model_path),
        &LoadOptions {
            cpu_fallback_reason: selected.cpu_fallback_reason,
            ..LoadOptions::new(selected.device)
        },
        None,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = status_mib("VmRSS:");
    // A deterministic, realistic prompt: English prose tokenized by the model's own tokenizer.
    let text = "The quick brown fox jumps over the lazy dog while the engineers measure tokens per second. "
        .repeat(prompt_tokens / 8 + 1);
    let mut prompt = loaded.tokenizer.encode(&text, false)?;
    prompt.truncate(prompt_tokens.max(1));
    let model = &loaded.model;

    // First prefill of the process: includes the driver's one-time kernel compilation on GPUs.
    let mut cache = model.new_cache();
    cache.reserve(prompt.len() + gen_tokens)?;
    let t1 = Instant::now();
    prefill(model, &prompt, &mut cache)?;
    let first_prefill_s = t1.elapsed().as_secs_f64();

    // Warm: the same prompt on a fresh cache; its first token is the time to first token.
    let mut cache = model.new_cache();
    cache.reserve(prompt.len() + gen_tokens)?;
    model.device().synchronize()?;
    let t2 = Instant::now();
    let mut token = prefill(model, &prompt, &mut cache)?;
    let ttft_s = t2.elapsed().as_secs_f64();

    let mut steps = Vec::with_capacity(gen_tokens);
    let t3 = Instant::now();
    for _ in 0..gen_tokens {
        let ts = Instant::now();
        token = greedy(&model.forward(&[token], &mut cache)?)?;
        steps.push(ts.elapsed().as_secs_f64() * 1e3);
    }
    let decode_s = t3.elapsed().as_secs_f64();
    steps.sort_by(f64::total_cmp);
    let info = &loaded.info;
    Ok(json!({
        "engine": "qwen-native",
        "model": Path::new(&opts.model_path).file_name().map(|f| f.to_string_lossy().into_owned()),
        "parameters": info.parameters,
        "device": info.device,
        "gpu": device::gpu_info(model.device()),
        "cpu_fallback_reason": info.cpu_fallback_reason,
        "cpu_kernels": info.cpu_kernels,
        "fused_kernels": model.uses_fused_kernels(),
        "dtype": info.dtype,
        "threads": info.threads,
        "load_s": load_s,
        "rss_after_load_mib": rss_after_load,
        "prompt_tokens": prompt.len(),
        "first_prefill_s": first_prefill_s,
        "first_prefill_tok_s": prompt.len() as f64 / first_prefill_s,
        "prefill_tok_s": prompt.len() as f64 / ttft_s,
        "ttft_ms": ttft_s * 1e3,
        "gen_tokens": gen_tokens,
        "decode_tok_s": gen_tokens as f64 / decode_s,
        "decode_step_ms_p50": steps.get(steps.len() / 2),
        "decode_step_ms_p95": (!steps.is_empty()).then(|| percentile(&steps, 0.95)),
        "peak_rss_mib": status_mib("VmHWM:"),
    })
    .to_string())
}

/// Decodes `steps` tokens after `prompt`, greedily or, with `forced`, feeding those tokens (another
/// run's choices): the tokens and each step's logits (as f32).
fn run(
    model: &Qwen2,
    prompt: &[u32],
    steps: usize,
    forced: Option<&[u32]>,
) -> BenchResult<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut cache = model.new_cache();
    let mut logits = model.forward(prompt, &mut cache)?;
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let row = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let token = forced.map_or_else(|| argmax(&row), |f| f[step]);
        tokens.push(token);
        all.push(row);
        logits = model.forward(&[token], &mut cache)?;
    }
    Ok((tokens, all))
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Gap between the best and second-best logit: how close a step was to a tie.
fn margin(v: &[f32]) -> f32 {
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted.get(1).copied().unwrap_or(f32::NEG_INFINITY)
}

/// Largest |a - b| over all steps, and the steps whose top-1 tokens agree.
fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, usize) {
    let diff = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max);
    let top1 = a
        .iter()
        .zip(b)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (diff, top1)
}

/// CPU (f32) against `device` on a checkpoint directory of weights and config.json: greedy tokens
/// in f32 must be equal; bf16 logits, fed the CPU's tokens, must stay close.
fn parity(dir: &Path, device_arg: &str, steps: usize) -> BenchResult<String> {
    let cfg = ModelConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let selected = device::select(DeviceRequest::parse(device_arg)?)?;
    let load = |device: &Device, dtype: DType| -> BenchResult<Qwen2> {
        let mut src = HfDirSource::open(dir, Placement::new(device, Some(dtype)))?;
        Ok(Qwen2::load(&cfg, &mut src, steps + 64, dtype, device)?)
    };
    let prompt: Vec<u32> = (0..16u32)
        .map(|i| (i * 37 + 11) % cfg.vocab_size as u32)
        .collect();
    let cpu = load(&Device::Cpu, DType::F32)?;
    let (cpu_tokens, cpu_logits) = run(&cpu, &prompt, steps, None)?;
    let dev_f32 = load(&selected.device, DType::F32)?;
    let (dev_tokens, dev_logits) = run(&dev_f32, &prompt, steps, None)?;
    let first_difference = cpu_tokens.iter().zip(&dev_tokens).position(|(a, b)| a != b);
    let (_, forced_f32) = run(&dev_f32, &prompt, steps, Some(&cpu_tokens))?;
    let (f32_max_diff, _) = compare(&cpu_logits, &forced_f32);
    let dev_bf16 = load(&selected.device, DType::BF16)?;
    let (_, forced_bf16) = run(&dev_bf16, &prompt, steps, Some(&cpu_tokens))?;
    let (bf16_max_diff, bf16_top1) = compare(&cpu_logits, &forced_bf16);
    let logit_scale = cpu_logits
        .iter()
        .flatten()
        .fold(0.0f32, |m, x| m.max(x.abs()));
    Ok(json!({
        "parity": dir.file_name().map(|f| f.to_string_lossy().into_owned()),
        "device": device::name(&selected.device),
        "cpu_fallback_reason": selected.cpu_fallback_reason,
        "fused_kernels": dev_f32.uses_fused_kernels(),
        "steps": steps,
        "f32_tokens_equal": first_difference.is_none(),
        "f32_first_difference": first_difference.map(|i| json!({
            "step": i, "cpu": cpu_tokens[i], "device": dev_tokens[i],
            "cpu_margin": margin(&cpu_logits[i]), "device_margin": margin(&dev_logits[i]),
        })),
        "f32_max_abs_logit_diff": f32_max_diff,
        "bf16_max_abs_logit_diff": bf16_max_diff,
        "bf16_top1_agreement": bf16_top1,
        "max_abs_logit": logit_scale,
    })
    .to_string())
}
