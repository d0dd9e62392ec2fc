#!/usr/bin/env node
// Packs qwen-native for installing into other apps, the napi-rs way: a prebuilt-addon package for
// this platform (qwen-native-<os>-<cpu>[-<libc>], holding only the .node file) and the main package,
// without the addon, naming the platform package as an optional dependency. Neither has an install
// script, so npm 11 installs them with no script approval and no Rust toolchain.
//   npm install && node scripts/pack.mjs [outDir]   (default: dist/)
//   npm run build:cuda && node scripts/pack.mjs [outDir]   the CUDA prebuilt, qwen-native-<...>-cuda
//   npm run build:win && node scripts/pack.mjs --target win32-x64-gnu [outDir]   the Windows prebuilt
//     (from qwen-native.win32-x64-gnu.node; its main package names it as the optional dependency)
// Prints the two tarball paths. A release job runs this on each platform and publishes the results.
// A build tuned to this machine's CPU (QWEN_NATIVE_TARGET_CPU=native) is refused: it could crash on
// other CPUs. `--allow-native` packs one anyway, for installing on this machine.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ADDON, BUILD_INFO, root } from './build.mjs'
import { runNpm } from './npm.mjs'
import platform from './platform.js'


function npmPack(dir, outDir) {
  const r = runNpm(['pack', '--ignore-scripts', '--json', '--pack-destination', outDir], { cwd: dir, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm pack failed in ${dir}:\n${r.stderr}`)
  return path.join(outDir, JSON.parse(r.stdout)[0].filename)
}

/** How an addon was built (scripts/build.mjs, build-cuda.mjs and build-win.mjs write it). */
function buildInfo(file) {
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : { features: [], targetCpu: 'native' }
}

/**
 * Packs both packages into `outDir`; returns `{ main, prebuilt }` tarball paths and `prebuiltPackage`
 * (platform.js's description of it). The prebuilt is the CUDA package when the addon is a CUDA
 * build. `allowNative` packs a build tuned to this CPU. `target` (a triple such as win32-x64-gnu)
 * packs a cross-built qwen-native.<target>.node instead of this machine's addon.
 */
export function pack(outDir = path.join(root, 'dist'), { allowNative = false, target: triple } = {}) {
  const addon = path.join(root, triple ? `qwen-native.${triple}.node` : ADDON)
  const how = !triple ? '`npm install` (it builds the addon)' : triple === 'win32-x64-gnu' ? '`npm run build:win`' : `a build for ${triple}`
  if (!existsSync(addon)) throw new Error(`${addon} is missing: run ${how} first`)
  const build = buildInfo(path.join(root, triple ? `qwen-native.${triple}.build.json` : BUILD_INFO))
  if (build.targetCpu === 'native' && !allowNative) {
    throw new Error('qwen-native.node was built for this CPU only (target-cpu=native); rebuild it portable with node scripts/build.mjs (no QWEN_NATIVE_TARGET_CPU), or pass --allow-native')
  }
  mkdirSync(outDir, { recursive: true })
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
  const cuda = build.features.includes('cuda')
  const target = triple ? platform.packageForTriple(triple) : platform.prebuiltPackage({ cuda })
  const stage = mkdtempSync(path.join(tmpdir(), 'qwen-native-pack-'))
  try {
    const prebuiltDir = path.join(stage, target.name)
    mkdirSync(prebuiltDir)
    cpSync(addon, path.join(prebuiltDir, target.file))
    const prebuiltPkg = {
      name: target.name,
      version: pkg.version,
      description: `The ${target.name.slice('qwen-native-'.length)} native addon of qwen-native${cuda ? ` (CUDA ${build.cudaVersion}, sm_${build.cudaComputeCap} and newer; runs on the CPU where CUDA is unusable)` : ''}`,
      license: pkg.license,
      main: target.file,
      files: [target.file],
      os: [target.os],
      cpu: [target.cpu],
      ...(target.libc ? { libc: [target.libc] } : {}),
      engines: pkg.engines,
    }
    writeFileSync(path.join(prebuiltDir, 'package.json'), `${JSON.stringify(prebuiltPkg, null, 2)}\n`)

    const mainDir = path.join(stage, 'qwen-native')
    mkdirSync(mainDir)
    for (const entry of [...pkg.files.filter((f) => f !== ADDON), 'README.md']) {
      const from = path.join(root, entry)
      if (existsSync(from)) cpSync(from, path.join(mainDir, entry), { recursive: true })
    }
    const { prepare, ...scripts } = pkg.scripts // the source build is for checkouts, not installs
    // The CPU package is the default for the platform; the CUDA one is installed by name.
    const cpuPackage = triple ? target.name : platform.prebuiltPackage().name
    const mainPkg = { ...pkg, scripts, optionalDependencies: { ...pkg.optionalDependencies, [cpuPackage]: pkg.version } }
    delete mainPkg.devDependencies
    writeFileSync(path.join(mainDir, 'package.json'), `${JSON.stringify(mainPkg, null, 2)}\n`)
    return { main: npmPack(mainDir, outDir), prebuilt: npmPack(prebuiltDir, outDir), prebuiltPackage: target }
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2)
  try {
    const targetAt = args.indexOf('--target')
    const target = targetAt >= 0 ? args[targetAt + 1] : undefined
    const outDir = args.find((a, i) => !a.startsWith('--') && (targetAt < 0 || i !== targetAt + 1))
    const { main, prebuilt } = pack(outDir && path.resolve(outDir), { allowNative: args.includes('--allow-native'), target })
    console.log(`${main}\n${prebuilt}`)
  } catch (err) {
    console.error(`[qwen-native] ${err.message}`)
    process.exit(1)
  }
}
