// The example Express server (server/index.mjs) over real HTTP, on the real default model: the agent
// loop's Server-Sent Events, the OpenAI-compatible routes through the official `openai` client,
// request validation, client disconnects and concurrent requests.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import OpenAI from 'openai'
import { startServer, readEvents, collect, streamedText, streamedToolCalls, WEATHER_TOOL, LISBON } from './helpers.mjs'

let server
let openai

before(async () => {
  // Heartbeats every 200 ms, so a prompt being read shows them.
  server = await startServer({ HEARTBEAT_MS: '200' })
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 })
})

after(() => server?.stop())

const post = (route, body, headers = { 'content-type': 'application/json' }) =>
  fetch(`${server.url}${route}`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) })

const digits = (text) => text.replace(/[,\s]/g, '')

test('GET /health and GET /v1/models describe the loaded model', async () => {
  const health = await (await fetch(`${server.url}/health`)).json()
  assert.equal(health.status, 'ok')
  assert.equal(health.model.architecture, 'qwen2')
  assert.deepEqual(health.requests, { active: 0 })
  assert.equal(health.engine.running, 0)
  assert.equal(health.engine.maxBatch, 8)
  assert.ok(health.tools.includes('calculate'))
  const models = await openai.models.list()
  assert.deepEqual(models.data.map((m) => m.id), [health.model.name])
  assert.equal((await openai.models.retrieve(health.model.name)).id, health.model.name)
})

test('the agent loop calls a tool and answers with its result, as ordered SSE events', async () => {
  const res = await post('/api/agent/chat', { messages: [{ role: 'user', content: 'What is 1234 * 5678?' }], temperature: 0, max_tokens: 100 })
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type'), /^text\/event-stream/)
  const events = await readEvents(res)
  const kinds = events.map((e) => e.event)
  const call = events.find((e) => e.event === 'tool_call')?.data
  const result = events.find((e) => e.event === 'tool_result')?.data
  assert.ok(call, `a tool_call event among ${kinds}`)
  assert.equal(call.name, 'calculate')
  assert.equal(result.id, call.id)
  assert.equal(result.ok, true)
  assert.equal(result.result.result, 7006652)
  // Order: the call, its result, then the answer streamed as deltas, then one final event.
  const firstDelta = kinds.indexOf('delta')
  assert.ok(kinds.indexOf('tool_call') < kinds.indexOf('tool_result'))
  assert.ok(kinds.indexOf('tool_result') < firstDelta, kinds.join(' '))
  assert.equal(kinds.at(-1), 'final')
  assert.equal(kinds.filter((k) => k === 'final').length, 1)
  const final = events.at(-1).data
  const streamed = events.filter((e) => e.event === 'delta').map((e) => e.data.content).join('')
  assert.equal(final.message.content, streamed)
  assert.ok(digits(final.message.content).includes('7006652'), `the answer uses the result: ${final.message.content}`)
  assert.equal(final.steps, 2)
  assert.deepEqual(final.messages.map((m) => m.role), ['assistant', 'tool', 'assistant'])
  assert.equal(final.messages[0].tool_calls[0].id, call.id)
  assert.equal(final.messages[1].tool_call_id, call.id)
  assert.ok(final.usage.prompt_tokens > 0 && final.usage.completion_tokens > 0)
  assert.equal(final.usage.total_tokens, final.usage.prompt_tokens + final.usage.completion_tokens)
})

test("the served agent's file tools refuse a path out of the sandbox", async () => {
  const res = await post('/api/agent/chat', { messages: [{ role: 'user', content: 'Read the file ../package.json' }], temperature: 0, max_tokens: 60 })
  const events = await readEvents(res)
  const call = events.find((e) => e.event === 'tool_call')?.data
  const result = events.find((e) => e.event === 'tool_result')?.data
  assert.deepEqual([call?.name, call?.arguments], ['read_file', { path: '../package.json' }], JSON.stringify(events.map((e) => e.event)))
  assert.equal(result.ok, false)
  assert.match(result.error, /outside the sandbox/)
  // Nothing of the file outside reached the model or the client.
  const everything = JSON.stringify(events)
  assert.doesNotMatch(everything, /playwright-core|"devDependencies"/)
  assert.equal(events.at(-1).event, 'final')
})

