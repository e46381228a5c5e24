// `npm run bench`: runs every bench/*.bench.ts script in its own process, one after
// another (so they do not compete for the two cores), then gathers the JSON each one
// wrote to bench/results/<name>.json into bench/results/all.json.
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { basename, join } from "node:path"

const benchDir = import.meta.dirname
const resultsDir = join(benchDir, "results")
mkdirSync(resultsDir, { recursive: true })

const only = process.argv.slice(2)
const scripts = readdirSync(benchDir)
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => only.length === 0 || only.some((o) => f.startsWith(o)))
  .sort()

const summary: Record<string, unknown> = {}
let failed = 0
for (const script of scripts) {
  const name = basename(script, ".bench.ts")
  console.log(`\n=== bench: ${name}`)
  const run = spawnSync(process.execPath, ["--import", "tsx", join(benchDir, script)], { stdio: "inherit" })
  const resultFile = join(resultsDir, `${name}.json`)
  if (run.status !== 0) {
    failed++
    summary[name] = { error: `exited with ${run.status ?? run.signal}` }
  } else if (existsSync(resultFile)) {
    summary[name] = JSON.parse(readFileSync(resultFile, "utf8"))
  }
}
writeFileSync(join(resultsDir, "all.json"), JSON.stringify({ date: new Date().toISOString(), results: summary }, null, 2))
console.log(`\nwrote ${join(resultsDir, "all.json")}`)
process.exit(failed > 0 ? 1 : 0)
