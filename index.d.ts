// qwen-native: Qwen2.5-Instruct chat inside the Node.js process.
// Requests and responses follow the OpenAI Chat Completions wire shape (snake_case);
// library options are camelCase.

/** Error codes every rejection carries in `error.code`. */
export type QwenErrorCode =
  | 'ERR_INVALID_REQUEST'
  | 'ERR_MODEL_NOT_FOUND'
  | 'ERR_MODEL_LOAD'
  | 'ERR_CONTEXT_LENGTH'
  | 'ERR_ABORTED'
  | 'ERR_CLOSED'
  | 'ERR_OVERLOADED'
  | 'ERR_TIMEOUT'
  | 'ERR_INTERNAL'
  /** Thrown when the package is loaded and neither a local build nor the platform's prebuilt addon exists. */
  | 'ERR_ADDON_NOT_FOUND'

export interface QwenError extends Error {
  code: QwenErrorCode
}

export interface LoadProgress {
  loadedBytes: number
  totalBytes: number
}

export interface LoadModelOptions {
  /** GGUF file or Hugging Face directory. Default: `MODEL_PATH` env, else the package's default model. */
  modelPath?: string
  /**
   * Default 'auto': CUDA device 0 when the addon has CUDA (`npm run build:cuda`, or the
   * `-cuda` prebuilt package) and the driver, CUDA libraries and a GPU are present, else the CPU
   * (`info.cpuFallbackReason` says why). 'cuda' / 'cuda:N' that cannot be used rejects with
   * ERR_MODEL_LOAD naming what is missing.
   */
  device?: 'auto' | 'cpu' | 'cuda' | `cuda:${number}`
  /** Activation dtype. Default 'auto': f32 on CPU, the checkpoint's dtype on GPU. */
  dtype?: 'auto' | 'bf16' | 'f16' | 'f32'
  /** Usable context in tokens; default and maximum: the model's trained context. */
  contextLength?: number
  /** CPU compute threads. The pool is process-wide: the first model loaded sets it. Default: physical cores. */
  threads?: number
  /**
   * Requests allowed to wait for a place in the batch (running ones and free places do not count);
   * more are rejected with ERR_OVERLOADED. Default 64.
   */
  maxQueue?: number
  /**
   * Requests served at once: their next tokens are computed in one batched forward pass (each
   * weight read once for all of them). More wait in the queue, in order. Default 8.
   */
  maxBatch?: number
  /**
   * Prompt tokens computed per step, over all requests still reading their prompts, between the
   * other requests' tokens: a long prompt delays everyone else's next token by one such chunk at
   * most. Default: 64 on the CPU, 512 on a GPU.
   */
  prefillChunk?: number
  /**
   * Finished requests whose KV caches are kept, so a prompt that begins like one of them (same
   * system prompt and tools, the next turn of a conversation) computes only what differs. Default 4.
   */
  prefixCacheSlots?: number
  /**
   * Positions all kept KV caches may hold together; the least recently used go first, and a
   * request's cache larger than this is released when it ends. Default 16384.
   */
  prefixCacheTokens?: number
  /** Longest prompt a request may bring, in tokens; longer ones get ERR_CONTEXT_LENGTH. Default: the context length. */
  maxPromptTokens?: number
  /** Deadline of every request that sets no `timeoutMs`, in milliseconds (ERR_TIMEOUT). Default: none. */
  requestTimeoutMs?: number
  /** Called as weights load, at most once per percent. */
  onProgress?: (progress: LoadProgress) => void
}

export interface TextContentPart {
  type: 'text'
  text: string
}

export interface ToolCall {
  id: string
  type: 'function'
  function: { name: string; arguments: string }
}

export type ChatMessage =
  | { role: 'system' | 'developer'; content: string | TextContentPart[]; name?: string }
  | { role: 'user'; content: string | TextContentPart[]; name?: string }
  | { role: 'assistant'; content?: string | TextContentPart[] | null; tool_calls?: ToolCall[]; name?: string }
  | { role: 'tool'; content: string | TextContentPart[]; tool_call_id: string; name?: string }

