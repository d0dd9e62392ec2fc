//! Benchmarks the engine with no Node: load time, prefill and decode tokens/s, peak RSS.
//!
//!   qwen-bench --model models/x.gguf [--prompt-tokens 512] [--gen-tokens 64] [--threads N]
//!              [--device cpu] [--chat "question"] [--request body.json [--repeat N]]
//!
//! Prints one JSON object on stdout.

use qwen_engine::engine::EngineOptions;
use qwen_engine::loader::{self, LoadOptions};
use qwen_engine::{Engine, Event};
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = arg(&args, "--model").ok_or("--model PATH is required")?;
    let mut opts = EngineOptions::new(&model);
    opts.threads = arg(&args, "--threads").map(|t| t.parse()).transpose()?;
    opts.device = arg(&args, "--device").unwrap_or_else(|| "auto".into());

    if let Some(file) = arg(&args, "--request") {
        // One OpenAI-shaped request body from a file; prints the answer and how it ended.
        // With --repeat N, later runs reuse the cached prompt, so their rate is decode speed
        // (grammar masks included when the request is constrained).
        let engine = Engine::load(&opts, None)?;
        let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
        let repeat: usize = arg(&args, "--repeat").map_or(Ok(1), |t| t.parse())?;
        for run in 0..repeat.max(1) {
            let t0 = Instant::now();
            let (message, reason, usage) = engine.submit_json(&body)?.blocking_answer()?;
            let secs = t0.elapsed().as_secs_f64();
            if run == 0 {
                println!("{}", message.to_json());
            }
            println!(
                "{}",
                serde_json::json!({
                    "run": run, "finish_reason": reason, "completion_tokens": usage.completion_tokens,
                    "seconds": secs, "tok_s": usage.completion_tokens as f64 / secs,
                })
            );
        }
        return Ok(());
    }

    if let Some(question) = arg(&args, "--chat") {
        let engine = Engine::load(&opts, None)?;
        let body = serde_json::json!({
            "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": arg(&args, "--gen-tokens").map_or(Ok(128), |t| t.parse::<u64>())?,
        });
        let mut generation = engine.submit_json(&body)?;
        while let Some(event) = generation.blocking_next() {
            match event? {
                Event::Text(t) => print!("{t}"),
                Event::Finished { reason, usage } => println!("\n[{reason:?} {usage:?}]"),
                call => println!("\n{call:?}"),
            }
        }
        return Ok(());
    }

    let prompt_tokens: usize = arg(&args, "--prompt-tokens").map_or(Ok(512), |t| t.parse())?;
    let gen_tokens: usize = arg(&args, "--gen-tokens").map_or(Ok(64), |t| t.parse())?;
    if let Some(n) = opts.threads {
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let t0 = Instant::now();
    let device = match opts.device.as_str() {
        "cpu" | "auto" => candle_core_device(&opts.device)?,
        d => candle_core_device(d)?,
    };
    let loaded = loader::load(
        std::path::Path::new(&model),
        &LoadOptions {
            device,
            dtype: None,
            context_length: None,
        },
        None,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    // A deterministic, realistic prompt: English prose tokenized by the model's own tokenizer.
    let text = "The quick brown fox jumps over the lazy dog while the engineers measure tokens per second. ".repeat(prompt_tokens / 8 + 1);
    let mut prompt = loaded.tokenizer.encode(&text, false)?;
    prompt.truncate(prompt_tokens);
    let model = &loaded.model;
    let mut cache = model.new_cache();
    cache.reserve(prompt.len() + gen_tokens)?;
    let t1 = Instant::now();
    let mut logits = None;
    for chunk in prompt.chunks(512) {
        logits = Some(model.forward(chunk, &mut cache)?);
    }
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut token = argmax(&logits.ok_or("empty prompt")?.to_vec1::<f32>()?);
    let t2 = Instant::now();
    for _ in 0..gen_tokens {
        let logits = model.forward(&[token], &mut cache)?;
        token = argmax(&logits.to_vec1::<f32>()?);
    }
    let decode_s = t2.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "engine": "qwen-native",
            "model": model_name(&model_path_display(&args)),
            "threads": loaded.info.threads,
            "device": loaded.info.device,
            "load_s": load_s,
            "prompt_tokens": prompt.len(),
            "prefill_tok_s": prompt.len() as f64 / prefill_s,
            "gen_tokens": gen_tokens,
            "decode_tok_s": gen_tokens as f64 / decode_s,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

fn candle_core_device(
    name: &str,
) -> Result<qwen_engine::candle_core::Device, Box<dyn std::error::Error>> {
    Ok(match name {
        "cpu" => qwen_engine::candle_core::Device::Cpu,
        "auto" => qwen_engine::candle_core::Device::cuda_if_available(0)?,
        d => qwen_engine::candle_core::Device::new_cuda(
            d.strip_prefix("cuda:").unwrap_or("0").parse()?,
        )?,
    })
}

fn model_path_display(args: &[String]) -> String {
    arg(args, "--model").unwrap_or_default()
}

fn model_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}
