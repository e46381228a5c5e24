// `pipe run <pipeline.ts>`: plan and run a pipeline, reusing cached results; print the summary, the
// failures with their logs, and the files the pipeline asks to print.
import { Cause, Effect, Exit } from "effect"
import { readFileSync } from "node:fs"
import { basename, join } from "node:path"
import { detectGpus, parseGpus } from "../engine/devices.ts"
import { barReporter, lineReporter } from "../engine/progress.ts"
import { runPipeline } from "../engine/run.ts"
import { errorMessage } from "../engine/errors.ts"
import type { SlurmOptions } from "../engine/slurm.ts"
import { int, needOne, one, out, UsageError, type Args, type Command } from "./args.ts"
import { cacheDir, openStore, runsDir } from "./records.ts"
import { explain } from "./status.ts"

/** Jobs queued or running at once on Slurm unless --jobs says otherwise. */
const SLURM_JOBS = 64

/** The `--executor slurm` options, or undefined for the local executors. */
const slurmOptions = (args: Args): SlurmOptions | undefined => {
  const executor = one(args, "--executor") ?? "local"
  if (executor !== "local" && executor !== "slurm") throw new UsageError(`--executor expects local or slurm, got ${executor}`)
  const given = [...args.options.keys(), ...args.flags].filter((o) => o.startsWith("--slurm-"))
  if (executor === "local") {
    if (given.length > 0) throw new UsageError(`${given[0]} applies to --executor slurm only`)
    return undefined
  }
  const retries = one(args, "--slurm-retries")
  if (retries !== undefined && !/^\d+$/.test(retries)) throw new UsageError(`--slurm-retries expects a count (0 or more), got ${retries}`)
  const text = (name: string, field: keyof SlurmOptions) => {
    const v = one(args, name)
    return v === undefined ? {} : { [field]: v }
  }
  return {
    ...text("--slurm-partition", "partition"),
    ...text("--slurm-account", "account"),
    ...text("--slurm-qos", "qos"),
    ...text("--slurm-time", "time"),
    ...text("--slurm-constraint", "constraint"),
    sbatch: args.options.get("--slurm-option") ?? [],
    ...(retries === undefined ? {} : { retries: Number(retries) }),
    all: args.flags.has("--slurm-all"),
    arrays: !args.flags.has("--slurm-no-arrays"),
    gpus: !args.flags.has("--slurm-no-gpus"),
  }
}

export const command: Command = {
  flags: ["--dry-run", "--fail-fast", "--plain", "--slurm-all", "--slurm-no-arrays", "--slurm-no-gpus"],
  options: [
    "--set", "--rerun", "--jobs", "--gpus", "--gpu-slots", "--memory", "--executor",
    "--slurm-partition", "--slurm-account", "--slurm-qos", "--slurm-time", "--slurm-constraint", "--slurm-option", "--slurm-retries",
  ],
  run: async (args, cli) => {
    const file = needOne(args, "a pipeline file")
    const overrides = args.options.get("--set") ?? []
    const rerun = args.options.get("--rerun") ?? []
    if (args.flags.has("--dry-run")) {
      await cli.loadTypeScript()
      return explain(openStore(args), file, overrides, rerun, "dry-run")
    }
    const slurm = slurmOptions(args)
    const gpusText = one(args, "--gpus")
    // On Slurm the cluster hands out GPUs (--gres), not this machine.
    const gpus = slurm !== undefined ? [] : gpusText === undefined ? detectGpus() : parseGpus(gpusText)
    if (gpus === undefined) throw new UsageError(`--gpus expects ids like 0,1 or "none", got ${gpusText}`)
    // On Slurm, --jobs bounds the jobs queued or running at once, and memory is the cluster's to count.
    const jobs = int(args, "--jobs", slurm === undefined ? 1 : SLURM_JOBS)
    const slotsPerGpu = int(args, "--gpu-slots", 1)
    const memory = one(args, "--memory") !== undefined ? { memoryMB: int(args, "--memory", 1) } : slurm !== undefined ? { memoryMB: Number.MAX_SAFE_INTEGER } : {}
    await cli.loadTypeScript()
    // stages (and their child processes) keep per-file checks, e.g. weights' finiteness, under the same cache
    process.env.PIPE_CACHE_DIR = cacheDir(args)
    const store = openStore(args)
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
        jobs,
        gpus,
        slotsPerGpu,
        ...memory,
        failFast: args.flags.has("--fail-fast"),
        rerun,
        ...(slurm === undefined ? {} : { slurm }),
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
    // the training nodes' curves: drawn from the records just written, so a failure to draw one is
    // said but leaves the run's outcome as it is
    const { writeTrainingCurves } = await import("../plots/curves.ts")
    const curves = await Effect.runPromiseExit(writeTrainingCurves(store, s.nodes, s.runDir))
    if (Exit.isFailure(curves)) out(`warning: training curves not drawn: ${errorMessage(Cause.squash(curves.cause))}`)
    else if (curves.value.length > 0) out(`training curves: ${curves.value.length} in ${join(s.runDir, "curves")}`)
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
  },
}
