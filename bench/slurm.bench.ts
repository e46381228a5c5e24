// The Slurm executor's overhead, against the single-machine cluster of scripts/slurm-up.sh (brought up
// here when it is not), each pair measured side by side in one run:
//   per node: the same small sweep (one source, 8 work nodes each isolated in its own process) run by
//             the local child-process executor (--jobs 2) and as Slurm jobs (one job array)
//   many nodes: 100 instances of a trivial stage (PIPE_BENCH_SLURM_N) as one job array, and as one
//             job each (--slurm-no-arrays); every node goes to Slurm (--slurm-all)
// A job's cost is mostly the start of a `node` process that loads the pipeline file on the compute
// node, plus Slurm's scheduling and the coordinator's polling (250 ms, backing off to 5 s).
import { Effect } from "effect"
import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, loadavg, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { runPipeline, silentReporter, Store } from "../src/engine/index.ts"
import type { SlurmOptions } from "../src/engine/slurm.ts"
import { writeSweepPipeline } from "./sweep-pipeline.ts"

const repo = resolve(import.meta.dirname, "..")
const state = process.env.PIPE_SLURM_STATE ?? `/tmp/pipe-slurm-${process.getuid!()}`
process.env.SLURM_CONF = join(state, "slurm.conf")
execFileSync(join(repo, "scripts/slurm-up.sh"), { stdio: "inherit", env: { ...process.env, PIPE_SLURM_STATE: state } })

const many = Number(process.env.PIPE_BENCH_SLURM_N ?? 100)
const dir = mkdtempSync(join(tmpdir(), "pipe-slurm-bench-"))
const isolated = writeSweepPipeline(dir, 1, 8, true)
const trivial = writeSweepPipeline(dir, 1, many)

/** Wall seconds of a cold run of `file` in a fresh cache, every node executed. */
const timed = async (name: string, file: string, nodes: number, jobs: number, slurm?: SlurmOptions) => {
  const cacheDir = join(dir, name, "cache")
  mkdirSync(cacheDir, { recursive: true })
  const store = new Store(cacheDir)
  const start = performance.now()
  const r = await Effect.runPromise(runPipeline({ store, pipelineFile: file, runsDir: join(dir, name, "runs"), reporter: silentReporter, jobs, ...(slurm ? { slurm } : {}) }))
  const seconds = (performance.now() - start) / 1000
  store.close()
  if (r.counts.succeeded !== nodes) throw new Error(`${name}: expected ${nodes} executed nodes, got ${JSON.stringify(r.counts)}`)
  console.log(`${name.padEnd(28)} ${seconds.toFixed(1).padStart(7)} s  ${(seconds / nodes).toFixed(2)} s/node`)
  return seconds
}

console.log(`${cpus().length} cores, load ${loadavg().map((l) => l.toFixed(1)).join(" ")}`)
const local = await timed("child processes", isolated.file, isolated.nodes, 2)
const slurm = await timed("slurm (array)", isolated.file, isolated.nodes, 64, {})
const arrays = await timed(`slurm ${many} (array)`, trivial.file, trivial.nodes, many + 1, { all: true })
const singles = await timed(`slurm ${many} (single jobs)`, trivial.file, trivial.nodes, many + 1, { all: true, arrays: false })
const results = {
  cores: cpus().length,
  load: loadavg()[0],
  sweep: { workNodes: 8, childProcessSeconds: local, slurmSeconds: slurm, ratio: slurm / local },
  many: { nodes: trivial.nodes, arraySeconds: arrays, singleJobSeconds: singles, arraySecondsPerNode: arrays / trivial.nodes, singleSecondsPerNode: singles / trivial.nodes, ratio: singles / arrays },
}
console.log(JSON.stringify(results, null, 1))
mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
writeFileSync(join(import.meta.dirname, "results", "slurm.json"), JSON.stringify(results, null, 2))
rmSync(dir, { recursive: true, force: true })
