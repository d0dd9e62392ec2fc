//! Converts between model formats.
//!
//!   qwen-export <model.gguf> <out-dir> [bf16|f16|f32]
//!       a Qwen2 GGUF file as a Hugging Face directory (dequantized safetensors)
//!   qwen-export --gguf <hf-dir> <tokenizer.gguf> <out.gguf> [q4k|q5k|q6k|q8_0|f16]
//!       a Hugging Face directory as a GGUF file, matrices quantized, the tokenizer and chat
//!       template taken from another GGUF file of the same vocabulary
//!   qwen-export --metadata <model.gguf> <out.gguf>
//!       the metadata of a GGUF file (tokenizer, template), without its tensors

use qwen_engine::candle_core::quantized::GgmlDType;
use qwen_engine::candle_core::DType;

const USAGE: &str = "usage: qwen-export <model.gguf> <out-dir> [bf16|f16|f32]\n       \
qwen-export --gguf <hf-dir> <tokenizer.gguf> <out.gguf> [q4k|q5k|q6k|q8_0|f16]\n       \
qwen-export --metadata <model.gguf> <out.gguf>";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--metadata") {
        let [_, gguf, out] = args.as_slice() else {
            return Err(USAGE.into());
        };
        qwen_engine::export::gguf_metadata_only(gguf.as_ref(), out.as_ref())?;
        eprintln!("wrote {out}");
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("--gguf") {
        let [_, dir, tokenizer, out, rest @ ..] = args.as_slice() else {
            return Err(USAGE.into());
        };
        let quantization = match rest.first().map(String::as_str).unwrap_or("q4k") {
            "q4k" => GgmlDType::Q4K,
            "q5k" => GgmlDType::Q5K,
            "q6k" => GgmlDType::Q6K,
            "q8_0" => GgmlDType::Q8_0,
            "f16" => GgmlDType::F16,
            other => return Err(format!("unknown quantization {other}\n{USAGE}").into()),
        };
        qwen_engine::export::hf_dir_to_gguf(
            dir.as_ref(),
            tokenizer.as_ref(),
            quantization,
            out.as_ref(),
        )?;
        eprintln!("wrote {out}");
        return Ok(());
    }
    let [gguf, out, rest @ ..] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let dtype = match rest.first().map(String::as_str).unwrap_or("bf16") {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => return Err(format!("unknown dtype {other}\n{USAGE}").into()),
    };
    qwen_engine::export::gguf_to_hf_dir(gguf.as_ref(), out.as_ref(), dtype)?;
    eprintln!("wrote {out}");
    Ok(())
}
