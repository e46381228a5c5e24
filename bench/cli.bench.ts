// Start-up of the `pipe` command, each process timed from spawn to exit, against a bare `node -e 0`
// measured in the same rounds (the commands take turns, so load on the machine hits all alike):
//   pipe --help                    the dispatcher alone
//   pipe ls                        + the store (better-sqlite3)
//   pipe status pipelines/blue.ts  + TypeScript loading of the pipeline and its stages, planning, hashing
//   pipe run <1,000-node sweep>    a fully cached rerun of the engine benchmark's sweep
// and, for comparison:
//   npx pipe --help                the same through npx, as the README runs it (npx's own start-up on top)
//   tsx src/cli/main.ts --help     the same dispatcher run from its sources through tsx, as bin/pipe.js
//                                  ran the CLI before: what the TypeScript loader alone costs
//   effect/cli --help              a two-command effect/cli program under NodeRuntime.runMain: the floor of
//                                  moving the argument parsing to effect/cli + @effect/platform-node
// Goals (issue 12): --help and ls < 0.3 s, status < 1 s, cached 1,000-node run < 1.5 s.
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, loadavg, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { runPipeline, silentReporter, Store } from "../src/engine/index.ts"
import { writeSweepPipeline } from "./sweep-pipeline.ts"

const repo = resolve(import.meta.dirname, "..")
const rounds = 5
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const dir = mkdtempSync(join(tmpdir(), "pipe-cli-bench-"))
const { file: sweep, nodes } = writeSweepPipeline(dir, 40, 24)
const cacheDir = join(dir, "cache")
const runsDir = join(dir, "runs")
mkdirSync(cacheDir)
const store = new Store(cacheDir)
const cold = await Effect.runPromise(runPipeline({ store, pipelineFile: sweep, runsDir, reporter: silentReporter, jobs: 2 }))
store.close()
if (cold.counts.succeeded !== nodes) throw new Error(`cold run: expected ${nodes} executed nodes, got ${JSON.stringify(cold.counts)}`)

const nodeModule = (path: string) => JSON.stringify(join(repo, "node_modules", path))
const effectCli = join(dir, "effect-cli.mjs")
writeFileSync(
  effectCli,
  `import { Effect } from ${nodeModule("effect/dist/index.js")}
import { Argument, Command, Flag } from ${nodeModule("effect/dist/cli/index.js")}
import * as NodeRuntime from ${nodeModule("@effect/platform-node/dist/NodeRuntime.js")}
import * as NodeServices from ${nodeModule("@effect/platform-node/dist/NodeServices.js")}
const ls = Command.make("ls", { limit: Flag.Int("limit").pipe(Flag.withDefault(20)) }, ({ limit }) => Effect.log(limit))
const run = Command.make("run", { file: Argument.String("pipeline"), dryRun: Flag.Boolean("dry-run") }, ({ file }) => Effect.log(file))
Command.run(Command.make("pipe").pipe(Command.withSubcommands([run, ls])), { version: "0" }).pipe(Effect.provide(NodeServices.layer), NodeRuntime.runMain)
`,
)

const pipe = join(repo, "bin/pipe.js")
interface Case {
  readonly name: string
  /** Arguments to `node`, or a whole command line starting with npx. */
  readonly args: ReadonlyArray<string>
  readonly expect: string
  readonly goalMs?: number
}
const cases: ReadonlyArray<Case> = [
  { name: "node -e 0", args: ["-e", "0"], expect: "" },
  { name: "pipe --help", args: [pipe, "--help"], expect: "usage: pipe", goalMs: 300 },
  { name: "pipe ls", args: [pipe, "ls"], expect: "succeeded", goalMs: 300 },
  { name: "pipe status pipelines/blue.ts", args: [pipe, "status", "pipelines/blue.ts"], expect: "12 nodes", goalMs: 1000 },
  { name: `pipe run (${nodes} nodes cached)`, args: [pipe, "run", sweep, "--plain", "--gpus", "none"], expect: `${nodes} cached`, goalMs: 1500 },
  { name: "npx pipe --help", args: ["npx", "pipe", "--help"], expect: "usage: pipe" },
  { name: "tsx src/cli/main.ts --help", args: ["--import", "tsx", join(repo, "src/cli/main.ts"), "--help"], expect: "usage: pipe" },
  { name: "effect/cli --help", args: [effectCli, "--help"], expect: "USAGE" },
]

const start = (c: Case) => {
  const t = performance.now()
  const [file, args] = c.args[0] === "npx" ? ["npx", c.args.slice(1)] : [process.execPath, c.args]
  const r = spawnSync(file, args, { cwd: repo, env: { ...process.env, PIPE_CACHE_DIR: cacheDir, PIPE_RUNS_DIR: runsDir }, encoding: "utf8" })
  const ms = performance.now() - t
  if (r.status !== 0 || !r.stdout.includes(c.expect)) throw new Error(`${c.name}: exit ${r.status}\n${r.stdout}${r.stderr}`)
  return ms
}

// Not timed: compiles dist/ if needed, and hashes blue.ts's model and datasets once (the store
// remembers them by path, size, mtime and inode, as on any later `pipe status`).
for (const c of cases) start(c)
const times = new Map(cases.map((c) => [c.name, [] as Array<number>]))
for (let round = 0; round < rounds; round++) for (const c of cases) times.get(c.name)!.push(start(c))
rmSync(dir, { recursive: true, force: true })

const nodeMs = median(times.get("node -e 0")!)
const results = cases.map((c) => {
  const ms = median(times.get(c.name)!)
  return {
    command: c.name,
    ms: Math.round(ms),
    overNode: Number((ms / nodeMs).toFixed(1)),
    ...(c.goalMs === undefined ? {} : { goalMs: c.goalMs, met: ms < c.goalMs }),
  }
})
for (const r of results)
  console.log(`${r.command.padEnd(34)} ${String(r.ms).padStart(6)} ms  ${String(r.overNode).padStart(5)}x node -e 0${r.goalMs === undefined ? "" : `  goal < ${r.goalMs} ms: ${r.met ? "met" : "NOT met"}`}`)
const out = {
  date: new Date().toISOString(),
  cpus: cpus().length,
  // Other work on the machine slows every process; the ratios to node -e 0 carry over, the milliseconds less so.
  loadAverage: loadavg()[0],
  reference: "node -e 0, timed in the same rounds (median of each command over the rounds)",
  rounds,
  results,
}
mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
writeFileSync(join(import.meta.dirname, "results", "cli.json"), `${JSON.stringify(out, null, 2)}\n`)
