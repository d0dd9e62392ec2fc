#!/usr/bin/env node
// Packs qwen-native for installing into other apps, the napi-rs way: a prebuilt-addon package for
// this platform (qwen-native-<os>-<cpu>[-<libc>], holding only the .node file) and the main package,
// without the addon, naming the platform package as an optional dependency. Neither has an install
// script, so npm 11 installs them with no script approval and no Rust toolchain.
//   npm install && node scripts/pack.mjs [outDir]      (default outDir: dist/)
// Prints the two tarball paths. A release job runs this on each platform and publishes the results.
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import platform from './platform.js'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const ADDON = 'qwen-native.node'

function npmPack(dir, outDir) {
  const r = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', outDir], { cwd: dir, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm pack failed in ${dir}:\n${r.stderr}`)
  return path.join(outDir, JSON.parse(r.stdout)[0].filename)
}

/** Packs both packages into `outDir`; returns `{ main, prebuilt }` tarball paths. */
export function pack(outDir = path.join(root, 'dist')) {
  const addon = path.join(root, ADDON)
  if (!existsSync(addon)) throw new Error(`${addon} is missing: run \`npm install\` (it builds the addon) first`)
  mkdirSync(outDir, { recursive: true })
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
  const target = platform.prebuiltPackage()
  const stage = mkdtempSync(path.join(tmpdir(), 'qwen-native-pack-'))
  try {
    const prebuiltDir = path.join(stage, target.name)
    mkdirSync(prebuiltDir)
    cpSync(addon, path.join(prebuiltDir, target.file))
    const prebuiltPkg = {
      name: target.name,
      version: pkg.version,
      description: `The ${target.name.slice('qwen-native-'.length)} native addon of qwen-native`,
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
    const mainPkg = { ...pkg, scripts, optionalDependencies: { ...pkg.optionalDependencies, [target.name]: pkg.version } }
    delete mainPkg.devDependencies
    writeFileSync(path.join(mainDir, 'package.json'), `${JSON.stringify(mainPkg, null, 2)}\n`)
    return { main: npmPack(mainDir, outDir), prebuilt: npmPack(prebuiltDir, outDir) }
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { main, prebuilt } = pack(process.argv[2] && path.resolve(process.argv[2]))
  console.log(`${main}\n${prebuilt}`)
}
