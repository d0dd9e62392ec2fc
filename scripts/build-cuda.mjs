#!/usr/bin/env node
// `npm run build:cuda`: builds the CUDA addon (qwen-native.node) and the qwen-bench binary on
// Linux x64, with or without a CUDA toolkit installed.
//
// - Compiler: nvcc from CUDA_PATH or PATH; when there is none, the pinned CUDA 13.0 compiler
//   wheels are installed from PyPI (pip) into a cache, once (QWEN_NATIVE_CUDA_CACHE, default
//   ~/.cache/qwen-native/cuda-13.0). No GPU is needed to build.
// - Libraries: nothing CUDA is linked dynamically. cudart is linked statically; the driver,
//   cuBLAS, cuBLASLt, cuRAND and NVRTC are loaded at run time (cudarc's dynamic loading, which
//   candle-core 0.11 does not enable: patched copies of candle's crates serve this build only).
//   So the addon loads on any Linux x64 machine: `device: 'auto'` falls back to the CPU where CUDA
//   is unusable and `device: 'cuda'` names what is missing.
// - Kernels: CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 89 for L4/RTX 40xx, 80 for A100), default the
//   local GPU's, else 80. candle's kernels are machine code for that architecture (so the driver
//   compiles nothing on a machine's first run) plus PTX, which runs on later GPUs up to sm_89 and,
//   from sm_90 on, only on that one architecture (candle compiles for sm_90a and the like). The
//   quantized (GGUF) kernels are machine code for that architecture's generation only.
// - CPU code: portable x86-64-v3 (AVX2/FMA), not target-cpu=native (QWEN_NATIVE_TARGET_CPU overrides).
// Output: qwen-native.node + qwen-native.build.json, and target/cuda/release/qwen-bench.
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import path from 'node:path'
import { cargo, installAddon, root, rustflags } from './build.mjs'

const CUDA_VERSION = '13.0'
// The device machines' driver is CUDA 13.0: PTX from a newer nvcc would not load there.
const COMPILER_WHEELS = [
  'nvidia-cuda-nvcc==13.0.88',
  'nvidia-nvvm==13.0.88',
  'nvidia-cuda-crt==13.0.88',
  'nvidia-cuda-runtime==13.0.96',
  'nvidia-cuda-cccl<13.1',
]
const targetDir = path.join(root, 'target', 'cuda')

function log(msg) {
  console.error(`[qwen-native] ${msg}`)
}

function fail(msg) {
  log(msg)
  process.exit(1)
}

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { encoding: 'utf8', ...opts })
}

/** nvcc's release, e.g. "13.0", or null when `nvcc` cannot run. */
function nvccVersion(nvcc) {
  const r = run(nvcc, ['--version'])
  return r.status === 0 ? /release (\d+\.\d+)/.exec(r.stdout)?.[1] ?? null : null
}

/** The toolkit folder holding bin/nvcc: CUDA_PATH, PATH's nvcc, or the pinned wheels (fetched once). */
function toolkit() {
  for (const dir of [process.env.CUDA_PATH, process.env.CUDA_HOME].filter(Boolean)) {
    const version = nvccVersion(path.join(dir, 'bin', 'nvcc'))
    if (version) return { dir, version }
  }
  const which = run('sh', ['-c', 'command -v nvcc'])
  if (which.status === 0) {
    const nvcc = which.stdout.trim()
    const version = nvccVersion(nvcc)
    if (version) return { dir: path.dirname(path.dirname(nvcc)), version }
  }
  const cache = process.env.QWEN_NATIVE_CUDA_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'qwen-native', `cuda-${CUDA_VERSION}`)
  const dir = path.join(cache, 'compiler', 'nvidia', 'cu13')
  if (!nvccVersion(path.join(dir, 'bin', 'nvcc'))) {
    log(`no nvcc found: installing the CUDA ${CUDA_VERSION} compiler wheels into ${cache} (~270 MB, once)`)
    rmSync(path.join(cache, 'compiler'), { recursive: true, force: true })
    mkdirSync(cache, { recursive: true })
    const pip = run('python3', ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--target', path.join(cache, 'compiler'), ...COMPILER_WHEELS], { stdio: 'inherit' })
    if (pip.error || pip.status !== 0) fail('pip could not install the CUDA compiler wheels: install python3 with pip, or a CUDA toolkit (set CUDA_PATH)')
  }
  const version = nvccVersion(path.join(dir, 'bin', 'nvcc'))
  if (!version) fail(`${dir}/bin/nvcc does not run`)
  return { dir, version }
}

