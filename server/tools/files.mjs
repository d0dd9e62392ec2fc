// Tools: list and read files inside one sandbox directory. Paths are relative to the sandbox;
// absolute paths, "..", symlinks that lead outside it, non-regular files, binary files and files
// over the size limit are refused.
import { constants } from 'node:fs'
import { open, opendir, realpath, lstat } from 'node:fs/promises'
import path from 'node:path'

const MAX_ENTRIES = 200

/** @param {{ root: string, maxBytes?: number }} options */
export function fileTools({ root, maxBytes = 256 * 1024 }) {
  if (typeof root !== 'string' || root === '') throw new TypeError('fileTools needs the sandbox directory (root)')
  let sandbox // the root's real path, resolved on first use so the folder may be created after startup

  /** The real path of `relative` inside the sandbox, or an Error saying why not. */
  async function resolveInside(relative) {
    sandbox ??= await realpath(root).catch(() => {
      throw new Error('the sandbox folder does not exist')
    })
    const target = sandboxTarget(sandbox, relative)
    let real
    try {
      real = await realpath(target)
    } catch (err) {
      if (err.code === 'ENOENT') throw new Error(`"${relative}" does not exist`)
      throw new Error(`cannot open "${relative}" (${err.code ?? err.message})`)
    }
    if (!isInside(sandbox, real, path)) throw new Error(`refused: "${relative}" is a link to outside the sandbox`)
    return real
  }

  return [
    {
      name: 'list_files',
      description: 'List the files and folders in a folder of the sandbox',
      parameters: {
        type: 'object',
        properties: { path: { type: 'string', description: 'Folder relative to the sandbox; "." is the sandbox itself' } },
        required: ['path'],
      },
      async run({ path: relative }) {
        const dir = await resolveInside(relative)
        const entries = []
        let truncated = false
        for await (const entry of await opendir(dir).catch((err) => {
          throw new Error(err.code === 'ENOTDIR' ? `"${relative}" is a file, not a folder` : `cannot list "${relative}" (${err.code})`)
        })) {
          if (entries.length === MAX_ENTRIES) {
            truncated = true
            break
          }
          const type = entry.isDirectory() ? 'folder' : entry.isFile() ? 'file' : entry.isSymbolicLink() ? 'link' : 'other'
          const size = type === 'file' ? (await lstat(path.join(dir, entry.name))).size : undefined
          entries.push({ name: entry.name, type, ...(size === undefined ? {} : { bytes: size }) })
        }
        entries.sort((a, b) => a.name.localeCompare(b.name))
        return { path: relative, entries, ...(truncated ? { truncated: `only the first ${MAX_ENTRIES} entries are listed` } : {}) }
      },
    },
    {
      name: 'read_file',
      description: `Read a text file of the sandbox (at most ${maxBytes} bytes)`,
      parameters: {
        type: 'object',
        properties: { path: { type: 'string', description: 'File relative to the sandbox, e.g. notes/todo.md' } },
        required: ['path'],
      },
      async run({ path: relative }) {
        const real = await resolveInside(relative)
        // The type is checked before opening: opening a FIFO waits for a writer, holding one of
        // libuv's four threads (and with them every fs call of the server) for good.
        const checked = await lstat(real)
        const refuseSize = ({ size }) => {
          if (size > maxBytes) throw new Error(`refused: "${relative}" is ${size} bytes, over the ${maxBytes}-byte limit`)
        }
        if (!checked.isFile()) throw new Error(`"${relative}" is not a regular file`)
        refuseSize(checked)
        // Anything swapped in after the check is refused: a link by O_NOFOLLOW, a FIFO by
        // O_NONBLOCK (it opens at once) and the identity check below. Windows has neither flag:
        // there the identity check does it (opening a link opens its target, another file id).
        const file = await open(real, constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0)).catch((err) => {
          throw new Error(`cannot open "${relative}" (${err.code})`)
        })
        try {
          const info = await file.stat()
          if (!info.isFile() || info.ino !== checked.ino || info.dev !== checked.dev) throw new Error(`"${relative}" changed while it was opened`)
          refuseSize(info)
          const bytes = Buffer.alloc(info.size)
          const { bytesRead } = await file.read(bytes, 0, info.size, 0)
          const data = bytes.subarray(0, bytesRead)
          if (data.includes(0)) throw new Error(`refused: "${relative}" is a binary file`)
          return { path: relative, bytes: bytesRead, content: data.toString('utf8') }
        } finally {
          await file.close()
        }
      },
    },
  ]
}

/**
 * Where `relative` points inside `sandbox` (an absolute, real path), or an Error saying why it may
 * not be used, before any file is touched. `paths` is node:path's flavour (path.win32 in tests):
 * on Windows `\\` separates too, and drive letters (`C:x`), UNC (`\\server\share`) and device
 * paths (`\\.\`, `\\?\`) are absolute.
 */
export function sandboxTarget(sandbox, relative, paths = path) {
  if (relative.includes('\0')) throw new Error('the path contains a NUL character')
  if (paths.isAbsolute(relative) || /^[A-Za-z]:/.test(relative)) throw new Error(`refused: "${relative}" is absolute; paths are relative to the sandbox`)
  const target = paths.resolve(sandbox, relative)
  if (!isInside(sandbox, target, paths)) throw new Error(`refused: "${relative}" is outside the sandbox`)
  return target
}

function isInside(root, target, paths) {
  const rel = paths.relative(root, target)
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${paths.sep}`) && !paths.isAbsolute(rel))
}
