//! Converts a Qwen2 GGUF file into a Hugging Face model directory (dequantized safetensors).
//!
//!   qwen-export <model.gguf> <out-dir> [bf16|f16|f32]

use qwen_engine::candle_core::DType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(gguf), Some(out)) = (args.get(1), args.get(2)) else {
        return Err("usage: qwen-export <model.gguf> <out-dir> [bf16|f16|f32]".into());
    };
    let dtype = match args.get(3).map(String::as_str).unwrap_or("bf16") {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => return Err(format!("unknown dtype {other}").into()),
    };
    qwen_engine::export::gguf_to_hf_dir(gguf.as_ref(), out.as_ref(), dtype)?;
    eprintln!("wrote {out}");
    Ok(())
}
