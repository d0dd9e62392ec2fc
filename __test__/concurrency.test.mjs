// Concurrent requests on one model are batched: each gets exactly its own answer, those beyond
// maxBatch wait and those beyond maxQueue are refused, and the event loop stays free while the
// engine computes.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { loadModel } from '../index.js'
import { model, collect, streamedText, rejectsWithCode } from './helpers.mjs'

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

/** Polls `m.stats()` until `done` holds; returns those stats. */
async function statsWhen(m, done) {
  for (let i = 0; i < 6000; i++) {
    const stats = m.stats()
    if (done(stats)) return stats
    await sleep(10)
  }
  assert.fail(`stats never got there: ${JSON.stringify(m.stats())}`)
}

test('beyond maxBatch requests wait, beyond maxQueue they are refused, and stats() returns to idle', async () => {
  const m = await loadModel({ threads: 2, maxBatch: 1, maxQueue: 1 })
  try {
    const controller = new AbortController()
    const running = m.chat({ ...request('Write a long story about a dragon.'), max_tokens: 300 }, { signal: controller.signal })
    await statsWhen(m, (s) => s.running === 1)
    const queued = m.chat(request(QUESTIONS[0]))
    assert.deepEqual([m.stats().running, m.stats().queued], [1, 1])
    await rejectsWithCode(assert, m.chat(request(QUESTIONS[1])), 'ERR_OVERLOADED')
    controller.abort()
    await rejectsWithCode(assert, running, 'ERR_ABORTED')
    assert.match((await queued).choices[0].message.content, /4/)
    const idle = await statsWhen(m, (s) => s.running === 0 && s.queued === 0)
    assert.equal(idle.batchSize, 0)
    assert.equal(idle.maxBatch, 1)
    assert.equal(idle.requestsFinished, 1)
    assert.equal(idle.requestsFailed, 1)
    assert.ok(idle.generatedTokens > 0 && idle.promptTokens > 0, JSON.stringify(idle))
  } finally {
    await m.close()
  }
})
