// The Slurm executor (`pipe run --executor slurm`): each node is an sbatch job that runs it by key on
// a compute node (slurm-job.ts), with the project and the cache directory on a shared filesystem.
//
//   <cache>/slurm/<key>/job.json       what the job needs: pipeline file, overrides, the request, the
//                                       inputs' artifact records and the external inputs' hashes
//   <cache>/slurm/<key>/log            the job's output (Slurm's and the stage's log), across requeues
//   <cache>/slurm/<key>/submitted.json the job id, so a restarted coordinator adopts the job
//   <cache>/slurm/<key>/progress.json  the stage's progress (total, unit, value), rewritten by the job
//                                       at most once a second and shown by the coordinator as it polls
//   <cache>/slurm/<key>/result.json    written atomically by the job when it is done: the cache entry
//                                       to record (its payload is already in objects/), or the failure
//   <cache>/slurm/arrays/<id>/         a job array's list of job directories and per-task log links
//
// Only this process (the coordinator) writes cache.sqlite: SQLite over NFS is unsafe (its locks do
// not hold there and WAL needs shared memory), so jobs never open it. The coordinator learns of a
// job's end from result.json and from squeue (one call for all its jobs, polled with backoff from
// 250 ms to 5 s; `squeue -t all` still lists finished jobs for the cluster's MinJobAge, and sacct is
// not needed, so clusters without slurmdbd work too).
//
// Faults: a job that ends without a result (timed out, preempted, cancelled from outside, its node
// died, the process crashed) is resubmitted up to `retries` times and resumes from its checkpoint in
// the shared work dir; a job Slurm requeues itself (`--requeue`, node failure, preemption) is simply
// waited for. A stage's own failure is final and carries the tail of the job's log. Interrupting the
// coordinator scancels its jobs; a coordinator killed outright leaves them running, and the next run
// on the cache adopts them (the claim of the dead run goes stale, then submitted.json names the job).
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { CacheError, CorruptArtifact, NodeFailed, errorMessage, type ErrorDescription } from "./errors.ts"
import type { NodeRequest, ProgressEvent, Published } from "./execute.ts"
import type { Executor } from "./executor.ts"
import type { PlanExternal, PlanNode } from "./plan.ts"
import { writeFileAtomic, type IndexEntry, type Store, type StoredArtifact } from "./store.ts"

export interface SlurmOptions {
  readonly partition?: string
  readonly account?: string
  readonly qos?: string
  /** sbatch --time, e.g. "2:00:00". */
  readonly time?: string
  readonly constraint?: string
  /** Further sbatch options, passed as given (e.g. "--exclusive", "--nice=10"). */
  readonly sbatch?: ReadonlyArray<string>
  /** Resubmissions of a node whose job ends without publishing (timed out, preempted, cancelled, crashed). Default 2. */
  readonly retries?: number
  /** Instances of one stage dispatched together go into one job array (default true). */
  readonly arrays?: boolean
  /** GPU stages ask for `--gres=gpu:1` (default true); false: they run on a node's CPUs (a CPU-only partition). */
  readonly gpus?: boolean
  /**
   * In-process stages (pure TypeScript, no `resources.isolate`) go to Slurm too. By default they run in
   * the coordinator: they are cheap and yield to its event loop, and a job's start-up costs more than they do.
   */
  readonly all?: boolean
  /** Poll interval bounds in ms (default 250 to 5000). */
  readonly pollMs?: { readonly min: number; readonly max: number }
}

/** A metric row as the cache database takes it: execution id, run id, node, name, step, value, time. */
export type JobMetric = readonly [executionId: number, runId: string, node: string, name: string, step: number | null, value: number, at: number]

/** job.json: what a job needs to run its node without the database. */
export interface SlurmJobSpec {
  readonly pipelineFile: string
  readonly overrides: ReadonlyArray<string>
  readonly cacheDir: string
  readonly externals: ReadonlyArray<readonly [path: string, hash: string]>
  /** The records of the artifacts the node reads (JSON values travel inline). */
  readonly artifacts: ReadonlyArray<StoredArtifact>
  readonly request: NodeRequest
}

