"""Writes crates/engine/tests/fixtures/tiny-qwen2/: a tiny Qwen2 checkpoint with random weights, made
and run by HF transformers, and transformers' logits for a fixed token sequence. The Rust engine must
load the checkpoint through its safetensors path and reproduce the logits.

Run (once, when the fixture should change):
  python -m venv .venv && .venv/bin/pip install torch transformers
  .venv/bin/python scripts/reference/tiny_qwen2.py
"""
import json
from pathlib import Path

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

OUT = Path(__file__).resolve().parents[2] / "crates/engine/tests/fixtures/tiny-qwen2"


def main() -> None:
    torch.manual_seed(20261126)
    cfg = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    # Every parameter random (biases and norm weights too), so every code path shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    model.save_pretrained(OUT, safe_serialization=True)
    ids = torch.randint(0, cfg.vocab_size, (1, 24))
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    (OUT / "reference.json").write_text(json.dumps({
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "input_ids": ids[0].tolist(),
        "logits": [[round(x, 6) for x in row] for row in logits.tolist()],
    }) + "\n")
    for extra in ["generation_config.json"]:
        (OUT / extra).unlink(missing_ok=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
