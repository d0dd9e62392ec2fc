// Installs Debian/Ubuntu packages a script needs, where that is possible: a Linux machine with
// apt-get, run as root (as in CI). Elsewhere the caller tells the user what to install.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'

function run(cmd, args, env) {
  console.log(`[apt] ${cmd} ${args.join(' ')}`)
  return spawnSync(cmd, args, { stdio: 'inherit', env }).status === 0
}

/** apt-get install `packages` (after an update if the first try fails); false where it cannot. */
export function aptInstall(packages) {
  if (process.platform !== 'linux' || process.getuid?.() !== 0 || !existsSync('/usr/bin/apt-get')) return false
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = ['install', '-y', '-q', '--no-install-recommends', ...packages]
  return run('apt-get', install, env) || (run('apt-get', ['update', '-q'], env) && run('apt-get', install, env))
}
