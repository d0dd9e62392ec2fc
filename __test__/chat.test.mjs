// chat() and chatStream() on the real default model: answers, OpenAI shapes, sampling, limits.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { model, PARIS, collect, streamedText } from './helpers.mjs'

after(async () => (await model()).close())

test('greedy chat answers the capital of France with Paris, in the OpenAI shape', async () => {
  const m = await model()
  const res = await m.chat({ messages: PARIS, temperature: 0 })
  assert.equal(res.object, 'chat.completion')
  assert.match(res.id, /^chatcmpl-/)
  assert.equal(res.choices.length, 1)
  const [choice] = res.choices
  assert.equal(choice.message.role, 'assistant')
  assert.match(choice.message.content, /Paris/)
  assert.equal(choice.finish_reason, 'stop')
  assert.ok(res.usage.prompt_tokens > 10)
  assert.ok(res.usage.completion_tokens >= 1)
  assert.equal(res.usage.total_tokens, res.usage.prompt_tokens + res.usage.completion_tokens)
})

test('chatStream chunks add up to the same text as chat for the same seed', async () => {
  const m = await model()
  const request = {
    messages: [{ role: 'user', content: 'Write two sentences about the sea.' }],
    temperature: 0.9,
    seed: 1234,
    max_tokens: 40,
  }
  const full = await m.chat(request)
  const chunks = await collect(m.chatStream(request))
  assert.equal(streamedText(chunks), full.choices[0].message.content)
  assert.ok(full.choices[0].message.content.length > 0)
  assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' })
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk')
    assert.equal(c.id, chunks[0].id)
  }
  assert.equal(chunks.at(-1).choices[0].finish_reason, full.choices[0].finish_reason)
})

test('the same seed gives the same text', async () => {
  const m = await model()
  const request = { messages: [{ role: 'user', content: 'Name three fruits.' }], temperature: 1.0, top_p: 0.95, seed: 7, max_tokens: 24 }
  const a = await m.chat(request)
  const b = await m.chat(request)
  assert.equal(a.choices[0].message.content, b.choices[0].message.content)
})

test('max_tokens ends the answer with finish_reason "length" and counts the tokens', async () => {
  const m = await model()
  const res = await m.chat({ messages: [{ role: 'user', content: 'Tell me a long story about a dragon.' }], temperature: 0, max_tokens: 5 })
  assert.equal(res.choices[0].finish_reason, 'length')
  assert.equal(res.usage.completion_tokens, 5)
  assert.ok(res.choices[0].message.content.length > 0)
})

test('stop strings end generation and are not emitted', async () => {
  const m = await model()
  const messages = [{ role: 'user', content: 'Count from 1 to 10, separated by commas and spaces. Output only the numbers.' }]
  const free = await m.chat({ messages, temperature: 0, max_tokens: 40 })
  // The stop string is the separator the model writes before 5 (", " or ","), then "5": it spans tokens.
  const separator = /4(,\s*)5/.exec(free.choices[0].message.content)?.[1]
  assert.ok(separator, free.choices[0].message.content)
  const stop = [`${separator}5`]
  const res = await m.chat({ messages, temperature: 0, max_tokens: 40, stop })
  const text = res.choices[0].message.content
  assert.equal(res.choices[0].finish_reason, 'stop')
  assert.ok(!text.includes('5'), `stop string leaked: ${JSON.stringify(text)}`)
  assert.ok(text.includes('4'))
  assert.ok(free.choices[0].message.content.startsWith(text))
  const streamed = streamedText(await collect(m.chatStream({ messages, temperature: 0, max_tokens: 40, stop })))
  assert.equal(streamed, text)
})

test('stream_options.include_usage adds a final usage chunk', async () => {
  const m = await model()
  const chunks = await collect(m.chatStream({ messages: PARIS, temperature: 0, stream_options: { include_usage: true } }))
  const last = chunks.at(-1)
  assert.deepEqual(last.choices, [])
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens)
  assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop')
})

test('streamed text never holds a broken UTF-8 character', async () => {
  const m = await model()
  const chunks = await collect(m.chatStream({
    messages: [{ role: 'user', content: 'Repeat exactly: "olá, coração 🦀🚀 世界 こんにちは"' }],
    temperature: 0,
    max_tokens: 40,
  }))
  for (const c of chunks) assert.ok(!(c.choices[0]?.delta?.content ?? '').includes('\uFFFD'))
  assert.match(streamedText(chunks), /🦀|世界|coração/)
})

test('info describes the loaded model', async () => {
  const m = await model()
  const info = m.info
  assert.equal(info.architecture, 'qwen2')
  assert.equal(info.format, 'gguf')
  assert.equal(info.contextLength, 32768)
  assert.equal(info.layers, 24)
  assert.equal(info.device, 'cpu')
  assert.match(info.quantization, /Q4_K_M/)
  if (process.arch === 'x64') assert.match(info.cpuKernels, /^(avx512vnni|avx2)$/)
})
