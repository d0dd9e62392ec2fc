#!/usr/bin/env node
// Builds the native addon from source (release) and places it next to index.js as qwen-native.node.
// It builds the whole workspace with all targets, exactly the feature set `cargo test --release
// --workspace` (npm test) resolves, so tests reuse the addon's build instead of recompiling; and it
// runs plain cargo (no --target, unlike the napi CLI) so both share target/release.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const features = process.env.QWEN_NATIVE_FEATURES // e.g. "cuda"
const args = ['build', '--release', '--workspace', '--all-targets', ...(features ? ['--features', features] : [])]
const r = spawnSync('cargo', args, { cwd: root, stdio: 'inherit' })
if (r.error) {
  console.error(`[qwen-native] cannot run cargo (${r.error.message}); install Rust from https://rustup.rs`)
  process.exit(1)
}
if (r.status !== 0) process.exit(r.status ?? 1)

const lib = { linux: 'libqwen_native.so', darwin: 'libqwen_native.dylib', win32: 'qwen_native.dll' }[process.platform]
const built = join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'release', lib ?? '')
if (!lib || !existsSync(built)) {
  console.error(`[qwen-native] build finished but ${built} is missing`)
  process.exit(1)
}
copyFileSync(built, join(root, 'qwen-native.node'))
