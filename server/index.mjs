// The example agent server: Express + qwen-native, no Python and no second backend.
//   npm start                          the default model on http://localhost:3000
//   MODEL_PATH=... PORT=... SANDBOX_DIR=... HEARTBEAT_MS=... npm start
//   MAX_PROMPT_TOKENS=... REQUEST_TIMEOUT_MS=... SHUTDOWN_GRACE_MS=... npm start
// It loads the model once, mounts the agent routes (agentRoutes.mjs) with the example tools
// (agentTools.mjs), and serves the chat page in public/. On SIGTERM or SIGINT (on Windows, which
// sends no SIGTERM: Ctrl+C, or SIGBREAK from Ctrl+Break or a console close) it stops accepting,
// lets running answers finish for SHUTDOWN_GRACE_MS (default 10000), ends the rest with an error
// event, and exits.
import express from 'express'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadModel } from 'qwen-native'
import { createAgentRouter, jsonErrors, notFound } from './agentRoutes.mjs'
import { createDefaultTools } from './agentTools.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const port = Number(process.env.PORT ?? 3000)
const sandboxDir = path.resolve(process.env.SANDBOX_DIR ?? path.join(here, 'sandbox'))
const numberFromEnv = (name) => (process.env[name] === undefined ? undefined : Number(process.env[name]))
const heartbeatMs = numberFromEnv('HEARTBEAT_MS')
const graceMs = numberFromEnv('SHUTDOWN_GRACE_MS') ?? 10_000

let shown = -1
const model = await loadModel({
  // The model path comes from MODEL_PATH, else the package's default model.
  // Limits on the work one request may ask for (unset: the context length, no deadline).
  maxPromptTokens: numberFromEnv('MAX_PROMPT_TOKENS'),
  requestTimeoutMs: numberFromEnv('REQUEST_TIMEOUT_MS'),
  onProgress({ loadedBytes, totalBytes }) {
    const percent = Math.floor((100 * loadedBytes) / totalBytes)
    if (percent >= shown + 10 || percent === 100) {
      shown = percent
      console.log(`loading model: ${percent}%`)
    }
  },
})
const { name, quantization, device, contextLength } = model.info
console.log(`loaded ${name} (${quantization}, ${device}, context ${contextLength} tokens)`)

const app = express()
app.disable('x-powered-by')
app.use(express.static(path.join(here, 'public')))
const agent = createAgentRouter(model, createDefaultTools({ sandboxDir }), { heartbeatMs })
app.use(agent)
app.use(notFound)
app.use(jsonErrors)

const server = app.listen(port, (err) => {
  if (err) {
    console.error(`cannot listen on port ${port}: ${err.message}`)
    process.exit(1)
  }
  console.log(`agent server listening on http://localhost:${server.address().port} (tools' sandbox: ${sandboxDir})`)
})

async function shutdown(signal) {
  console.log(`${signal}: no new requests; running ones have ${graceMs} ms to finish`)
  server.close()
  server.closeIdleConnections()
  await agent.close({ graceMs })
  server.closeAllConnections()
  await model.close()
  process.exit(0)
}
// A second signal ends the process at once (the handlers are removed after the first).
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
if (process.platform === 'win32') process.once('SIGBREAK', shutdown)
