// The chat page (server/public/) in a real browser: headless Debian Chromium driven by
// playwright-core, against the real server and model. The screenshot lands in test-output/.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { startServer } from './helpers.mjs'
import { CHROMIUM } from '../scripts/ensure-browser.mjs'

const OUTPUT_DIR = process.env.TEST_OUTPUT_DIR ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-output')
const skip = process.env.QWEN_NATIVE_SKIP_BROWSER === '1' && 'QWEN_NATIVE_SKIP_BROWSER=1'

let server
let browser

before(async () => {
  if (skip) return
  server = await startServer()
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Flags for a headless root container with no network beyond localhost.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
})

after(async () => {
  await browser?.close()
  await server?.stop()
})

test('the chat page streams an answer and shows the tool call it made', { skip, timeout: 180_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } })
  const pageErrors = []
  page.on('pageerror', (err) => pageErrors.push(err.message))
  await page.goto(`${server.url}/?temperature=0`) // greedy, so the answer is repeatable
  await page.locator('#model-info').filter({ hasText: /Qwen/ }).waitFor()

  await page.fill('#input', 'What is 1234 * 5678?')
  await page.click('#send')
  // While the agent works, the stop button is offered.
  await page.locator('#stop').waitFor({ state: 'visible' })

  const card = page.locator('.tool-card')
  await card.locator('.result').waitFor({ timeout: 120_000 })
  assert.match(await card.locator('.title').innerText(), /calculate/)
  assert.match(await card.locator('.result').innerText(), /7006652/)
  assert.ok(await card.evaluate((el) => el.classList.contains('ok')))

  // The answer streams in (the bubble grows while marked streaming), then settles.
  const answer = page.locator('.message.assistant').last()
  await answer.waitFor()
  await page.locator('.usage').waitFor({ timeout: 120_000 })
  const text = await answer.innerText()
  assert.ok(text.replace(/[,\s]/g, '').includes('7006652'), `the answer uses the result: ${text}`)
  assert.equal(await answer.evaluate((el) => el.classList.contains('streaming')), false)
  assert.equal(await page.locator('#stop').isHidden(), true)

  await mkdir(OUTPUT_DIR, { recursive: true })
  const file = path.join(OUTPUT_DIR, 'chat-page.png')
  await page.screenshot({ path: file, fullPage: true })
  console.log(`screenshot: ${file}`)
  assert.deepEqual(pageErrors, [])
})

test('the stop button aborts a streaming answer and the page stays usable', { skip, timeout: 180_000 }, async () => {
  const page = await browser.newPage()
  await page.goto(`${server.url}/?temperature=0`)
  await page.fill('#input', 'Write a long story about a lighthouse keeper, at least 500 words.')
  await page.click('#send')
  const answer = page.locator('.message.assistant.streaming')
  await answer.waitFor({ timeout: 60_000 })
  await page.click('#stop')
  await page.locator('.usage', { hasText: 'stopped' }).waitFor()
  assert.equal(await page.locator('#send').isDisabled(), false)
  // The server freed the model: the next question is answered.
  await page.fill('#input', 'What is the capital of France? Answer in one word.')
  await page.click('#send')
  await page.locator('.message.assistant').filter({ hasText: /Paris/ }).waitFor({ timeout: 60_000 })
})

test('stopping after a tool ran keeps its card, and the next request carries its call and result', { skip, timeout: 180_000 }, async () => {
  const page = await browser.newPage()
  // The page's first agent stream is held right after its first tool round (the `step` event), so
  // the stop button is pressed at that point however fast the model answers afterwards.
  await page.addInitScript(() => {
    const realFetch = window.fetch
    let calls = 0
    window.fetch = async (input, init) => {
      const res = await realFetch(input, init)
      if (!String(input).endsWith('/api/agent/chat') || calls++ > 0) return res
      const reader = res.body.getReader()
      const body = new ReadableStream({
        start(controller) {
          init?.signal?.addEventListener('abort', () => controller.error(new DOMException('stopped', 'AbortError')))
          let text = ''
          ;(async () => {
            for (;;) {
              const { value, done } = await reader.read().catch(() => ({ done: true }))
              if (done) return // never closes: to the page the answer is still coming
              text += new TextDecoder().decode(value)
              const step = text.indexOf('event: step')
              if (step === -1) continue
              controller.enqueue(new TextEncoder().encode(text.slice(0, text.indexOf('\n\n', step) + 2)))
              for (;;) if ((await reader.read().catch(() => ({ done: true }))).done) return
            }
          })()
        },
      })
      return new Response(body, { status: res.status, headers: res.headers })
    }
  })
  await page.goto(`${server.url}/?temperature=0`)
  await page.fill('#input', 'What is 1234 * 5678?')
  await page.click('#send')
  await page.locator('.tool-card.ok').waitFor({ timeout: 60_000 })
  await page.click('#stop')
  await page.locator('.usage', { hasText: 'stopped' }).waitFor()
  assert.equal(await page.locator('.tool-card.ok').count(), 1)
  const next = page.waitForRequest((r) => r.url().endsWith('/api/agent/chat'))
  await page.fill('#input', 'Thanks!')
  await page.click('#send')
  const { messages } = JSON.parse((await next).postData())
  const call = messages.find((m) => m.role === 'assistant' && m.tool_calls)
  assert.ok(call, JSON.stringify(messages))
  const result = messages.find((m) => m.role === 'tool')
  assert.equal(result.tool_call_id, call.tool_calls[0].id)
  assert.match(result.content, /7006652/)
  assert.deepEqual(messages.map((m) => m.role).slice(-2), ['assistant', 'user'])
  await page.click('#stop')
})
