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
