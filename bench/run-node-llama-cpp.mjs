// One node-llama-cpp (llama.cpp) measurement on the same GGUF, prompt and decode length.
import { getLlama } from 'node-llama-cpp'
import { DEFAULT_MODEL_PATH } from '../index.js'
import { report, workload, GEN_TOKENS, THREADS } from './common.mjs'

const modelPath = process.env.MODEL_PATH ?? DEFAULT_MODEL_PATH
// The exact prompt text qwen-native's template renders for the same messages.
const { promptText } = workload()

const t0 = performance.now()
const llama = await getLlama({ gpu: false, build: 'never', maxThreads: THREADS })
const model = await llama.loadModel({ modelPath })
const context = await model.createContext({ contextSize: 4096, threads: THREADS, batchSize: 512 })
const loadS = (performance.now() - t0) / 1000
const sequence = context.getSequence()
const tokens = model.tokenize(promptText, true)

const tp = performance.now()
let firstAt = 0
let generated = 0
for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
  if (!firstAt) firstAt = performance.now()
  else generated++
  if (generated >= GEN_TOKENS || model.isEogToken(token)) break
}
const end = performance.now()
report({
  engine: 'node-llama-cpp',
  threads: THREADS,
  load_s: loadS,
  prompt_tokens: tokens.length,
  prefill_tok_s: tokens.length / ((firstAt - tp) / 1000),
  gen_tokens: generated,
  decode_tok_s: generated / ((end - firstAt) / 1000),
})
await context.dispose()
await model.dispose()
await llama.dispose()