test('the openai client: non-streaming chat with tools gets tool_calls', async () => {
  const completion = await openai.chat.completions.create({ model: 'local', messages: LISBON, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80 })
  const [choice] = completion.choices
  assert.equal(choice.finish_reason, 'tool_calls')
  assert.equal(choice.message.tool_calls[0].function.name, 'get_weather')
  assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), { location: 'Lisbon', unit: 'celsius' })
  assert.ok(completion.usage.prompt_tokens > 0)
})

test('the openai client: streaming with tools reassembles the same call; plain streaming gives text', async () => {
  const chunks = await collect(await openai.chat.completions.create({ model: 'local', messages: LISBON, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80, stream: true }))
  const calls = streamedToolCalls(chunks)
  assert.equal(chunks.findLast((c) => c.choices[0]?.finish_reason)?.choices[0].finish_reason, 'tool_calls')
  assert.equal(calls.length, 1)
  assert.equal(calls[0].function.name, 'get_weather')
  assert.deepEqual(JSON.parse(calls[0].function.arguments), { location: 'Lisbon', unit: 'celsius' })

  const text = await openai.chat.completions.create({
    model: 'local',
    messages: [{ role: 'user', content: 'What is the capital of France? Answer in one word.' }],
    temperature: 0,
    max_tokens: 10,
    stream: true,
    stream_options: { include_usage: true },
  })
  const textChunks = await collect(text)
  assert.match(streamedText(textChunks), /Paris/)
  assert.ok(textChunks.at(-1).usage.completion_tokens > 0)
})