/** result.json: what the job leaves for the coordinator to record. */
export type SlurmResult =
  | { readonly type: "done"; readonly entry: IndexEntry; readonly metrics: ReadonlyArray<JobMetric> }
  | { readonly type: "failed"; readonly tag: "CorruptArtifact"; readonly message: string; readonly hash: string; readonly metrics: ReadonlyArray<JobMetric> }
  | { readonly type: "failed"; readonly tag: "NodeFailed"; readonly message: string; readonly cause: ErrorDescription; readonly metrics: ReadonlyArray<JobMetric> }

export const jobFiles = (dir: string) => ({
  dir,
  spec: join(dir, "job.json"),
  log: join(dir, "log"),
  result: join(dir, "result.json"),
  submitted: join(dir, "submitted.json"),
  progress: join(dir, "progress.json"),
  list: join(dir, "list"),
})
type JobFiles = ReturnType<typeof jobFiles>

/** What submitted.json holds: the job id, and the job array directory it was submitted from. */
const submittedJob = (files: JobFiles): { readonly job: string; readonly arrayDir?: string } => JSON.parse(readFileSync(files.submitted, "utf8"))
/** What result.json holds (written whole by the job: see slurm-job.ts). */
const jobResult = (files: JobFiles): SlurmResult => JSON.parse(readFileSync(files.result, "utf8"))

const jobEntry = join(import.meta.dirname, "slurm-job.ts")
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href

/** States after which a job will not run again by itself. */
const TERMINAL = new Set(["BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"])

export interface JobState {
  readonly state: string
  readonly reason: string
}

const run = (cmd: string, args: ReadonlyArray<string>): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve) =>
    execFile(cmd, args, { maxBuffer: 64 * 2 ** 20 }, (e, stdout, stderr) =>
      resolve({ code: e === null ? 0 : typeof e.code === "number" ? e.code : 127, stdout, stderr: e !== null && typeof e.code !== "number" ? e.message : stderr }),
    ),
  )

/**
 * The states of Slurm jobs (ids as sbatch and squeue write them: "123", or "123_4" for an array task),
 * finished ones included while slurmctld keeps them (MinJobAge). A job missing from the map is unknown
 * to slurmctld. Fails with squeue's message when slurmctld cannot be asked.
 */
