// The example agent server: Express + qwen-native, no Python and no second backend.
//   npm start                          the default model on http://localhost:3000
//   MODEL_PATH=... PORT=... SANDBOX_DIR=... HEARTBEAT_MS=... npm start
// It loads the model once, mounts the agent routes (agentRoutes.mjs) with the example tools
// (agentTools.mjs), and serves the chat page in public/.
import express from 'express'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadModel } from 'qwen-native'
import { createAgentRouter } from './agentRoutes.mjs'
import { createDefaultTools } from './agentTools.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const port = Number(process.env.PORT ?? 3000)
const sandboxDir = path.resolve(process.env.SANDBOX_DIR ?? path.join(here, 'sandbox'))
const heartbeatMs = process.env.HEARTBEAT_MS === undefined ? undefined : Number(process.env.HEARTBEAT_MS)

let shown = -1
const model = await loadModel({
  // The model path comes from MODEL_PATH, else the package's default model.
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
app.use(createAgentRouter(model, createDefaultTools({ sandboxDir }), { heartbeatMs }))

const server = app.listen(port, (err) => {
  if (err) {
    console.error(`cannot listen on port ${port}: ${err.message}`)
    process.exit(1)
  }
  console.log(`agent server listening on http://localhost:${server.address().port} (tools' sandbox: ${sandboxDir})`)
})

async function shutdown() {
  server.close()
  server.closeAllConnections() // open streams end; their generations are aborted on close
  await model.close()
  process.exit(0)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
