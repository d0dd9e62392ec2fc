'use strict'
// qwen-native: the JS API. Wraps the native addon with OpenAI-shaped promises and async
// iterators, AbortSignal support, error codes and the default model path.

const fs = require('node:fs')
const path = require('node:path')
const { candidatePackages } = require('./scripts/platform.js')

/**
 * The native addon: built from source in this folder (`npm install` or `npm run build:cuda` in a
 * checkout, or a git dependency), else a prebuilt package for this platform. On Linux: the CUDA
 * one (qwen-native-linux-x64-gnu-cuda) when installed, which also runs on the CPU, else the CPU
 * one (qwen-native-linux-x64-gnu). On Windows: qwen-native-win32-x64-msvc, else the MinGW build
 * qwen-native-win32-x64-gnu.
 */
function loadAddon() {
  const local = path.join(__dirname, 'qwen-native.node')
  if (fs.existsSync(local)) return require(local)
  const candidates = candidatePackages().map((p) => p.name)
  for (const name of candidates) {
    try {
      return require(name)
    } catch (err) {
      if (err.code !== 'MODULE_NOT_FOUND' || !err.message.includes(name)) throw err
    }
  }
  const err = new Error(
    `qwen-native: no native addon for ${process.platform}-${process.arch}. Install one of the prebuilt packages ` +
      `${candidates.join(', ')} beside qwen-native, or build it from source ` +
      `(needs Rust from https://rustup.rs): node ${path.join(__dirname, 'scripts', 'build.mjs')}`,
  )
  err.code = 'ERR_ADDON_NOT_FOUND'
  throw err
}

const native = loadAddon()