export interface FunctionTool {
  type: 'function'
  function: {
    name: string
    description?: string
    /**
     * JSON Schema of the arguments object (type, enum, required, nested objects/arrays, $defs...).
     * Constrained calls follow it exactly; keys it does not list are not generated unless it sets
     * `additionalProperties`.
     */
    parameters?: Record<string, unknown>
    /** Accepted for compatibility: calls are schema-constrained unless `constrained: false`. */
    strict?: boolean
  }
}

export type ToolChoice =
  | 'none'
  | 'auto'
  | 'required'
  | { type: 'function'; function: { name: string } }

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name?: string; description?: string; schema: Record<string, unknown>; strict?: boolean } }

export interface ChatCompletionRequest {
  messages: ChatMessage[]
  /** Tools rendered into the prompt by the model's chat template. Names must be unique. */
  tools?: FunctionTool[]
  /**
   * 'auto' (default): text or calls. 'none': no calls (the tools are left out of the prompt).
   * 'required': at least one call. A named function: exactly one call of it.
   */
  tool_choice?: ToolChoice
  /** Several calls in one answer. Default true. */
  parallel_tool_calls?: boolean
  /**
   * Extension. Default true: tool calls and JSON answers are sampled under a grammar compiled
   * from the schemas, so they always parse and validate. false: the output is only parsed.
   */
  constrained?: boolean
  /** Upper bound on generated tokens. Default: the rest of the context. */
  max_tokens?: number
  max_completion_tokens?: number
  /** 0 = greedy. Default: the model's generation config (Qwen2.5: 0.7). */
  temperature?: number
  /** Default: the model's generation config (Qwen2.5: 0.8). */
  top_p?: number
  /** Extension: default from the model's generation config (Qwen2.5: 20); 0 disables. */
  top_k?: number
  /** Extension (HF-style): default from the generation config (Qwen2.5: 1.05). */
  repetition_penalty?: number
  presence_penalty?: number
  frequency_penalty?: number
  /** Same seed, same request, same model and threads: same output. */
  seed?: number
  /** Up to 16 strings; generation stops before them and they are not returned. */
  stop?: string | string[]
  stream_options?: { include_usage?: boolean }
  /** JSON answers: any object, or one valid against a schema (grammar-constrained). */
  response_format?: ResponseFormat
  /** Ignored: the model is the loaded one. */
  model?: string
  /** Ignored: use chat() or chatStream(). */
  stream?: boolean
  n?: 1
}

export type FinishReason = 'stop' | 'length' | 'tool_calls'

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  prompt_tokens_details: {
    /** Prompt tokens served from the prefix cache instead of computed. */
    cached_tokens: number
  }
}

export interface ChatCompletion {
  id: string
  object: 'chat.completion'
  created: number
  model: string
  choices: Array<{
    index: 0
    message: { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }
    logprobs: null
    finish_reason: FinishReason
  }>
  usage: Usage
}

/**
 * A piece of a streamed tool call: the first piece of call `index` has its `id`, `type` and
 * `function.name` (arguments ""); later pieces add to `function.arguments`. A `tool_choice: 'auto'`
 * call the call guard may still withdraw (README, Function calling) arrives whole, in one more piece.
 */
export interface ToolCallDelta {
  index: number
  id?: string
  type?: 'function'
  function: { name?: string; arguments: string }
}

export interface ChatCompletionChunk {
  id: string
  object: 'chat.completion.chunk'
  created: number
  model: string
  /** Empty in the final usage chunk (stream_options.include_usage). */
  choices: Array<{
    index: 0
    delta: { role?: 'assistant'; content?: string; tool_calls?: ToolCallDelta[] }
    logprobs: null
    finish_reason: FinishReason | null
  }>
  usage?: Usage
}

