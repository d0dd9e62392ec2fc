// Bad input gets an Error with a stable code, and the model keeps serving.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, openSync, readSync, writeFileSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadModel, DEFAULT_MODEL_PATH } from '../index.js'
import { model, PARIS, rejectsWithCode, collect } from './helpers.mjs'

after(async () => (await model()).close())

const user = (content) => [{ role: 'user', content }]

test('bad requests reject with ERR_INVALID_REQUEST naming the problem', async () => {
  const m = await model()
  const cases = [
    [{}, /messages/],
    [{ messages: [] }, /at least one/],
    [{ messages: [{ role: 'wizard', content: 'hi' }] }, /role/],
    [{ messages: [{ role: 'user', content: 42 }] }, /content/],
    [{ messages: [{ role: 'user', content: { text: 'hi' } }] }, /content/],
    [{ messages: user('hi'), max_tokens: -1 }, /max_tokens/],
    [{ messages: user('hi'), max_tokens: 0 }, /max_tokens/],
    [{ messages: user('hi'), temperature: 'hot' }, /temperature/],
    [{ messages: user('hi'), stop: [''] }, /stop/],
    [{ messages: user('hi'), n: 2 }, /`n`/],
    [{ messages: user('hi'), seed: 1.5 }, /`seed` must be an integer/],
    [{ messages: user('hi'), seed: 2 ** 70 }, /`seed` must be an integer/],
    [{ messages: user('hi'), tool_choice: 'always', tools: [{ type: 'function', function: { name: 'f' } }] }, /tool_choice/],
    ['not an object', /object/],
  ]
  for (const [request, message] of cases) {
    const err = await rejectsWithCode(assert, m.chat(request), 'ERR_INVALID_REQUEST')
    assert.match(err.message, message, JSON.stringify(request))
  }
  const streamErr = await rejectsWithCode(assert, collect(m.chatStream({ messages: [] })), 'ERR_INVALID_REQUEST')
  assert.match(streamErr.message, /at least one/)
  const after = await m.chat({ messages: PARIS, temperature: 0 })
  assert.match(after.choices[0].message.content, /Paris/)
})

test('integers beyond 32 bits are integers: seeds from Date.now() and 2 ** 63, huge max_tokens, token ids', async () => {
  const m = await model()
  const request = { messages: PARIS, temperature: 0.8, max_tokens: 8 }
  for (const seed of [Date.now(), 2 ** 63, -1]) {
    const [a, b] = [await m.chat({ ...request, seed }), await m.chat({ ...request, seed })]
    assert.equal(a.choices[0].message.content, b.choices[0].message.content, `seed ${seed}`)
  }
  const err = await rejectsWithCode(assert, m.chat({ messages: PARIS, max_tokens: 1e12 }), 'ERR_CONTEXT_LENGTH')
  assert.match(err.message, /32768/)
  for (const ids of [[2 ** 33], [-1], [1.5], [m.info.vocabSize]]) {
    assert.throws(() => m.detokenize(ids), (e) => e.code === 'ERR_INVALID_REQUEST' && /token id/.test(e.message), JSON.stringify(ids))
  }
})

test('a prompt plus max_tokens beyond the context is ERR_CONTEXT_LENGTH, not a truncation', async () => {
  const m = await model()
  const err = await rejectsWithCode(assert, m.chat({ messages: PARIS, max_tokens: 40_000 }), 'ERR_CONTEXT_LENGTH')
  assert.match(err.message, /32768/)
  const small = await loadModel({ contextLength: 64 })
  try {
    await rejectsWithCode(assert, small.chat({ messages: user('word '.repeat(100)) }), 'ERR_CONTEXT_LENGTH')
    const ok = await small.chat({ messages: PARIS, temperature: 0, max_tokens: 5 })
    assert.ok(ok.usage.total_tokens <= 64)
  } finally {
    await small.close()
  }
})

