// The `pipe` command. A small explicit parser: every command and option is listed in USAGE.
// Exit codes: 0 ok, 1 some node failed, 2 bad usage / pipeline / params, 130 interrupted.
import { Effect, Exit, Cause } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { basename } from "node:path"
import { detectGpus, parseGpus } from "../engine/devices.ts"
import { CacheError, errorMessage, isDamagedDatabase } from "../engine/errors.ts"
import { componentsOf, diffComponents, explainPlan } from "../engine/explain.ts"
import { barReporter, lineReporter } from "../engine/progress.ts"
import { planFile, runPipeline } from "../engine/run.ts"
import { Store, openStoreForReading, type ExecutionRow } from "../engine/store.ts"
import { doctorCache } from "../engine/cache-doctor.ts"
import { tableCommand } from "./table.ts"
import { doctor } from "../runtime/doctor.ts"
import { exportNode } from "./export.ts"

const USAGE = `usage: pipe <command> [options]

commands:
  run <pipeline.ts>     plan and run a pipeline, reusing cached results
      --set name.param=value   override a param of every node of that call (repeatable; value is JSON or a string)
      --set name.param='sweep([v1, v2])'  sweep that param from the command line (one instance per value)
      --set name.path=PATH     replace the path of the external input declared with { name } (model, dataset)
      --dry-run                list every node as cached / to run / pending, and why; run nothing
      --rerun <name>           recompute nodes of this call or stage even when cached (repeatable)
      --jobs N                 CPU job slots (default 1)
      --gpus 0,1|none          GPUs to use (default: detected with nvidia-smi)
      --gpu-slots N            GPU stages that may share one GPU at a time (default 1)
      --memory MB              memory budget for the stages' memory hints (default 80% of RAM)
      --fail-fast              stop at the first failure
      --plain                  plain log lines instead of progress bars
  status <pipeline.ts>  what is cached, what would run, stages whose source changed (takes --set, --rerun)
  ls [--limit N]        recent runs
  show <run|node>       a run's nodes, or a node's latest execution (node: display name or key prefix)
  logs <node>           the log of a node's latest execution
  why <node>            what changed in a node's key since its previous execution
  table <run|pipeline.ts> [node]  a sweep as a table: coordinates x values and metrics [--columns a,b] [--sort -a,b] [--format md|csv|json] [--set ...]
  export <node> <dir>   write a training node's adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors)
  gc                    delete payloads no cache entry refers to, and work directories of interrupted nodes
  doctor                execution providers, GPUs, library versions, and what is missing for CUDA
      --cache                  instead: check the cache database, move a damaged one aside, rebuild its entries

common options:
  --cache-dir DIR       cache directory (default $PIPE_CACHE_DIR or ./cache)
  --runs-dir DIR        runs directory (default $PIPE_RUNS_DIR or ./runs)
`

class UsageError extends Error {}

interface Args {
  readonly command: string
  readonly positional: ReadonlyArray<string>
  readonly flags: ReadonlySet<string>
  readonly options: ReadonlyMap<string, ReadonlyArray<string>>
}

const FLAGS = new Set(["--dry-run", "--fail-fast", "--plain", "--help", "--cache"])
const OPTIONS = new Set(["--set", "--rerun", "--jobs", "--gpus", "--gpu-slots", "--memory", "--cache-dir", "--runs-dir", "--limit", "--columns", "--sort", "--format"])

const parseArgs = (argv: ReadonlyArray<string>): Args => {
  const [command = "--help", ...rest] = argv
  const positional: Array<string> = []
  const flags = new Set<string>()
  const options = new Map<string, Array<string>>()
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]
    const [name, inline] = a.startsWith("--") && a.includes("=") && !a.startsWith("--set=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined]
    if (FLAGS.has(name)) flags.add(name)
    else if (OPTIONS.has(name)) {
      const value = inline ?? rest[++i]
      if (value === undefined) throw new UsageError(`${name} needs a value`)
      options.set(name, [...(options.get(name) ?? []), value])
    } else if (a.startsWith("--set=")) options.set("--set", [...(options.get("--set") ?? []), a.slice(6)])
    else if (a.startsWith("-")) throw new UsageError(`unknown option ${a}`)
    else positional.push(a)
  }
  return { command, positional, flags, options }
}

const one = (args: Args, name: string): string | undefined => args.options.get(name)?.at(-1)
const int = (args: Args, name: string, fallback: number): number => {
  const v = one(args, name)
  if (v === undefined) return fallback
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new UsageError(`${name} expects a positive integer, got ${v}`)
  return Number(v)
}
const needOne = (args: Args, what: string): string => {
  if (args.positional.length !== 1) throw new UsageError(`pipe ${args.command} expects ${what}`)
  return args.positional[0]
}

const cacheDir = (args: Args) => one(args, "--cache-dir") ?? process.env.PIPE_CACHE_DIR ?? "cache"
const openStore = (args: Args) => new Store(cacheDir(args))
/** For the commands that only read: a cache this user cannot write is opened read-only. */
const readStore = (args: Args) => openStoreForReading(cacheDir(args))
const runsDir = (args: Args) => one(args, "--runs-dir") ?? process.env.PIPE_RUNS_DIR ?? "runs"
const out = (line = "") => process.stdout.write(line + "\n")
const time = (ms: number | null) => (ms === null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19))
const duration = (e: ExecutionRow) => (e.ended_at === null ? "-" : `${((e.ended_at - e.started_at) / 1000).toFixed(1)}s`)