/** The GPU architecture to compile for, as "90": CUDA_COMPUTE_CAP, the local GPU, or 80. */
function computeCap() {
  if (process.env.CUDA_COMPUTE_CAP) return process.env.CUDA_COMPUTE_CAP.replace('.', '')
  const smi = run('nvidia-smi', ['--query-gpu=compute_cap', '--format=csv,noheader'])
  const local = smi.status === 0 ? smi.stdout.split('\n')[0].trim().replace('.', '') : ''
  if (/^\d+$/.test(local)) return local
  log('no GPU here and no CUDA_COMPUTE_CAP: compiling for sm_80 (A100) and newer')
  return '80'
}

/** A folder where `-lcudart` finds only the static runtime (the linker prefers a .so in the same folder). */
function staticCudartDir(cuda) {
  const lib = ['lib64', 'lib'].map((d) => path.join(cuda, d, 'libcudart_static.a')).find(existsSync)
  if (!lib) fail(`${cuda} has no libcudart_static.a`)
  const dir = path.join(targetDir, 'link')
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  symlinkSync(lib, path.join(dir, 'libcudart.a'))
  return dir
}

/** Where cargo keeps each crate's sources: { name: { version, dir } }. */
function cratePackages() {
  const meta = run('cargo', ['metadata', '--format-version', '1', '--locked', '--features', 'qwen-native/cuda'], { cwd: root, maxBuffer: 256 << 20 })
  if (meta.status !== 0) fail(`cargo metadata failed:\n${meta.stderr}`)
  return Object.fromEntries(JSON.parse(meta.stdout).packages.map((p) => [p.name, { version: p.version, dir: path.dirname(p.manifest_path) }]))
}

/**
 * A copy of a crate's sources under target/cuda with `edits` made: { file: [[from, to], ...] }
 * (each `from` must occur: a new candle release that moved it needs this script reviewed) and
 * `added` files copied in: { file: source }. Returns the copy's folder.
 */
function patchedCrate(pkg, name, edits, added = {}) {
  const dest = path.join(targetDir, `${name}-${pkg.version}-patched`)
  const files = {}
  for (const [file, replacements] of Object.entries(edits)) {
    let text = readFileSync(path.join(pkg.dir, file), 'utf8')
    for (const [from, to] of replacements) {
      if (!text.includes(from)) fail(`${name} ${pkg.version}'s ${file} no longer has ${JSON.stringify(from)}: review scripts/build-cuda.mjs`)
      text = text.replace(from, to)
    }
    files[file] = text
  }
  for (const [file, source] of Object.entries(added)) files[file] = readFileSync(source, 'utf8')
  // A fresh copy would have new timestamps, and cargo would rebuild candle and all above it.
  const current = Object.entries(files).every(([file, text]) => existsSync(path.join(dest, file)) && readFileSync(path.join(dest, file), 'utf8') === text)
  if (current) return dest
  rmSync(dest, { recursive: true, force: true })
  cpSync(pkg.dir, dest, { recursive: true })
  for (const [file, text] of Object.entries(files)) writeFileSync(path.join(dest, file), text)
  return dest
}

/**
 * candle-core and candle-kernels as this build needs them, as `--config` patch arguments:
 * - cudarc loads the CUDA libraries at run time instead of linking them (candle-core's manifest);
 * - candle's kernels are fat binaries with machine code for the target GPU, not PTX alone, so
 *   no driver compile on a machine's first run (candle-kernels' build script and module type,
 *   and the one line of candle-core that loads a module).
 */