export interface RequestOptions {
  /** Aborting rejects with ERR_ABORTED and stops the generation at its next token step. */
  signal?: AbortSignal
  /**
   * Milliseconds the request may take, waiting in the queue included; past it, it ends with
   * ERR_TIMEOUT (a stream after the chunks it sent). Default: the model's `requestTimeoutMs`.
   */
  timeoutMs?: number
}

export interface ModelInfo {
  architecture: 'qwen2'
  name: string
  format: 'gguf' | 'safetensors'
  parameters: number
  contextLength: number
  trainedContextLength: number
  vocabSize: number
  layers: number
  hiddenSize: number
  /** 'cpu' or 'cuda:N'. */
  device: string
  /** The GPU the model is on, with device-wide memory use read when `info` is read; null on the CPU. */
  gpu: GpuInfo | null
  /** Why `device: 'auto'` chose the CPU (no CUDA in this addon, no driver, no GPU...); null otherwise. */
  cpuFallbackReason: string | null
  /**
   * The instruction set of our own CPU kernels, chosen at run time from what the CPU has
   * ('avx512vnni' or 'avx2'; `QWEN_NATIVE_SIMD` can lower it); null where candle's kernels run
   * (a GPU, a CPU that is not x86-64).
   */
  cpuKernels: 'avx512vnni' | 'avx2' | null
  dtype: string
  quantization: string
  threads: number
}

/** `model.stats()`: what the engine is doing now, and totals since the model loaded. */
export interface ModelStats {
  /** Requests waiting for a place in the batch. */
  queued: number
  /** Requests being served (reading their prompts or generating). */
  running: number
  /** Sequences in the last forward pass (0 when idle). */
  batchSize: number
  maxBatch: number
  prefillChunk: number
  /** Tokens generated per second over the last few seconds, all requests together. */
  tokensPerSecond: number
  requestsFinished: number
  /** Requests ended by an error, aborts and disconnects included. */
  requestsFailed: number
  generatedTokens: number
  /** Prompt tokens computed, and prompt tokens whose keys and values came from the prefix cache. */
  promptTokens: number
  cachedPromptTokens: number
  /** Finished requests' KV caches kept for reuse, and the positions they hold. */
  prefixCacheSequences: number
  prefixCacheTokens: number
}

export interface GpuInfo {
  name: string
  /** e.g. '9.0' */
  computeCapability: string
  totalMemoryBytes: number
  usedMemoryBytes: number
}

export declare class Model {
  private constructor()
  readonly info: ModelInfo
  stats(): ModelStats
  chat(request: ChatCompletionRequest, options?: RequestOptions): Promise<ChatCompletion>
  /** Breaking out of `for await` cancels the generation. */
  chatStream(request: ChatCompletionRequest, options?: RequestOptions): AsyncIterableIterator<ChatCompletionChunk>
  /** Plain-text tokenization: the text of added tokens such as `<|im_start|>` or `<tool_call>` stays text. */
  tokenize(text: string): Uint32Array
  detokenize(ids: Uint32Array | number[]): string
  applyChatTemplate(messages: ChatMessage[], options?: { tools?: FunctionTool[]; addGenerationPrompt?: boolean }): string
  /** Ends running and queued requests with ERR_CLOSED and frees the model. Idempotent. */
  close(): Promise<void>
}

export declare function loadModel(options?: LoadModelOptions): Promise<Model>

/**
 * Folds `chat.completion.chunk`s into the assistant message they spell out (content joined, tool
 * calls assembled by index), keeping the finish reason and usage.
 */
export declare class StreamedMessage {
  content: string
  toolCalls: ToolCall[]
  finishReason: FinishReason | null
  usage: Usage | null
  /** Adds one chunk; returns its text delta ('' when it has none). */
  add(chunk: ChatCompletionChunk): string
  /** `content` is null when the answer is only tool calls. */
  message(): { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }
  static from(chunks: Iterable<ChatCompletionChunk>): StreamedMessage
}

/** Where the default model lives inside the package (`npm run fetch-model` puts it there). */
export declare const DEFAULT_MODEL_PATH: string
