// Shared by the test files: the real default model, loaded once per test file (process).
import { spawn } from 'node:child_process'
import { loadModel, StreamedMessage } from '../index.js'

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
  return StreamedMessage.from(chunks).content
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
  return StreamedMessage.from(chunks).toolCalls
}

export { WEATHER_TOOL, LISBON } from './fixtures.mjs'

/**
 * Starts the example server (`server/index.mjs`) on an ephemeral port with the real default model,
 * as `npm start` would. Resolves once it listens; `stop()` ends it.
 */
export async function startServer(env = {}) {
  const child = spawn(process.execPath, ['server/index.mjs'], {
    cwd: new URL('..', import.meta.url),
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const url = await new Promise((resolve, reject) => {
    const onData = (data) => {
      output += data
      const m = /listening on (http:\/\/\S+)/.exec(output)
      if (m) resolve(m[1])
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.once('exit', (code) => reject(new Error(`the server exited with ${code} before listening:\n${output}`)))
  })
  return {
    url,
    /** Everything the server printed so far. */
    output: () => output,
    /** Sends `signal`; resolves with the exit code once the process has ended. */
    kill(signal) {
      const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
      child.kill(signal)
      return exited
    },
    async stop() {
      if (child.exitCode === null) await this.kill('SIGTERM')
    },
  }
}

/**
 * Reads a Server-Sent Events response to its end: `[{ event, data }]`, data parsed when JSON.
 * Comment lines (heartbeats) are not events; the array's `comments` counts them.
 */
export async function readEvents(response) {
  const text = await response.text()
  const blocks = text.split('\n\n').filter((block) => block.trim() !== '')
  const events = []
  let comments = 0
  for (const block of blocks) {
    let event = 'message'
    const data = []
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments++
      else if (line.startsWith('event:')) event = line.slice(6).trim()
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart())
    }
    if (data.length === 0) continue
    const joined = data.join('\n')
    try {
      events.push({ event, data: JSON.parse(joined) })
    } catch {
      events.push({ event, data: joined })
    }
  }
  return Object.assign(events, { comments })
}
