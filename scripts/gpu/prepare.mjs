#!/usr/bin/env node
// Stages the GPU check (scripts/gpu/check.sh) in .gpu-carry/, on a machine without a GPU:
// the CUDA qwen-bench built for CUDA_COMPUTE_CAP (default 90: H100/H200), xz-compressed to fit a
// 64 MiB carry, its build record, and the default model's tokenizer files (for the random models).
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

// The tokenizer files of the default model, as a Hugging Face directory writes them.
const exported = mkdtempSync(path.join(tmpdir(), 'qwen-export-'))
try {
  run('cargo', ['run', '--release', '-q', '-p', 'qwen-engine', '--bin', 'qwen-export', '--', path.join('models', 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf'), exported])
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(path.join(exported, f), path.join(carry, 'tok', f))
} finally {
  rmSync(exported, { recursive: true, force: true })
}
const mib = statSync(path.join(carry, 'qwen-bench.xz')).size / 2 ** 20
console.log(`.gpu-carry staged (qwen-bench.xz ${mib.toFixed(1)} MiB). On the GPU machine: OUT=<dir> bash scripts/gpu/check.sh`)
