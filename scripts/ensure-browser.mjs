#!/usr/bin/env node
// Makes sure the browser test has a Chromium: CHROMIUM_PATH, else an installed Chromium, Chrome or
// Edge at its usual place (Linux, Windows, macOS); on a Debian/Ubuntu machine where we are root
// (as in CI), Debian's chromium is installed with apt-get when none is found.
// Set QWEN_NATIVE_SKIP_BROWSER=1 to skip the browser test instead (it then reports itself skipped).
import { aptInstall } from './apt.mjs'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const KNOWN = {
  linux: ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'],
  win32: [
    ...[process.env.PROGRAMFILES, process.env['PROGRAMFILES(X86)'], process.env.LOCALAPPDATA]
      .filter(Boolean)
      .flatMap((dir) => [`${dir}\\Google\\Chrome\\Application\\chrome.exe`, `${dir}\\Microsoft\\Edge\\Application\\msedge.exe`]),
  ],
  darwin: ['/Applications/Google Chrome.app/Contents/MacOS/Google Chrome', '/Applications/Chromium.app/Contents/MacOS/Chromium'],
}[process.platform] ?? []

export const CHROMIUM = process.env.CHROMIUM_PATH ?? KNOWN.find((p) => existsSync(p)) ?? KNOWN[0] ?? '/usr/bin/chromium'

if (process.argv[1] === fileURLToPath(import.meta.url) && process.env.QWEN_NATIVE_SKIP_BROWSER !== '1' && !existsSync(CHROMIUM)) {
  if (!aptInstall(['chromium'])) {
    console.error(
      `[ensure-browser] no Chromium at ${CHROMIUM}. Install Chromium, Chrome or Edge (Debian/Ubuntu: apt-get install chromium), ` +
        'point CHROMIUM_PATH at a Chromium or Chrome binary, or set QWEN_NATIVE_SKIP_BROWSER=1 to skip the browser test.',
    )
    process.exit(1)
  }
}
