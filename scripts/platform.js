'use strict'
// The napi-rs style name of this machine's prebuilt-addon package: qwen-native-<os>-<cpu>[-<libc>].
// Shared by index.js (which loads it) and scripts/pack.mjs (which builds it).

function libc() {
  if (process.platform !== 'linux') return null
  const report = process.report?.getReport?.()
  return report?.header?.glibcVersionRuntime ? 'glibc' : 'musl'
}

/**
 * `{ name, os, cpu, libc, file }` of the prebuilt package for this platform; with `cuda`, of the
 * package whose addon has CUDA kernels (and runs on the CPU where CUDA is unusable).
 */
function prebuiltPackage({ cuda = false } = {}) {
  const c = libc()
  const suffix = c === 'glibc' ? '-gnu' : c === 'musl' ? '-musl' : ''
  const triple = `${process.platform}-${process.arch}${suffix}${cuda ? '-cuda' : ''}`
  return { name: `qwen-native-${triple}`, os: process.platform, cpu: process.arch, libc: c, file: `qwen-native.${triple}.node` }
}

module.exports = { prebuiltPackage }
