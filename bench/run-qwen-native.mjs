// One qwen-native measurement in its own process (so peak RSS is its own).
import { loadModel, DEFAULT_MODEL_PATH } from '../index.js'
import { report, workload, GEN_TOKENS, THREADS } from './common.mjs'

const modelPath = process.env.MODEL_PATH ?? DEFAULT_MODEL_PATH
const t0 = performance.now()
const model = await loadModel({ modelPath, threads: THREADS })
const loadS = (performance.now() - t0) / 1000
const { messages } = workload()

// Prefill: a one-token answer is dominated by reading the prompt.
const warm = await model.chat({ messages: [{ role: 'user', content: 'Hi' }], temperature: 0, max_tokens: 2 })
const tp = performance.now()
const first = await model.chat({ messages, temperature: 0, max_tokens: 1 })
const prefillS = (performance.now() - tp) / 1000

// Decode: time from the first streamed token to the last.
let firstAt = 0
let usage
for await (const chunk of model.chatStream({ messages, temperature: 0, max_tokens: GEN_TOKENS + 1, stream_options: { include_usage: true } })) {
  if (!firstAt && chunk.choices[0]?.delta?.content) firstAt = performance.now()
  if (chunk.usage) usage = chunk.usage
}
const decodeS = (performance.now() - firstAt) / 1000
await model.close()
report({
  engine: 'qwen-native',
  threads: THREADS,
  load_s: loadS,
  prompt_tokens: first.usage.prompt_tokens,
  prefill_tok_s: first.usage.prompt_tokens / prefillS,
  gen_tokens: usage.completion_tokens - 1,
  decode_tok_s: (usage.completion_tokens - 1) / decodeS,
  warmup_tokens: warm.usage.completion_tokens,
})
