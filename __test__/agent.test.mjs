// The agent loop as a function (server/agent.mjs), with no HTTP: events in order, tool results fed
// back, the final message and the messages the run added.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { runAgent } from '../server/agent.mjs'
import { createDefaultTools } from '../server/agentTools.mjs'
import { model, rejectsWithCode } from './helpers.mjs'

const tools = () => createDefaultTools({ sandboxDir: new URL('../server/sandbox', import.meta.url).pathname })

after(async () => (await model()).close())

async function run(messages, options = {}, signal) {
  const events = []
  for await (const event of runAgent(await model(), tools(), { messages, options: { temperature: 0, max_tokens: 100, ...options }, signal })) events.push(event)
  return events
}

test('runAgent calls a tool, feeds its result back and answers with it', async () => {
  const before = (await model()).stats()
  const events = await run([{ role: 'user', content: 'What is 1234 * 5678?' }])
  const after = (await model()).stats()
  const types = events.map((e) => e.type)
  const call = events.find((e) => e.type === 'tool_call')
  assert.equal(call?.name, 'calculate', JSON.stringify(events))
  const result = events.find((e) => e.type === 'tool_result')
  assert.equal(result.id, call.id)
  assert.equal(result.ok, true)
  assert.ok(types.indexOf('tool_result') > types.indexOf('tool_call'))
  const final = events.at(-1)
  assert.equal(final.type, 'final')
  assert.match(final.message.content.replace(/[,\s]/g, ''), /7006652/)
  assert.equal(final.steps, 2)
  // What the run added: the call, the tool's answer, the final message.
  assert.deepEqual(final.messages.map((m) => m.role), ['assistant', 'tool', 'assistant'])
  assert.equal(final.messages[1].tool_call_id, call.id)
  assert.ok(final.usage.completion_tokens > 0 && final.usage.prompt_tokens > final.usage.completion_tokens)
  // The second turn found the first turn's prompt (system prompt, five tools, question) in the prefix
  // cache: over 1000 tokens not computed again.
  assert.ok(after.cachedPromptTokens - before.cachedPromptTokens > 1000, JSON.stringify({ before, after }))
})

test('runAgent with maxSteps 1 answers without tools; an abort ends it with ERR_ABORTED', async () => {
  const m = await model()
  const events = []
  for await (const e of runAgent(m, tools(), { messages: [{ role: 'user', content: 'What is 1234 * 5678?' }], options: { temperature: 0, max_tokens: 30 }, maxSteps: 1 })) events.push(e)
  assert.deepEqual(events.filter((e) => e.type === 'tool_call'), [])
  assert.equal(events.at(-1).type, 'final')
  const controller = new AbortController()
  controller.abort()
  await rejectsWithCode(assert, run([{ role: 'user', content: 'Hi' }], {}, controller.signal), 'ERR_ABORTED')
})
