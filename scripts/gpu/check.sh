#!/bin/bash
# The GPU check, one command on a GPU machine that has only what scripts/gpu/prepare.mjs staged in
# .gpu-carry/ (the CUDA qwen-bench, xz-compressed, and tokenizer files) plus this repository: no
# Rust, no network. Needs python3 with torch, transformers and tokenizers, and the CUDA libraries
# as pip packages (nvidia/*/lib in site-packages) or on LD_LIBRARY_PATH.
#   OUT=/some/dir bash scripts/gpu/check.sh
# Writes the raw JSON of every step and gpu-check.json (scripts/gpu/summarize.py) under $OUT.
set -u
: "${OUT:?set OUT to the folder for results}"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=$REPO/.gpu-carry
WORK=${GPU_CHECK_WORK:-/tmp/qwen-gpu-check}
MODELS=$WORK/models
mkdir -p "$MODELS"
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo; echo "=== [t+${SECONDS}s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
nproc; free -g | head -2
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LIBS=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"

step "unpack qwen-bench"
python3 - "$CARRY" "$WORK" <<'EOF'
import lzma, os, shutil, sys
carry, work = sys.argv[1:]
with lzma.open(os.path.join(carry, "qwen-bench.xz")) as src, open(os.path.join(work, "qwen-bench"), "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(os.path.join(work, "qwen-bench"), 0o755)
EOF
QB=$WORK/qwen-bench
cat "$CARRY/build.json"
ldd "$QB" | grep -iE "cuda|cublas|curand|nvrtc|not found" || echo "no CUDA library linked (loaded at run time)"

step "parity: CPU f32 vs CUDA f32 (greedy tokens) and bf16 (logits) on the tiny random Qwen2"
timeout 120 "$QB" --parity "$REPO/crates/engine/tests/fixtures/tiny-qwen2" --device cuda --steps 32 | tee "$OUT/parity.json"

step "random-weight models, copy bandwidth, transformers baseline"
timeout 420 python3 "$REPO/scripts/gpu/models.py" "$CARRY/tok" "$MODELS" > "$OUT/hf.json"
echo "rc=$?"; cat "$OUT/hf.json"

bench() { # tag model prompt_tokens [env...]
  local tag=$1 model=$2 n=$3; shift 3
  step "qwen-bench $tag"
  env "$@" timeout 120 "$QB" --model "$MODELS/$model" --device cuda --prompt-tokens "$n" --gen-tokens 128 \
    > "$OUT/qb_$tag.json" 2> "$OUT/qb_$tag.err"
  echo "rc=$?"; cat "$OUT/qb_$tag.json"; tail -c 2000 "$OUT/qb_$tag.err"
}
# The driver's kernel cache starts empty, so the first run pays what a fresh machine pays once
# (compiling the PTX kernels); the runs after it find them compiled.
export CUDA_CACHE_PATH=$WORK/nv-cache
rm -rf "$CUDA_CACHE_PATH"
bench m7_cold m7 512
for m in m05 m15 m3 m7; do bench "${m}_512" "$m" 512; done
bench m7_1024 m7 1024
bench m7_2048 m7 2048

step "summary"
python3 "$REPO/scripts/gpu/summarize.py" "$OUT" "$MODELS" | tee "$OUT/gpu-check.json"
step "done"
