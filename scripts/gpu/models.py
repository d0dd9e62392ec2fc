# Runs on the GPU machine (scripts/gpu/check.sh): makes random-weight Qwen2.5-shaped models in bf16
# safetensors for qwen-bench, measures the GPU's copy bandwidth, and benchmarks HF transformers on
# the 7B shape in the same run (the baseline qwen-bench is compared with).
#   python3 scripts/gpu/models.py TOKENIZER_DIR MODELS_DIR > hf.json
import json, os, shutil, sys, time

import torch
import transformers
from tokenizers import Tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

TOKENIZER_DIR, MODELS_DIR = sys.argv[1], sys.argv[2]
# name: hidden, intermediate, layers, heads, kv_heads, vocab, tied embeddings (the published shapes)
SHAPES = {
    "m05": (896, 4864, 24, 14, 2, 151936, True),
    "m15": (1536, 8960, 28, 12, 2, 151936, True),
    "m3": (2048, 11008, 36, 16, 2, 151936, True),
    "m7": (3584, 18944, 28, 28, 4, 152064, False),
}
# The prompt qwen-bench uses, so both engines read the same tokens.
TEXT = "The quick brown fox jumps over the lazy dog while the engineers measure tokens per second. "
result = {"torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0)}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def config(shape):
    h, i, layers, heads, kv, vocab, tied = shape
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32768,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tied, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
    )
    if getattr(cfg, "rope_parameters", None) is not None:  # transformers 5
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": 1e6}
    return cfg


def make(name):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config(SHAPES[name]))
    torch.set_default_dtype(torch.float32)
    model = model.to(torch.bfloat16).eval()
    dest = os.path.join(MODELS_DIR, name)
    t = time.perf_counter()
    model.save_pretrained(dest)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(os.path.join(TOKENIZER_DIR, f), os.path.join(dest, f))
    log(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, saved in {time.perf_counter() - t:.1f}s")
    return model


def copy_bandwidth():
    """Device-to-device copy, GB/s of bytes read (the bound decode is measured against)."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    return n * reps / (time.perf_counter() - t) / 1e9


def hf_bench(model, n):
    """transformers on the same weights: first and warm prefill, and a greedy decode loop."""
    tok = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
    ids = torch.tensor([tok.encode(TEXT * (n // 8 + 1), add_special_tokens=False).ids[:n]], device="cuda")
    r = {"prompt_tokens": n}
    with torch.inference_mode():
        def prefill():
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1)
            token.item()
            return time.perf_counter() - t, out, token
        r["first_prefill_s"] = prefill()[0]
        warm = [prefill() for _ in range(3)]
        times = sorted(w[0] for w in warm)
        r["prefill_s"] = times[1]
        r["prefill_tok_s"] = n / times[1]
        _, out, token = warm[-1]
        past, steps = out.past_key_values, []
        for _ in range(64):
            t = time.perf_counter()
            out = model(token[:, None], past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1)
            token.item()
            steps.append(time.perf_counter() - t)
        steps.sort()
        r["decode_step_ms_p50"] = steps[len(steps) // 2] * 1e3
        r["decode_tok_s"] = 1e3 / r["decode_step_ms_p50"]
    return r


result["copy_gb_s"] = copy_bandwidth()
for name in ["m05", "m15", "m3"]:
    make(name)  # saved for qwen-bench; the weights are freed here
    torch.cuda.empty_cache()
model = make("m7")
for n in (512, 1024, 2048):
    result[f"hf_m7_{n}"] = hf_bench(model, n)
    log(f"hf {n}: {json.dumps(result[f'hf_m7_{n}'])}")
print(json.dumps(result, indent=1))
