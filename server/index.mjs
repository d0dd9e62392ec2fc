// Example server: an OpenAI-compatible /v1/chat/completions (JSON or Server-Sent Events) over
// qwen-native, with no framework. `npm start` runs it on the default model.
//   curl localhost:3000/v1/chat/completions -H 'content-type: application/json' \
//     -d '{"messages":[{"role":"user","content":"Hello!"}]}'
import { createServer } from 'node:http'
import { loadModel } from '../index.js'

const PORT = Number(process.env.PORT ?? 3000)
const STATUS = { ERR_INVALID_REQUEST: 400, ERR_CONTEXT_LENGTH: 400, ERR_OVERLOADED: 429, ERR_CLOSED: 503, ERR_ABORTED: 499 }

console.log('loading model...')
const model = await loadModel({
  onProgress: ({ loadedBytes, totalBytes }) => process.stdout.write(`\r${Math.round((100 * loadedBytes) / totalBytes)}%`),
})
console.log(`\nloaded ${model.info.name} (${model.info.quantization}) on ${model.info.device}`)

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

function sendError(res, err) {
  const status = STATUS[err.code] ?? 500
  if (res.headersSent) {
    res.end(`data: ${JSON.stringify({ error: { message: err.message, code: err.code } })}\n\n`)
  } else {
    sendJson(res, status, { error: { message: err.message, type: status < 500 ? 'invalid_request_error' : 'server_error', code: err.code } })
  }
}

async function readJson(req) {
  let body = ''
  for await (const chunk of req) body += chunk
  try {
    return JSON.parse(body)
  } catch {
    throw Object.assign(new Error('the request body is not JSON'), { code: 'ERR_INVALID_REQUEST' })
  }
}

async function chatCompletions(req, res) {
  const body = await readJson(req)
  // A client that disconnects cancels its generation.
  const controller = new AbortController()
  res.on('close', () => controller.abort())
  if (!body.stream) return sendJson(res, 200, await model.chat(body, { signal: controller.signal }))
  const stream = model.chatStream(body, { signal: controller.signal })
  for await (const chunk of stream) {
    if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.write(`data: ${JSON.stringify(chunk)}\n\n`)
  }
  res.end('data: [DONE]\n\n')
}

const server = createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/v1/chat/completions') return await chatCompletions(req, res)
    if (req.method === 'GET' && req.url === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: [{ id: model.info.name, object: 'model', owned_by: 'local' }] })
    }
    if (req.method === 'GET' && req.url === '/health') return sendJson(res, 200, { status: 'ok', model: model.info })
    sendJson(res, 404, { error: { message: `no route ${req.method} ${req.url}`, code: 'ERR_NOT_FOUND' } })
  } catch (err) {
    if (err.code !== 'ERR_ABORTED' || !res.destroyed) sendError(res, err)
  }
})

server.listen(PORT, () => console.log(`qwen-native example server on http://localhost:${PORT}`))
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    server.close()
    await model.close()
    process.exit(0)
  })
}
