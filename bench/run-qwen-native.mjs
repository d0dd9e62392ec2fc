// One qwen-native measurement in its own process (so peak RSS is its own).
import { loadModel } from '../index.js'
import { peakRssMiB, report, workload, GEN_TOKENS, GREEDY_TOKENS, THREADS } from './common.mjs'

const { modelPath, chat, long, agent, greedy } = workload()
const t0 = performance.now()
const model = await loadModel({ modelPath, threads: THREADS })
const loadS = (performance.now() - t0) / 1000

/** Milliseconds to the first token of a one-token answer, and the prompt's size. */
async function firstToken({ messages, tools }) {
  const t = performance.now()
  const res = await model.chat({ messages, tools, temperature: 0, max_tokens: 1 })
  return { ms: performance.now() - t, tokens: res.usage.prompt_tokens, cached: res.usage.prompt_tokens_details?.cached_tokens ?? 0 }
}

const warm = await model.chat({ messages: [{ role: 'user', content: 'Hi' }], temperature: 0, max_tokens: 2 })
const prefill = await firstToken(chat)

// Decode: time from the first streamed token to the last (the prompt is cached by now).
let firstAt = 0
let usage
for await (const chunk of model.chatStream({ messages: chat.messages, temperature: 0, max_tokens: GEN_TOKENS + 1, stream_options: { include_usage: true } })) {
  if (!firstAt && chunk.choices[0]?.delta?.content) firstAt = performance.now()
  if (chunk.usage) usage = chunk.usage
}
const decodeS = (performance.now() - firstAt) / 1000

const longTtft = await firstToken(long)
const agentTtft = await firstToken(agent)
const peakRss = peakRssMiB()
const answers = []
for (const { messages } of greedy) {
  answers.push((await model.chat({ messages, temperature: 0, max_tokens: GREEDY_TOKENS })).choices[0].message.content)
}
await model.close()
report({
  engine: 'qwen-native',
  threads: THREADS,
  load_s: loadS,
  prompt_tokens: prefill.tokens,
  // Tokens computed (not taken from the prefix cache) over the time to the first token.
  prefill_tok_s: (prefill.tokens - prefill.cached) / (prefill.ms / 1000),
  gen_tokens: usage.completion_tokens - 1,
  decode_tok_s: (usage.completion_tokens - 1) / decodeS,
  long_prompt_tokens: longTtft.tokens,
  long_ttft_ms: longTtft.ms,
  agent_prompt_tokens: agentTtft.tokens,
  agent_ttft_ms: agentTtft.ms,
  peak_rss_mib: peakRss,
  answers,
  warmup_tokens: warm.usage.completion_tokens,
})
