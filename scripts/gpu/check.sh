#!/bin/bash
# The GPU check, one command on a GPU machine that has only what scripts/gpu/prepare.mjs staged in
# .gpu-carry/ (the CUDA qwen-bench, xz-compressed, and tokenizer files) plus this repository: no
# Rust, no network. Needs python3 with torch, transformers and tokenizers, and the CUDA libraries
# as pip packages (nvidia/*/lib in site-packages) or on LD_LIBRARY_PATH.
#   OUT=/some/dir bash scripts/gpu/check.sh [stage...]
# Writes the raw JSON of every step and gpu-check.json (scripts/gpu/summarize.py) under $OUT.
set -u
: "${OUT:?set OUT to the folder for results}"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=$REPO/.gpu-carry
WORK=${GPU_CHECK_WORK:-/tmp/qwen-gpu-check}
MODELS=$WORK/models
# Every stage's results, kept across calls on a warm machine and copied to $OUT at the end.
RESULTS=$WORK/results
mkdir -p "$MODELS" "$RESULTS"
exec > >(tee -a "$OUT/log.txt" "$RESULTS/log.txt") 2>&1
step() { echo; echo "=== [t+${SECONDS}s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
nproc; free -g | head -2
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LIBS=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"

step "unpack qwen-bench and qwen-export"
python3 - "$CARRY" "$WORK" <<'EOF'
import lzma, os, shutil, sys
carry, work = sys.argv[1:]
for name in ("qwen-bench", "qwen-export"):
    with lzma.open(os.path.join(carry, name + ".xz")) as src, open(os.path.join(work, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(os.path.join(work, name), 0o755)
EOF
QB=$WORK/qwen-bench
cat "$CARRY/build.json"
ldd "$QB" | grep -iE "cuda|cublas|curand|nvrtc|not found" || echo "no CUDA library linked (loaded at run time)"

# Stages, in order; name some to run only those (a warm machine keeps $WORK between calls, so
# `check.sh parity models gguf` then `check.sh bench serve summary` splits the check in two calls).
STAGES=${*:-parity models gguf bench serve summary}
want() { [[ " $STAGES " == *" $1 "* ]]; }
# QWEN_NATIVE_FUSED_KERNELS=0 runs candle's ops instead of our fused kernels: the A/B comparison.
CANDLE_OPS=QWEN_NATIVE_FUSED_KERNELS=0
TINY=$REPO/crates/engine/tests/fixtures/tiny-qwen2

parity() { # tag dir steps [env...]
  local tag=$1 dir=$2 steps=$3; shift 3
  step "parity $tag: CPU f32 vs CUDA f32 (greedy tokens, logits fed the same tokens) and bf16 (logits)"
  env "$@" timeout 300 "$QB" --parity "$dir" --device cuda --steps "$steps" > "$RESULTS/$tag.json" 2> "$RESULTS/$tag.err"
  echo "rc=$?"; cat "$RESULTS/$tag.json"; tail -c 2000 "$RESULTS/$tag.err"
}
if want parity; then
  # The tiny model's head_dim is 16; the random 0.5B (64) and 3B (128, 8 query heads per KV head)
  # run the other attention kernels, in the models stage once those exist.
  parity parity "$TINY" 32
  parity parity_candle_ops "$TINY" 32 $CANDLE_OPS
fi

if want models; then
  if [ -s "$RESULTS/hf.json" ] && [ -d "$MODELS/m7" ]; then
    echo "models already made"
  else
    step "random-weight models, copy bandwidth, transformers baseline"
    timeout 420 python3 "$REPO/scripts/gpu/models.py" "$CARRY/tok" "$MODELS" > "$RESULTS/hf.json"
    echo "rc=$?"; cat "$RESULTS/hf.json"
  fi
  parity parity_m05 "$MODELS/m05" 16
  parity parity_m3 "$MODELS/m3" 8
fi

if want gguf; then
  # Quantized 7B models for cards where bf16 does not fit: Q4_K (the bulk of a Q4_K_M file) and
  # Q8_0, written from the random bf16 weights with the default model's vocabulary.
  for q in q4k q8_0; do
    if [ -s "$MODELS/m7_$q.gguf" ]; then echo "m7_$q.gguf already made"; continue; fi
    step "qwen-export: m7 as $q GGUF"
    timeout 300 "$WORK/qwen-export" --gguf "$MODELS/m7" "$CARRY/tok/tokenizer.gguf" "$MODELS/m7_$q.gguf" "$q"
    echo "rc=$?"; ls -la "$MODELS/m7_$q.gguf"
  done
fi

bench() { # tag model prompt_tokens [env...]
  local tag=$1 model=$2 n=$3; shift 3
  step "qwen-bench $tag"
  env "$@" timeout 120 "$QB" --model "$MODELS/$model" --device cuda --prompt-tokens "$n" --gen-tokens 128 \
    > "$RESULTS/qb_$tag.json" 2> "$RESULTS/qb_$tag.err"
  echo "rc=$?"; cat "$RESULTS/qb_$tag.json"; tail -c 2000 "$RESULTS/qb_$tag.err"
}
if want bench; then
  # The driver's kernel cache starts empty, so the first run pays what a fresh machine pays once:
  # nothing, if every kernel's machine code for this GPU is in the binary as it should be.
  export CUDA_CACHE_PATH=$WORK/nv-cache
  rm -rf "$CUDA_CACHE_PATH"
  bench m7_cold m7 512
  for m in m05 m15 m3 m7; do bench "${m}_512" "$m" 512; done
  bench m7_512_candle_ops m7 512 $CANDLE_OPS
  bench m05_512_candle_ops m05 512 $CANDLE_OPS
  bench m7_1024 m7 1024
  bench m7_2048 m7 2048
  for q in q4k q8_0; do
    [ -s "$MODELS/m7_$q.gguf" ] && bench "m7_${q}_512" "m7_$q.gguf" 512
  done
fi

if want serve; then
  step "qwen-bench serve: 8 streams at once on the 7B"
  timeout 180 "$QB" --model "$MODELS/m7" --device cuda --serve 8 --gen-tokens 128 > "$RESULTS/serve_m7_8.json" 2> "$RESULTS/serve_m7_8.err"
  echo "rc=$?"; cat "$RESULTS/serve_m7_8.json"; tail -c 2000 "$RESULTS/serve_m7_8.err"
fi

if want summary; then
  step "summary"
  python3 "$REPO/scripts/gpu/summarize.py" "$RESULTS" "$MODELS" | tee "$RESULTS/gpu-check.json"
fi
cp -r "$RESULTS"/. "$OUT"/
step "done"
