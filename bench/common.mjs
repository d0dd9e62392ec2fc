// What both engines run: the same prompts (rendered by the model's own template), greedy, on the
// same threads, so their numbers are comparable.
import { fileURLToPath } from 'node:url'
import { DEFAULT_SYSTEM_PROMPT } from '../server/agent.mjs'
import { createDefaultTools } from '../server/agentTools.mjs'

export const PROMPT_TOKENS = Number(process.env.BENCH_PROMPT_TOKENS ?? 512)
export const LONG_PROMPT_TOKENS = 1000
export const GEN_TOKENS = Number(process.env.BENCH_GEN_TOKENS ?? 64)
export const GREEDY_TOKENS = 32
export const THREADS = Number(process.env.BENCH_THREADS ?? 2)

const PARAGRAPH = 'The engineers measured how quickly the model read a long prompt and how quickly it wrote each new token. '

/** A user message whose rendered prompt is about `tokens` tokens long. */
function longMessage(countTokens, tokens) {
  const instruction = 'Repeat the following text word for word, then keep writing in the same style:\n\n'
  let body = ''
  while (countTokens(instruction + body + PARAGRAPH) < tokens - 30) body += PARAGRAPH
  return [{ role: 'user', content: instruction + body }]
}

/** Short tasks whose greedy answers the two engines should agree on. */
const GREEDY_QUESTIONS = [
  'Write a JavaScript function that checks whether a string is a palindrome.',
  'What is the difference between a process and a thread?',
  'Explain what a hash map is in two sentences.',
  'Write a Python function that returns the n-th Fibonacci number.',
  'List three ways to make a web page load faster.',
]

/**
 * Every workload, rendered by `model` (a loaded qwen-native model): `chat` (~512 tokens, read then
 * decoded), `long` (~1,000 tokens, time to first token), `agent` (the example server's system
 * prompt and five tools with a question), `greedy` (short questions, answers compared token by
 * token). Each has `messages` (and `tools`) for qwen-native and `promptText` for llama.cpp.
 */
export function prepareWorkload(model) {
  const count = (text) => model.tokenize(text).length
  const render = (messages, tools) => ({ messages, tools, promptText: model.applyChatTemplate(messages, { tools }) })
  const tools = createDefaultTools({ sandboxDir: fileURLToPath(new URL('../server/sandbox', import.meta.url)) }).definitions
  return {
    chat: render(longMessage(count, PROMPT_TOKENS)),
    long: render(longMessage(count, LONG_PROMPT_TOKENS).map((m) => ({ ...m, content: `Summary first, please. ${m.content}` }))),
    agent: render([{ role: 'system', content: DEFAULT_SYSTEM_PROMPT }, { role: 'user', content: 'What is 1234 * 5678?' }], tools),
    greedy: GREEDY_QUESTIONS.map((q) => render([{ role: 'user', content: q }])),
  }
}

export function peakRssMiB() {
  return process.resourceUsage().maxRSS / 1024
}

/** Prints a runner's result; `peak_rss_mib` is the caller's (read before the greedy answers,
 *  whose probability lists would otherwise count against llama.cpp). */
export function report(result) {
  process.stdout.write(JSON.stringify({ ...result, peak_rss_mib: Math.round(result.peak_rss_mib) }) + '\n')
}

/** The workload bench.mjs prepared for the runners, and the model they run. */
export function workload() {
  return { ...JSON.parse(process.env.BENCH_WORKLOAD), modelPath: process.env.BENCH_MODEL_PATH }
}
