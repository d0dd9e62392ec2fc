// Soak test of the example server: many mixed requests (plain and streamed answers, tool calls,
// json_schema answers, agent runs, aborts, disconnects), eight at a time, against `npm start` on
// the default model. Every request must end as its kind should, and the server's resident memory
// must stay flat (within 10%) after warm-up.
//   npm run soak               1000 requests
//   npm run soak -- 200        fewer (or more)
import { startServer, readEvents } from '../__test__/helpers.mjs'

const total = Number(process.argv[2] ?? 1000)
if (!Number.isInteger(total) || total < 100) {
  console.error('usage: npm run soak -- [requests, at least 100]')
  process.exit(2)
}
const CONCURRENCY = 8
const WARM_UP = 100
const SAMPLE_EVERY = 25

const CAPITALS = { France: 'Paris', Italy: 'Rome', Japan: 'Tokyo', Germany: 'Berlin', Spain: 'Madrid', Egypt: 'Cairo' }
const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather in a city',
    parameters: { type: 'object', properties: { location: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } }, required: ['location'] },
  },
}

const server = await startServer({ HEARTBEAT_MS: '0' })
const post = (route, body, signal) => fetch(`${server.url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal })
const capitalQuestion = (i) => {
  const countries = Object.keys(CAPITALS)
  const country = countries[i % countries.length]
  return { country, messages: [{ role: 'user', content: `What is the capital of ${country}? Answer in one word.` }] }
}
const expect = (condition, what) => {
  if (!condition) throw new Error(what)
}

/** Each kind sends one request and throws unless it ended as that kind should. */
const KINDS = {
  async plain(i) {
    const { country, messages } = capitalQuestion(i)
    const res = await post('/v1/chat/completions', { messages, temperature: 0, max_tokens: 12 })
    const body = await res.json()
    expect(res.status === 200, `status ${res.status}: ${JSON.stringify(body)}`)
    expect(body.choices[0].message.content.includes(CAPITALS[country]), `${country}: ${body.choices[0].message.content}`)
  },
  async stream(i) {
    const { country, messages } = capitalQuestion(i)
    const events = await readEvents(await post('/v1/chat/completions', { messages, temperature: 0, max_tokens: 12, stream: true }))
    expect(events.at(-1)?.data === '[DONE]', `no [DONE]: ${JSON.stringify(events.at(-1))}`)
    const text = events.slice(0, -1).map((e) => e.data.choices[0]?.delta?.content ?? '').join('')
    expect(text.includes(CAPITALS[country]), `${country}: ${text}`)
  },
  async tools() {
    const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: "What's the weather in Lisbon in celsius?" }], tools: [WEATHER_TOOL], temperature: 0, max_tokens: 60 })
    const body = await res.json()
    expect(body.choices?.[0]?.message?.tool_calls?.[0]?.function?.name === 'get_weather', JSON.stringify(body))
  },
  async json_schema(i) {
    const { messages } = capitalQuestion(i)
    const schema = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false }
    const res = await post('/v1/chat/completions', { messages, response_format: { type: 'json_schema', json_schema: { name: 'capital', schema } }, temperature: 0, max_tokens: 30 })
    const body = await res.json()
    expect(typeof JSON.parse(body.choices[0].message.content).city === 'string', JSON.stringify(body))
  },
  async agent() {
    const events = await readEvents(await post('/api/agent/chat', { messages: [{ role: 'user', content: 'What is 1234 * 5678?' }], temperature: 0, max_tokens: 60 }))
    expect(events.at(-1)?.event === 'final', `agent ended with ${JSON.stringify(events.at(-1)).slice(0, 200)}`)
  },
  async abort() {
    const controller = new AbortController()
    const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Count from 1 to 500.' }], max_tokens: 400, stream: true }, controller.signal)
    const reader = res.body.getReader()
    await reader.read()
    controller.abort()
    await reader.read().then(
      () => {},
      (err) => expect(err.name === 'AbortError', `abort ended with ${err}`),
    )
  },
  async disconnect() {
    const controller = new AbortController()
    const res = await post('/api/agent/chat', { messages: [{ role: 'user', content: 'Write a long story about a dragon.' }], max_tokens: 400 }, controller.signal)
    await res.body.getReader().read()
    controller.abort()
  },
}
const kinds = Object.keys(KINDS)

const residentBytes = async () => Number(/^process_resident_memory_bytes (\S+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())[1])

const started = performance.now()
const failures = []
const latency = Object.fromEntries(kinds.map((k) => [k, []]))
const rss = [] // [requests done, bytes]
let next = 0
let done = 0
async function worker() {
  while (next < total) {
    const i = next++
    const kind = kinds[i % kinds.length]
    const t0 = performance.now()
    try {
      await KINDS[kind](i)
    } catch (err) {
      failures.push({ i, kind, error: err.message })
    }
    latency[kind].push(performance.now() - t0)
    done++
    if (done % SAMPLE_EVERY === 0) rss.push([done, await residentBytes()])
    if (done % 100 === 0) console.log(`${done}/${total} requests, ${failures.length} failures, RSS ${(rss.at(-1)[1] / 2 ** 20).toFixed(0)} MiB`)
  }
}
await Promise.all(Array.from({ length: CONCURRENCY }, worker))
const seconds = (performance.now() - started) / 1000
const health = await (await fetch(`${server.url}/health`)).json()
await server.stop()

const mib = (b) => (b / 2 ** 20).toFixed(0)
const warm = rss.filter(([n]) => n >= WARM_UP)
const base = warm[0][1]
const low = Math.min(...warm.map(([, b]) => b))
const high = Math.max(...warm.map(([, b]) => b))
const spread = (high - low) / base
const percentile = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]

console.log(`\n${total} requests (${kinds.join(', ')}, round-robin), ${CONCURRENCY} at a time, in ${seconds.toFixed(0)} s`)
console.log('| kind | requests | p50 ms | p95 ms |\n| --- | --- | --- | --- |')
for (const k of kinds) console.log(`| ${k} | ${latency[k].length} | ${percentile(latency[k], 0.5).toFixed(0)} | ${percentile(latency[k], 0.95).toFixed(0)} |`)
console.log(`failures: ${failures.length}`)
for (const f of failures.slice(0, 10)) console.log(`  #${f.i} ${f.kind}: ${f.error}`)
console.log(`RSS after ${WARM_UP} requests: ${mib(base)} MiB; after that between ${mib(low)} and ${mib(high)} MiB (spread ${(100 * spread).toFixed(1)}%); first sample ${mib(rss[0][1])} MiB`)
console.log(`engine: ${health.engine.requestsFinished} finished, ${health.engine.requestsFailed} failed (aborts and disconnects), ${health.engine.generatedTokens} tokens generated`)
const ok = failures.length === 0 && spread <= 0.1
console.log(ok ? 'PASS: no failures, RSS flat within 10% after warm-up' : 'FAIL')
process.exit(ok ? 0 : 1)
