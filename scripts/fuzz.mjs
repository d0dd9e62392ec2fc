// Longer runs of the property tests (crates/engine/tests/integration/properties.rs): the same
// properties `cargo test` checks with a few hundred cases, here with many more.
//   npm run fuzz               20000 cases per property
//   npm run fuzz -- 100000     as many as you like
import { spawnSync } from 'node:child_process'

const cases = process.argv[2] ?? '20000'
if (!/^[1-9][0-9]*$/.test(cases)) {
  console.error(`usage: npm run fuzz -- [cases per property], got "${cases}"`)
  process.exit(2)
}
const started = Date.now()
const run = spawnSync('cargo', ['test', '--release', '-p', 'qwen-engine', '--test', 'integration', '--', 'properties::'], {
  stdio: 'inherit',
  env: { ...process.env, PROPTEST_CASES: cases },
})
console.log(`${cases} cases per property in ${((Date.now() - started) / 1000).toFixed(0)} s`)
process.exit(run.status ?? 1)