export const slurmJobStates = async (ids: ReadonlyArray<string>): Promise<Map<string, JobState>> => {
  const states = new Map<string, JobState>()
  if (ids.length === 0) return states
  const r = await run("squeue", ["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ids.join(",")])
  // squeue fails outright when none of the ids is known any more.
  if (r.code !== 0 && !/invalid job id/i.test(r.stderr)) throw new Error(`squeue: ${r.stderr.trim() || `exit code ${r.code}`}`)
  for (const line of r.stdout.split("\n")) {
    const [id, state, reason] = line.trim().split("|")
    if (id && state) states.set(id, { state, reason: reason ?? "" })
  }
  return states
}

/**
 * What `pipe gc` must keep of Slurm jobs that no coordinator watches (one killed outright leaves them
 * running until the next run adopts them): `workKeys`, the cache keys whose job may still be computing
 * in its work dir (submitted.json, no result.json, and squeue does not report the job finished or
 * forgotten; all of them when squeue cannot be asked, `unasked` saying why); and `payloads`, the
 * hashes of results that finished jobs published and no run has recorded yet.
 */
export const unrecordedSlurmJobs = async (cacheDir: string): Promise<{ readonly workKeys: ReadonlySet<string>; readonly payloads: ReadonlySet<string>; readonly unasked?: string }> => {
  const root = join(cacheDir, "slurm")
  const submitted = new Map<string, string>() // job id -> key
  const payloads = new Set<string>()
  for (const key of existsSync(root) ? readdirSync(root) : []) {
    if (key === "arrays") continue
    const files = jobFiles(join(root, key))
    const file = existsSync(files.result) ? files.result : files.submitted
    try {
      if (file === files.result) {
        const result = jobResult(files)
        if (result.type === "done") payloads.add(result.entry.hash)
      } else if (existsSync(files.submitted)) submitted.set(submittedJob(files).job, key)
    } catch (e) {
      // what a job left cannot be accounted for: gc must not guess what it may delete
      throw new CacheError({ path: file, message: `${file} cannot be read (${errorMessage(e)}): gc deletes nothing until it can, or until ${files.dir} is removed` })
    }
  }
  try {
    const states = await slurmJobStates([...submitted.keys()])
    return { workKeys: new Set([...submitted].filter(([job]) => states.has(job) && !TERMINAL.has(states.get(job)!.state)).map(([, key]) => key)), payloads }
  } catch (e) {
    return { workKeys: new Set(submitted.values()), payloads, unasked: errorMessage(e) }
  }
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

/** The last `lines` lines of a file, or a note that it cannot be read. */
const tail = (path: string, lines = 20): string => {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n")
  } catch (e) {
    return `(the job's log ${path} cannot be read: ${errorMessage(e)})`
  }
}

interface Watch {
  readonly node: PlanNode
  readonly req: NodeRequest
  readonly files: JobFiles
  readonly onProgress: (e: ProgressEvent) => void
  /** progress.json's modification time when it was last shown */
  progressSeen: number
  readonly settle: (e: Effect.Effect<Published, NodeFailed | CorruptArtifact>) => void
  job: string | undefined
  state: string
  /** Resubmissions so far. */
  retried: number
  /** Jobs this node has been, in order (for its log). */
  readonly jobs: Array<string>
  /** The job array directory its job was submitted from, if any. */
  arrayDir?: string
}

export const slurmExecutor = (
  store: Store,
  pipelineFile: string,
  overrides: ReadonlyArray<string>,
  externals: ReadonlyArray<PlanExternal>,
  options: SlurmOptions = {},
): Executor => {
  const root = join(store.dir, "slurm")
  const retries = options.retries ?? 2
  const minPoll = options.pollMs?.min ?? 250
  const maxPoll = options.pollMs?.max ?? 5000
  const watches = new Map<string, Watch>() // by cache key
  let toSubmit: Array<Watch> = []
  let flushTimer: NodeJS.Timeout | undefined
  let pollTimer: NodeJS.Timeout | undefined
  let interval = minPoll
  let polling = false
  let arrayCounter = 0

  const nodeLog = (w: Watch, text: string) => {
    try {
      appendFileSync(w.req.logPath, `${new Date().toISOString()} ${text}\n`)
    } catch {
      // the node's log is a record in runs/: the job goes on without it (as executeNode's log does)
    }
  }

  /** A node leaves its job array; the last one to leave removes the array's directory. */
  const leaveArray = (w: Watch) => {
    const dir = w.arrayDir
    w.arrayDir = undefined
    if (dir !== undefined && ![...watches.values()].some((x) => x.arrayDir === dir)) rmSync(dir, { recursive: true, force: true })
  }

  const unwatch = (w: Watch) => {
    watches.delete(w.req.key)
    leaveArray(w)
  }

  const fail = (w: Watch, message: string, cause?: unknown) => {
    unwatch(w)
    copyLog(w)
    rmSync(w.files.dir, { recursive: true, force: true })
    w.settle(Effect.fail(new NodeFailed({ node: w.node.name, message, ...(cause === undefined ? {} : { cause }) })))
  }

  /** The job's log (its output and the stage's own log, every attempt) goes into the node's log. */
  const copyLog = (w: Watch) => {
    const text = existsSync(w.files.log) ? readFileSync(w.files.log, "utf8") : "(no output)\n"
    nodeLog(w, `--- Slurm job ${w.jobs.join(", ")}: ${w.files.log} ---\n${text.endsWith("\n") ? text : `${text}\n`}--- end of the job's log ---`)
  }

  const sbatchArgs = (node: PlanNode): Array<string> => {
    const r = node.stage.spec.resources ?? {}
    return [
      `--job-name=pipe:${node.stage.spec.name}`,
      `--cpus-per-task=${Math.max(1, r.cpu ?? 1)}`,
      ...(r.memoryMB !== undefined ? [`--mem=${r.memoryMB}M`] : []),
      ...((r.gpu ?? 0) > 0 && options.gpus !== false ? ["--gres=gpu:1"] : []),
      ...(options.partition ? [`--partition=${options.partition}`] : []),
      ...(options.account ? [`--account=${options.account}`] : []),
      ...(options.qos ? [`--qos=${options.qos}`] : []),
      ...(options.time ? [`--time=${options.time}`] : []),
      ...(options.constraint ? [`--constraint=${options.constraint}`] : []),
      ...(options.sbatch ?? []),
    ]
  }

  /** Submits watches that share their sbatch options: one job, or one job array. */
  const submit = async (group: ReadonlyArray<Watch>, args: ReadonlyArray<string>) => {
    const array = group.length > 1
    let list: string
    let output: string
    if (array) {
      const dir = join(root, "arrays", `${process.pid}.${Date.now()}.${arrayCounter++}`)
      mkdirSync(dir, { recursive: true })
      // Slurm names a task's output by its index: a link per task leads it into its node's job log.
      group.forEach((w, i) => {
        symlinkSync(w.files.log, join(dir, `${i}.log`))
        w.arrayDir = dir
      })
      list = join(dir, "list")
      writeFileAtomic(list, group.map((w) => w.files.dir).join("\n"))
      output = join(dir, "%a.log")
    } else {
      list = group[0].files.list
      writeFileAtomic(list, group[0].files.dir)
      output = group[0].files.log
    }
    const command = `exec ${[process.execPath, "--import", tsxLoader, jobEntry, list].map(shellQuote).join(" ")}`
    const r = await run("sbatch", [
      "--parsable",
      "--requeue",
      "--open-mode=append",
      `--output=${output}`,
      `--chdir=${process.cwd()}`,
      ...(array ? [`--array=0-${group.length - 1}`] : []),
      ...args,
      `--wrap=${command}`,
    ])
    const id = r.stdout.trim().split(";")[0]
    if (r.code !== 0 || !/^\d+$/.test(id)) {
      for (const w of group) if (watches.get(w.req.key) === w) fail(w, `sbatch ${args.join(" ")} failed: ${r.stderr.trim() || r.stdout.trim() || `exit code ${r.code}`}`)
      return
    }
    group.forEach((w, i) => {
      if (watches.get(w.req.key) !== w) {
        // interrupted while sbatch ran: its job must not run on unwatched
        void run("scancel", [array ? `${id}_${i}` : id])
        return
      }
      const job = array ? `${id}_${i}` : id
      w.job = job
      w.jobs.push(job)
      w.state = "PENDING"
      writeFileAtomic(w.files.submitted, JSON.stringify({ job, ...(w.arrayDir === undefined ? {} : { arrayDir: w.arrayDir }) }))
      nodeLog(w, `submitted as Slurm job ${job}`)
      try {
        store.setExecutionJob(w.req.executionId, job)
      } catch {
        // a record only (pipe show); the run stops on its next record if the database is gone
      }
    })
  }

  const flush = () => {
    flushTimer = undefined
    const batch = toSubmit
    toSubmit = []
    const groups = new Map<string, { args: Array<string>; watches: Array<Watch> }>()
    for (const w of batch) {
      const args = sbatchArgs(w.node)
      // A resubmitted job runs alone: the rest of its array may still be running.
      const key = options.arrays === false || w.retried > 0 ? `single:${w.req.key}` : JSON.stringify(args)
      const g = groups.get(key) ?? { args, watches: [] }
      g.watches.push(w)
      groups.set(key, g)
    }
    void Promise.all([...groups.values()].map((g) => submit(g.watches, g.args))).then(() => wake())
  }

  const enqueue = (w: Watch) => {
    leaveArray(w)
    w.job = undefined
    rmSync(w.files.submitted, { force: true })
    toSubmit.push(w)
    // Nodes the scheduler dispatches together arrive within a few milliseconds: one sbatch for them.
    flushTimer ??= setTimeout(flush, 20)
  }

  /** Records what a finished job left in result.json. */
  const finish = (w: Watch) => {
    let result: SlurmResult
    try {
      result = jobResult(w.files)
    } catch (e) {
      return fail(w, `Slurm job ${w.job}: its result ${w.files.result} cannot be read: ${errorMessage(e)}`)
    }
    unwatch(w)
    copyLog(w)
    const logTail = tail(w.files.log)
    try {
      // Metrics recorded under the execution that watched the job (an adopted job was submitted by another run).
      const metrics = result.metrics.map(([, , node, name, step, value, at]): JobMetric => [w.req.executionId, w.req.runId, node, name, step, value, at])
      if (metrics.length > 0) store.insertMetrics(metrics)
      if (result.type === "done") {
        if (result.entry.key !== w.req.key) throw new Error(`${w.files.result} is the result of key ${result.entry.key}, not ${w.req.key}`)
        const { stage, node, ...artifact } = result.entry
        store.commit(w.req.key, artifact, w.req.executionId, { ...(stage ? { stage } : {}), ...(node ? { node } : {}) })
        rmSync(w.files.dir, { recursive: true, force: true })
        return w.settle(Effect.succeed({ hash: artifact.hash, kind: artifact.kind, size: artifact.size }))
      }
      rmSync(w.files.dir, { recursive: true, force: true })
      if (result.tag === "CorruptArtifact") {
        store.invalidate(result.hash)
        return w.settle(Effect.fail(new CorruptArtifact({ hash: result.hash, message: result.message })))
      }
      w.settle(
        Effect.fail(
          new NodeFailed({ node: w.node.name, message: `${result.message}\n--- last lines of Slurm job ${w.job}'s log ---\n${logTail}`, cause: result.cause }),
        ),
      )
    } catch (e) {
      w.settle(Effect.fail(new NodeFailed({ node: w.node.name, message: `recording the result of Slurm job ${w.job} failed: ${errorMessage(e)}`, cause: e })))
    }
  }

  /** A job that ended without a result: resubmitted while retries last, then the node fails with its log's tail. */
  const fault = (w: Watch, state: string) => {
    const what = `Slurm job ${w.job} ended ${state} without publishing a result`
    if (w.retried < retries) {
      w.retried++
      nodeLog(w, `${what}; resubmitting (retry ${w.retried} of ${retries}), it resumes from its checkpoint`)
      return enqueue(w)
    }
    fail(w, `${what}${retries > 0 ? ` (after ${retries} retries)` : ""}\n--- last lines of its log ---\n${tail(w.files.log)}`)
  }

  /** The job's progress.json, when it changed since last shown (not a change that speeds up polling:
   *  a training job rewrites it every second, and squeue must not be asked that often). */
  const showProgress = (w: Watch) => {
    try {
      const mtime = statSync(w.files.progress).mtimeMs
      if (mtime === w.progressSeen) return
      w.progressSeen = mtime
      w.onProgress(JSON.parse(readFileSync(w.files.progress, "utf8")) as ProgressEvent)
    } catch {
      // none yet (a stage that reports no progress), or replaced under us: the next poll reads it
    }
  }

  const poll = async () => {
    pollTimer = undefined
    polling = true
    let changed = false
    try {
      const watched = [...watches.values()].filter((w) => w.job !== undefined)
      const states = await slurmJobStates(watched.map((w) => w.job!)).catch((e: unknown) => {
        for (const w of watched) nodeLog(w, `polling Slurm failed (trying again): ${errorMessage(e)}`)
        return undefined
      })
      for (const w of watched) {
        if (watches.get(w.req.key) !== w || w.job === undefined) continue
        if (existsSync(w.files.result)) {
          changed = true
          finish(w)
          continue
        }
        showProgress(w)
        if (states === undefined) continue
        const s = states.get(w.job)
        if (s === undefined || TERMINAL.has(s.state)) {
          changed = true
          // The job writes its result just before it ends: look again now that it has.
          if (existsSync(w.files.result)) finish(w)
          else fault(w, s === undefined ? "(gone from slurmctld)" : s.state)
        } else if (s.state !== w.state) {
          changed = true
          nodeLog(w, `Slurm job ${w.job}: ${s.state}${s.reason !== "None" && s.reason !== "" ? ` (${s.reason})` : ""}`)
          w.state = s.state
        }
      }
    } finally {
      polling = false
    }
    interval = changed ? minPoll : Math.min(maxPoll, interval * 1.5)
    schedule()
  }

  const schedule = () => {
    if (pollTimer !== undefined || polling || watches.size === 0) return
    pollTimer = setTimeout(() => void poll(), interval)
  }

  /** Something changed (a submission, a new watch): poll soon. */
  const wake = () => {
    interval = minPoll
    if (pollTimer !== undefined) {
      clearTimeout(pollTimer)
      pollTimer = undefined
    }
    schedule()
  }

  const inputArtifacts = (req: NodeRequest): Array<StoredArtifact> => {
    const hashes = [...req.inputHashes.map(([, h]) => h), ...Object.values(req.gathered).flatMap((points) => points.map((p) => p.hash))]
    return hashes.flatMap((h) => {
      const a = store.artifact(h)
      return a === undefined ? [] : [a] // external inputs have content hashes, not artifacts
    })
  }

  /**
   * A job for this key from an earlier coordinator: its result (recorded now), or its job id while the
   * job is still queued or running (watched instead of submitting it twice). Anything else is cleared.
   */
  const adopt = async (w: Watch): Promise<boolean> => {
    const { files } = w
    if (existsSync(files.result)) {
      const result = jobResult(files)
      if (result.type === "done") {
        w.job = "(finished before this run)"
        nodeLog(w, `adopting the result a Slurm job left in ${files.result}`)
        finish(w)
        return true
      }
      rmSync(files.result, { force: true }) // an old failure: this run tries again
    }
    if (!existsSync(files.submitted)) return false
    const { job, arrayDir } = submittedJob(files)
    const s = (await slurmJobStates([job])).get(job)
    if (s === undefined || TERMINAL.has(s.state)) return false
    w.job = job
    w.jobs.push(job)
    w.state = s.state
    if (arrayDir !== undefined) w.arrayDir = arrayDir
    nodeLog(w, `adopting Slurm job ${job} (${s.state}), submitted by an earlier run`)
    store.setExecutionJob(w.req.executionId, job)
    return true
  }

  return {
    label: "slurm job",
    run: (node, dispatched, onProgress) =>
      Effect.callback<Published, NodeFailed | CorruptArtifact>((resume) => {
        // The coordinator has no GPUs of its own to hand out: a GPU stage gets the one Slurm allocates.
        const gpu = (node.stage.spec.resources?.gpu ?? 0) > 0 && options.gpus !== false
        const req: NodeRequest = { ...dispatched, device: gpu ? { kind: "cuda", deviceId: 0, gpu: 0 } : { kind: "cpu" } }
        const files = jobFiles(join(root, req.key))
        let settled = false
        const w: Watch = {
          node,
          req,
          files,
          onProgress,
          progressSeen: 0,
          job: undefined,
          state: "",
          retried: 0,
          jobs: [],
          settle: (e) => {
            if (settled) return
            settled = true
            resume(e)
          },
        }
        watches.set(req.key, w)
        void (async () => {
          mkdirSync(files.dir, { recursive: true })
          if (await adopt(w)) return wake()
          const spec: SlurmJobSpec = {
            pipelineFile,
            overrides,
            cacheDir: store.dir,
            externals: externals.map((e) => [e.path, e.hash] as const),
            artifacts: inputArtifacts(req),
            request: req,
          }
          writeFileAtomic(files.spec, JSON.stringify(spec))
          enqueue(w)
        })().catch((e: unknown) => fail(w, `preparing the Slurm job in ${files.dir} failed: ${errorMessage(e)}`, e))
        // Interrupted (Ctrl-C, --fail-fast): cancel the job; the scheduler records the node as interrupted.
        return Effect.promise(async () => {
          settled = true
          if (watches.get(req.key) !== w) return
          unwatch(w)
          toSubmit = toSubmit.filter((x) => x !== w)
          if (w.job === undefined) return
          const r = await run("scancel", [w.job])
          rmSync(files.submitted, { force: true })
          nodeLog(w, r.code === 0 ? `cancelled Slurm job ${w.job} (run interrupted)` : `scancel ${w.job} failed: ${r.stderr.trim()}`)
        })
      }),
  }
}
