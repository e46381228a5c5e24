// One `pipe run`: plan the pipeline file, record the run, schedule it, write runs/<id>/ (plan,
// summary, and the files the pipeline publishes).
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { mkdirSync } from "node:fs"
import { totalmem } from "node:os"
import { join, resolve } from "node:path"
import { ExternalInputError, ParamsError, PipelineError, StorageError, errorMessage, storageError } from "./errors.ts"
import { childProcessExecutor, inProcessExecutor } from "./executor.ts"
import { slurmExecutor, type SlurmOptions } from "./slurm.ts"
import { loadPipeline, plan, type Plan } from "./plan.ts"
import { recordingReporter, type Reporter } from "./progress.ts"
import { publishResults, type PublishedFile } from "./publish.ts"
import { runPlan, type RunSummary } from "./scheduler.ts"
import { writeFileAtomic, type Store } from "./store.ts"

/** Loads and plans a pipeline file against a cache (external inputs are hashed through it). */
export const planFile = (
  store: Store,
  file: string,
  overrides: ReadonlyArray<string> = [],
): Effect.Effect<Plan, PipelineError | ParamsError | ExternalInputError> =>
  Effect.tryPromise({
    try: async () =>
      plan(await loadPipeline(file), file, {
        overrides,
        hashExternal: (path, kind) => (kind === "file" ? store.hashExternalFile(path) : store.hashExternalDir(path)),
      }),
    // plan and loadPipeline throw these three; anything else is a bug of the pipeline file's code, reported against it.
    catch: (e) =>
      e instanceof PipelineError || e instanceof ParamsError || e instanceof ExternalInputError
        ? e
        : new PipelineError({ file, message: `${file}: planning failed: ${errorMessage(e)}` }),
  })

export interface RunConfig {
  readonly store: Store
  readonly pipelineFile: string
  readonly overrides?: ReadonlyArray<string>
  readonly runsDir: string
  readonly jobs?: number
  readonly gpus?: ReadonlyArray<number>
  readonly slotsPerGpu?: number
  readonly memoryMB?: number
  readonly failFast?: boolean
  readonly rerun?: ReadonlyArray<string>
  readonly reporter: Reporter
  readonly signal?: AbortSignal
  /** Run nodes as Slurm jobs (see slurm.ts) instead of child processes. */
  readonly slurm?: SlurmOptions
  /** The command line, recorded with the run. */
  readonly args?: ReadonlyArray<string>
}

const executors = (store: Store, cfg: RunConfig, p: Plan) => {
  const file = resolve(cfg.pipelineFile)
  const overrides = cfg.overrides ?? []
  if (cfg.slurm === undefined) return { main: inProcessExecutor(store), process: childProcessExecutor(file, overrides, store.dir) }
  const slurm = slurmExecutor(store, file, overrides, p.externals, cfg.slurm)
  return { main: cfg.slurm.all ? slurm : inProcessExecutor(store), process: slurm }
}

export const newRunId = (): string =>
  `${new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15)}-${randomBytes(2).toString("hex")}`

export interface RunResult extends RunSummary {
  readonly runDir: string
  /** Files written into `runDir` by the pipeline's `publish`; a publish error fails the run. */
  readonly published: ReadonlyArray<PublishedFile>
  /** Records that could not be written (cache database, summary.json), each naming its file; they fail the run. */
  readonly errors: ReadonlyArray<string>
}

export const runPipeline = (cfg: RunConfig): Effect.Effect<RunResult, PipelineError | ParamsError | ExternalInputError | StorageError> =>
  Effect.gen(function* () {
    const { store } = cfg
    const overrides = cfg.overrides ?? []
    const p = yield* planFile(store, cfg.pipelineFile, overrides)
    const names = new Set(p.nodes.flatMap((n) => [n.label, n.stage.spec.name]))
    const unknown = (cfg.rerun ?? []).filter((r) => !names.has(r))
    if (unknown.length > 0)
      return yield* Effect.fail(
        new ParamsError({ pipeline: cfg.pipelineFile, node: unknown[0], message: `${cfg.pipelineFile}: --rerun ${unknown[0]}: no node or stage of that name (names: ${[...names].join(", ")})` }),
      )
    const runId = newRunId()
    const runDir = resolve(join(cfg.runsDir, runId))
    // Nothing has run yet: a records directory that cannot be written stops the run here.
    yield* Effect.try({
      try: () => mkdirSync(join(runDir, "logs"), { recursive: true }),
      catch: (e) => storageError("creating", join(runDir, "logs"), e),
    })
    const planJson = JSON.stringify(
      {
        pipeline: p.pipeline,
        file: resolve(cfg.pipelineFile),
        overrides,
        externals: p.externals,
        nodes: p.nodes.map((n) => ({
          name: n.name,
          stage: n.stage.spec.name,
          version: n.stage.spec.version,
          recipe: n.recipe,
          params: n.keyParams,
          unkeyedParams: n.unkeyedParams,
          label: n.label,
          coords: n.coords,
          inputs: Object.fromEntries(
            n.inputs.map(([k, i]) => [k, i.kind === "node" ? p.nodes[i.node].name : i.kind === "gather" ? i.points.map((pt) => p.nodes[pt.node].name) : i.path]),
          ),
        })),
      },
      null,
      1,
    )
    yield* Effect.try({ try: () => writeFileAtomic(join(runDir, "plan.json"), planJson), catch: (e) => storageError("writing", join(runDir, "plan.json"), e) })
    yield* Effect.try({ try: () => store.startRun(runId, resolve(cfg.pipelineFile), cfg.args ?? []), catch: (e) => storageError("recording the run in", store.dir, e) })
    // runs/<id>/progress.json: which nodes are cached, running and how far, for readers of a live run
    const progress = recordingReporter(cfg.reporter, join(runDir, "progress.json"), (file, text) => writeFileAtomic(file, text))
    const summary = yield* runPlan({
      store,
      plan: p,
      runId,
      runDir,
      jobs: Math.max(1, cfg.jobs ?? 1),
      gpus: cfg.gpus ?? [],
      slotsPerGpu: cfg.slotsPerGpu ?? 1,
      memoryMB: cfg.memoryMB ?? Math.floor((totalmem() / 2 ** 20) * 0.8),
      failFast: cfg.failFast ?? false,
      rerun: cfg.rerun ?? [],
      executors: executors(store, cfg, p),
      reporter: progress.reporter,
      ...(cfg.signal ? { signal: cfg.signal } : {}),
    })
    progress.flush()
    const published = publishResults(store, p, summary.nodes, runDir)
    const publishErrors = published.filter((f) => "error" in f)
    // Records that could not be written: the run fails (its nodes keep their own outcomes).
    const errors = summary.error === undefined ? [] : [summary.error]
    const finalStatus = () => (summary.status === "succeeded" && (publishErrors.length > 0 || errors.length > 0) ? "failed" : summary.status)
    // Whole or absent: a reader never finds a half-written summary.json.
    try {
      writeFileAtomic(join(runDir, "summary.json"), JSON.stringify({ ...summary, status: finalStatus(), published }, null, 1))
    } catch (e) {
      errors.push(errorMessage(e))
    }
    try {
      store.finishRun(runId, finalStatus(), { counts: summary.counts, failures: [...summary.nodes.filter((n) => n.status === "failed"), ...publishErrors], errors })
    } catch (e) {
      errors.push(`${errorMessage(e)}; once this process has exited, pipe ls shows the run as interrupted`)
    }
    return { ...summary, status: finalStatus(), runDir, published, errors }
  })
