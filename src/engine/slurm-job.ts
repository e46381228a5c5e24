// Entry of a Slurm job (see slurm.ts): runs one node by key on a compute node, against the cache
// directory on the shared filesystem, without ever opening cache.sqlite (SQLite's locking is unsafe
// over NFS; the coordinating `pipe run` is its only writer). The inputs' records come in job.json,
// the payload is published atomically into objects/ (temp file + rename), and what the coordinator
// must record (the cache entry, the metrics) goes back in result.json, written whole or not at all.
//   node --import tsx slurm-job.ts <list file>   line ${SLURM_ARRAY_TASK_ID:-0} of it is the job directory
import { Cause, Effect, Exit } from "effect"
import { readFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { CorruptArtifact, ExternalInputError, NodeFailed, PipelineError, describeError, errorMessage } from "./errors.ts"
import { executeNode, type NodeStore, type ProgressEvent } from "./execute.ts"
import { hashFile, sha256 } from "./hash.ts"
import { loadPipeline, plan } from "./plan.ts"
import type { Device } from "./stage.ts"
import { Payloads, shortHost, writeFileAtomic, type IndexEntry, type StoredArtifact } from "./store.ts"
import { jobFiles, type JobMetric, type SlurmJobSpec, type SlurmResult } from "./slurm.ts"

/** The cache as a job sees it: payload files on the shared filesystem, records from and to the coordinator. */
class JobStore extends Payloads implements NodeStore {
  readonly metrics: Array<JobMetric> = []
  published: IndexEntry | undefined
  private readonly artifacts: Map<string, StoredArtifact>

  constructor(dir: string, artifacts: ReadonlyArray<StoredArtifact>) {
    super(dir, `${process.pid}@${shortHost()}`)
    this.artifacts = new Map(artifacts.map((a) => [a.hash, a]))
  }

  readJson(hash: string): string {
    const json = this.artifacts.get(hash)?.json
    if (json == null || sha256(json) !== hash)
      throw new CorruptArtifact({ hash, message: `artifact ${hash.slice(0, 12)}: the JSON value sent with the job is missing or does not match its hash; it will be recomputed` })
    return json
  }

  verifiedPath(hash: string): { readonly artifact: StoredArtifact; readonly path: string } {
    const artifact = this.artifacts.get(hash)
    const path = this.objectPath(hash)
    let ok = false
    try {
      ok = artifact !== undefined && hashFile(path) === hash
    } catch {
      // missing or unreadable: reported as corrupt below, the coordinator drops it and recomputes it
    }
    if (!ok || artifact === undefined)
      throw new CorruptArtifact({ hash, message: `artifact ${hash.slice(0, 12)}: payload ${path} is missing or does not match its hash on ${shortHost()}; it will be recomputed` })
    return { artifact, path }
  }

  insertMetrics(rows: ReadonlyArray<JobMetric>): void {
    this.metrics.push(...rows)
  }

  commit(key: string, a: Omit<StoredArtifact, "json"> & { json?: string | null }, _executionId: number | null, origin: { readonly stage?: string; readonly node?: string } = {}): void {
    this.published = { key, hash: a.hash, kind: a.kind, type: a.type, size: a.size, json: a.json ?? null, ...origin }
  }
}

/** The device inside the job: Slurm has made the GPU it allocated the only visible one. */
const jobDevice = (requested: Device): Device =>
  requested.kind === "cpu" ? requested : { kind: "cuda", deviceId: 0, gpu: Number((process.env.CUDA_VISIBLE_DEVICES ?? "0").split(",")[0]) || 0 }

/** Keeps the job's progress.json at the stage's progress, rewritten whole at most once a second (the
 *  coordinator reads it as it polls squeue): a change is written within that second. */
const progressWriter = (files: ReturnType<typeof jobFiles>) => {
  const state: { total?: number; unit?: string; value: number } = { value: 0 }
  let timer: ReturnType<typeof setTimeout> | undefined
  const write = () => {
    timer = undefined
    try {
      writeFileAtomic(files.progress, JSON.stringify(state))
    } catch {
      // progress is a display: the stage goes on without it
    }
  }
  return (e: ProgressEvent) => {
    if (e.total !== undefined) state.total = e.total
    if (e.unit !== undefined) state.unit = e.unit
    state.value = e.value
    timer ??= setTimeout(write, 1000)
  }
}

const main = async (listFile: string): Promise<void> => {
  const line = Number(process.env.SLURM_ARRAY_TASK_ID ?? 0)
  const dir = readFileSync(listFile, "utf8").split("\n")[line]
  const files = jobFiles(dir)
  const spec = JSON.parse(readFileSync(files.spec, "utf8")) as SlurmJobSpec
  const store = new JobStore(spec.cacheDir, spec.artifacts)
  let result: SlurmResult
  try {
    const externals = new Map(spec.externals)
    const p = plan(await loadPipeline(spec.pipelineFile), spec.pipelineFile, {
      overrides: spec.overrides,
      // The coordinator hashed every external input; a job rehashing model directories would only repeat it.
      hashExternal: (path) => {
        const hash = externals.get(resolve(path))
        if (hash === undefined) throw new ExternalInputError({ path, message: `external input ${path} was not hashed by the coordinator (the pipeline file differs on this node?)` })
        return hash
      },
    })
    const node = p.nodes.find((n) => n.recipe === spec.request.recipe)
    if (node === undefined) throw new PipelineError({ file: spec.pipelineFile, message: `node ${spec.request.recipe.slice(0, 12)} is not in ${spec.pipelineFile} as seen from ${shortHost()}` })
    const request = { ...spec.request, device: jobDevice(spec.request.device), logPath: files.log }
    const exit = await Effect.runPromiseExit(executeNode(store, node, request, progressWriter(files)))
    if (Exit.isSuccess(exit)) result = { type: "done", entry: store.published!, metrics: store.metrics }
    else {
      const err = Cause.findErrorOption(exit.cause)
      const e = err._tag === "Some" ? err.value : Cause.squash(exit.cause)
      result =
        e instanceof CorruptArtifact ? { type: "failed", tag: "CorruptArtifact", message: e.message, hash: e.hash, metrics: store.metrics }
        : e instanceof NodeFailed ? { type: "failed", tag: "NodeFailed", message: e.message, cause: describeError(e.cause), metrics: store.metrics }
        : { type: "failed", tag: "NodeFailed", message: `defect: ${errorMessage(e)}`, cause: describeError(e), metrics: store.metrics }
    }
  } catch (e) {
    result = { type: "failed", tag: "NodeFailed", message: errorMessage(e), cause: describeError(e), metrics: store.metrics }
  }
  writeFileAtomic(files.result, JSON.stringify(result), join(dir, `result.${process.pid}.tmp`))
}

await main(process.argv[2])
process.exit(0)
