// Runs npm from a script, on every platform: on Windows npm is npm.cmd, which Node only starts
// through a shell (since the CVE-2024-27980 fix), so there each argument is quoted for cmd.exe.
import { spawnSync } from 'node:child_process'

const windows = process.platform === 'win32'

/** spawnSync('npm', args, options), quoting `args` where a shell reads them. */
export function runNpm(args, options = {}) {
  const quoted = windows ? args.map((a) => (/^[\w@./:=-]+$/.test(a) ? a : `"${a.replaceAll('"', '""')}"`)) : args
  return spawnSync('npm', quoted, { ...options, shell: windows })
}