test('the raw SSE of /v1/chat/completions ends with data: [DONE]', async () => {
  const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Say hi.' }], max_tokens: 5, stream: true })
  const body = await res.text()
  assert.ok(body.endsWith('data: [DONE]\n\n'))
  // Heartbeat comments (": keep-alive") may come while the prompt is read; every event is data.
  const events = body.split('\n\n').filter((e) => e && !e.startsWith(':'))
  assert.match(events[0], /^data: \{/)
  assert.ok(events.every((e) => e.startsWith('data: ')))
})

test('bad requests get 400/413 with an OpenAI-style error body, and the server stays up', async () => {
  const cases = [
    ['/v1/chat/completions', '{"messages": [', 400, /not valid JSON/],
    ['/v1/chat/completions', '[1, 2]', 400, /must be a JSON object/],
    ['/v1/chat/completions', {}, 400, /messages/],
    ['/v1/chat/completions', { messages: 'hi' }, 400, null],
    ['/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }, 400, /wizard|role/],
    ['/v1/chat/completions', { messages: LISBON, tools: [{ type: 'function', function: { name: 'bad name!' } }] }, 400, /name/],
    ['/v1/chat/completions', { messages: LISBON, max_tokens: -1 }, 400, /max_tokens/],
    ['/v1/chat/completions', { messages: LISBON, stream: true, temperature: 'hot' }, 400, /temperature/],
    ['/api/agent/chat', { messages: [] }, 400, /non-empty array/],
    ['/api/agent/chat', { messages: LISBON, tools: [WEATHER_TOOL] }, 400, /registry/],
    ['/api/agent/chat', { messages: [{ role: 'user' }] }, 400, null],
    ['/api/agent/chat', { messages: LISBON, max_tokens: 10 ** 9 }, 400, /context/],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x'.repeat(2 * 1024 * 1024) }] }, 413, /limit/],
  ]
  for (const [route, body, status, message] of cases) {
    const res = await post(route, body)
    const label = `${route} ${(typeof body === 'string' ? body : JSON.stringify(body)).slice(0, 80)}`
    assert.equal(res.status, status, label)
    const { error } = await res.json()
    assert.equal(error.type, 'invalid_request_error', label)
    assert.match(error.code, /^ERR_/, label)
    if (message) assert.match(error.message, message, label)
  }
  const noJson = await post('/v1/chat/completions', 'messages=hi', { 'content-type': 'text/plain' })
  assert.equal(noJson.status, 400)
  await assert.rejects(openai.chat.completions.create({ model: 'local', messages: [] }), (err) => err.status === 400)
  assert.equal((await fetch(`${server.url}/health`)).status, 200)
})

test('routes nobody serves and errors get JSON bodies, never an HTML page', async () => {
  for (const [method, route] of [['GET', '/nope'], ['POST', '/v1/completions'], ['DELETE', '/v1/models']]) {
    const res = await fetch(`${server.url}${route}`, { method })
    assert.equal(res.status, 404, route)
    assert.match(res.headers.get('content-type'), /application\/json/)
    assert.equal((await res.json()).error.code, 'ERR_NOT_FOUND')
  }
  const malformed = await fetch(`${server.url}/v1/models/%E0%A4%A`)
  assert.equal(malformed.status, 400)
  assert.equal((await malformed.json()).error.code, 'ERR_INVALID_REQUEST')
})

test('a client that disconnects mid-stream frees the model for the next request', async () => {
  const controller = new AbortController()
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'Count from 1 to 5000, one number per line.' }], max_tokens: 4000, stream: true }),
    signal: controller.signal,
  })
  const reader = res.body.getReader()
  await reader.read() // the stream has started: the model is generating
  const during = await (await fetch(`${server.url}/health`)).json()
  assert.equal(during.requests.active, 1)
  controller.abort()
  // The server notices the disconnect and cancels the generation.
  for (let i = 0; i < 100; i++) {
    const health = await (await fetch(`${server.url}/health`)).json()
    if (health.requests.active === 0) break
    await new Promise((r) => setTimeout(r, 50))
  }
  assert.equal((await (await fetch(`${server.url}/health`)).json()).requests.active, 0)
  // Were the 4000 tokens still being generated, this request would wait for them (minutes).
  const next = await openai.chat.completions.create({ model: 'local', messages: [{ role: 'user', content: 'What is the capital of France? Answer in one word.' }], temperature: 0, max_tokens: 10 }, { timeout: 60_000 })
  assert.match(next.choices[0].message.content, /Paris/)
})

test('concurrent requests are all answered, each with its own answer', async () => {
  const ask = (content) => openai.chat.completions.create({ model: 'local', messages: [{ role: 'user', content }], temperature: 0, max_tokens: 12 })
  const [france, italy, agent] = await Promise.all([
    ask('What is the capital of France? Answer in one word.'),
    ask('What is the capital of Italy? Answer in one word.'),
    post('/api/agent/chat', { messages: [{ role: 'user', content: 'What is the capital of Japan? Answer in one word.' }], temperature: 0, max_tokens: 12 }).then(readEvents),
  ])
  assert.match(france.choices[0].message.content, /Paris/)
  assert.match(italy.choices[0].message.content, /Rome/)
  assert.match(agent.at(-1).data.message.content, /Tokyo/)
})

test('GET /metrics: Prometheus text with the engine counters', async () => {
  await openai.chat.completions.create({ messages: [{ role: 'user', content: 'Say hi.' }], temperature: 0, max_tokens: 4 })
  const res = await fetch(`${server.url}/metrics`)
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type'), /^text\/plain/)
  const text = await res.text()
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1])
  assert.equal(value('qwen_native_requests_running'), 0)
  assert.equal(value('qwen_native_max_batch'), 8)
  assert.ok(value('qwen_native_generated_tokens_total') >= 1, text)
  assert.ok(value('qwen_native_requests_finished_total') >= 1, text)
  assert.ok(value('process_resident_memory_bytes') > 0)
})

