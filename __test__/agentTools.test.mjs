// The example agent's tool registry (server/agentTools.mjs): validation before execution, failures
// returned as tool results, and the sandbox of the file tools holding against escapes.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, mkdir, writeFile, symlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { ToolRegistry, createDefaultTools } from '../server/agentTools.mjs'

let base // holds the sandbox and, beside it, a secret the sandbox must not reveal
let tools

before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'qwen-native-tools-'))
  const sandbox = path.join(base, 'sandbox')
  await mkdir(path.join(sandbox, 'docs'), { recursive: true })
  await writeFile(path.join(sandbox, 'docs', 'hello.txt'), 'hello from the sandbox\n')
  await writeFile(path.join(sandbox, 'big.txt'), 'x'.repeat(2048))
  await writeFile(path.join(sandbox, 'image.bin'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0, 0, 0]))
  await writeFile(path.join(base, 'secret.txt'), 'the secret\n')
  await symlink(path.join(base, 'secret.txt'), path.join(sandbox, 'link-out.txt'))
  await symlink(base, path.join(sandbox, 'dir-out'))
  await symlink(path.join(sandbox, 'docs', 'hello.txt'), path.join(sandbox, 'link-in.txt'))
  tools = createDefaultTools({ sandboxDir: sandbox, maxFileBytes: 1024 })
})

after(() => rm(base, { recursive: true, force: true }))

const call = (name, args) => tools.run({ id: 'call_1', function: { name, arguments: typeof args === 'string' ? args : JSON.stringify(args) } })

test('the default tools are offered to the model as OpenAI function tools', () => {
  assert.deepEqual(tools.names, ['get_current_time', 'calculate', 'convert_units', 'list_files', 'read_file'])
  for (const t of tools.definitions) {
    assert.equal(t.type, 'function')
    assert.equal(t.function.parameters.type, 'object')
    assert.ok(t.function.description.length > 10)
  }
})

test('read_file and list_files work inside the sandbox, links inside it included', async () => {
  const read = await call('read_file', { path: 'docs/hello.txt' })
  assert.equal(read.ok, true)
  assert.equal(read.result.content, 'hello from the sandbox\n')
  assert.equal(JSON.parse(read.content).content, 'hello from the sandbox\n')
  assert.equal((await call('read_file', { path: 'link-in.txt' })).result.content, 'hello from the sandbox\n')
  const list = await call('list_files', { path: '.' })
  assert.deepEqual(
    list.result.entries.map((e) => [e.name, e.type]),
    [['big.txt', 'file'], ['dir-out', 'link'], ['docs', 'folder'], ['image.bin', 'file'], ['link-in.txt', 'link'], ['link-out.txt', 'link']],
  )
})

test('sandbox escapes fail: "..", absolute paths, links out, oversized and binary files', async () => {
  const refusals = {
    '../secret.txt': /outside the sandbox/,
    'docs/../../secret.txt': /outside the sandbox/,
    [path.join(base, 'secret.txt')]: /absolute/,
    '/etc/passwd': /absolute/,
    'link-out.txt': /link to outside the sandbox/,
    'dir-out/secret.txt': /link to outside the sandbox/,
    'big.txt': /2048 bytes, over the 1024-byte limit/,
    'image.bin': /binary file/,
    'missing.txt': /does not exist/,
    'docs': /not a regular file/,
    'docs\0.txt': /NUL/,
  }
  for (const [p, reason] of Object.entries(refusals)) {
    const r = await call('read_file', { path: p })
    assert.equal(r.ok, false, `read_file(${JSON.stringify(p)}) must fail`)
    assert.match(r.error, reason, p)
    assert.doesNotMatch(r.content, /the secret/)
  }
  for (const p of ['..', '../..', 'dir-out', '/']) {
    const r = await call('list_files', { path: p })
    assert.equal(r.ok, false, `list_files(${JSON.stringify(p)}) must fail`)
  }
})

test('a FIFO in the sandbox is refused at once, without holding a libuv thread', { skip: process.platform === 'win32' }, async () => {
  const sandbox = await mkdtemp(path.join(base, 'fifo-'))
  execFileSync('mkfifo', [path.join(sandbox, 'pipe')])
  await symlink(path.join(sandbox, 'pipe'), path.join(sandbox, 'to-pipe'))
  // A short timeout: a read that blocked would come back as a timeout, not a refusal.
  const fifoTools = createDefaultTools({ sandboxDir: sandbox, timeoutMs: 3000 })
  const run = (name, args) => fifoTools.run({ id: 'call_1', function: { name, arguments: JSON.stringify(args) } })
  for (const p of ['pipe', 'to-pipe']) {
    const r = await run('read_file', { path: p })
    assert.equal(r.ok, false)
    assert.match(r.error, /not a regular file/, p)
  }
  assert.equal((await run('list_files', { path: 'pipe' })).ok, false)
  const list = await run('list_files', { path: '.' })
  assert.deepEqual(list.result.entries.map((e) => [e.name, e.type]), [['pipe', 'other'], ['to-pipe', 'link']])
})

