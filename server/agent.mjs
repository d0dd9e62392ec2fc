// The agent loop as a function, with no HTTP: the model answers, the tools it calls run, their results
// go back to the model, until an answer without tool calls (or the step limit).
import { StreamedMessage } from '../index.js'

export const DEFAULT_SYSTEM_PROMPT =
  'You are a helpful assistant. Use a tool when the question needs one. ' +
  "When tool results arrive, answer the user's question in plain sentences using them."

/**
 * Runs the agent over `messages` and yields what happens, in order:
 *   { type: 'delta', content }                          answer text as it is generated
 *   { type: 'tool_call', id, name, arguments }          a call the model made (arguments parsed when JSON)
 *   { type: 'tool_result', id, name, ok, result | error, ms }   as each call finishes (they run in parallel)
 *   { type: 'step', step, messages }                    a finished tool round: the assistant message with its
 *                                                       calls, then the tool messages (what a client keeps if it stops later)
 *   { type: 'final', message, finish_reason, usage, steps, messages }   `messages`: what this run added
 * Errors (bad request, abort) are thrown from the iteration.
 *
 * @param {import('qwen-native').Model} model
 * @param {import('./agentTools.mjs').ToolRegistry} tools
 * @param {{ messages: object[], options?: object, maxSteps?: number, systemPrompt?: string, signal?: AbortSignal }} run
 *   options: sampling fields of a chat request (temperature, max_tokens, ...); maxSteps: model turns
 *   (default 6; the last one may not call tools); systemPrompt: used when `messages` has none.
 */
export async function* runAgent(model, tools, { messages, options = {}, maxSteps = 6, systemPrompt = DEFAULT_SYSTEM_PROMPT, signal }) {
  const conversation = messages.some((m) => m?.role === 'system' || m?.role === 'developer')
    ? [...messages]
    : [{ role: 'system', content: systemPrompt }, ...messages]
  const added = []
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, prompt_tokens_details: { cached_tokens: 0 } }
  for (let step = 1; ; step++) {
    // The last step may not call tools, so the loop always ends with an answer.
    const toolChoice = step >= maxSteps ? 'none' : 'auto'
    const request = { ...options, messages: conversation, tools: tools.definitions, tool_choice: toolChoice, stream_options: { include_usage: true } }
    const turn = new StreamedMessage()
    for await (const chunk of model.chatStream(request, { signal })) {
      const content = turn.add(chunk)
      if (content) yield { type: 'delta', content }
    }
    addUsage(usage, turn.usage)
    const message = turn.message()
    added.push(message)
    conversation.push(message)
    if (!message.tool_calls) {
      yield { type: 'final', message, finish_reason: turn.finishReason, usage, steps: step, messages: added }
      return
    }
    for (const call of message.tool_calls) {
      yield { type: 'tool_call', id: call.id, name: call.function.name, arguments: parseArguments(call.function.arguments) }
    }
    const results = yield* runCalls(tools, message.tool_calls, signal)
    signal?.throwIfAborted()
    added.push(...results)
    conversation.push(...results)
    yield { type: 'step', step, messages: [message, ...results] }
  }
}

/** Runs one turn's calls in parallel, yielding each result as it is ready; returns the tool messages in call order. */
async function* runCalls(tools, calls, signal) {
  const messages = []
  const pending = new Map(
    calls.map((call, i) => {
      const started = performance.now()
      const done = tools.run(call, { signal }).then((outcome) => ({ i, call, outcome, ms: Math.round(performance.now() - started) }))
      return [i, done]
    }),
  )
  while (pending.size > 0) {
    const { i, call, outcome, ms } = await Promise.race(pending.values())
    pending.delete(i)
    messages[i] = { role: 'tool', tool_call_id: call.id, content: outcome.content }
    yield { type: 'tool_result', id: call.id, name: call.function.name, ok: outcome.ok, ...(outcome.ok ? { result: outcome.result } : { error: outcome.error }), ms }
  }
  return messages
}

function addUsage(total, usage) {
  if (!usage) return
  total.prompt_tokens += usage.prompt_tokens
  total.completion_tokens += usage.completion_tokens
  total.total_tokens += usage.total_tokens
  total.prompt_tokens_details.cached_tokens += usage.prompt_tokens_details?.cached_tokens ?? 0
}

/** Tool-call arguments as an object for display; text that is not JSON stays text. */
function parseArguments(text) {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}
