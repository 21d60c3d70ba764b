// score.mjs RESULTS.json [NAME.json ...]: counts the results of the HTTP
// cache test suite (npm http-cache-tests) the way cache-tests.fyi shows
// them: passes (required and optimal tests that passed, checks answered
// "yes"), with dependencies honoured. Run from the package's directory.
// With --fails it lists the tests that failed (required, optimal, setup).
import fs from 'fs'
import tests from './tests/index.mjs'
import surrogate from './tests/surrogate-control.mjs'
import { determineTestResult } from './lib/display.mjs'

tests.push(surrogate)
const args = process.argv.slice(2)
const fails = args.includes('--fails')
for (const file of args.filter(a => a !== '--fails')) {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  let pass = 0; let total = 0
  const failed = []
  for (const suite of tests) {
    for (const test of suite.tests) {
      total++
      const r = determineTestResult(tests, test.id, results)
      if (r[2] === '✅' || r[2] === 'Y') pass++
      else if (r[2] === '⛔️' || r[2] === '🔹' || r[2] === '⚠️') failed.push(`${r[2]} ${test.id}: ${test.name} -- ${JSON.stringify(results[test.id])}`)
    }
  }
  const raw = Object.values(results).filter(v => v === true).length
  console.log(`${file}: ${pass} of ${total} pass (${raw} of ${Object.keys(results).length} results true, dependencies ignored)`)
  if (fails) failed.forEach(f => console.log('  ' + f))
}
