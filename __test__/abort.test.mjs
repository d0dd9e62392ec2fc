// Cancellation: AbortSignal and `break` stop a generation at its next token step and free the
// engine for the next request.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { model, PARIS, rejectsWithCode } from './helpers.mjs'

after(async () => (await model()).close())

const LONG = { messages: [{ role: 'user', content: 'Write a very long essay about the history of Rome.' }], temperature: 0, max_tokens: 2000 }

test('aborting mid-stream rejects with ERR_ABORTED and the model serves the next request', async () => {
  const m = await model()
  const controller = new AbortController()
  const seen = []
  const err = await rejectsWithCode(assert, (async () => {
    for await (const chunk of m.chatStream(LONG, { signal: controller.signal })) {
      seen.push(chunk)
      if (seen.length === 3) controller.abort()
    }
  })(), 'ERR_ABORTED')
  assert.equal(seen.length, 3)
  assert.equal(err.message, 'the request was aborted')
  // If the aborted generation still ran, this would wait behind ~2000 tokens and time out.
  const next = await m.chat({ messages: PARIS, temperature: 0 })
  assert.match(next.choices[0].message.content, /Paris/)
})

test('an AbortSignal rejects chat() with ERR_ABORTED', async () => {
  const m = await model()
  const controller = new AbortController()
  const pending = m.chat(LONG, { signal: controller.signal })
  setTimeout(() => controller.abort(), 300)
  await rejectsWithCode(assert, pending, 'ERR_ABORTED')
  await rejectsWithCode(assert, m.chat(PARIS, { signal: AbortSignal.abort() }), 'ERR_ABORTED')
  const next = await m.chat({ messages: PARIS, temperature: 0 })
  assert.match(next.choices[0].message.content, /Paris/)
})

test('breaking out of for await cancels the generation', async () => {
  const m = await model()
  let n = 0
  for await (const chunk of m.chatStream(LONG)) {
    assert.ok(chunk)
    if (++n === 2) break
  }
  const next = await m.chat({ messages: PARIS, temperature: 0 })
  assert.match(next.choices[0].message.content, /Paris/)
})
