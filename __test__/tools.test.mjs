// Function calling on the real default model: OpenAI tool calls from chat() and chatStream(),
// a whole agent loop, tool_choice, JSON answers, and invalid tool definitions.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { model, collect, streamedText, streamedToolCalls, rejectsWithCode, WEATHER_TOOL, LISBON } from './helpers.mjs'

after(async () => (await model()).close())

const TIME_TOOL = {
  type: 'function',
  function: {
    name: 'get_time',
    description: 'Current time in a time zone',
    parameters: { type: 'object', properties: { timezone: { type: 'string' } }, required: ['timezone'] },
  },
}

const AGENT_SYSTEM = { role: 'system', content: "You are a helpful assistant. When a tool result arrives, answer the user's question in one sentence using it." }

const weatherRequest = (extra = {}) => ({ messages: LISBON, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80, ...extra })

test('the weather question becomes get_weather({"location":"Lisbon","unit":"celsius"})', async () => {
  const m = await model()
  const res = await m.chat(weatherRequest())
  const [choice] = res.choices
  assert.equal(choice.finish_reason, 'tool_calls')
  assert.equal(choice.message.content, null)
  assert.equal(choice.message.tool_calls.length, 1)
  const [call] = choice.message.tool_calls
  assert.match(call.id, /^call_/)
  assert.equal(call.type, 'function')
  assert.equal(call.function.name, 'get_weather')
  assert.equal(typeof call.function.arguments, 'string')
  assert.deepEqual(JSON.parse(call.function.arguments), { location: 'Lisbon', unit: 'celsius' })
})

test('streamed tool-call deltas reassemble to exactly the non-streamed tool_calls', async () => {
  const m = await model()
  // `auto`: the call guard holds the call until it is complete (it may still be withdrawn as a
  // placeholder); forced: the arguments stream as they are generated.
  for (const [extra, minPieces] of [[{}, 2], [{ tool_choice: 'required' }, 3]]) {
    const full = await m.chat(weatherRequest(extra))
    const chunks = await collect(m.chatStream(weatherRequest(extra)))
    const streamed = streamedToolCalls(chunks)
    const withoutIds = (calls) => calls.map(({ id, ...rest }) => rest)
    assert.deepEqual(withoutIds(streamed), withoutIds(full.choices[0].message.tool_calls))
    assert.notEqual(streamed[0].id, full.choices[0].message.tool_calls[0].id, 'ids are unique per call')
    const pieces = chunks.flatMap((c) => c.choices[0]?.delta?.tool_calls ?? [])
    assert.ok(pieces.length >= minPieces, `${JSON.stringify(extra)}: ${pieces.length} pieces`)
    // No markup leaks into content.
    assert.equal(streamedText(chunks), '')
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls')
  }
})

test('a question no tool fits is answered in text, not with a call filled from the schema example', async () => {
  const m = await model()
  const res = await m.chat({ messages: [{ role: 'user', content: 'What is 12 times 12?' }], tools: [WEATHER_TOOL], temperature: 0, max_tokens: 40 })
  const [choice] = res.choices
  assert.equal(choice.message.tool_calls, undefined, JSON.stringify(choice.message))
  assert.equal(choice.finish_reason, 'stop')
  assert.match(choice.message.content, /144/)
})

/**
 * One agent turn: the model's call, our tool's result, the model's answer. Left alone, the 0.5B
 * model calls the tool again after its result; the engine's repeat-call guard turns that into a
 * text answer, which the agent's system prompt shapes.
 */
async function agentLoop(m, ask) {
  const messages = [AGENT_SYSTEM, ...LISBON]
  const first = await ask({ messages, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80 })
  assert.equal(first.finish_reason, 'tool_calls')
  const [call] = first.message.tool_calls
  assert.equal(call.function.name, 'get_weather')
  messages.push(first.message)
  messages.push({ role: 'tool', tool_call_id: call.id, name: call.function.name, content: JSON.stringify({ temperature: 23, unit: 'celsius', condition: 'sunny' }) })
  const final = await ask({ messages, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 80 })
  assert.equal(final.finish_reason, 'stop')
  assert.equal(final.message.tool_calls, undefined)
  assert.match(final.message.content, /23/)
  return final
}

test('a full loop through chat(): call, tool result, answer that uses the result', async () => {
  const m = await model()
  await agentLoop(m, async (req) => (await m.chat(req)).choices[0])
})

test('a full loop through chatStream()', async () => {
  const m = await model()
  await agentLoop(m, async (req) => {
    const chunks = await collect(m.chatStream(req))
    const toolCalls = streamedToolCalls(chunks)
    const content = streamedText(chunks)
    const message = { role: 'assistant', content: content || null, ...(toolCalls.length ? { tool_calls: toolCalls } : {}) }
    return { message, finish_reason: chunks.at(-1).choices[0].finish_reason }
  })
})