test('arguments are validated before a tool runs; failures come back as tool results', async () => {
  const cases = [
    ['nope', {}, /unknown tool "nope"; the tools are: get_current_time, calculate/],
    ['calculate', '{"expression": ', /not valid JSON/],
    ['calculate', {}, /must have required property 'expression'/],
    ['convert_units', { value: 'ten', from: 'km', to: 'mi' }, /arguments\.value must be number/],
    ['convert_units', { value: 1, from: 'km', to: 'parsec' }, /arguments\.to must be equal to one of the allowed values \("mm"/],
    ['convert_units', { value: 1, from: 'km', to: 'kg' }, /cannot convert length \(km\) to mass \(kg\)/],
    ['get_current_time', { timezone: 'Mars/Olympus_Mons' }, /unknown time zone/],
    ['calculate', { expression: 'process.exit(1)' }, /unexpected "\."/],
    ['calculate', { expression: '1 / 0' }, /not a finite number/],
  ]
  for (const [name, args, reason] of cases) {
    const r = await call(name, args)
    assert.equal(r.ok, false, `${name}(${JSON.stringify(args)}) must fail`)
    assert.match(r.error, reason)
    assert.deepEqual(JSON.parse(r.content), { error: r.error })
  }
})

test('calculate, convert_units and get_current_time give correct results', async () => {
  const calc = async (expression) => (await call('calculate', { expression })).result.result
  assert.equal(await calc('1234 * 5678'), 7006652)
  assert.equal(await calc('-2^2 + 2^3^2'), 508)
  assert.equal(await calc('0.1 + 0.2'), 0.3)
  assert.equal(await calc('round(sqrt(2) * 100) / 100 + max(1, 4, 2) - log(1000)'), 2.41)
  const convert = async (value, from, to) => (await call('convert_units', { value, from, to })).result.result
  assert.equal(await convert(100, 'celsius', 'fahrenheit'), 212)
  assert.equal(await convert(26.2, 'mi', 'km'), 42.1648128)
  assert.equal(await convert(1, 'GiB', 'MB'), 1073.741824)
  const time = (await call('get_current_time', { timezone: 'Asia/Kolkata' })).result
  assert.equal(time.utc_offset, '+05:30')
  const utc = new Date(Date.parse(time.iso))
  assert.ok(Math.abs(utc.getTime() - Date.now()) < 60_000, `${time.iso} is now`)
  assert.match(time.date, /^\d{4}-\d{2}-\d{2}$/)
})

test('a tool that throws or hangs becomes an error result; registration checks definitions', async () => {
  const registry = new ToolRegistry({ timeoutMs: 50 })
    .register({ name: 'boom', description: 'always fails', parameters: { type: 'object' }, run: () => { throw new Error('kaboom') } })
    .register({ name: 'hang', description: 'never returns', parameters: { type: 'object' }, run: () => new Promise(() => {}) })
  assert.deepEqual(await registry.run({ function: { name: 'boom', arguments: '{}' } }), { ok: false, error: 'kaboom', content: '{"error":"kaboom"}' })
  assert.match((await registry.run({ function: { name: 'hang', arguments: '{}' } })).error, /did not finish within 50 ms/)
  const tool = { name: 'x', description: 'd', parameters: { type: 'object' }, run() {} }
  assert.throws(() => registry.register({ ...tool, name: 'boom' }), /already registered/)
  assert.throws(() => registry.register({ ...tool, name: 'bad name' }), /must match/)
  assert.throws(() => registry.register({ ...tool, parameters: { type: 'string' } }), /type "object"/)
  assert.throws(() => registry.register({ ...tool, parameters: { type: 'object', properties: { a: { type: 'nonsense' } } } }))
})

test('sandbox paths are checked with Windows rules too: backslashes, drive letters, UNC and device paths', async () => {
  const { sandboxTarget } = await import('../server/tools/files.mjs')
  const sandbox = 'C:\\app\\sandbox'
  assert.equal(sandboxTarget(sandbox, 'docs\\hello.txt', path.win32), 'C:\\app\\sandbox\\docs\\hello.txt')
  assert.equal(sandboxTarget(sandbox, 'docs/../notes.md', path.win32), 'C:\\app\\sandbox\\notes.md')
  for (const escape of ['..\\secret.txt', 'docs\\..\\..\\secret.txt', '..', 'docs/../../x']) {
    assert.throws(() => sandboxTarget(sandbox, escape, path.win32), /outside the sandbox/, escape)
  }
  for (const absolute of ['C:\\Windows\\win.ini', 'c:/Windows/win.ini', 'D:secret.txt', '\\Windows\\win.ini', '/etc/passwd', '\\\\server\\share\\x', '\\\\.\\C:\\x', '\\\\?\\C:\\x']) {
    assert.throws(() => sandboxTarget(sandbox, absolute, path.win32), /is absolute/, absolute)
  }
  assert.throws(() => sandboxTarget(sandbox, 'a\0b', path.win32), /NUL/)
  // The POSIX rules, for comparison: a backslash is part of a name there, not a separator.
  assert.equal(sandboxTarget('/app/sandbox', '..\\x', path.posix), '/app/sandbox/..\\x')
})
