#!/usr/bin/env node
// Stages the GPU check (scripts/gpu/check.sh) in .gpu-carry/, on a machine without a GPU:
// the CUDA qwen-bench built for CUDA_COMPUTE_CAP (default 90: H100/H200) and qwen-export (which
// makes the quantized GGUF models there), xz-compressed to fit a 64 MiB carry, the build record,
// and the default model's tokenizer files and GGUF metadata (for the random models).
//   npm install && node scripts/gpu/prepare.mjs
// Then, on the GPU machine, from the repository root: OUT=<dir> bash scripts/gpu/check.sh
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { BUILD_INFO, root } from '../build.mjs'

const carry = path.join(root, '.gpu-carry')
const run = (cmd, args, env) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })

run(process.execPath, [path.join(root, 'scripts', 'build-cuda.mjs')], { CUDA_COMPUTE_CAP: process.env.CUDA_COMPUTE_CAP ?? '90' })
rmSync(carry, { recursive: true, force: true })
mkdirSync(path.join(carry, 'tok'), { recursive: true })
copyFileSync(path.join(root, BUILD_INFO), path.join(carry, 'build.json'))
execFileSync('sh', ['-c', `xz -9 -T2 -c target/cuda/release/qwen-bench > .gpu-carry/qwen-bench.xz`], { cwd: root, stdio: 'inherit' })

// The tokenizer files of the default model, as a Hugging Face directory writes them, and its GGUF
// metadata alone (the vocabulary qwen-export gives the quantized random models made there).
const defaultModel = path.join('models', 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')
const exported = mkdtempSync(path.join(tmpdir(), 'qwen-export-'))
try {
  run('cargo', ['run', '--release', '-q', '-p', 'qwen-engine', '--bin', 'qwen-export', '--', defaultModel, exported])
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(path.join(exported, f), path.join(carry, 'tok', f))
} finally {
  rmSync(exported, { recursive: true, force: true })
}
// qwen-export is a CPU build (no CUDA), portable like the addon.
run(path.join('target', 'release', 'qwen-export'), ['--metadata', defaultModel, path.join(carry, 'tok', 'tokenizer.gguf')])
execFileSync('sh', ['-c', `xz -9 -T2 -c target/release/qwen-export > .gpu-carry/qwen-export.xz`], { cwd: root, stdio: 'inherit' })
const mib = (f) => (statSync(path.join(carry, ...f)).size / 2 ** 20).toFixed(1)
console.log(`.gpu-carry staged (qwen-bench.xz ${mib(['qwen-bench.xz'])} MiB, qwen-export.xz ${mib(['qwen-export.xz'])} MiB, tokenizer.gguf ${mib(['tok', 'tokenizer.gguf'])} MiB). On the GPU machine: OUT=<dir> bash scripts/gpu/check.sh`)