test('limits on work per request: timeoutMs and requestTimeoutMs end with ERR_TIMEOUT, maxPromptTokens refuses long prompts', async () => {
  const m = await model()
  const story = { messages: [{ role: 'user', content: 'Write a long story about a dragon.' }], temperature: 0, max_tokens: 2000 }
  await rejectsWithCode(assert, m.chat(story, { timeoutMs: 300 }), 'ERR_TIMEOUT')
  const chunks = []
  await assert.rejects(
    (async () => {
      for await (const chunk of m.chatStream(story, { timeoutMs: 1500 })) chunks.push(chunk)
    })(),
    (e) => e.code === 'ERR_TIMEOUT' && /1500 ms/.test(e.message),
  )
  assert.ok(chunks.length > 1, 'the stream sent its chunks before the deadline')
  for (const timeoutMs of [0, -1, 1.5, '100']) {
    await rejectsWithCode(assert, m.chat(story, { timeoutMs }), 'ERR_INVALID_REQUEST')
  }
  assert.match((await m.chat({ messages: PARIS, temperature: 0, max_tokens: 8 }, { timeoutMs: 60_000 })).choices[0].message.content, /Paris/)

  const limited = await loadModel({ threads: 2, maxPromptTokens: 64, requestTimeoutMs: 300 })
  try {
    const long = { messages: [{ role: 'user', content: 'Say hi. '.repeat(60) }], max_tokens: 4 }
    await assert.rejects(limited.chat(long), (e) => e.code === 'ERR_CONTEXT_LENGTH' && /maxPromptTokens/.test(e.message))
    await rejectsWithCode(assert, limited.chat(story), 'ERR_TIMEOUT')
    assert.match((await limited.chat({ messages: PARIS, temperature: 0, max_tokens: 8 }, { timeoutMs: 60_000 })).choices[0].message.content, /Paris/)
  } finally {
    await limited.close()
  }
})

test('model loading failures carry codes', async () => {
  await rejectsWithCode(assert, loadModel({ modelPath: 'models/does-not-exist.gguf' }), 'ERR_MODEL_NOT_FOUND')
  const dir = mkdtempSync(join(tmpdir(), 'qwen-native-test-'))
  const notGguf = join(dir, 'notes.gguf')
  writeFileSync(notGguf, 'this is not a model')
  await rejectsWithCode(assert, loadModel({ modelPath: notGguf }), 'ERR_MODEL_LOAD')
  // The first 4 MiB of the real file: a valid header whose tensors run past the end.
  const truncated = join(dir, 'truncated.gguf')
  const buf = Buffer.alloc(4 << 20)
  const fd = openSync(DEFAULT_MODEL_PATH, 'r')
  readSync(fd, buf, 0, buf.length, 0)
  closeSync(fd)
  writeFileSync(truncated, buf)
  const err = await rejectsWithCode(assert, loadModel({ modelPath: truncated }), 'ERR_MODEL_LOAD')
  assert.match(err.message, /truncated|corrupt/)
  await rejectsWithCode(assert, loadModel({ modelPath: dir }), 'ERR_MODEL_LOAD')
  await rejectsWithCode(assert, loadModel({ device: 'tpu' }), 'ERR_INVALID_REQUEST')
  await rejectsWithCode(assert, loadModel({ contextLenght: 10 }), 'ERR_INVALID_REQUEST')
})

test('device: auto runs on the CPU and says why when no GPU can be used; cuda there is ERR_MODEL_LOAD naming the cause', async () => {
  const m = await model() // loaded with the default device: 'auto'
  let cuda
  try {
    cuda = await loadModel({ device: 'cuda' })
  } catch (err) {
    // A CPU-only addon says it has no CUDA; a CUDA addon names the missing library, driver or GPU.
    assert.equal(err.code, 'ERR_MODEL_LOAD')
    assert.match(err.message, /device "cuda:0" is not available: .*(no CUDA support|CUDA libraries not found|CUDA_ERROR|sm_)/)
    assert.equal(m.info.device, 'cpu')
    assert.equal(m.info.gpu, null)
    assert.equal(typeof m.info.cpuFallbackReason, 'string')
    assert.ok(err.message.endsWith(m.info.cpuFallbackReason), 'auto and cuda give the same reason')
    return
  }
  // A machine with a usable GPU: both land on it, and info reports its memory.
  try {
    assert.equal(cuda.info.device, 'cuda:0')
    assert.ok(cuda.info.gpu.totalMemoryBytes > cuda.info.gpu.usedMemoryBytes)
    assert.equal(m.info.device, 'cuda:0')
    assert.equal(m.info.cpuFallbackReason, null)
  } finally {
    await cuda.close()
  }
})

test('onProgress reports loading up to the total, and a closed model rejects with ERR_CLOSED', async () => {
  const reports = []
  const m = await loadModel({ onProgress: (p) => reports.push(p) })
  assert.ok(reports.length >= 2)
  const last = reports.at(-1)
  assert.equal(last.loadedBytes, last.totalBytes)
  assert.ok(last.totalBytes > 400e6)
  assert.ok(reports.every((p, i) => i === 0 || p.loadedBytes >= reports[i - 1].loadedBytes))
  await m.close()
  await rejectsWithCode(assert, m.chat({ messages: PARIS }), 'ERR_CLOSED')
  assert.throws(() => m.tokenize('hi'), (e) => e.code === 'ERR_CLOSED')
  await m.close() // idempotent
})
