// Prometheus metrics for one model, read from `model.stats()` at each scrape (prom-client, an optional
// peer dependency: without it `/metrics` answers 501 and says so).

/** A `GET /metrics` handler; `inFlight()` counts the HTTP requests being served. */
export function metricsHandler(model, inFlight) {
  let registry // created on the first scrape, once prom-client is found
  return async (req, res) => {
    try {
      registry ??= createRegistry(await import('prom-client'), model, inFlight)
    } catch (err) {
      if (err?.code !== 'ERR_MODULE_NOT_FOUND') throw err
      return res.status(501).type('text/plain').send('metrics need the prom-client package: npm install prom-client\n')
    }
    res.type(registry.contentType).send(await registry.metrics())
  }
}

// [name, help, the stats() field]: gauges are the engine's state now; counters are its totals since load.
const GAUGES = [
  ['qwen_native_requests_queued', 'Requests waiting for a place in the batch', 'queued'],
  ['qwen_native_requests_running', 'Requests being served (reading their prompts or generating)', 'running'],
  ['qwen_native_batch_size', 'Sequences in the last forward pass', 'batchSize'],
  ['qwen_native_max_batch', 'Requests served at once at most (maxBatch)', 'maxBatch'],
  ['qwen_native_tokens_per_second', 'Tokens generated per second over the last few seconds', 'tokensPerSecond'],
  ['qwen_native_prefix_cache_sequences', 'KV caches kept for prefix reuse', 'prefixCacheSequences'],
  ['qwen_native_prefix_cache_tokens', 'Positions held by the kept KV caches', 'prefixCacheTokens'],
]
const COUNTERS = [
  ['qwen_native_requests_finished_total', 'Requests answered', 'requestsFinished'],
  ['qwen_native_requests_failed_total', 'Requests ended by an error, aborts and disconnects included', 'requestsFailed'],
  ['qwen_native_generated_tokens_total', 'Tokens generated', 'generatedTokens'],
  ['qwen_native_prompt_tokens_total', 'Prompt tokens computed', 'promptTokens'],
  ['qwen_native_cached_prompt_tokens_total', 'Prompt tokens reused from the prefix cache', 'cachedPromptTokens'],
]

function createRegistry(client, model, inFlight) {
  const registry = new client.Registry()
  client.collectDefaultMetrics({ register: registry })
  for (const [name, help, field] of GAUGES) {
    new client.Gauge({ name, help, registers: [registry], collect() { this.set(model.stats()[field]) } })
  }
  // The engine keeps the totals: each scrape sets the counter to the engine's value.
  for (const [name, help, field] of COUNTERS) {
    new client.Counter({ name, help, registers: [registry], collect() { this.reset(); this.inc(model.stats()[field]) } })
  }
  new client.Gauge({ name: 'qwen_native_http_requests_in_flight', help: 'Chat requests being served over HTTP', registers: [registry], collect() { this.set(inFlight()) } })
  return registry
}
