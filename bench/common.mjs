// What both engines run: the same chat prompt (rendered by the model's own template) and the same
// greedy decode length, so their numbers are comparable.
export const PROMPT_TOKENS = Number(process.env.BENCH_PROMPT_TOKENS ?? 512)
export const GEN_TOKENS = Number(process.env.BENCH_GEN_TOKENS ?? 64)
export const THREADS = Number(process.env.BENCH_THREADS ?? 2)

const PARAGRAPH = 'The engineers measured how quickly the model read a long prompt and how quickly it wrote each new token. '

/** A user message whose rendered prompt is about `PROMPT_TOKENS` tokens long. */
export function benchMessages(countTokens) {
  const instruction = 'Repeat the following text word for word, then keep writing in the same style:\n\n'
  let body = ''
  while (countTokens(instruction + body + PARAGRAPH) < PROMPT_TOKENS - 30) body += PARAGRAPH
  return [{ role: 'user', content: instruction + body }]
}

export function peakRssMiB() {
  return process.resourceUsage().maxRSS / 1024
}

export function report(result) {
  process.stdout.write(JSON.stringify({ ...result, peak_rss_mib: Math.round(peakRssMiB()) }) + '\n')
}

/** The workload bench.mjs prepared for the runners: { messages, promptText }. */
export function workload() {
  return JSON.parse(process.env.BENCH_WORKLOAD)
}
