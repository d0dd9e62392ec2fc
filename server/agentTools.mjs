// The agent's tool registry: each tool is a JSON-schema definition (sent to the model as an OpenAI
// `tools` entry) plus an async implementation. Arguments are validated with ajv before a tool runs,
// and every failure — unknown tool, bad JSON, schema violation, a throw, a timeout — comes back as a
// tool result the model can read, never as an exception through the server.
import { Ajv } from 'ajv'
import { timeTools } from './tools/time.mjs'
import { calculatorTools } from './tools/calculator.mjs'
import { unitTools } from './tools/units.mjs'
import { fileTools } from './tools/files.mjs'

const NAME = /^[A-Za-z0-9_-]{1,64}$/

export class ToolRegistry {
  #tools = new Map()
  #ajv = new Ajv({ allErrors: true })
  #timeoutMs

  /** @param {{ timeoutMs?: number }} [options] a tool still running after timeoutMs fails with a timeout */
  constructor({ timeoutMs = 10_000 } = {}) {
    this.#timeoutMs = timeoutMs
  }

  /**
   * Adds a tool. `run(args, { signal })` gets arguments that already passed `parameters`; what it
   * returns (JSON-serializable) is the result the model reads. Throwing reports an error to the model.
   * @param {{ name: string, description: string, parameters: object, run: (args: any, ctx: { signal: AbortSignal }) => Promise<unknown> | unknown }} tool
   */
  register({ name, description, parameters, run }) {
    if (typeof name !== 'string' || !NAME.test(name)) throw new TypeError(`tool name ${JSON.stringify(name)} must match ${NAME}`)
    if (this.#tools.has(name)) throw new TypeError(`a tool named "${name}" is already registered`)
    if (typeof description !== 'string' || description === '') throw new TypeError(`tool "${name}" needs a description: the model chooses tools by it`)
    if (parameters?.type !== 'object') throw new TypeError(`tool "${name}": parameters must be a JSON schema of type "object"`)
    if (typeof run !== 'function') throw new TypeError(`tool "${name}" needs a run(args) function`)
    const validate = this.#ajv.compile(parameters) // throws on a schema ajv cannot compile
    this.#tools.set(name, { definition: { type: 'function', function: { name, description, parameters } }, validate, run })
    return this
  }

  /** Registers each tool of `tools` (an array as the tool modules export). */
  registerAll(tools) {
    for (const tool of tools) this.register(tool)
    return this
  }

  /** The OpenAI `tools` array for a chat request. */
  get definitions() {
    return [...this.#tools.values()].map((t) => t.definition)
  }

  get names() {
    return [...this.#tools.keys()]
  }

  /**
   * Runs one OpenAI tool call `{ id, function: { name, arguments } }`. Never throws: resolves to
   * `{ ok: true, result }` or `{ ok: false, error }`, plus `content`, the tool message's text.
   * @param {{ id?: string, function: { name: string, arguments: string } }} call
   * @param {{ signal?: AbortSignal }} [options]
   */
  async run(call, { signal } = {}) {
    const outcome = await this.#execute(call?.function ?? {}, signal)
    return { ...outcome, content: JSON.stringify(outcome.ok ? outcome.result : { error: outcome.error }) }
  }

  async #execute({ name, arguments: text }, signal) {
    const tool = this.#tools.get(name)
    if (!tool) return failure(`unknown tool "${name}"; the tools are: ${this.names.join(', ')}`)
    let args
    try {
      args = text === undefined || text === '' ? {} : JSON.parse(text)
    } catch (err) {
      return failure(`the arguments are not valid JSON (${err.message})`)
    }
    if (!tool.validate(args)) return failure(`invalid arguments: ${describe(tool.validate.errors)}`)
    // A timer that keeps the process alive (unlike AbortSignal.timeout) until the tool settles.
    const timeout = new AbortController()
    const timer = setTimeout(() => timeout.abort(), this.#timeoutMs)
    const toolSignal = signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal
    try {
      const result = await Promise.race([tool.run(args, { signal: toolSignal }), rejectOnAbort(toolSignal)])
      return { ok: true, result: result ?? null }
    } catch (err) {
      if (timeout.signal.aborted) return failure(`the tool did not finish within ${this.#timeoutMs} ms`)
      return failure(err instanceof Error ? err.message : String(err))
    } finally {
      clearTimeout(timer)
    }
  }
}

/** ajv errors as one sentence a model can act on: where, what, and the allowed values. */
function describe(errors) {
  return errors
    .map((e) => {
      const where = e.instancePath === '' ? 'arguments' : `arguments${e.instancePath.replaceAll('/', '.')}`
      const allowed = e.params?.allowedValues ? ` (${e.params.allowedValues.map((v) => JSON.stringify(v)).join(', ')})` : ''
      return `${where} ${e.message}${allowed}`
    })
    .join('; ')
}

function failure(error) {
  return { ok: false, error }
}

function rejectOnAbort(signal) {
  return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
}

/**
 * The example agent's tools: date and time in any time zone, a calculator, unit conversion, and
 * reading/listing files inside `sandboxDir`.
 * @param {{ sandboxDir: string, maxFileBytes?: number, timeoutMs?: number }} options
 */
export function createDefaultTools({ sandboxDir, maxFileBytes, timeoutMs } = {}) {
  return new ToolRegistry({ timeoutMs })
    .registerAll(timeTools())
    .registerAll(calculatorTools())
    .registerAll(unitTools())
    .registerAll(fileTools({ root: sandboxDir, maxBytes: maxFileBytes }))
}
