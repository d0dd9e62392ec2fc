#!/usr/bin/env node
// Builds the native addon from source (release, CPU) and places it next to index.js as
// qwen-native.node, with qwen-native.build.json saying how it was built (pack.mjs reads it).
// It builds the whole workspace with all targets, exactly the feature set `cargo test --release
// --workspace` (npm test) resolves, so tests reuse the addon's build instead of recompiling; and it
// runs plain cargo (no --target, unlike the napi CLI) so both share target/release.
// The default build targets baseline x86-64 (or the platform's baseline) and runs on any CPU of the
// platform: our kernels choose AVX2 or AVX-512 VNNI at run time. QWEN_NATIVE_TARGET_CPU=native (or a
// level such as x86-64-v3) tunes the rest of the code to a CPU; pack.mjs refuses a native build.
// The CUDA build is scripts/build-cuda.mjs (`npm run build:cuda`).
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const ADDON = 'qwen-native.node'
export const BUILD_INFO = 'qwen-native.build.json'

/** Runs cargo with `args` in the repository, exiting this process with a message if it fails. */
export function cargo(args, env = process.env) {
  const r = spawnSync('cargo', args, { cwd: root, stdio: 'inherit', env })
  if (r.error) {
    console.error(`[qwen-native] cannot run cargo (${r.error.message}); install Rust from https://rustup.rs`)
    process.exit(1)
  }
  if (r.status !== 0) process.exit(r.status ?? 1)
}

/** RUSTFLAGS for a build tuned to `targetCpu`, or the environment's own when there is none. */
export function rustflags(targetCpu, extra = []) {
  if (!targetCpu) return process.env.RUSTFLAGS
  return [process.env.RUSTFLAGS, `-C target-cpu=${targetCpu}`, ...extra].filter(Boolean).join(' ')
}

/** Copies the built library from `targetDir` to qwen-native.node and records `info` beside it. */
export function installAddon(targetDir, info) {
  const lib = { linux: 'libqwen_native.so', darwin: 'libqwen_native.dylib', win32: 'qwen_native.dll' }[process.platform]
  const built = join(targetDir, 'release', lib ?? '')
  if (!lib || !existsSync(built)) {
    console.error(`[qwen-native] build finished but ${built} is missing`)
    process.exit(1)
  }
  copyFileSync(built, join(root, ADDON))
  writeFileSync(join(root, BUILD_INFO), `${JSON.stringify(info, null, 2)}\n`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const targetCpu = process.env.QWEN_NATIVE_TARGET_CPU
  const env = { ...process.env }
  if (targetCpu) env.RUSTFLAGS = rustflags(targetCpu)
  cargo(['build', '--release', '--workspace', '--all-targets'], env)
  installAddon(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), {
    features: [],
    targetCpu: targetCpu ?? 'baseline',
  })
}
