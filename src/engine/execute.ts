// Executing one node where it runs (the scheduler's process or a child): read and verify the
// inputs, run the stage with its context, publish the output. Shared by every executor (a Slurm job
// runs it against a NodeStore that leaves the database to the coordinator).
import { Cause, Effect, Exit, Logger, Schema } from "effect"
import { appendFileSync, mkdirSync, rmSync } from "node:fs"
import { dirname } from "node:path"
import type { ArtifactType, TensorsOutput, TensorsValue } from "./artifact.ts"
import { CorruptArtifact, NodeFailed, errorMessage, storageError } from "./errors.ts"
import type { Point, StoredPoint } from "./gather.ts"
import { canonicalJson, sha256 } from "./hash.ts"
import type { PlanNode } from "./plan.ts"
import type { Device, StageContext } from "./stage.ts"
import type { StorageKind, Store } from "./store.ts"
import * as Safetensors from "../core/safetensors.ts"

/** Everything needed to run one node, serializable so it can cross to a child process. */
export interface NodeRequest {
  readonly runId: string
  readonly executionId: number
  readonly recipe: string
  readonly key: string
  /** Content hash of each input (artifact hash for node inputs, content hash for external ones, points hash for gathered ones). */
  readonly inputHashes: ReadonlyArray<readonly [string, string]>
  /** The points of each gathered input, with their artifact hashes. */
  readonly gathered: Readonly<Record<string, ReadonlyArray<StoredPoint>>>
  readonly device: Device
  readonly logPath: string
  readonly metricsPath: string
}

export interface Published {
  readonly hash: string
  readonly kind: StorageKind
  readonly size: number
}

/** Progress events a running node reports to the scheduler's display. */
export interface ProgressEvent {
  readonly total?: number
  readonly unit?: string
  readonly value: number
  /** Said once per node: a record of it could not be written (its log or metrics file), the node goes on. */
  readonly warning?: string
}

/**
 * What executing a node needs of the cache: the `Store` itself, or a Slurm job's view of it that never
 * touches cache.sqlite (slurm-job.ts: inputs' records come from the coordinator, the publish goes back to it).
 */
export type NodeStore = Pick<Store, "readJson" | "verifiedPath" | "workDir" | "putBytes" | "putFile" | "commit" | "insertMetrics">

const storageKind = (t: ArtifactType): StorageKind => (t._tag === "json" ? "json" : t._tag === "tensors" ? "tensors" : "file")

/** A stored artifact as a consumer declaring `type` receives it (throws CorruptArtifact when the payload is bad). */
const loadArtifact = (store: NodeStore, type: ArtifactType, hash: string): unknown => {
  if (type._tag === "json") return Schema.decodeUnknownSync(type.schema)(JSON.parse(store.readJson(hash)))
  const { artifact, path } = store.verifiedPath(hash)
  if (type._tag === "tensors") {
    const header = Effect.runSync(Safetensors.readHeader(path))
    const read = (tensor: string) => Effect.runSync(Safetensors.readTensor(header, tensor))
    return { path, hash, size: artifact.size, header, metadata: header.metadata, read } satisfies TensorsValue
  }
  return { path, hash, size: artifact.size }
}

const loadInput = (store: NodeStore, node: PlanNode, req: NodeRequest, name: string, hash: string) =>
  Effect.try({
    try: (): unknown => {
      const input = node.inputs.find(([n]) => n === name)![1]
      if (input.kind === "external") return { path: input.path, hash, size: 0 }
      const type = node.stage.spec.inputs[name]
      if (type._tag !== "gathered") return loadArtifact(store, type, hash)
      return req.gathered[name].map((p): Point<unknown> => ({ coords: p.coords, value: loadArtifact(store, type.element, p.hash) }))
    },
    catch: (e) =>
      e instanceof CorruptArtifact ? e : new NodeFailed({ node: node.name, message: `input "${name}": ${errorMessage(e)}`, cause: e }),
  })

const publish = (store: NodeStore, node: PlanNode, key: string, executionId: number, value: unknown): Published => {
  const type = node.stage.spec.output
  const kind = storageKind(type)
  let stored: { hash: string; size: number; json: string | null }
  if (type._tag === "json") {
    const json = canonicalJson(Schema.encodeUnknownSync(type.schema)(value))
    stored = { hash: sha256(json), size: Buffer.byteLength(json), json }
  } else if (type._tag === "tensors") {
    const out = value as TensorsOutput
    if ("path" in out) {
      Effect.runSync(Safetensors.readHeader(out.path)) // a file the stage wrote must at least be valid safetensors
      stored = { ...store.putFile(out.path), json: null }
    } else stored = { ...store.putBytes(Effect.runSync(Safetensors.encode(out.tensors, out.metadata ?? {}))), json: null }
  } else if (value instanceof Uint8Array) {
    stored = { ...store.putBytes(value), json: null }
  } else {
    stored = { ...store.putFile((value as { path: string }).path), json: null }
  }
  store.commit(key, { hash: stored.hash, kind, type: type.name, size: stored.size, json: stored.json }, executionId, { stage: node.stage.spec.name, node: node.name })
  return { hash: stored.hash, kind, size: stored.size }
}

/**
 * Runs `node` and publishes its output under `req.key`. Fails with `CorruptArtifact` when an input's
 * payload no longer matches its hash (the scheduler then recomputes the producer), else `NodeFailed`.
 */
