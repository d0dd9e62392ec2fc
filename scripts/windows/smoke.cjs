'use strict'
// The Windows smoke test (`npm run test:windows` runs it under Wine, on the packed win32-x64-gnu
// addon installed in a fresh app): load, chat, stream, a tool call, abort, coded errors, and the
// file tools' sandbox. One JSON line per check; exits 1 if any fails.
//   node smoke.cjs <app dir with qwen-native installed> <model path> <sandbox dir>
const path = require('node:path')
const fs = require('node:fs')
const { createRequire } = require('node:module')
const { pathToFileURL } = require('node:url')

const results = []

async function check(name, fn) {
  const t0 = Date.now()
  try {
    const detail = await fn()
    results.push({ check: name, ok: true, ms: Date.now() - t0, detail })
  } catch (err) {
    results.push({ check: name, ok: false, ms: Date.now() - t0, error: `${err.code ?? ''} ${err.message}`.trim() })
  }
  console.log(JSON.stringify(results.at(-1)))
}

function expect(cond, message) {
  if (!cond) throw new Error(message)
}

async function rejectsWith(promise, code) {
  try {
    await promise
  } catch (err) {
    expect(err.code === code, `expected ${code}, got ${err.code}: ${err.message}`)
    return err.message
  }
  throw new Error(`expected ${code}, but it resolved`)
}

/** Prompts whose greedy answers the runner compares between the Windows and the Linux build. */
const GREEDY_PROMPTS = [
  'Count from 1 to 10, separated by commas and spaces. Output only the numbers.',
  'Count from 1 to 10.',
  'Write a haiku about autumn.',
  'Explain what a hash map is in two sentences.',
  'List three prime numbers greater than 100.',
]

async function main(appDir, modelPath, sandboxDir) {
  const appRequire = createRequire(path.join(appDir, 'package.json'))
  const { WEATHER_TOOL, LISBON } = await import(pathToFileURL(path.join(__dirname, '..', '..', '__test__', 'fixtures.mjs')).href)
  console.log(JSON.stringify({ platform: process.platform, arch: process.arch, node: process.version }))
  let qwen
  await check('the package loads the win32-x64-gnu prebuilt addon', () => {
    qwen = appRequire('qwen-native')
    const addon = appRequire.resolve('qwen-native-win32-x64-gnu')
    expect(process.platform === 'win32', `platform is ${process.platform}`)
    return addon
  })
  if (!qwen) return
  let model
  await check('loadModel', async () => {
    model = await qwen.loadModel({ modelPath, threads: 2 })
    return `${model.info.name} on ${model.info.device}`
  })
  if (!model) return
  const ask = (content, extra = {}) => ({ messages: [{ role: 'user', content }], temperature: 0, max_tokens: 24, ...extra })
  await check('chat answers', async () => {
    const res = await model.chat(ask('What is the capital of France? Answer in one word.', { max_tokens: 8 }))
    const text = res.choices[0].message.content
    expect(/Paris/.test(text), `answer: ${JSON.stringify(text)}`)
    return text
  })
  await check('chatStream streams deltas', async () => {
    let text = ''
    let chunks = 0
    let finish
    for await (const chunk of model.chatStream(ask('Count from 1 to 10, separated by commas.', { max_tokens: 40 }))) {
      const delta = chunk.choices[0]?.delta?.content
      if (delta) (text += delta), chunks++
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    expect(chunks > 3 && finish === 'stop', `${chunks} chunks, finish ${finish}: ${JSON.stringify(text)}`)
    return text
  })
  await check('a tool call', async () => {
    const res = await model.chat({ messages: LISBON, tools: [WEATHER_TOOL], temperature: 0, max_tokens: 60 })
    const call = res.choices[0].message.tool_calls?.[0]
    expect(res.choices[0].finish_reason === 'tool_calls' && call?.function.name === 'get_weather', JSON.stringify(res.choices[0].message))
    const args = JSON.parse(call.function.arguments)
    expect(args.location === 'Lisbon' && args.unit === 'celsius', call.function.arguments)
    return `${call.function.name}(${call.function.arguments})`
  })
  await check('abort ends a stream with ERR_ABORTED', async () => {
    const controller = new AbortController()
    const stream = model.chatStream(ask('Write a long story about the sea.', { max_tokens: 400 }), { signal: controller.signal })
    const read = (async () => {
      for await (const chunk of stream) if (chunk.choices[0]?.delta?.content) controller.abort()
    })()
    return rejectsWith(read, 'ERR_ABORTED')
  })
  await check('bad requests get coded errors', async () => {
    await rejectsWith(model.chat({ messages: [] }), 'ERR_INVALID_REQUEST')
    await rejectsWith(model.chat(ask('hi', { max_tokens: 1e6 })), 'ERR_CONTEXT_LENGTH')
    await rejectsWith(qwen.loadModel({ modelPath: path.join(sandboxDir, 'missing.gguf') }), 'ERR_MODEL_NOT_FOUND')
    await rejectsWith(qwen.loadModel({ modelPath: path.join(sandboxDir, 'notes.md') }), 'ERR_MODEL_LOAD')
    return 'ERR_INVALID_REQUEST, ERR_CONTEXT_LENGTH, ERR_MODEL_NOT_FOUND, ERR_MODEL_LOAD'
  })
  await check("the file tools' sandbox refuses escapes", async () => {
    const { createDefaultTools } = await import(pathToFileURL(appRequire.resolve('qwen-native/agent-tools')).href)
    const tools = createDefaultTools({ sandboxDir })
    const run = (name, args) => tools.run({ function: { name, arguments: JSON.stringify(args) } })
    const read = await run('read_file', { path: 'notes.md' })
    expect(read.ok && read.result.content.startsWith('sandbox notes'), JSON.stringify(read))
    const listed = await run('list_files', { path: '.' })
    expect(listed.ok && listed.result.entries.some((e) => e.name === 'notes.md'), JSON.stringify(listed))
    const refusals = []
    for (const escape of ['..\\secret.txt', '../secret.txt', 'sub\\..\\..\\secret.txt', path.join(sandboxDir, '..', 'secret.txt'), 'C:\\Windows\\win.ini', '\\\\.\\C:\\Windows\\win.ini', 'Z:secret.txt']) {
      const r = await run('read_file', { path: escape })
      expect(!r.ok && /refused|does not exist/.test(r.error), `${escape}: ${JSON.stringify(r)}`)
      expect(!JSON.stringify(r).includes('TOP SECRET'), `${escape} leaked the secret`)
      refusals.push(`${escape}: ${r.error}`)
    }
    return refusals
  })
  await check('greedy answers (compared with Linux by the runner)', async () => {
    const answers = []
    for (const prompt of GREEDY_PROMPTS) answers.push((await model.chat(ask(prompt, { max_tokens: 48 }))).choices[0].message.content)
    return answers
  })
  await model.close()
}

module.exports = { GREEDY_PROMPTS }

if (require.main === module) main(...process.argv.slice(2))
  .catch((err) => results.push({ check: 'smoke', ok: false, error: err.stack }))
  .finally(() => {
    const failed = results.filter((r) => !r.ok)
    console.log(JSON.stringify({ checks: results.length, failed: failed.length }))
    process.exitCode = failed.length ? 1 : 0
  })