test('a stream whose prompt is still being read gets SSE heartbeats, then its answer', async () => {
  // A long prompt seen for the first time: it takes seconds to read on a CPU.
  const long = Array.from({ length: 60 }, (_, i) => `Line ${i}: the heartbeat keeps the stream open.`).join('\n')
  const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: `${long}\nHow many lines are there?` }], temperature: 0, max_tokens: 8, stream: true })
  const events = await readEvents(res)
  assert.ok(events.comments >= 1, 'no keep-alive comment arrived while the prompt was read')
  assert.equal(events.at(-1).data, '[DONE]')
})

/** One round of 16 concurrent mixed requests; asserts each ends as it should with its own answer. */
async function mixedRound() {
  const CAPITALS = { France: 'Paris', Italy: 'Rome', Japan: 'Tokyo', Germany: 'Berlin', Spain: 'Madrid', Egypt: 'Cairo', Russia: 'Moscow', Greece: 'Athens' }
  const question = (country) => [{ role: 'user', content: `What is the capital of ${country}? Answer in one word.` }]
  const countries = Object.keys(CAPITALS)
  const ownAnswer = (country, text) => {
    assert.match(text, new RegExp(CAPITALS[country]), `${country}: ${text}`)
    for (const [other, capital] of Object.entries(CAPITALS)) {
      if (other !== country) assert.doesNotMatch(text, new RegExp(capital), `${country}'s answer names ${capital}: ${text}`)
    }
  }
  const plain = countries.slice(0, 4).map(async (country) => {
    const res = await openai.chat.completions.create({ messages: question(country), temperature: 0, max_tokens: 12 })
    ownAnswer(country, res.choices[0].message.content)
  })
  const streamed = countries.slice(4).map(async (country) => {
    const chunks = await collect(await openai.chat.completions.create({ messages: question(country), temperature: 0, max_tokens: 12, stream: true }))
    ownAnswer(country, streamedText(chunks))
  })
  const toolCalls = [0, 1].map(async () => {
    const res = await openai.chat.completions.create({ messages: LISBON, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80 })
    assert.deepEqual(JSON.parse(res.choices[0].message.tool_calls[0].function.arguments), { location: 'Lisbon', unit: 'celsius' })
  })
  const schema = { type: 'object', properties: { city: { type: 'string' }, country: { type: 'string' } }, required: ['city', 'country'], additionalProperties: false }
  const structured = [0, 1].map(async () => {
    const res = await openai.chat.completions.create({ messages: question('France'), response_format: { type: 'json_schema', json_schema: { name: 'capital', schema } }, temperature: 0, max_tokens: 40 })
    assert.match(JSON.parse(res.choices[0].message.content).city, /Paris/)
  })
  const aborted = [0, 1].map(async () => {
    const controller = new AbortController()
    const stream = await openai.chat.completions.create({ messages: [{ role: 'user', content: 'Count from 1 to 500.' }], max_tokens: 400, stream: true }, { signal: controller.signal })
    let finished = false
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) controller.abort()
        if (chunk.choices[0]?.finish_reason) finished = true
      }
    } catch (err) {
      if (err.name !== 'APIUserAbortError' && err.name !== 'AbortError') throw err
    }
    assert.equal(finished, false, 'an aborted stream does not run to its end')
  })
  const disconnected = [0, 1].map(async () => {
    const controller = new AbortController()
    const res = await fetch(`${server.url}/api/agent/chat`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'Write a long story about a dragon.' }], max_tokens: 400 }),
      signal: controller.signal,
    })
    // Read one piece of the stream, then hang up.
    await res.body.getReader().read()
    controller.abort()
  })
  const results = await Promise.allSettled([...plain, ...streamed, ...toolCalls, ...structured, ...aborted, ...disconnected])
  const failures = results.filter((r) => r.status === 'rejected').map((r) => r.reason)
  assert.deepEqual(failures, [])
  // Every request has left the engine: nothing queued or running.
  for (let i = 0; i < 600; i++) {
    const { engine } = await (await fetch(`${server.url}/health`)).json()
    if (engine.running === 0 && engine.queued === 0) return engine
    await new Promise((r) => setTimeout(r, 50))
  }
  assert.fail('the engine did not return to idle')
}

