// Installing qwen-native into a fresh Express app, as a user would: the packed main package plus the
// prebuilt-addon package for this platform (scripts/pack.mjs), with npm 11's strict install-script
// policy on — no script approval and no Rust needed. The app imports the library and the agent
// routes by package name, mounts them under a prefix, and answers over HTTP on the real model.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { pack } from '../scripts/pack.mjs'
import { runNpm } from '../scripts/npm.mjs'
import { DEFAULT_MODEL_PATH } from '../index.js'

const dir = mkdtempSync(path.join(tmpdir(), 'qwen-native-install-'))
after(() => rmSync(dir, { recursive: true, force: true }))

/** The app; `addonPackage` is the prebuilt package it should load the addon from. */
const app = (addonPackage) => `
import express from 'express'
import { createRequire } from 'node:module'
import { loadModel } from 'qwen-native'
import { createAgentRouter } from 'qwen-native/agent-routes'
import { createDefaultTools } from 'qwen-native/agent-tools'

const model = await loadModel({ threads: 2 })
const app = express()
app.use('/ai', createAgentRouter(model, createDefaultTools({ sandboxDir: '.' })))
const server = app.listen(0)
await new Promise((resolve) => server.once('listening', resolve))
const base = 'http://localhost:' + server.address().port + '/ai'
const health = await (await fetch(base + '/health')).json()
const res = await fetch(base + '/v1/chat/completions', {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ messages: [{ role: 'user', content: 'What is the capital of France? Answer in one word.' }], temperature: 0, max_tokens: 5 }),
})
const completion = await res.json()
const require = createRequire(import.meta.url)
console.log(JSON.stringify({ addon: require.resolve(${JSON.stringify(addonPackage)}), model: health.model.name, answer: completion.choices[0].message.content }))
server.close()
await model.close()
`

test('a fresh Express app installs the packed packages with no install scripts and serves the agent routes', { timeout: 300_000 }, () => {
  const tarballs = pack(path.join(dir, 'dist'), { allowNative: true }) // installed on this machine only
  const prebuilt = tarballs.prebuiltPackage
  const appDir = path.join(dir, 'app')
  mkdirSync(appDir)
  writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }))
  // --strict-allow-scripts: any dependency install script not approved would fail the install.
  const install = runNpm(['install', '--strict-allow-scripts', '--prefer-offline', '--no-audit', '--no-fund', tarballs.main, tarballs.prebuilt, 'express@5.3.0'], { cwd: appDir, encoding: 'utf8' })
  assert.equal(install.status, 0, install.stderr)
  writeFileSync(path.join(appDir, 'app.mjs'), app(prebuilt.name))
  const out = execFileSync(process.execPath, ['app.mjs'], { cwd: appDir, env: { ...process.env, MODEL_PATH: DEFAULT_MODEL_PATH }, encoding: 'utf8' })
  const result = JSON.parse(out.trim().split('\n').at(-1))
  assert.equal(result.addon, path.join(appDir, 'node_modules', prebuilt.name, prebuilt.file))
  assert.match(result.model, /Qwen2\.5/)
  assert.match(result.answer, /Paris/)
})
