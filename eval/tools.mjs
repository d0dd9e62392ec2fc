// Tool-calling evaluation: every case of tool-cases.mjs on each model, with and without
// grammar-constrained decoding, scored for exact tool choice, argument match and invalid calls.
// Two suites: `catalogue` (eight everyday tools, no system prompt) and `agent` (the example
// server's tools and system prompt).
//
//   npm run eval:tools                       # default 0.5B model, and the 1.5B one if fetched
//   node eval/tools.mjs --model path.gguf     # one model
//   node eval/tools.mjs --only pt-            # cases whose id starts with a prefix
//   node eval/tools.mjs --suite agent         # one suite
//   node eval/tools.mjs --constrained         # grammar-constrained decoding only (the default)
//
// A call is invalid when its name is not declared, its arguments are not a JSON object, or they
// break the tool's schema (checked with Ajv); tool-call markup left in the text counts too.
import { existsSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import Ajv from 'ajv'
import { loadModel, DEFAULT_MODEL_PATH } from '../index.js'
import { TOOLS, CASES, AGENT_TOOLS, AGENT_CASES, AGENT_SYSTEM_PROMPT } from './tool-cases.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const arg = (name) => {
  const i = process.argv.indexOf(name)
  return i > 0 ? process.argv[i + 1] : undefined
}
const models = arg('--model')
  ? [arg('--model')]
  : [DEFAULT_MODEL_PATH, join(root, 'models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf')].filter((p, i) => i === 0 || existsSync(p))
const suites = [
  { name: 'catalogue', tools: TOOLS, cases: CASES },
  { name: 'agent', tools: AGENT_TOOLS, cases: AGENT_CASES, system: AGENT_SYSTEM_PROMPT },
]
  .filter((s) => !arg('--suite') || s.name === arg('--suite'))
  .map((s) => ({ ...s, cases: s.cases.filter((c) => !arg('--only') || c.id.startsWith(arg('--only'))) }))
  .filter((s) => s.cases.length > 0)
const decodings = process.argv.includes('--constrained') ? [true] : [true, false]
const threads = Number(arg('--threads') ?? 2)
const verbose = process.argv.includes('--verbose')

const ajv = new Ajv({ strict: false })
const validators = new Map([...TOOLS, ...AGENT_TOOLS].map((t) => [t.function.name, ajv.compile(t.function.parameters)]))

const norm = (v) => (typeof v === 'string' ? v.trim().replace(/[.!]$/, '').toLowerCase() : v)
/** Expected arguments match when every expected key matches (extra optional keys are allowed). */
function argsMatch(expected, actual) {
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => argsMatch(e, actual[i]))
  }
  if (expected && typeof expected === 'object') {
    return actual && typeof actual === 'object' && Object.entries(expected).every(([k, v]) => argsMatch(v, actual[k]))
  }
  return norm(expected) === norm(actual)
}

/** Parses and validates one returned call; null arguments when they do not parse. */
function inspect(call) {
  let args = null
  try {
    args = JSON.parse(call.function.arguments)
  } catch {}
  const validate = validators.get(call.function.name)
  const valid = Boolean(validate && args && typeof args === 'object' && !Array.isArray(args) && validate(args))
  return { name: call.function.name, args, valid }
}

function score(c, message) {
  const calls = (message.tool_calls ?? []).map(inspect)
  const markupLeft = /<\/?tool_call>/.test(message.content ?? '')
  const invalid = calls.filter((x) => !x.valid).length + (markupLeft ? 1 : 0)
  const names = (list) => list.map((x) => x.name).sort().join(',')
  const choice = names(calls) === names(c.expect)
  const pending = [...calls]
  const args = choice && c.expect.every((e) => {
    const i = pending.findIndex((x) => x.name === e.name && argsMatch(e.arguments, x.args))
    return i >= 0 && pending.splice(i, 1)
  })
  // An answer in prose: JSON echoed back (the tool result again, or a call written as text)
  // holds the figures but answers nothing.
  const content = message.content ?? ''
  const prose = !/^\s*(```|[{[])/.test(content)
  const answered = !c.answerIncludes || (prose && (c.answerIncludes instanceof RegExp ? c.answerIncludes.test(content) : content.includes(c.answerIncludes)))
  return { choice, correct: Boolean(args) && answered, calls: calls.length, invalid }
}

const rows = []
for (const modelPath of models) {
  const model = await loadModel({ modelPath, threads })
  for (const suite of suites) for (const constrained of decodings) {
    const t0 = performance.now()
    const results = []
    for (const c of suite.cases) {
      const messages = suite.system ? [{ role: 'system', content: suite.system }, ...c.messages] : c.messages
      const res = await model.chat({ messages, tools: suite.tools, temperature: 0, max_tokens: 160, constrained })
      const message = res.choices[0].message
      const s = score(c, message)
      results.push({ ...c, ...s })
      if (verbose || !s.correct) {
        const got = message.tool_calls?.map((t) => `${t.function.name}(${t.function.arguments})`).join(' ') || JSON.stringify((message.content ?? '').slice(0, 90))
        console.error(`${s.correct ? 'ok  ' : 'MISS'} ${constrained ? 'constrained' : 'free       '} ${c.id}: ${got}`)
      }
    }
    const n = results.length
    const calls = results.reduce((a, r) => a + r.calls, 0)
    const invalid = results.reduce((a, r) => a + r.invalid, 0)
    const byKind = {}
    for (const r of results) (byKind[r.kind] ??= []).push(r.correct)
    rows.push({
      model: basename(modelPath).replace(/-q4_k_m\.gguf$/, ''),
      suite: suite.name,
      decoding: constrained ? 'constrained' : 'free',
      cases: n,
      tool_choice: `${((100 * results.filter((r) => r.choice).length) / n).toFixed(1)}%`,
      exact: `${((100 * results.filter((r) => r.correct).length) / n).toFixed(1)}%`,
      invalid_calls: `${invalid}/${calls} (${calls ? ((100 * invalid) / calls).toFixed(1) : '0.0'}%)`,
      ...Object.fromEntries(Object.entries(byKind).map(([k, v]) => [k, `${v.filter(Boolean).length}/${v.length}`])),
      seconds: ((performance.now() - t0) / 1000).toFixed(0),
    })
  }
  await model.close()
}

// A Markdown table, ready for a note (kinds a suite lacks are blank).
const columns = [...new Set(rows.flatMap(Object.keys))].filter((k) => k !== 'seconds').concat('seconds')
console.log(`| ${columns.join(' | ')} |`)
console.log(`| ${columns.map(() => '---').join(' | ')} |`)
for (const r of rows) console.log(`| ${columns.map((k) => r[k] ?? '').join(' | ')} |`)
