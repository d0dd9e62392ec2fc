// Our CPU kernels choose their instruction set when the process starts, from what the CPU has; every
// level computes the same numbers, so a greedy answer does not depend on the machine's SIMD.
import test from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const QUESTION = [{ role: 'user', content: 'Write a haiku about the sea.' }]

/** `info.cpuKernels` and a greedy answer from a fresh process whose kernels are capped at `simd`. */
async function answerWith(simd) {
  const script = `
    import { loadModel } from './index.js'
    const m = await loadModel({ threads: 2 })
    const res = await m.chat({ messages: ${JSON.stringify(QUESTION)}, temperature: 0, max_tokens: 24 })
    console.log(JSON.stringify({ cpuKernels: m.info.cpuKernels, text: res.choices[0].message.content }))
    await m.close()`
  const env = { ...process.env, QWEN_NATIVE_SIMD: simd ?? '' }
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: new URL('..', import.meta.url), env })
  return JSON.parse(stdout.trim().split('\n').at(-1))
}

test('info names the kernels\' instruction set; a lower level gives the same greedy answer', { skip: process.arch !== 'x64' && 'our kernels run on x86-64 only' }, async () => {
  const best = await answerWith(undefined)
  const avx2 = await answerWith('avx2')
  assert.match(best.cpuKernels, /^(avx512vnni|avx2)$/)
  assert.equal(avx2.cpuKernels, 'avx2')
  assert.ok(best.text.length > 20, best.text)
  assert.equal(avx2.text, best.text)
})
