// The chat page: sends the conversation to POST /api/agent/chat and renders its Server-Sent Events
// (delta, tool_call, tool_result, step, final, error) as they arrive. Plain browser JS, no build step.

const log = document.querySelector('#log')
const form = document.querySelector('#composer')
const input = document.querySelector('#input')
const sendButton = document.querySelector('#send')
const stopButton = document.querySelector('#stop')

/** Sampling options from the page's query string, e.g. `/?temperature=0&seed=1` for repeatable answers. */
const SAMPLING = Object.fromEntries(
  [...new URLSearchParams(location.search)]
    .filter(([key]) => ['temperature', 'top_p', 'seed', 'max_tokens'].includes(key))
    .map(([key, value]) => [key, Number(value)]),
)

/** The conversation so far, as OpenAI-style messages (tool calls and results included). */
let history = []
let controller = null

function add(className, text = '') {
  const el = document.createElement('div')
  el.className = className
  el.textContent = text // model output is text, never HTML
  log.append(el)
  el.scrollIntoView({ block: 'end' })
  return el
}

function toolCard(call) {
  const card = add('tool-card running')
  card.dataset.callId = call.id
  const title = document.createElement('div')
  title.className = 'title'
  title.textContent = call.name
  const status = document.createElement('span')
  status.className = 'status'
  status.textContent = 'running…'
  title.append(status)
  card.append(title, labelled('arguments', JSON.stringify(call.arguments, null, 2)))
  return card
}

/** A captioned block of a tool card: its arguments, result or error. */
function labelled(label, text) {
  const block = document.createElement('div')
  block.className = label
  const caption = document.createElement('span')
  caption.className = 'caption'
  caption.textContent = label
  const pre = document.createElement('pre')
  pre.textContent = text
  block.append(caption, pre)
  return block
}

function finishToolCard(result) {
  const card = log.querySelector(`.tool-card[data-call-id="${CSS.escape(result.id)}"]`)
  if (!card) return
  card.classList.replace('running', result.ok ? 'ok' : 'failed')
  card.querySelector('.status').textContent = result.ok ? `done in ${result.ms} ms` : 'failed'
  card.append(labelled(result.ok ? 'result' : 'error', result.ok ? JSON.stringify(result.result, null, 2) : result.error))
  card.scrollIntoView({ block: 'end' })
}

/** Yields `{ event, data }` for each Server-Sent Event of a fetch response. */
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += value
    let end
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let event = 'message'
      const data = []
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart())
      }
      if (data.length > 0) yield { event, data: JSON.parse(data.join('\n')) }
    }
  }
}

function setBusy(busy) {
  sendButton.disabled = busy
  stopButton.hidden = !busy
  input.disabled = busy
}

async function send(text) {
  const userMessage = { role: 'user', content: text }
  add('message user', text)
  controller = new AbortController()
  setBusy(true)
  let bubble = null // the assistant bubble deltas go into; a tool card starts a new one
  const finished = [] // this turn's finished tool rounds: assistant calls and tool results
  let partial = '' // text of the step in progress
  try {
    const response = await fetch('/api/agent/chat', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...SAMPLING, messages: [...history, userMessage] }),
      signal: controller.signal,
    })
    if (!response.ok) {
      const body = await response.json().catch(() => ({}))
      throw new Error(body.error?.message ?? `HTTP ${response.status}`)
    }
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === 'delta') {
        bubble ??= add('message assistant streaming')
        bubble.textContent += data.content
        partial += data.content
        bubble.scrollIntoView({ block: 'end' })
      } else if (event === 'tool_call') {
        bubble?.classList.remove('streaming')
        bubble = null
        toolCard(data)
      } else if (event === 'tool_result') {
        finishToolCard(data)
      } else if (event === 'step') {
        finished.push(...data.messages)
        partial = ''
      } else if (event === 'final') {
        bubble?.classList.remove('streaming')
        if (!bubble && data.message.content) add('message assistant', data.message.content)
        history.push(userMessage, ...data.messages)
        const u = data.usage
        add('usage muted', `${data.steps} step${data.steps > 1 ? 's' : ''} · ${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`)
      } else if (event === 'error') {
        throw new Error(data.error.message)
      }
    }
  } catch (err) {
    bubble?.classList.remove('streaming')
    if (err.name === 'AbortError') {
      add('usage muted', 'stopped')
      // Keep what was said and done, so the next message has its context.
      history.push(userMessage, ...finished, { role: 'assistant', content: partial })
    } else {
      add('message error', err.message)
    }
  } finally {
    controller = null
    setBusy(false)
    input.focus()
  }
}

form.addEventListener('submit', (e) => {
  e.preventDefault()
  const text = input.value.trim()
  if (!text || controller) return
  input.value = ''
  send(text)
})

input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault()
    form.requestSubmit()
  }
})

stopButton.addEventListener('click', () => controller?.abort())

document.querySelector('#clear').addEventListener('click', () => {
  controller?.abort()
  history = []
  log.replaceChildren()
  input.focus()
})

fetch('/health')
  .then((r) => r.json())
  .then((health) => {
    document.querySelector('#model-info').textContent = `${health.model.name} · ${health.model.device}`
    document.querySelector('#tool-names').textContent = health.tools.join(', ')
  })
  .catch(() => {
    document.querySelector('#model-info').textContent = 'server unreachable'
  })
