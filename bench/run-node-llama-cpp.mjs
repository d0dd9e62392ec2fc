// One node-llama-cpp (llama.cpp) measurement on the same GGUF, prompts and decode length.
import { getLlama } from 'node-llama-cpp'
import { peakRssMiB, report, workload, GEN_TOKENS, GREEDY_TOKENS, THREADS } from './common.mjs'

// The exact prompt texts qwen-native's template renders for the same messages.
const { modelPath, chat, long, agent, greedy } = workload()

const t0 = performance.now()
const llama = await getLlama({ gpu: false, build: 'never', maxThreads: THREADS })
const model = await llama.loadModel({ modelPath })
const context = await model.createContext({ contextSize: 4096, threads: THREADS, batchSize: 512 })
const loadS = (performance.now() - t0) / 1000
const sequence = context.getSequence()

/** Greedy tokens after `promptText` on a fresh sequence: when the first came, when the last did. */
async function generate(promptText, maxTokens) {
  await sequence.clearHistory()
  const prompt = model.tokenize(promptText, true)
  const start = performance.now()
  const tokens = []
  let firstAt = 0
  for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
    if (!firstAt) firstAt = performance.now()
    if (model.isEogToken(token)) break
    tokens.push(token)
    if (tokens.length >= maxTokens) break
  }
  return { promptTokens: prompt.length, ttftMs: firstAt - start, end: performance.now(), firstAt, tokens }
}

const run = await generate(chat.promptText, GEN_TOKENS + 1)
const longRun = await generate(long.promptText, 1)
const agentRun = await generate(agent.promptText, 1)
const peakRss = peakRssMiB()
/** A greedy answer token by token: each token's id and text, and the two most probable tokens there. */
async function greedyAnswer(promptText) {
  await sequence.clearHistory()
  const steps = []
  for await (const { token, probabilities } of sequence.evaluateWithMetadata(model.tokenize(promptText, true), { probabilities: true }, { temperature: 0 })) {
    if (model.isEogToken(token)) break
    const top = [...probabilities.entries()].slice(0, 2).map(([t, p]) => ({ text: model.detokenize([t]), p }))
    steps.push({ id: token, text: model.detokenize([token]), top })
    if (steps.length >= GREEDY_TOKENS) break
  }
  return steps
}

const answerSteps = []
for (const { promptText } of greedy) answerSteps.push(await greedyAnswer(promptText))
report({
  engine: 'node-llama-cpp',
  threads: THREADS,
  load_s: loadS,
  prompt_tokens: run.promptTokens,
  prefill_tok_s: run.promptTokens / (run.ttftMs / 1000),
  gen_tokens: run.tokens.length - 1,
  decode_tok_s: (run.tokens.length - 1) / ((run.end - run.firstAt) / 1000),
  long_prompt_tokens: longRun.promptTokens,
  long_ttft_ms: longRun.ttftMs,
  agent_prompt_tokens: agentRun.promptTokens,
  agent_ttft_ms: agentRun.ttftMs,
  peak_rss_mib: peakRss,
  answer_steps: answerSteps,
})
await context.dispose()
await model.dispose()
await llama.dispose()
