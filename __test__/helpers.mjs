// Shared by the test files: the real default model, loaded once per test file (process).
import { loadModel } from '../index.js'

let shared
/** The default model (fetched by `npm test`'s pretest step), loaded once per file. */
export function model() {
  shared ??= loadModel({ threads: 2 })
  return shared
}

export const PARIS = [{ role: 'user', content: 'What is the capital of France? Answer in one word.' }]

/** Runs a stream to the end and returns its chunks. */
export async function collect(stream) {
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  return chunks
}

/** The text a stream's content deltas add up to. */
export function streamedText(chunks) {
  return chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')
}

/** Asserts `promise` rejects with an Error carrying `code`; returns the error. */
export async function rejectsWithCode(assert, promise, code) {
  let error
  await assert.rejects(promise, (e) => {
    error = e
    return e instanceof Error && e.code === code
  })
  return error
}

/** The tool calls a stream's `delta.tool_calls` pieces add up to, OpenAI-style (by index). */
export function streamedToolCalls(chunks) {
  const calls = []
  for (const c of chunks) {
    for (const d of c.choices[0]?.delta?.tool_calls ?? []) {
      if (d.id) calls[d.index] = { id: d.id, type: d.type, function: { name: d.function.name, arguments: '' } }
      calls[d.index].function.arguments += d.function.arguments ?? ''
    }
  }
  return calls
}

/** The get_weather tool of the function-calling tests. */
export const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather in a city',
    parameters: {
      type: 'object',
      properties: {
        location: { type: 'string', description: 'City name in English, e.g. London' },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      },
      required: ['location', 'unit'],
    },
  },
}

export const LISBON = [{ role: 'user', content: "What's the weather in Lisbon in celsius?" }]
