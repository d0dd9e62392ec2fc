// Concurrent requests on one model are queued: each gets exactly its own answer, and the event
// loop stays free while the engine computes.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { model, collect, streamedText } from './helpers.mjs'

after(async () => (await model()).close())

const QUESTIONS = ['What is 2 + 2?', 'Name a primary color.', 'What is the capital of Japan?']
const request = (q) => ({ messages: [{ role: 'user', content: q }], temperature: 0, max_tokens: 16 })

test('concurrent chats and streams each get their own answer, not interleaved', async () => {
  const m = await model()
  const sequential = []
  for (const q of QUESTIONS) sequential.push((await m.chat(request(q))).choices[0].message.content)
  const [a, b, c] = await Promise.all([
    m.chat(request(QUESTIONS[0])),
    collect(m.chatStream(request(QUESTIONS[1]))),
    m.chat(request(QUESTIONS[2])),
  ])
  assert.equal(a.choices[0].message.content, sequential[0])
  assert.equal(streamedText(b), sequential[1])
  assert.equal(c.choices[0].message.content, sequential[2])
})

test('the event loop stays responsive during generation', async () => {
  const m = await model()
  const histogram = monitorEventLoopDelay({ resolution: 5 })
  histogram.enable()
  let ticks = 0
  const timer = setInterval(() => ticks++, 10)
  const res = await m.chat({ messages: [{ role: 'user', content: 'Write a short poem about autumn.' }], temperature: 0, max_tokens: 48 })
  clearInterval(timer)
  histogram.disable()
  assert.ok(res.usage.completion_tokens > 10)
  const p99 = histogram.percentile(99) / 1e6
  // Blocking inference would stall the loop for the whole generation (seconds); a free loop
  // only sees scheduling noise from the compute threads sharing the cores.
  assert.ok(p99 < 100, `event-loop delay p99 ${p99.toFixed(1)} ms`)
  assert.ok(ticks > 20, `only ${ticks} timer ticks ran during generation`)
})