const cmdRun = async (args: Args): Promise<number> => {
  const file = needOne(args, "a pipeline file")
  const store = openStore(args)
  const overrides = args.options.get("--set") ?? []
  const rerun = args.options.get("--rerun") ?? []
  if (args.flags.has("--dry-run")) return explain(store, file, overrides, rerun, "dry-run")
  const gpusText = one(args, "--gpus")
  const gpus = gpusText === undefined ? detectGpus() : parseGpus(gpusText)
  if (gpus === undefined) throw new UsageError(`--gpus expects ids like 0,1 or "none", got ${gpusText}`)
  const reporter = process.stdout.isTTY && !args.flags.has("--plain") ? barReporter() : lineReporter()
  const abort = new AbortController()
  let interrupts = 0
  const onSigint = () => {
    if (++interrupts > 1) process.exit(130)
    reporter.message("interrupt: stopping running nodes (Ctrl-C again to exit at once)")
    abort.abort()
  }
  process.on("SIGINT", onSigint)
  process.on("SIGTERM", onSigint)
  const exit = await Effect.runPromiseExit(
    runPipeline({
      store,
      pipelineFile: file,
      overrides,
      runsDir: runsDir(args),
      jobs: int(args, "--jobs", 1),
      gpus,
      slotsPerGpu: int(args, "--gpu-slots", 1),
      ...(one(args, "--memory") !== undefined ? { memoryMB: int(args, "--memory", 1) } : {}),
      failFast: args.flags.has("--fail-fast"),
      rerun,
      reporter,
      signal: abort.signal,
      args: process.argv.slice(2),
    }),
  )
  reporter.close()
  process.off("SIGINT", onSigint)
  process.off("SIGTERM", onSigint)
  if (Exit.isFailure(exit)) throw Cause.squash(exit.cause)
  const s = exit.value
  const c = s.counts
  out(`run ${s.runId} ${s.status}: ${s.nodes.length} nodes: ${c.succeeded} ran, ${c.cached} cached, ${c.failed} failed, ${c.skipped} skipped, ${c.interrupted} interrupted`)
  for (const e of s.errors) out(`error: ${e}`)
  const failures = s.nodes.filter((n) => n.status === "failed")
  if (failures.length > 0) {
    out("failures:")
    for (const f of failures) out(`  ${f.name}: ${f.error?.split("\n")[0]}\n    log: ${f.logPath}`)
  }
  for (const f of s.published) if ("error" in f) out(`publish failed: ${f.error}`)
  out(`records: ${s.runDir}`)
  // The files the pipeline asks to print, each instance under a heading when its call is swept.
  for (const f of s.published) {
    if (!("path" in f) || !f.print) continue
    out()
    if (basename(f.path) !== f.file) out(`== ${f.node} (${f.path}) ==`) // one instance of a swept call
    const text = readFileSync(f.path, "utf8")
    process.stdout.write(text.endsWith("\n") ? text : `${text}\n`)
  }
  store.close()
  return s.status === "succeeded" ? 0 : s.status === "interrupted" ? 130 : 1
}

const explain = async (store: Store, file: string, overrides: ReadonlyArray<string>, rerun: ReadonlyArray<string>, mode: "dry-run" | "status") => {
  const p = await Effect.runPromise(planFile(store, file, overrides))
  const rows = explainPlan(store, p, rerun)
  const width = Math.min(60, rows.reduce((m, r) => Math.max(m, r.name.length), 4))
  for (const e of p.externals) out(`external ${e.name === undefined ? "" : `${e.name.padEnd(width)}  `}${e.path}`)
  for (const r of rows) {
    const label = r.state === "run" ? (mode === "dry-run" ? "to run" : "stale") : r.state
    const note = r.state === "cached" && !r.sourceChanged ? "" : `  ${r.reason}`
    out(`${label.padEnd(8)} ${r.name.padEnd(width)}${note}`.trimEnd())
  }
  const count = (s: string) => rows.filter((r) => r.state === s).length
  out(`${rows.length} nodes: ${count("cached")} cached, ${count("run")} to run, ${count("pending")} pending upstream, ${rows.filter((r) => r.sourceChanged).length} with changed source`)
  store.close()
  return 0
}

const latest = (store: Store, node: string): ReadonlyArray<ExecutionRow> => {
  const rows = store.executionsOf(node)
  if (rows.length === 0) throw new UsageError(`no execution of a node named "${node}" (use the name shown by pipe show <run>, or a key prefix)`)
  return rows
}