export const executeNode = (
  store: NodeStore,
  node: PlanNode,
  req: NodeRequest,
  onProgress: (e: ProgressEvent) => void,
): Effect.Effect<Published, NodeFailed | CorruptArtifact> =>
  Effect.gen(function* () {
    // The node's log and metrics.jsonl are records in runs/: when they cannot be written (disk full,
    // read-only), the stage goes on and the run says so once per file. Failing a healthy, possibly hours
    // long stage for its diary would lose work; its result and metrics still go to the cache.
    let total: number | undefined
    let unit: string | undefined
    let value = 0
    const unwritable = new Set<string>()
    const appendRecord = (path: string, text: string, lost: string) => {
      if (unwritable.has(path)) return
      try {
        appendFileSync(path, text)
      } catch (e) {
        unwritable.add(path)
        onProgress({ value, warning: `${storageError("appending to", path, e).message}; going on without ${lost}` })
      }
    }
    try {
      mkdirSync(dirname(req.logPath), { recursive: true })
    } catch {
      // reported by the log's first append, which fails the same way
    }
    const log = (message: string) => appendRecord(req.logPath, `${new Date().toISOString()} ${message}\n`, "the rest of its log")
    const inputs: Record<string, unknown> = {}
    for (const [name, hash] of req.inputHashes) inputs[name] = yield* loadInput(store, node, req, name, hash)

    const workDir = store.workDir(req.key)
    const metrics: Array<readonly [number, string, string, string, number | null, number, number]> = []
    // A metric the cache database would not take: the node fails with it once the stage is done (its
    // own error comes first), since the database that lost it cannot take the result either.
    let metricsError: string | undefined
    // Held back at most 256 metrics or 2 s (a dashboard charts them live), then written in one transaction.
    let flushTimer: ReturnType<typeof setTimeout> | undefined
    const flushMetrics = () => {
      clearTimeout(flushTimer)
      flushTimer = undefined
      if (metrics.length === 0) return
      if (metricsError === undefined)
        try {
          store.insertMetrics(metrics)
        } catch (e) {
          metricsError = `recording its metrics failed: ${errorMessage(e)}`
        }
      // JSON has no NaN or Infinity: non-finite values are written as the strings "NaN", "Infinity", "-Infinity".
      const lines = metrics.map(([, , n, name, step, v, at]) => JSON.stringify({ node: n, name, step, value: Number.isFinite(v) ? v : String(v), at }))
      appendRecord(req.metricsPath, lines.join("\n") + "\n", "metrics.jsonl (the metrics are still in the cache database)")
      metrics.length = 0
    }
    const ctx: StageContext = {
      node: node.name,
      key: req.key,
      device: req.device,
      seed: node.seed,
      // Created on first use: most stages never need one.
      get workDir() {
        mkdirSync(workDir, { recursive: true })
        return workDir
      },
      log,
      metric: (name, v, step) => {
        metrics.push([req.executionId, req.runId, node.name, name, step ?? null, v, Date.now()])
        if (metrics.length >= 256) flushMetrics()
        else flushTimer ??= setTimeout(flushMetrics, 2000).unref()
      },
      progress: {
        total: (t, u) => {
          total = t
          unit = u
          onProgress({ total, unit, value })
        },
        advance: (by = 1) => {
          value += by
          onProgress({ value })
        },
        set: (v) => {
          value = v
          onProgress({ value })
        },
      },
    }
    const fileLogger = Logger.make((o) => log(`[${o.logLevel}] ${Array.isArray(o.message) ? o.message.map(String).join(" ") : String(o.message)}`))
    const spec = node.stage.spec
    const retries = spec.transient ? (spec.retries ?? 2) : 0
    log(`start ${node.name} key=${req.key} device=${JSON.stringify(req.device)}`)

    let exit: Exit.Exit<unknown, unknown> | undefined
    for (let attempt = 0; ; attempt++) {
      exit = yield* Effect.exit(
        Effect.suspend(() => spec.run({ params: node.params, inputs: inputs as never, ctx })).pipe(Effect.provide(Logger.layer([fileLogger]))),
      )
      if (Exit.isSuccess(exit) || attempt >= retries) break
      const err = Cause.findErrorOption(exit.cause)
      if (err._tag === "None" || !spec.transient!(err.value)) break
      log(`transient error, retrying (${attempt + 1}/${retries}): ${errorMessage(err.value)}`)
    }
    flushMetrics()
    if (Exit.isFailure(exit)) {
      if (Cause.hasInterruptsOnly(exit.cause)) return yield* Effect.interrupt
      const err = Cause.findErrorOption(exit.cause)
      const cause = err._tag === "Some" ? err.value : Cause.squash(exit.cause)
      const message = err._tag === "Some" ? errorMessage(cause) : `defect: ${errorMessage(cause)}`
      log(`failed: ${Cause.pretty(exit.cause)}`)
      return yield* Effect.fail(new NodeFailed({ node: node.name, message: metricsError === undefined ? message : `${message} (and ${metricsError})`, cause }))
    }
    if (metricsError !== undefined) return yield* Effect.fail(new NodeFailed({ node: node.name, message: metricsError }))
    const output = exit.value
    const published = yield* Effect.uninterruptible(
      Effect.try({
        try: () => publish(store, node, req.key, req.executionId, output),
        catch: (e) => new NodeFailed({ node: node.name, message: `publishing the output failed: ${errorMessage(e)}`, cause: e }),
      }),
    )
    rmSync(workDir, { recursive: true, force: true })
    log(`published ${published.kind} ${published.hash} (${published.size} bytes)`)
    return published
  })