/** The default model, fetched by `npm run fetch-model`; resolved relative to this package. */
const DEFAULT_MODEL_PATH = path.join(__dirname, 'models', 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')

const CODE_PREFIX = /^(ERR_[A-Z_]+): ([\s\S]*)$/
// napi's own argument-conversion failures: the caller passed the wrong JS type.
const NAPI_TYPE_ERRORS = new Set(['InvalidArg', 'ObjectExpected', 'StringExpected', 'NumberExpected', 'BooleanExpected', 'ArrayExpected', 'FunctionExpected', 'BigintExpected'])

function codedError(code, message, cause) {
  const err = new Error(message, cause === undefined ? undefined : { cause })
  err.code = code
  return err
}

/** Gives every error out of the addon a stable `code`. */
function toError(err) {
  if (!(err instanceof Error)) return codedError('ERR_INTERNAL', String(err))
  if (typeof err.code === 'string' && err.code.startsWith('ERR_')) return err
  const m = CODE_PREFIX.exec(err.message)
  if (m) return codedError(m[1], m[2])
  if (NAPI_TYPE_ERRORS.has(err.code)) return codedError('ERR_INVALID_REQUEST', err.message, err)
  return codedError('ERR_INTERNAL', err.message, err)
}

function abortError(signal) {
  return codedError('ERR_ABORTED', 'the request was aborted', signal?.reason)
}

/** Settles with `promise`, or rejects with ERR_ABORTED as soon as `signal` fires. */
function raceAbort(promise, signal) {
  promise.catch(() => {}) // a request cancelled by abort still settles later; nobody waits for it
  if (!signal) return promise
  if (signal.aborted) return Promise.reject(abortError(signal))
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError(signal))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/** A request's options, checked: `{ signal?, timeoutMs? }`. */
function requestOptions(options) {
  if (options == null) return {}
  if (typeof options !== 'object') throw codedError('ERR_INVALID_REQUEST', 'options must be an object like { signal, timeoutMs }')
  const { signal, timeoutMs } = options
  if (signal != null && !(signal instanceof AbortSignal)) throw codedError('ERR_INVALID_REQUEST', 'options.signal must be an AbortSignal')
  if (timeoutMs != null && !isCount(timeoutMs)) throw codedError('ERR_INVALID_REQUEST', 'options.timeoutMs must be a positive integer (milliseconds)')
  return { signal: signal ?? undefined, timeoutMs: timeoutMs ?? undefined }
}

const isCount = (value) => Number.isInteger(value) && value > 0 && value < 2 ** 32

/** Starts a native request, cancelling it when `signal` fires. */
function start(nativeModel, request, { signal, timeoutMs }) {
  if (signal?.aborted) throw abortError(signal)
  let generation
  try {
    generation = nativeModel.start(request, timeoutMs)
  } catch (err) {
    throw toError(err)
  }
  const onAbort = () => generation.cancel()
  signal?.addEventListener('abort', onAbort, { once: true })
  const release = () => signal?.removeEventListener('abort', onAbort)
  return { generation, release }
}

class ChatStream {
  #signal
  #started = null
  #buffer = []
  #done = false

  constructor(nativeModel, request, options) {
    // Queue the request now so it starts while the caller sets up its loop; report a bad request
    // from the first next(), where `for await` delivers errors.
    try {
      const checked = requestOptions(options)
      this.#signal = checked.signal
      this.#started = start(nativeModel, request, checked)
    } catch (err) {
      this.#started = { error: err }
    }
  }

  [Symbol.asyncIterator]() {
    return this
  }

  async next() {
    if (this.#buffer.length > 0) return { value: this.#buffer.shift(), done: false }
    if (this.#done) return { value: undefined, done: true }
    const started = this.#started
    if (started.error) {
      this.#done = true
      throw started.error
    }
    let chunks
    try {
      chunks = await raceAbort(started.generation.nextChunks(), this.#signal)
    } catch (err) {
      this.#finish()
      throw toError(err)
    }
    if (chunks === null || chunks.length === 0) {
      this.#finish()
      return { value: undefined, done: true }
    }
    this.#buffer.push(...chunks)
    return { value: this.#buffer.shift(), done: false }
  }

  /** Called by `break` / `return` inside `for await`: cancels the request. */
  async return(value) {
    this.#finish()
    return { value, done: true }
  }

  #finish() {
    this.#done = true
    this.#buffer = []
    if (this.#started?.generation) {
      this.#started.generation.cancel()
      this.#started.release()
    }
  }
}

class Model {
  #native

  constructor(nativeModel) {
    this.#native = nativeModel
  }

  /** Architecture, size, context length, device, dtype and quantization of the loaded model. */
  get info() {
    return this.#native.info
  }

  /**
   * What the engine is doing now (queued and running requests, the last step's batch size, tokens
   * per second over the last few seconds) and totals since load (requests, generated, prompt and
   * cached prompt tokens).
   */
  stats() {
    try {
      return this.#native.stats()
    } catch (err) {
      throw toError(err)
    }
  }

  /** An OpenAI Chat Completions request in, a `chat.completion` object out. */
  async chat(request, options) {
    const checked = requestOptions(options)
    const signal = checked.signal
    const { generation, release } = start(this.#native, request, checked)
    try {
      return await raceAbort(generation.completion(), signal)
    } catch (err) {
      throw toError(err)
    } finally {
      release()
    }
  }

  /** The same request, answered as an async iterable of `chat.completion.chunk` objects. */
  chatStream(request, options) {
    return new ChatStream(this.#native, request, options)
  }

  /** Token ids of `text`, tokenized as plain text (control-token text is not special). */
  tokenize(text) {
    if (typeof text !== 'string') throw codedError('ERR_INVALID_REQUEST', 'tokenize(text) needs a string')
    try {
      return this.#native.tokenize(text)
    } catch (err) {
      throw toError(err)
    }
  }

  /** Text of token ids (special tokens included). */
  detokenize(ids) {
    if (!(ids instanceof Uint32Array) && !Array.isArray(ids)) throw codedError('ERR_INVALID_REQUEST', 'detokenize(ids) needs a Uint32Array or an array of token ids')
    try {
      return this.#native.detokenize(Array.from(ids))
    } catch (err) {
      throw toError(err)
    }
  }

  /** The prompt the model sees for `messages`, rendered with its own chat template. */
  applyChatTemplate(messages, options = {}) {
    try {
      return this.#native.applyChatTemplate(messages, { tools: options.tools, addGenerationPrompt: options.addGenerationPrompt ?? true })
    } catch (err) {
      throw toError(err)
    }
  }

  /** Ends running and queued requests with ERR_CLOSED and frees the model's memory. */
  async close() {
    try {
      await this.#native.close()
    } catch (err) {
      throw toError(err)
    }
  }
}

/**
 * Folds `chat.completion.chunk`s into the assistant message they spell out, as OpenAI clients do:
 * content deltas joined, tool calls assembled by `index`, the finish reason and usage kept.
 */
class StreamedMessage {
  content = ''
  toolCalls = []
  finishReason = null
  usage = null

  /** Adds one chunk; returns its text delta ('' when it has none). */
  add(chunk) {
    if (chunk.usage) this.usage = chunk.usage
    const choice = chunk.choices?.[0]
    if (!choice) return ''
    if (choice.finish_reason) this.finishReason = choice.finish_reason
    for (const d of choice.delta?.tool_calls ?? []) {
      this.toolCalls[d.index] ??= { id: d.id, type: 'function', function: { name: d.function?.name, arguments: '' } }
      this.toolCalls[d.index].function.arguments += d.function?.arguments ?? ''
    }
    const text = choice.delta?.content ?? ''
    this.content += text
    return text
  }

  /** The assistant message, OpenAI-shaped: `content` is null when the answer is only tool calls. */
  message() {
    const calls = this.toolCalls.filter(Boolean)
    if (calls.length === 0) return { role: 'assistant', content: this.content }
    return { role: 'assistant', content: this.content === '' ? null : this.content, tool_calls: calls }
  }

  /** A whole stream's chunks, folded. */
  static from(chunks) {
    const folded = new StreamedMessage()
    for (const chunk of chunks) folded.add(chunk)
    return folded
  }
}

// Options that take a positive integer.
const COUNT_OPTIONS = ['contextLength', 'threads', 'maxQueue', 'maxBatch', 'prefillChunk', 'prefixCacheSlots', 'prefixCacheTokens', 'maxPromptTokens', 'requestTimeoutMs']
const LOAD_OPTIONS = new Set(['modelPath', 'device', 'dtype', ...COUNT_OPTIONS, 'onProgress'])

/** Loads a Qwen2.5 model (GGUF file or Hugging Face directory) on engine threads. */
async function loadModel(options = {}) {
  if (options === null || typeof options !== 'object') throw codedError('ERR_INVALID_REQUEST', 'loadModel(options) needs an options object')
  for (const key of Object.keys(options)) {
    if (!LOAD_OPTIONS.has(key)) throw codedError('ERR_INVALID_REQUEST', `unknown option "${key}"; known: ${[...LOAD_OPTIONS].join(', ')}`)
  }
  const { modelPath, device, dtype, onProgress } = options
  if (modelPath != null && typeof modelPath !== 'string') throw codedError('ERR_INVALID_REQUEST', 'modelPath must be a string')
  if (onProgress != null && typeof onProgress !== 'function') throw codedError('ERR_INVALID_REQUEST', 'onProgress must be a function')
  const counts = {}
  for (const name of COUNT_OPTIONS) {
    const value = options[name]
    if (value != null && !isCount(value)) throw codedError('ERR_INVALID_REQUEST', `${name} must be a positive integer`)
    counts[name] = value
  }
  const resolved = path.resolve(modelPath ?? process.env.MODEL_PATH ?? DEFAULT_MODEL_PATH)
  try {
    const nativeModel = await native.loadNativeModel(
      { modelPath: resolved, device, dtype, ...counts },
      onProgress ? (p) => onProgress(p) : undefined,
    )
    return new Model(nativeModel)
  } catch (err) {
    throw toError(err)
  }
}

module.exports = { loadModel, Model, StreamedMessage, DEFAULT_MODEL_PATH }
