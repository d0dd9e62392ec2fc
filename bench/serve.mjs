// `npm run bench:serve`: many users on one model. Runs, in process and then over HTTP through the
// example server: one stream alone, BENCH_STREAMS streams at once (distinct prompts), a short request
// sent while a ~1,000-token prompt is being read, and two agent conversations taking turns. Reports
// aggregate tok/s, each stream's time to first token and inter-token gaps (p50/p95), and prompt
// tokens computed vs reused per turn (from `usage` and `model.stats()`).
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { loadModel, StreamedMessage } from '../index.js'
import { createDefaultTools } from '../server/agentTools.mjs'
import { THREADS } from './common.mjs'

const STREAMS = Number(process.env.BENCH_STREAMS ?? 4)
const GEN_TOKENS = Number(process.env.BENCH_GEN_TOKENS ?? 128)
const TOPICS = ['lighthouses', 'volcanoes', 'honeybees', 'glaciers', 'railways', 'coral reefs', 'comets', 'windmills']

const essay = (topic, maxTokens = GEN_TOKENS) => ({
  messages: [{ role: 'user', content: `Write a long, detailed essay about ${topic}.` }],
  temperature: 0,
  max_tokens: maxTokens,
  stream_options: { include_usage: true },
})

const percentile = (sorted, p) => sorted[Math.round((sorted.length - 1) * p)]

/** Reads one stream of chunks: when it started, when each text piece arrived, its usage. */
async function trace(start, delayMs = 0) {
  if (delayMs) await new Promise((resolve) => setTimeout(resolve, delayMs))
  const submitted = performance.now()
  const arrivals = []
  const message = new StreamedMessage()
  for await (const chunk of start()) {
    // Any piece of the answer counts: text, or a tool call's name and arguments.
    const delta = chunk.choices[0]?.delta
    message.add(chunk)
    if (delta?.content || delta?.tool_calls) arrivals.push(performance.now())
  }
  return { submitted, arrivals, usage: message.usage }
}

function summarize(traces, wallMs) {
  const tokens = traces.reduce((n, t) => n + t.usage.completion_tokens, 0)
  return {
    streams: traces.length,
    completion_tokens: tokens,
    aggregate_tok_s: +(tokens / (wallMs / 1000)).toFixed(2),
    per_stream: traces.map((t) => {
      const gaps = t.arrivals.slice(1).map((a, i) => a - t.arrivals[i]).sort((a, b) => a - b)
      return {
        ttft_ms: Math.round(t.arrivals[0] - t.submitted),
        inter_token_ms_p50: +percentile(gaps, 0.5).toFixed(1),
        inter_token_ms_p95: +percentile(gaps, 0.95).toFixed(1),
        cached_tokens: t.usage.prompt_tokens_details.cached_tokens,
      }
    }),
  }
}

/** Runs the streams at once; `start(body)` opens one. */
async function concurrently(start, bodies, delays = []) {
  const t0 = performance.now()
  const traces = await Promise.all(bodies.map((body, i) => trace(() => start(body), delays[i])))
  return { traces, wallMs: performance.now() - t0 }
}

async function scenarios(start, model) {
  await concurrently(start, [essay('tea', 4)]) // warm-up
  const alone = await concurrently(start, [essay('rivers')])
  const together = await concurrently(start, TOPICS.slice(0, STREAMS).map((t) => essay(t)))
  const single = summarize(alone.traces, alone.wallMs)
  const multi = summarize(together.traces, together.wallMs)
  const line = (i) => `Line ${i}: the engineers wrote down every token the model read and every token it wrote.`
  const long = { messages: [{ role: 'user', content: `${Array.from({ length: 55 }, (_, i) => line(i)).join('\n')}\nSummarize the text above in one sentence.` }], temperature: 0, max_tokens: 16, stream_options: { include_usage: true } }
  const short = { messages: [{ role: 'user', content: 'Say hello.' }], temperature: 0, max_tokens: 8, stream_options: { include_usage: true } }
  const mixed = await concurrently(start, [long, short], [0, 300])
  return {
    alone: single,
    together: multi,
    aggregate_speedup: +(multi.aggregate_tok_s / single.aggregate_tok_s).toFixed(2),
    p95_over_alone_p50: +(Math.max(...multi.per_stream.map((s) => s.inter_token_ms_p95)) / single.per_stream[0].inter_token_ms_p50).toFixed(2),
    long_prompt_tokens: mixed.traces[0].usage.prompt_tokens,
    long_prompt_ttft_ms: summarize(mixed.traces.slice(0, 1), mixed.wallMs).per_stream[0].ttft_ms,
    short_during_long_ttft_ms: summarize(mixed.traces.slice(1), mixed.wallMs).per_stream[0].ttft_ms,
    agents: model ? await alternatingAgents(model) : undefined,
  }
}

