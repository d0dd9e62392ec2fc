#!/usr/bin/env node
// Makes sure the browser test has a Chromium: CHROMIUM_PATH, else Debian's /usr/bin/chromium,
// installed here with apt-get when this is a Debian/Ubuntu machine and we are root (as in CI).
// Set QWEN_NATIVE_SKIP_BROWSER=1 to skip the browser test instead (it then reports itself skipped).
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

function run(cmd, args) {
  console.log(`[ensure-browser] ${cmd} ${args.join(' ')}`)
  return spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.env.QWEN_NATIVE_SKIP_BROWSER !== '1' && !existsSync(CHROMIUM)) {
  const canApt = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/bin/apt-get')
  const install = ['install', '-y', '--no-install-recommends', 'chromium']
  if (!canApt || !(run('apt-get', install) || (run('apt-get', ['update']) && run('apt-get', install)))) {
    console.error(
      `[ensure-browser] no Chromium at ${CHROMIUM}. Install it (Debian/Ubuntu: apt-get install chromium), ` +
        'point CHROMIUM_PATH at a Chromium or Chrome binary, or set QWEN_NATIVE_SKIP_BROWSER=1 to skip the browser test.',
    )
    process.exit(1)
  }
}
