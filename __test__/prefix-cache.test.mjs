// The prefix cache as a user sees it: two conversations taking turns each compute only their new
// tokens, and usage reports the reused ones as OpenAI's prompt_tokens_details.cached_tokens.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { loadModel } from '../index.js'
import { collect, rejectsWithCode } from './helpers.mjs'

const model = await loadModel({ threads: 2, prefixCacheSlots: 4 })
after(() => model.close())

const system = (who) => ({ role: 'system', content: `${who} answers briefly and politely, in plain English. `.repeat(30) })

/** One turn of `messages` (the answer is appended); returns its usage. */
async function turn(messages, question, { stream = false } = {}) {
  messages.push({ role: 'user', content: question })
  const request = { messages, temperature: 0, max_tokens: 8 }
  if (!stream) {
    const completion = await model.chat(request)
    messages.push(completion.choices[0].message)
    return completion.usage
  }
  const chunks = await collect(model.chatStream({ ...request, stream_options: { include_usage: true } }))
  messages.push({ role: 'assistant', content: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('') })
  return chunks.at(-1).usage
}

const computed = (usage) => usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens

test('two conversations taking turns each reuse their own prefix', async () => {
  const ann = [system('Ann')]
  const bob = [system('Bob')]
  const ann1 = await turn(ann, 'Say hi.')
  const bob1 = await turn(bob, 'Say hello.')
  assert.ok(computed(bob1) > 300, JSON.stringify(bob1))
  const ann2 = await turn(ann, 'Once more.')
  const bob2 = await turn(bob, 'Once more.', { stream: true })
  for (const [later, earlier] of [[ann2, ann1], [bob2, bob1]]) {
    assert.ok(computed(later) < 200, JSON.stringify(later))
    assert.ok(later.prompt_tokens_details.cached_tokens >= earlier.prompt_tokens, JSON.stringify({ later, earlier }))
  }
})

test('prefix cache options are validated', async () => {
  await rejectsWithCode(assert, loadModel({ prefixCacheSlots: 0 }), 'ERR_INVALID_REQUEST')
  await rejectsWithCode(assert, loadModel({ prefixCacheTokens: -5 }), 'ERR_INVALID_REQUEST')
})