/** Two agent conversations (five tools, their own system prompts) taking turns: per turn, the prompt
 *  tokens computed (stats) and reused (usage), and the time to first token. */
async function alternatingAgents(model) {
  const tools = createDefaultTools({ sandboxDir: fileURLToPath(new URL('../server/sandbox', import.meta.url)) })
  const conversations = ['Ann', 'Bob'].map((who) => [{ role: 'system', content: `You are ${who}'s assistant. Answer briefly.` }])
  const questions = ['Say hi.', 'What can you do?', 'Thanks. One more word?']
  const turns = []
  for (const [round, question] of questions.entries()) {
    for (const [who, messages] of conversations.entries()) {
      messages.push({ role: 'user', content: question })
      const before = model.stats().promptTokens
      const t = await trace(() => model.chatStream({ messages, tools: tools.definitions, temperature: 0, max_tokens: 12, stream_options: { include_usage: true } }))
      const computed = model.stats().promptTokens - before
      messages.push({ role: 'assistant', content: '(answered)' })
      turns.push({ conversation: who ? 'B' : 'A', turn: round + 1, prompt_tokens: t.usage.prompt_tokens, cached_tokens: t.usage.prompt_tokens_details.cached_tokens, computed_tokens: computed, ttft_ms: Math.round(t.arrivals[0] - t.submitted) })
    }
  }
  return turns
}

/** Chunks of one /v1/chat/completions stream, read from the server's Server-Sent Events. */
async function* httpStream(url, body) {
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) })
  if (!res.ok) throw new Error(`${res.status}: ${await res.text()}`)
  const decoder = new TextDecoder()
  let buffered = ''
  for await (const bytes of res.body) {
    buffered += decoder.decode(bytes, { stream: true })
    let end
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const block = buffered.slice(0, end)
      buffered = buffered.slice(end + 2)
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n')
      if (data && data !== '[DONE]') yield JSON.parse(data)
    }
  }
}

async function withServer(work) {
  const child = spawn(process.execPath, ['server/index.mjs'], { cwd: fileURLToPath(new URL('..', import.meta.url)), env: { ...process.env, PORT: '0', CANDLE_NUM_THREADS: String(THREADS) }, stdio: ['ignore', 'pipe', 'inherit'] })
  try {
    const url = await new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        const m = /listening on (http:\/\/\S+)/.exec(out)
        if (m) resolve(m[1])
      })
      child.once('exit', (code) => reject(new Error(`the server exited with ${code}`)))
    })
    return await work(url)
  } finally {
    child.kill('SIGTERM')
  }
}

const model = await loadModel({ threads: THREADS })
const inProcess = await scenarios((body) => model.chatStream(body), model)
const stats = model.stats()
await model.close()
const http = await withServer((url) => scenarios((body) => httpStream(url, body)))

const result = { threads: THREADS, max_batch: stats.maxBatch, prefill_chunk: stats.prefillChunk, gen_tokens: GEN_TOKENS, in_process: inProcess, http, stats }
console.log(`threads ${THREADS}, ${STREAMS} streams of ${GEN_TOKENS} tokens, maxBatch ${stats.maxBatch}, prefillChunk ${stats.prefillChunk}`)
for (const [name, r] of Object.entries({ 'in process': inProcess, http })) {
  console.log(`${name}: alone ${r.alone.aggregate_tok_s} tok/s, ${STREAMS} streams ${r.together.aggregate_tok_s} tok/s (${r.aggregate_speedup}x); ` +
    `worst inter-token p95 ${r.p95_over_alone_p50}x the single-stream step; short request during a ${r.long_prompt_tokens}-token prompt: first token in ${r.short_during_long_ttft_ms} ms`)
}
console.table(inProcess.agents)
console.log(JSON.stringify(result))
