// `npm run bench [-- <model>...]`: qwen-native and node-llama-cpp on the same GGUF, prompts, decode
// length and thread count, each round in fresh processes (one per engine, one after the other).
// Models are names of scripts/fetch-model.mjs (default: "default"; e.g. `-- default coder-1.5b`).
// Prints, per model, each figure's median [min-max] over BENCH_ROUNDS rounds (default 5), the
// ratios of medians, and where the engines' greedy answers first differ.
import { execFileSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadModel } from '../index.js'
import { fetchModel, MODELS } from '../scripts/fetch-model.mjs'
import { prepareWorkload, GREEDY_TOKENS, THREADS } from './common.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const ENGINES = ['qwen-native', 'node-llama-cpp']
// Figure, and whether more is better.
const FIGURES = [['prefill_tok_s', true], ['decode_tok_s', true], ['long_ttft_ms', false], ['agent_ttft_ms', false], ['peak_rss_mib', false], ['load_s', false]]

function run(engine, modelPath, workload) {
  const out = execFileSync(process.execPath, [join(here, `run-${engine}.mjs`)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, BENCH_WORKLOAD: workload, BENCH_MODEL_PATH: modelPath },
  })
  return JSON.parse(out.trim().split('\n').at(-1))
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const digits = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(x >= 10 ? 1 : 2))

/**
 * Where our greedy answer first leaves llama.cpp's, in tokens (ours are the answer's text tokenized
 * again: the same vocabulary), with llama.cpp's two most probable tokens there: a near tie is
 * quantization noise, a clear margin a real difference.
 */
function agreement(oursIds, steps, detokenize) {
  const at = steps.findIndex((step, i) => step.id !== oursIds[i])
  if (at < 0) {
    return oursIds.length === steps.length ? `same (${steps.length} tokens)` : `same for all ${steps.length} of llama.cpp's tokens; qwen-native wrote more`
  }
  const [first, second] = steps[at].top.map((t) => `${JSON.stringify(t.text)} ${t.p.toFixed(3)}`)
  const ours = at < oursIds.length ? JSON.stringify(detokenize([oursIds[at]])) : 'the end'
  return `differ at token ${at}: llama.cpp's top two ${first}, ${second}; qwen-native wrote ${ours}`
}

async function benchModel(name) {
  const modelPath = await fetchModel(MODELS[name])
  // The workload is prepared here, in the parent, so neither runner's peak RSS includes it.
  const renderer = await loadModel({ modelPath, threads: THREADS, contextLength: 4096 })
  const prepared = prepareWorkload(renderer)
  const results = Object.fromEntries(ENGINES.map((e) => [e, []]))
  for (let i = 0; i < ROUNDS; i++) {
    for (const engine of ENGINES) results[engine].push(run(engine, modelPath, JSON.stringify(prepared)))
  }
  const first = results['qwen-native'][0]
  console.log(`\n${name}: threads ${first.threads}; prompts of ${first.prompt_tokens} (then ${first.gen_tokens} decoded), ` +
    `${first.long_prompt_tokens} and ${first.agent_prompt_tokens} (agent, five tools) tokens; median [min-max] of ${ROUNDS} round(s)`)
  const table = ENGINES.map((engine) => Object.fromEntries([['engine', engine], ...FIGURES.map(([key]) => {
    const xs = results[engine].map((r) => r[key])
    return [key, `${digits(median(xs))} [${digits(Math.min(...xs))}-${digits(Math.max(...xs))}]`]
  })]))
  console.table(table)
  const ratios = FIGURES.map(([key, higherIsBetter]) => {
    const [q, l] = ENGINES.map((e) => median(results[e].map((r) => r[key])))
    return `${key} ${(higherIsBetter ? q / l : l / q).toFixed(2)}x`
  })
  console.log(`qwen-native against node-llama-cpp (above 1 is better for qwen-native): ${ratios.join(', ')}`)
  const theirs = results['node-llama-cpp'][0].answer_steps
  console.log(`greedy answers (${GREEDY_TOKENS} tokens at most):`)
  const detokenize = (ids) => renderer.detokenize(ids)
  first.answers.forEach((ours, i) => console.log(`  ${i + 1}. ${agreement(Array.from(renderer.tokenize(ours)), theirs[i], detokenize)}`))
  await renderer.close()
  return { model: name, rounds: ROUNDS, results }
}

const names = process.argv.slice(2).length ? process.argv.slice(2) : ['default']
for (const name of names) {
  if (!MODELS[name]) throw new Error(`unknown model "${name}"; choose from ${Object.keys(MODELS).join(', ')}`)
}
const all = []
for (const name of names) all.push(await benchModel(name))
if (process.env.BENCH_JSON) {
  const { writeFileSync } = await import('node:fs')
  writeFileSync(process.env.BENCH_JSON, JSON.stringify(all, null, 2))
}
