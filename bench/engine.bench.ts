// Engine overhead on generated sweeps of 1,000 and 10,000 nodes (source sweep x downstream sweep):
//   cold run      every node executes (a trivial in-process stage) and publishes a JSON artifact
//   plan          load + expand + decode params + recipe hashes (module already imported)
//   no-op rerun   plan + schedule with everything cached (what `pipe run` costs when nothing changed)
//   cli no-op     the same through a fresh `pipe run` process (includes node + tsx start-up)
// Reference, measured side by side: the floor any content-addressed cache pays per node (canonical
// JSON + sha256 of the key, one indexed SQLite SELECT) in a bare loop over the same keys.
// Goal (issue 2): no-op rerun of 1,000 nodes < 1 s and of 10,000 nodes < 5 s on a 2-core machine.
import Database from "better-sqlite3"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { planFile, runPipeline, silentReporter, Store } from "../src/engine/index.ts"
import { hashJson } from "../src/engine/hash.ts"
import { inputHash } from "../src/engine/plan.ts"
import { writeSweepPipeline } from "./sweep-pipeline.ts"

const repo = resolve(import.meta.dirname, "..")
const now = () => performance.now()
const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const measure = async (sources: number, fanout: number) => {
  const dir = mkdtempSync(join(tmpdir(), "pipe-bench-"))
  const { file, nodes } = writeSweepPipeline(dir, sources, fanout)
  const cacheDir = join(dir, "cache")
  const runsDir = join(dir, "runs")
  mkdirSync(cacheDir)
  const store = new Store(cacheDir)
  const run = () => Effect.runPromise(runPipeline({ store, pipelineFile: file, runsDir, reporter: silentReporter, jobs: 2 }))

  let t = now()
  const cold = await run()
  const coldMs = now() - t
  if (cold.counts.succeeded !== nodes) throw new Error(`cold run: expected ${nodes} executed nodes, got ${JSON.stringify(cold.counts)}`)

  const planMs: Array<number> = []
  const noopMs: Array<number> = []
  for (let i = 0; i < 3; i++) {
    t = now()
    await Effect.runPromise(planFile(store, file))
    planMs.push(now() - t)
    t = now()
    const again = await run()
    noopMs.push(now() - t)
    if (again.counts.cached !== nodes) throw new Error(`no-op rerun: expected ${nodes} cached nodes, got ${JSON.stringify(again.counts)}`)
  }

  // Reference floor: hash each key's components and look it up, nothing else.
  const plan = await Effect.runPromise(planFile(store, file))
  const db = new Database(join(cacheDir, "cache.sqlite"), { readonly: true })
  const select = db.prepare("SELECT a.hash, a.json FROM cache c JOIN artifacts a ON a.hash = c.hash WHERE c.key = ?")
  const floorMs: Array<number> = []
  for (let i = 0; i < 3; i++) {
    t = now()
    const outputs = new Map<number, string>()
    for (const n of plan.nodes) {
      const key = hashJson({ stage: n.stage.spec.name, version: n.stage.spec.version, params: n.keyParams, inputs: Object.fromEntries(n.inputs.map(([k, inp]) => [k, inputHash(inp, (d) => outputs.get(d)!)])) })
      const row = select.get(key) as { hash: string } | undefined
      if (!row) throw new Error("reference: missing cache row")
      outputs.set(n.index, row.hash)
    }
    floorMs.push(now() - t)
  }
  db.close()
  store.close()

  t = now()
  const cli = spawnSync(process.execPath, [join(repo, "bin/pipe.js"), "run", file, "--plain", "--gpus", "none"], {
    cwd: dir,
    env: { ...process.env, PIPE_CACHE_DIR: cacheDir, PIPE_RUNS_DIR: runsDir },
    encoding: "utf8",
  })
  const cliMs = now() - t
  if (cli.status !== 0 || !cli.stdout.includes(`${nodes} cached`)) throw new Error(`cli no-op run failed: ${cli.stdout}${cli.stderr}`)
  rmSync(dir, { recursive: true, force: true })

  const noop = median(noopMs)
  const floor = median(floorMs)
  return {
    nodes,
    coldRunMs: Math.round(coldMs),
    coldPerNodeUs: Math.round((coldMs / nodes) * 1000),
    planMs: Math.round(median(planMs)),
    noopRerunMs: Math.round(noop),
    noopPerNodeUs: Math.round((noop / nodes) * 1000),
    cliNoopMs: Math.round(cliMs),
    referenceFloorMs: Math.round(floor),
    noopOverFloor: Number((noop / floor).toFixed(1)),
  }
}

const results = [await measure(40, 24), await measure(100, 99)]
for (const r of results)
  console.log(
    `${String(r.nodes).padStart(6)} nodes: cold run ${r.coldRunMs} ms (${r.coldPerNodeUs} µs/node); plan ${r.planMs} ms; ` +
      `no-op rerun ${r.noopRerunMs} ms (${r.noopPerNodeUs} µs/node, ${r.noopOverFloor}x the hash+lookup floor of ${r.referenceFloorMs} ms); ` +
      `cli no-op ${r.cliNoopMs} ms`,
  )
const out = {
  date: new Date().toISOString(),
  cpus: cpus().length,
  reference: "bare loop: canonical-JSON sha256 of each key + one indexed SQLite SELECT (the floor of any content-addressed cache)",
  goal: { noop1000Ms: 1000, noop10000Ms: 5000 },
  results,
}
mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
writeFileSync(join(import.meta.dirname, "results", "engine.json"), JSON.stringify(out, null, 2))