function patchedCandle() {
  const packages = cratePackages()
  const core = patchedCrate(packages['candle-core'], 'candle-core', {
    'Cargo.toml': [['"dynamic-linking"', '"dynamic-loading"']],
    'src/cuda_backend/device.rs': [['self.context.load_module(mdl.ptx().into())', 'self.context.load_module(cudarc::nvrtc::Ptx::from_binary(mdl.ptx().to_vec()))']],
  })
  const kernels = patchedCrate(
    packages['candle-kernels'],
    'candle-kernels',
    {
      'build.rs': [
        ['use cudaforge::', 'mod fatbin;\nuse cudaforge::'],
        ['bindings.write(&ptx_path)?;', 'bindings.write(&ptx_path)?;\n    fatbin::write_modules(&out_dir, &ptx_path);'],
      ],
      'src/lib.rs': [
        ['ptx: &\'static str,', 'ptx: &\'static [u8],'],
        ['pub fn ptx(&self) -> &\'static str {', 'pub fn ptx(&self) -> &\'static [u8] {'],
      ],
    },
    { 'fatbin.rs': path.join(root, 'scripts', 'cuda', 'candle-kernels-fatbin.rs') },
  )
  return [
    '--config', `patch.crates-io.candle-core.path=${JSON.stringify(core)}`,
    '--config', `patch.crates-io.candle-kernels.path=${JSON.stringify(kernels)}`,
  ]
}

/** The shared libraries `file` needs (ELF DT_NEEDED), via readelf where present. */
function neededLibraries(file) {
  const r = run('readelf', ['-d', file])
  if (r.status !== 0) return null
  return [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1])
}

if (process.platform !== 'linux' || process.arch !== 'x64') fail('the CUDA build is for Linux x64')
const cuda = toolkit()
const cap = computeCap()
const targetCpu = process.env.QWEN_NATIVE_TARGET_CPU ?? 'x86-64-v3'
log(`CUDA ${cuda.version} at ${cuda.dir}; kernels for sm_${cap}; CPU code for ${targetCpu}`)
const candlePatches = patchedCandle()
const env = {
  ...process.env,
  PATH: `${path.join(cuda.dir, 'bin')}${path.delimiter}${process.env.PATH}`,
  CUDA_PATH: cuda.dir,
  CUDA_ROOT: cuda.dir,
  CUDA_COMPUTE_CAP: cap,
  CARGO_TARGET_DIR: targetDir,
  RUSTFLAGS: rustflags(targetCpu, [`-L ${staticCudartDir(cuda.dir)}`]),
  // Compiled into the engine: the architecture check and the hint in missing-library errors.
  QWEN_NATIVE_CUDA_ARCH: cap,
  QWEN_NATIVE_CUDA_VERSION: cuda.version,
}
// The patch makes cargo rewrite Cargo.lock (candle-core from a path); the checkout keeps its own.
const lockfile = path.join(root, 'Cargo.lock')
const lock = readFileSync(lockfile)
try {
  cargo(
    [
      'build', '--release', ...candlePatches,
      '-p', 'qwen-native', '-p', 'qwen-engine', '--features', 'qwen-native/cuda,qwen-engine/cuda',
      '--lib', '--bin', 'qwen-bench',
    ],
    env,
  )
} finally {
  writeFileSync(lockfile, lock)
}
installAddon(targetDir, { features: ['cuda'], targetCpu, cudaVersion: cuda.version, cudaComputeCap: cap })
const bench = path.join(targetDir, 'release', 'qwen-bench')
for (const file of [path.join(root, 'qwen-native.node'), bench]) {
  const needed = neededLibraries(file)
  const linked = needed?.filter((l) => /^lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\./.test(l)) ?? []
  if (linked.length) fail(`${file} links ${linked.join(', ')}: it would not load without CUDA`)
}
log(`built ${path.join(root, 'qwen-native.node')} (CUDA, sm_${cap}) and ${bench}`)