const residentBytes = async () => Number(/^process_resident_memory_bytes (\S+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())[1])

test('16 concurrent mixed requests (streams, tools, json_schema, aborts, disconnects) each end with their own answer; memory is steady', async () => {
  const first = await mixedRound()
  assert.ok(first.requestsFailed >= 4, JSON.stringify(first)) // the two aborts and the two disconnects
  const afterFirst = await residentBytes()
  await mixedRound()
  const afterSecond = await residentBytes()
  // A second identical round allocates nothing that stays: at most allocator noise on top.
  assert.ok(afterSecond < afterFirst + 64 * 2 ** 20, `RSS ${afterFirst / 2 ** 20} MiB -> ${afterSecond / 2 ** 20} MiB`)
})

// Windows delivers no SIGTERM (kill() ends the process at once); there the server shuts down the
// same way on Ctrl+C (SIGINT) and SIGBREAK, which a test cannot send to a child process.
test('SIGTERM: running answers finish within the grace period, the rest end with an error chunk or event, exit 0', { skip: process.platform === 'win32' && 'no SIGTERM on Windows' }, async () => {
  // Two servers: one whose grace lets a short answer finish and cuts a long one, one with no grace
  // for the agent route (whose tool calls make its length hard to predict).
  const [graceful, abrupt] = await Promise.all([startServer({ SHUTDOWN_GRACE_MS: '4000' }), startServer({ SHUTDOWN_GRACE_MS: '0' })])
  const post = (server, route, body) => fetch(`${server.url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const counting = (max_tokens) => ({ messages: [{ role: 'user', content: 'Count from 1 to 1000, one number per line.' }], temperature: 0, max_tokens })
  const [short, long, agent] = await Promise.all([
    post(graceful, '/v1/chat/completions', { ...counting(16), stream: true }),
    post(graceful, '/v1/chat/completions', { ...counting(3000), stream: true }),
    post(abrupt, '/api/agent/chat', counting(3000)),
  ])
  // The long streams are read to their ends; the signals go out once they have started.
  const reading = [long, agent].map((res) => {
    const reader = res.body.getReader()
    const chunks = []
    const started = reader.read().then((r) => chunks.push(r.value))
    const events = started.then(async () => {
      for (let r; !(r = await reader.read()).done; ) chunks.push(r.value)
      return readEvents(new Response(new Blob(chunks)))
    })
    return { started, events }
  })
  await Promise.all(reading.map((r) => r.started))
  const exits = [graceful.kill('SIGTERM'), abrupt.kill('SIGTERM')]
  const [shortEvents, longEvents, agentEvents] = await Promise.all([readEvents(short), ...reading.map((r) => r.events)])
  // Finished within the grace period: a whole answer.
  assert.equal(shortEvents.at(-1).data, '[DONE]')
  assert.equal(shortEvents.at(-2).data.choices[0].finish_reason, 'length')
  // Cut off: a final error chunk (as OpenAI streams carry errors) with no [DONE], or an error event.
  assert.ok(longEvents.length > 2)
  assert.equal(longEvents.at(-1).event, 'message')
  assert.equal(longEvents.at(-1).data.error.code, 'ERR_CLOSED', JSON.stringify(longEvents.at(-1)))
  assert.equal(agentEvents.at(-1).event, 'error', JSON.stringify(agentEvents.at(-1)).slice(0, 300))
  assert.equal(agentEvents.at(-1).data.error.code, 'ERR_CLOSED')
  assert.deepEqual(await Promise.all(exits), [0, 0])
  assert.match(graceful.output(), /SIGTERM: no new requests; running ones have 4000 ms to finish/)
})