test('tool_choice: none answers in text, required and a named function force a call', async () => {
  const m = await model()
  const none = (await m.chat(weatherRequest({ tool_choice: 'none' }))).choices[0]
  assert.equal(none.message.tool_calls, undefined)
  assert.equal(none.finish_reason, 'stop')
  assert.ok(none.message.content.length > 0)
  assert.doesNotMatch(none.message.content, /<tool_call>/)

  const hello = [{ role: 'user', content: 'Hello! How are you today?' }]
  const required = (await m.chat({ messages: hello, tools: [WEATHER_TOOL, TIME_TOOL], tool_choice: 'required', temperature: 0, max_tokens: 60 })).choices[0]
  assert.equal(required.finish_reason, 'tool_calls')
  assert.ok(required.message.tool_calls.length >= 1)
  for (const c of required.message.tool_calls) assert.ok(['get_weather', 'get_time'].includes(c.function.name))

  const named = (await m.chat({ ...weatherRequest(), tools: [WEATHER_TOOL, TIME_TOOL], tool_choice: { type: 'function', function: { name: 'get_time' } } })).choices[0]
  assert.equal(named.message.tool_calls.length, 1)
  assert.equal(named.message.tool_calls[0].function.name, 'get_time')
  assert.equal(typeof JSON.parse(named.message.tool_calls[0].function.arguments).timezone, 'string')
})

test('response_format json_schema and json_object answers parse and validate', async () => {
  const m = await model()
  const schema = {
    type: 'object',
    properties: { city: { type: 'string' }, country: { type: 'string' }, population_millions: { type: 'number' } },
    required: ['city', 'country', 'population_millions'],
    additionalProperties: false,
  }
  const res = await m.chat({
    messages: [{ role: 'user', content: 'Give the capital of Portugal, its country and population in millions.' }],
    response_format: { type: 'json_schema', json_schema: { name: 'capital', schema } },
    temperature: 0,
    max_tokens: 60,
  })
  const value = JSON.parse(res.choices[0].message.content)
  assert.deepEqual(Object.keys(value).sort(), ['city', 'country', 'population_millions'])
  assert.equal(typeof value.city, 'string')
  assert.equal(typeof value.population_millions, 'number')
  assert.equal(res.choices[0].finish_reason, 'stop')

  const obj = await m.chat({ messages: [{ role: 'user', content: 'List three colors as JSON.' }], response_format: { type: 'json_object' }, temperature: 0, max_tokens: 60 })
  const parsed = JSON.parse(obj.choices[0].message.content)
  assert.equal(typeof parsed, 'object')
  assert.ok(parsed !== null && !Array.isArray(parsed))
})

test('tool parameters with $defs refs, as Pydantic and zod-to-json-schema write them, constrain calls', async () => {
  const m = await model()
  const paint = {
    type: 'function',
    function: {
      name: 'paint_wall',
      description: 'Paint a wall a color',
      parameters: {
        $defs: { Color: { type: 'string', enum: ['red', 'green', 'blue'] } },
        type: 'object',
        properties: { color: { $ref: '#/$defs/Color' } },
        required: ['color'],
      },
    },
  }
  const res = await m.chat({ messages: [{ role: 'user', content: 'Paint the wall blue.' }], tools: [paint], tool_choice: 'required', temperature: 0, max_tokens: 40 })
  const [call] = res.choices[0].message.tool_calls
  assert.equal(call.function.name, 'paint_wall')
  assert.ok(['red', 'green', 'blue'].includes(JSON.parse(call.function.arguments).color))
})

test('invalid tool definitions and tool_choice values are ERR_INVALID_REQUEST naming the problem', async () => {
  const m = await model()
  const cases = [
    [{ tools: [WEATHER_TOOL, WEATHER_TOOL] }, /declared twice/],
    [{ tools: [{ type: 'function', function: { description: 'no name' } }] }, /tools\[0\]\.function\.name/],
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'string' } } }] }, /parameters\.type/],
    [{ tools: [WEATHER_TOOL], tool_choice: { type: 'function', function: { name: 'nope' } } }, /"nope"/],
    [{ tool_choice: 'required' }, /no `tools`/],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, /schema/],
  ]
  for (const [extra, message] of cases) {
    const err = await rejectsWithCode(assert, m.chat({ messages: LISBON, ...extra }), 'ERR_INVALID_REQUEST')
    assert.match(err.message, message)
  }
  // A schema the grammar compiler refuses is reported the same way, and the model goes on.
  const badPattern = { type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { x: { type: 'string', pattern: '(' } }, required: ['x'] } } }
  await rejectsWithCode(assert, m.chat({ messages: LISBON, tools: [badPattern], tool_choice: 'required' }), 'ERR_INVALID_REQUEST')
  const ok = await m.chat(weatherRequest())
  assert.equal(ok.choices[0].finish_reason, 'tool_calls')
})
