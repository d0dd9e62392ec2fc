#!/usr/bin/env node
// Cross-builds the Windows x64 addon on Linux (`npm run build:win`): target x86_64-pc-windows-gnu,
// linked by MinGW-w64, for any x86-64 CPU (never target-cpu=native; our kernels pick AVX2 or
// AVX-512 at run time as on Linux). Writes qwen-native.win32-x64-gnu.node and its build record;
// `node scripts/pack.mjs --target win32-x64-gnu` packs it as the qwen-native-win32-x64-gnu package.
//
// Needs the Rust target and the MinGW linker; on a Debian/Ubuntu machine run as root (CI) both
// are installed when missing (rustup target add, apt-get install mingw-w64).
// Building on Windows itself needs none of this: `npm install` there builds with MSVC (README).
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { aptInstall } from './apt.mjs'
import { cargo, root } from './build.mjs'

export const WIN_TARGET = 'x86_64-pc-windows-gnu'
export const WIN_TRIPLE = 'win32-x64-gnu'
export const WIN_ADDON = `qwen-native.${WIN_TRIPLE}.node`
const LINKER = 'x86_64-w64-mingw32-gcc'

function has(cmd, args = ['--version']) {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0
}

function run(cmd, args, env = process.env) {
  console.log(`[build-win] ${cmd} ${args.join(' ')}`)
  return spawnSync(cmd, args, { stdio: 'inherit', env }).status === 0
}

function fail(message) {
  console.error(`[build-win] ${message}`)
  process.exit(1)
}

/** The MinGW linker, installed if it is missing and can be. */
export function ensureMingw() {
  if (!has(LINKER) && !aptInstall(['mingw-w64'])) {
    fail(`${LINKER} not found: install MinGW-w64 (Debian/Ubuntu: apt-get install mingw-w64)`)
  }
}

function ensureRustTarget() {
  const installed = spawnSync('rustup', ['target', 'list', '--installed'], { encoding: 'utf8' })
  if (installed.status !== 0) fail('rustup not found: the cross-build needs rustup (https://rustup.rs)')
  if (!installed.stdout.split('\n').includes(WIN_TARGET) && !run('rustup', ['target', 'add', WIN_TARGET])) {
    fail(`cannot add the Rust target ${WIN_TARGET}`)
  }
}

export function buildWindows() {
  ensureRustTarget()
  ensureMingw()
  // napi's build script insists on finding a libnode.dll for *-windows-gnu targets. With the
  // dyn-symbols feature (Cargo.toml) nothing is linked from it: an empty file satisfies the check.
  const libnode = join(root, 'target', 'windows-libnode')
  mkdirSync(libnode, { recursive: true })
  writeFileSync(join(libnode, 'libnode.dll'), '')
  const env = {
    ...process.env,
    LIBNODE_PATH: libnode,
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER: LINKER,
  }
  delete env.RUSTFLAGS // a host's tuning flags must not reach a prebuilt for other machines
  cargo(['build', '--release', '-p', 'qwen-native', '--target', WIN_TARGET], env)
  const built = join(root, 'target', WIN_TARGET, 'release', 'qwen_native.dll')
  if (!existsSync(built)) fail(`build finished but ${built} is missing`)
  copyFileSync(built, join(root, WIN_ADDON))
  writeFileSync(join(root, `qwen-native.${WIN_TRIPLE}.build.json`), `${JSON.stringify({ features: [], targetCpu: 'baseline', target: WIN_TARGET }, null, 2)}\n`)
  return join(root, WIN_ADDON)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const t0 = performance.now()
  const addon = buildWindows()
  console.log(`[build-win] ${addon} (${((performance.now() - t0) / 1000).toFixed(0)} s)`)
}
