// The agent's HTTP routes, as an Express Router over a loaded qwen-native model and a tool registry:
//   POST /api/agent/chat        the agent loop (model -> tools -> model ...) streamed as Server-Sent Events
//                               (delta, tool_call, tool_result, step, final, error; see agent.mjs)
//   POST /v1/chat/completions   OpenAI-compatible (JSON, or SSE ending in `data: [DONE]`); tools pass through
//   GET  /v1/models, /v1/models/:id, /health (model, tools, engine stats), /metrics (Prometheus text)
// Errors are OpenAI-shaped bodies ({ error: { message, type, param, code } }) with a 4xx/5xx status, or, once a
// stream has started, a final `data: {"error": ...}` chunk (/v1) or `error` event (agent). A client that
// disconnects aborts its generation. `router.close({ graceMs })` drains it for a graceful shutdown.
import express from 'express'
import { runAgent, DEFAULT_SYSTEM_PROMPT } from './agent.mjs'
import { metricsHandler } from './metrics.mjs'

/** HTTP status for each qwen-native error code; anything else is a 500. */
const STATUS = {
  ERR_INVALID_REQUEST: 400,
  ERR_CONTEXT_LENGTH: 400,
  ERR_NOT_FOUND: 404,
  ERR_BODY_TOO_LARGE: 413,
  ERR_OVERLOADED: 429,
  ERR_CLOSED: 503,
  ERR_TIMEOUT: 504,
}

/**
 * @param {import('qwen-native').Model} model a loaded model (`await loadModel()`)
 * @param {import('./agentTools.mjs').ToolRegistry} tools the agent's tools
 * @param {{ maxSteps?: number, bodyLimit?: string | number, systemPrompt?: string, heartbeatMs?: number }} [options]
 *   maxSteps: model turns per agent request (default 6; the last one may not call tools);
 *   bodyLimit: largest accepted JSON body (default '1mb'); systemPrompt: used when the client sends none;
 *   heartbeatMs: an SSE comment (`: keep-alive`) goes out after this long without an event, so proxies
 *   and clients keep a stream open while its request waits in the queue or reads a long prompt
 *   (default 10000; 0: none). Once one has gone out, a later error arrives as an `error` event.
 */
export function createAgentRouter(model, tools, { maxSteps = 6, bodyLimit = '1mb', systemPrompt = DEFAULT_SYSTEM_PROMPT, heartbeatMs = 10_000 } = {}) {
  if (!Number.isInteger(maxSteps) || maxSteps < 1) throw new TypeError('maxSteps must be a positive integer')
  if (!(heartbeatMs >= 0)) throw new TypeError('heartbeatMs must be a number of milliseconds (0: none)')
  const router = express.Router()
  const created = Math.floor(Date.now() / 1000)
  const running = new Set() // AbortControllers of the requests in progress (generating or queued)
  let closing = null // the error new and cut-off requests get once close() was called
  let onIdle = null

  /**
   * Runs `work(signal)` as one client's request: a disconnect aborts it; counted in /health.
   * `openai`: a mid-stream error is a final `data:` chunk rather than an `error` event.
   */
  async function serve(res, work, { openai = false } = {}) {
    if (closing) return sendError(res, closing)
    const controller = new AbortController()
    const onClose = () => res.writableFinished || controller.abort()
    res.on('close', onClose)
    running.add(controller)
    try {
      await work(controller.signal)
    } catch (err) {
      // Cut off by close(): the client hears why. Aborted by its own disconnect: nobody listens.
      if (closing && controller.signal.reason === closing) sendError(res, closing, { openai })
      else if (!controller.signal.aborted) sendError(res, err, { openai })
    } finally {
      running.delete(controller)
      res.off('close', onClose)
      if (running.size === 0) onIdle?.()
    }
  }

  /**
   * Graceful shutdown: new requests get 503 ERR_CLOSED; running ones may finish for `graceMs`, then
   * each ends with an ERR_CLOSED error (an error chunk or event on a stream, not a cut socket).
   * Resolves once none is left.
   */
  router.close = async ({ graceMs = 10_000 } = {}) => {
    closing ??= codedError('ERR_CLOSED', 'the server is shutting down')
    const idle = () => (running.size === 0 ? Promise.resolve() : new Promise((resolve) => (onIdle = resolve)))
    let timer
    await Promise.race([idle(), new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))])
    clearTimeout(timer)
    for (const controller of running) controller.abort(closing)
    await idle()
  }

  router.use(express.json({ limit: bodyLimit }))

  router.get('/health', (req, res) => {
    res.json({ status: closing ? 'closing' : 'ok', model: model.info, tools: tools.names, requests: { active: running.size }, engine: model.stats() })
  })
  router.get('/metrics', metricsHandler(model, () => running.size))

  const modelEntry = () => ({ id: model.info.name, object: 'model', created, owned_by: 'qwen-native' })
  router.get('/v1/models', (req, res) => res.json({ object: 'list', data: [modelEntry()] }))
  router.get('/v1/models/:id', (req, res) => {
    if (req.params.id !== model.info.name) return sendError(res, codedError('ERR_NOT_FOUND', `no model "${req.params.id}"; this server has "${model.info.name}"`))
    res.json(modelEntry())
  })

  router.post('/v1/chat/completions', (req, res) =>
    serve(res, async (signal) => {
      const body = requireObject(req.body)
      if (!body.stream) return res.json(await model.chat(body, { signal }))
      const sse = new EventStream(res, heartbeatMs)
      for await (const chunk of model.chatStream(body, { signal })) await sse.send(chunk)
      await sse.done()
    }, { openai: true }),
  )

  router.post('/api/agent/chat', (req, res) =>
    serve(res, async (signal) => {
      const { messages, options } = agentRequest(req.body)
      const sse = new EventStream(res, heartbeatMs)
      for await (const { type, ...data } of runAgent(model, tools, { messages, options, maxSteps, systemPrompt, signal })) {
        await sse.event(type, data)
      }
      sse.end()
    }),
  )

  router.use((err, req, res, next) => {
    // body-parser's errors: malformed JSON (400) and bodies over the limit (413).
    if (err?.type === 'entity.too.large') return sendError(res, codedError('ERR_BODY_TOO_LARGE', `the request body is over the ${bodyLimit} limit`))
    if (err?.type === 'entity.parse.failed') return sendError(res, codedError('ERR_INVALID_REQUEST', `the request body is not valid JSON (${err.message})`))
    jsonErrors(err, req, res, next)
  })
  return router
}