const cmdShow = (args: Args): number => {
  const what = needOne(args, "a run id or a node")
  const store = readStore(args)
  const run = store.run(what)
  if (run) {
    out(`run ${run.id}  ${run.status}  ${time(run.started_at)} -> ${time(run.ended_at)}`)
    out(`pipeline ${run.pipeline}`)
    out(`args ${JSON.parse(run.args).join(" ")}`)
    if (run.summary) out(`summary ${run.summary}`)
    for (const e of store.executionsOfRun(run.id))
      out(`  ${e.status.padEnd(11)} ${duration(e).padStart(8)}  ${e.node}${e.error ? `  ${e.error.split("\n")[0]}` : ""}`)
    return 0
  }
  const e = latest(store, what)[0]
  out(`node     ${e.node}`)
  out(`stage    ${e.stage} v${e.version}`)
  out(`key      ${e.key}`)
  out(`status   ${e.status}  (run ${e.run_id}, ${time(e.started_at)}, ${duration(e)}, device ${e.device})`)
  out(`params   ${e.params}`)
  if (e.unkeyed_params !== "{}") out(`unkeyed  ${e.unkeyed_params}`)
  out(`inputs   ${e.inputs}`)
  out(`output   ${e.output ?? "-"}`)
  if (e.error) out(`error    ${e.error}`)
  out(`log      ${e.log_path}`)
  const last = new Map<string, { step: number | null; value: number }>()
  for (const m of store.metricsOf(e.id)) last.set(m.name, m)
  for (const [name, m] of last) out(`metric   ${name} = ${m.value}${m.step === null ? "" : ` (step ${m.step})`}${Number.isFinite(m.value) ? "" : "  (non-finite)"}`)
  return 0
}

const cmdLogs = (args: Args): number => {
  const e = latest(readStore(args), needOne(args, "a node"))[0]
  if (!existsSync(e.log_path)) throw new UsageError(`log ${e.log_path} no longer exists`)
  process.stdout.write(readFileSync(e.log_path, "utf8"))
  return 0
}

const cmdWhy = (args: Args): number => {
  const rows = latest(readStore(args), needOne(args, "a node"))
  const [now] = rows
  const before = rows.find((r) => r.key !== now.key)
  out(`${now.node}: key ${now.key.slice(0, 12)} (${now.status}, run ${now.run_id})`)
  if (before === undefined) {
    out("no earlier execution with a different key")
    return 0
  }
  out(`previous key ${before.key.slice(0, 12)} (${before.status}, run ${before.run_id}); changed:`)
  for (const line of diffComponents(componentsOf(before), componentsOf(now))) out(`  ${line}`)
  return 0
}

const cmdLs = (args: Args): number => {
  for (const r of readStore(args).runs(int(args, "--limit", 20))) {
    const counts = r.summary ? (JSON.parse(r.summary) as { counts?: Record<string, number> }).counts : undefined
    out(`${r.id}  ${r.status.padEnd(11)} ${time(r.started_at)}  ${r.pipeline}${counts ? `  ${Object.entries(counts).map(([k, v]) => `${k}=${v}`).join(" ")}` : ""}`)
  }
  return 0
}

const cmdGc = (args: Args): number => {
  const store = openStore(args)
  if (store.liveClaims().size > 0) throw new CacheError({ path: store.dir, message: `a run is in progress on ${store.dir}; run pipe gc when it is done` })
  const { files, workDirs, bytes } = store.gc()
  out(`removed ${files} unreferenced payload files and ${workDirs} work directories of interrupted nodes, freed ${(bytes / 2 ** 20).toFixed(1)} MiB`)
  return 0
}

const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  try {
    const args = parseArgs(argv)
    if (args.flags.has("--help") || args.command === "--help" || args.command === "help") {
      out(USAGE)
      return 0
    }
    switch (args.command) {
      case "run":
        return await cmdRun(args)
      case "status": {
        const file = needOne(args, "a pipeline file")
        return await explain(readStore(args), file, args.options.get("--set") ?? [], args.options.get("--rerun") ?? [], "status")
      }
      case "ls":
        return cmdLs(args)
      case "show":
        return cmdShow(args)
      case "logs":
        return cmdLogs(args)
      case "why":
        return cmdWhy(args)
      case "gc":
        return cmdGc(args)
      case "table":
        return await tableCommand(args, openStore(args), runsDir(args), (text) => process.stdout.write(text))
      case "export": {
        if (args.positional.length !== 2) throw new UsageError("pipe export expects a node and a directory")
        out(await Effect.runPromise(exportNode(openStore(args), runsDir(args), args.positional[0], args.positional[1])))
        return 0
      }
      case "doctor": {
        if (args.flags.has("--cache")) {
          const report = doctorCache(cacheDir(args))
          for (const line of report.lines) out(line)
          return report.ok ? 0 : 1
        }
        const report = await Effect.runPromise(doctor())
        for (const line of report.lines) out(line)
        return 0
      }
      default:
        throw new UsageError(`unknown command "${args.command}"`)
    }
  } catch (e) {
    // A database found damaged after it opened (a corrupt page read later) gets the same way out as at open.
    process.stderr.write(`pipe: ${errorMessage(e)}\n${e instanceof UsageError ? "run pipe --help for usage\n" : isDamagedDatabase(e) ? "the cache database is damaged: run pipe doctor --cache\n" : ""}`)
    return 2
  }
}

process.exitCode = await main(process.argv.slice(2))
