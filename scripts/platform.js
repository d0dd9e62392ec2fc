'use strict'
// The napi-rs style names of the prebuilt-addon packages, qwen-native-<os>-<cpu>[-<abi>][-cuda].
// Shared by index.js (which loads one) and scripts/pack.mjs (which builds them).
// The abi is Linux's C library (gnu, musl) or, on Windows, the toolchain that built the DLL: msvc
// (built on Windows) or gnu (cross-built with MinGW, `npm run build:win`). Node loads either.

function libc() {
  const report = process.report?.getReport?.()
  return report?.header?.glibcVersionRuntime ? 'glibc' : 'musl'
}

function defaultAbi(platform) {
  if (platform === 'linux') return libc() === 'glibc' ? 'gnu' : 'musl'
  if (platform === 'win32') return 'msvc'
  return null
}

/**
 * `{ name, triple, os, cpu, libc, file }` of a prebuilt package, by default this machine's; with
 * `cuda`, of the package whose addon has CUDA kernels (and runs on the CPU where CUDA is unusable).
 */
function prebuiltPackage({ cuda = false, platform = process.platform, arch = process.arch, abi = defaultAbi(platform) } = {}) {
  const triple = [platform, arch, abi, cuda ? 'cuda' : null].filter(Boolean).join('-')
  const libcName = platform === 'linux' ? (abi === 'gnu' ? 'glibc' : abi) : null
  return { name: `qwen-native-${triple}`, triple, os: platform, cpu: arch, libc: libcName, file: `qwen-native.${triple}.node` }
}

/** The package for a triple such as `win32-x64-gnu` or `linux-x64-gnu-cuda`. */
function packageForTriple(triple) {
  const [platform, arch, ...rest] = triple.split('-')
  const cuda = rest.at(-1) === 'cuda'
  const abi = (cuda ? rest.slice(0, -1) : rest)[0] ?? null
  if (!platform || !arch) throw new Error(`"${triple}" is not a platform triple such as linux-x64-gnu or win32-x64-gnu`)
  return prebuiltPackage({ cuda, platform, arch, abi })
}

/** The packages index.js tries on this machine, in order of preference. */
function candidatePackages() {
  if (process.platform === 'win32') return [prebuiltPackage(), prebuiltPackage({ abi: 'gnu' })]
  return [prebuiltPackage({ cuda: true }), prebuiltPackage()]
}

module.exports = { prebuiltPackage, packageForTriple, candidatePackages }