/** Express error middleware answering every error as an OpenAI-style JSON body (never Express's HTML page). */
export function jsonErrors(err, req, res, next) {
  if (res.headersSent && !res.getHeader('content-type')?.startsWith('text/event-stream')) return next(err)
  if (err?.status >= 400 && err.status < 500) return sendError(res, codedError('ERR_INVALID_REQUEST', err.message), { status: err.status })
  sendError(res, err instanceof Error ? err : new Error(String(err)))
}

/** A JSON 404 for routes nobody serves. */
export function notFound(req, res) {
  sendError(res, codedError('ERR_NOT_FOUND', `no route ${req.method} ${req.path}`))
}

/** The agent route's body: OpenAI-style `messages` plus sampling options; tools come from the registry. */
function agentRequest(body) {
  const { messages, tools, tool_choice, stream, stream_options, ...options } = requireObject(body)
  if (!Array.isArray(messages) || messages.length === 0) throw codedError('ERR_INVALID_REQUEST', '"messages" must be a non-empty array of chat messages', 'messages')
  for (const [name, value] of Object.entries({ tools, tool_choice })) {
    if (value !== undefined) throw codedError('ERR_INVALID_REQUEST', `"${name}" is not accepted here: the agent's tools come from its registry (use /v1/chat/completions for your own tools)`, name)
  }
  return { messages, options }
}

function requireObject(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw codedError('ERR_INVALID_REQUEST', 'the request body must be a JSON object (send content-type: application/json)')
  }
  return body
}

/** A Server-Sent Events response. Headers go out with the first event, so an error before it is still a plain 4xx. */
class EventStream {
  #res
  #heartbeat = null
  #wrote = false

  /** `heartbeatMs`: a comment line is sent when no event went out for that long (0: never). */
  constructor(res, heartbeatMs = 0) {
    this.#res = res
    if (heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => {
        if (!this.#wrote) this.#write(': keep-alive\n\n').catch(() => {})
        this.#wrote = false
      }, heartbeatMs).unref()
      res.once('close', () => clearInterval(this.#heartbeat))
    }
  }

  /** An unnamed `data:` event, as OpenAI streams use. */
  send(data) {
    return this.#write(`data: ${JSON.stringify(data)}\n\n`)
  }

  /** A named event: `event: <name>` then its JSON data. */
  event(name, data) {
    return this.#write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)
  }

  /** Ends an OpenAI stream: `data: [DONE]`. */
  async done() {
    await this.#write('data: [DONE]\n\n')
    this.end()
  }

  end() {
    clearInterval(this.#heartbeat)
    if (!this.#res.destroyed) this.#res.end()
  }

  async #write(text) {
    this.#wrote = true
    const res = this.#res
    if (res.destroyed) return
    if (!res.headersSent) {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no' })
    }
    // Respect backpressure: a slow client slows the stream instead of filling memory.
    if (!res.write(text)) {
      await new Promise((resolve) => {
        const resume = () => {
          res.off('drain', resume).off('close', resume)
          resolve()
        }
        res.on('drain', resume).on('close', resume)
      })
    }
  }
}

function codedError(code, message, param = null) {
  return Object.assign(new Error(message), { code, param })
}

/**
 * Sends `err` as an OpenAI-style error: a JSON body with a status, or mid-stream a final `data:` chunk
 * holding `{ error }` (`openai`, as OpenAI's streams do) or an `error` event.
 */
function sendError(res, err, { status = STATUS[err.code] ?? 500, openai = false } = {}) {
  const error = {
    message: err.message,
    type: status < 500 ? 'invalid_request_error' : 'server_error',
    param: err.param ?? null,
    code: err.code ?? 'ERR_INTERNAL',
  }
  if (status >= 500) console.error('[qwen-native server]', err)
  if (res.destroyed) return
  if (!res.headersSent) return res.status(status).json({ error })
  // Mid-stream: the status is already 200, so the error travels in the stream, which then ends.
  res.end(`${openai ? '' : 'event: error\n'}data: ${JSON.stringify({ error })}\n\n`)
}
