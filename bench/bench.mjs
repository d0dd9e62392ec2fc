// `npm run bench`: qwen-native and node-llama-cpp on the same GGUF, prompt, decode length and
// thread count, each in its own process, run one after the other; prints both and the ratios.
import { execFileSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadModel, DEFAULT_MODEL_PATH } from '../index.js'
import { benchMessages, THREADS } from './common.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 1)

// The workload is prepared here, in the parent, so neither runner's peak RSS includes it.
const renderer = await loadModel({ modelPath: process.env.MODEL_PATH ?? DEFAULT_MODEL_PATH, threads: THREADS, contextLength: 4096 })
const messages = benchMessages((text) => renderer.tokenize(text).length)
const BENCH_WORKLOAD = JSON.stringify({ messages, promptText: renderer.applyChatTemplate(messages) })
await renderer.close()

function run(script) {
  const out = execFileSync(process.execPath, [join(here, script)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, BENCH_WORKLOAD } })
  return JSON.parse(out.trim().split('\n').at(-1))
}

const best = (rows, key) => Math.max(...rows.map((r) => r[key]))
const results = { 'qwen-native': [], 'node-llama-cpp': [] }
for (let i = 0; i < ROUNDS; i++) {
  results['qwen-native'].push(run('run-qwen-native.mjs'))
  results['node-llama-cpp'].push(run('run-node-llama-cpp.mjs'))
}
const q = results['qwen-native']
const l = results['node-llama-cpp']
const row = (name, rows) => ({
  engine: name,
  'prompt tokens': rows[0].prompt_tokens,
  'prefill tok/s': best(rows, 'prefill_tok_s').toFixed(1),
  'decode tok/s': best(rows, 'decode_tok_s').toFixed(1),
  'peak RSS MiB': Math.min(...rows.map((r) => r.peak_rss_mib)),
  'load s': Math.min(...rows.map((r) => r.load_s)).toFixed(2),
})
console.log(`threads ${q[0].threads}, ${q[0].gen_tokens} decoded tokens, best of ${ROUNDS} round(s)`)
console.table([row('qwen-native', q), row('node-llama-cpp', l)])
const ratio = (key) => (best(q, key) / best(l, key)).toFixed(2)
console.log(`qwen-native / node-llama-cpp: prefill ${ratio('prefill_tok_s')}x, decode ${ratio('decode_tok_s')}x, ` +
  `peak RSS ${(Math.min(...q.map((r) => r.peak_rss_mib)) / Math.min(...l.map((r) => r.peak_rss_mib))).toFixed(2)}x`)
