// The scheduler: runs a plan's nodes on Effect fibers as their inputs appear and their resources
// free up, highest "longest remaining path" first; reuses cached results; claims keys so concurrent
// runs on one cache never compute the same key at once; isolates failures.
import { Cause, Effect, Exit, Fiber, Option, Queue } from "effect"
import { hostname } from "node:os"
import { join } from "node:path"
import { CorruptArtifact, NodeFailed, describeError, errorMessage, storageError, type ErrorDescription } from "./errors.ts"
import type { NodeRequest, Published } from "./execute.ts"
import type { Executor } from "./executor.ts"
import { cacheKey, gatheredInputs, inputHash, type Plan, type PlanNode } from "./plan.ts"
import type { Reporter } from "./progress.ts"
import type { Device } from "./stage.ts"
import { HEARTBEAT_MS, type Store } from "./store.ts"

export type NodeStatus = "cached" | "succeeded" | "failed" | "skipped" | "interrupted"

export interface NodeOutcome {
  readonly name: string
  readonly status: NodeStatus
  readonly key?: string
  readonly output?: string
  readonly error?: string
  /** What the stage failed with: its error's tag, message and fields (e.g. `{ _tag: "RunError", model, message }`). */
  readonly cause?: ErrorDescription
  readonly logPath?: string
}

export interface RunSummary {
  readonly runId: string
  readonly status: "succeeded" | "failed" | "interrupted"
  readonly counts: Readonly<Record<NodeStatus, number>>
  readonly nodes: ReadonlyArray<NodeOutcome>
  /**
   * Why the run stopped although no node asked it to: a record that could not be written to the cache
   * database (disk full, read-only). Nodes keep their own outcomes and errors.
   */
  readonly error?: string
}

export interface SchedulerOptions {
  readonly store: Store
  readonly plan: Plan
  readonly runId: string
  readonly runDir: string
  /** CPU job slots. */
  readonly jobs: number
  /** GPU ids to schedule on, and how many nodes may share one GPU. */
  readonly gpus: ReadonlyArray<number>
  readonly slotsPerGpu?: number
  /** Memory budget (MiB) for the stages' `memoryMB` hints. */
  readonly memoryMB: number
  readonly failFast: boolean
  /** Call names or stage names whose nodes are recomputed even when cached. */
  readonly rerun: ReadonlyArray<string>
  readonly executors: { readonly main: Executor; readonly process: Executor }
  readonly reporter: Reporter
  /** Aborting stops the run cleanly: running nodes are interrupted, nothing partial is published. */
  readonly signal?: AbortSignal
}

type State =
  | { readonly tag: "waiting" }
  | { readonly tag: "blocked"; readonly key: string }
  | { readonly tag: "ready"; readonly key: string }
  | { readonly tag: "running"; readonly key: string; readonly fiber: Fiber.Fiber<void>; readonly executionId: number; readonly logPath: string; readonly release: () => void; readonly startedAt: number }
  | { readonly tag: "done"; readonly status: "cached" | "succeeded"; readonly key: string; readonly output: string }
  | { readonly tag: "failed"; readonly status: "failed" | "skipped" | "interrupted"; readonly error: string; readonly cause?: ErrorDescription; readonly key?: string; readonly logPath?: string }

type Event =
  | { readonly type: "exit"; readonly index: number; readonly exit: Exit.Exit<Published, NodeFailed | CorruptArtifact> }
  | { readonly type: "stop" }

/** A binary max-heap of node indices by priority. */
class Heap {
  private readonly items: Array<number> = []
  constructor(private readonly prio: Float64Array) {}
  get size() {
    return this.items.length
  }
  push(i: number) {
    const a = this.items
    a.push(i)
    for (let c = a.length - 1; c > 0; ) {
      const p = (c - 1) >> 1
      if (this.prio[a[p]] >= this.prio[a[c]]) break
      ;[a[p], a[c]] = [a[c], a[p]]
      c = p
    }
  }
  pop(): number | undefined {
    const a = this.items
    const top = a[0]
    const last = a.pop()
    if (a.length > 0 && last !== undefined) {
      a[0] = last
      for (let p = 0; ; ) {
        const l = 2 * p + 1
        const r = l + 1
        let m = p
        if (l < a.length && this.prio[a[l]] > this.prio[a[m]]) m = l
        if (r < a.length && this.prio[a[r]] > this.prio[a[m]]) m = r
        if (m === p) break
        ;[a[p], a[m]] = [a[m], a[p]]
        p = m
      }
    }
    return top
  }
}

const safeFileName = (node: PlanNode) => `${node.name.replace(/[^A-Za-z0-9._=,+-]+/g, "_").slice(0, 100)}.${node.recipe.slice(0, 8)}.log`

/** How many times one artifact may be found corrupt and recomputed in a run before giving up. */
const MAX_RECOMPUTES = 2

export const runPlan = (o: SchedulerOptions): Effect.Effect<RunSummary> =>
  Effect.gen(function* () {
    const { store, plan, reporter } = o
    const nodes = plan.nodes
    const owner = `${hostname()}:${process.pid}:${o.runId}`
    const events = yield* Queue.unbounded<Event>()
    const onAbort = () => Queue.offerUnsafe(events, { type: "stop" })
    o.signal?.addEventListener("abort", onAbort)
    // A missed heartbeat stops nothing: other runs take a claim over only after many missed ones (15 s
    // from another host, 10 minutes on this one), and a database that cannot be written fails this run's
    // next real record anyway.
    const heartbeat = yield* Effect.forkChild(
      Effect.forever(Effect.andThen(Effect.sleep(HEARTBEAT_MS), Effect.ignore(Effect.try(() => store.heartbeat(owner))))),
    )

    // Priority: estimated duration of the longest path from a node to the end of the plan.
    const durations = store.stageDurations()
    const prio = new Float64Array(nodes.length)
    for (let i = nodes.length - 1; i >= 0; i--) {
      let down = 0
      for (const d of nodes[i].dependents) down = Math.max(down, prio[d])
      prio[i] = (durations.get(nodes[i].stage.spec.name) ?? 1000) + down
    }

    const state: Array<State> = nodes.map(() => ({ tag: "waiting" }))
    const missing = Int32Array.from(nodes, (n) => n.deps.length)
    const recomputes = new Map<string, number>()
    const rerun = new Set(o.rerun)
    const forced = (n: PlanNode) => rerun.has(n.label) || rerun.has(n.stage.spec.name)
    const toResolve: Array<number> = nodes.flatMap((n) => (n.deps.length === 0 ? [n.index] : []))
    const ready = new Heap(prio)
    const blocked = new Set<number>()
    const announced = new Set<number>()
    const running = new Set<number>()
    let freeJobs = o.jobs
    let freeMemory = o.memoryMB
    const gpuFree = new Map(o.gpus.map((g) => [g, o.slotsPerGpu ?? 1]))
    let stopping: "failed" | "interrupted" | undefined
    // The first write to the cache database that failed: the run stops (records of the nodes still
    // running are attempted, a run left `running` is marked interrupted by the next `pipe` command).
    let recordError: string | undefined
    const record = <T>(f: () => T): T | undefined => {
      try {
        return f()
      } catch (e) {
        recordError ??= storageError("using", store.dbPath, e).message
        return undefined
      }
    }
    const warn = (text: string) => reporter.message(`warning: ${text}`)
    reporter.start(nodes.length)

    const outputOf = (i: number) => {
      const s = state[i]
      return s.tag === "done" ? s.output : ""
    }
    const inputHashes = (n: PlanNode): Array<readonly [string, string]> => n.inputs.map(([name, input]) => [name, inputHash(input, outputOf)] as const)

    const markDone = (i: number, status: "cached" | "succeeded", key: string, output: string) => {
      state[i] = { tag: "done", status, key, output }
      for (const d of nodes[i].dependents) if (state[d].tag === "waiting" && --missing[d] === 0) toResolve.push(d)
    }
    const skipDownstream = (i: number, why: string) => {
      const stack = [...nodes[i].dependents]
      while (stack.length > 0) {
        const d = stack.pop()!
        if (state[d].tag !== "waiting") continue
        state[d] = { tag: "failed", status: "skipped", error: why }
        reporter.finished(nodes[d].name, "skipped", why)
        for (const next of nodes[d].dependents) stack.push(next)
      }
    }

    // A node whose inputs all exist: cached, or ready to run once its resources are free.
    const resolve = (i: number) => {
      const n = nodes[i]
      const key = cacheKey(n, inputHashes(n))
      const hit = forced(n) ? undefined : record(() => store.lookup(key, (m) => warn(`${n.name}: ${m}`)))
      if (hit) {
        reporter.cached(n.name)
        return markDone(i, "cached", key, hit.hash)
      }
      state[i] = { tag: "ready", key }
      ready.push(i)
    }

    // Claims a ready node's key just before it starts, so another run can take the nodes this one has
    // not reached yet. Another run's live claim blocks the node until that claim is released or stale.
    const claim = (i: number, key: string): "claimed" | "cached" | "blocked" | "unrecorded" => {
      const n = nodes[i]
      const c = record(() => store.claim(key, owner))
      if (c === undefined) return "unrecorded"
      if (!c.ok) {
        if (!announced.has(i)) reporter.waiting(n.name, c.owner)
        announced.add(i)
        blocked.add(i)
        state[i] = { tag: "blocked", key }
        return "blocked"
      }
      // Another run may have published between our lookup and our claim.
      const hit = forced(n) ? undefined : record(() => store.lookup(key, (m) => warn(`${n.name}: ${m}`)))
      if (hit === undefined) return recordError === undefined ? "claimed" : "unrecorded"
      record(() => store.release(key, owner))
      reporter.cached(n.name)
      markDone(i, "cached", key, hit.hash)
      return "cached"
    }

    const isolation = (n: PlanNode) => n.stage.spec.resources?.isolate ?? ((n.stage.spec.resources?.gpu ?? 0) > 0 ? "process" : "main")

    // Takes the resources a node needs, or returns undefined when they are not free now.
    const acquire = (n: PlanNode): { device: Device; release: () => void } | undefined => {
      const r = n.stage.spec.resources ?? {}
      const mem = r.memoryMB ?? 0
      if (mem > freeMemory && running.size > 0) return undefined
      if ((r.gpu ?? 0) > 0 && gpuFree.size > 0) {
        const gpu = [...gpuFree].find(([, free]) => free > 0)?.[0]
        if (gpu === undefined) return undefined
        gpuFree.set(gpu, gpuFree.get(gpu)! - 1)
        freeMemory -= mem
        return {
          device: { kind: "cuda", deviceId: 0, gpu },
          release: () => {
            gpuFree.set(gpu, gpuFree.get(gpu)! + 1)
            freeMemory += mem
          },
        }
      }
      const slots = Math.min(Math.max(1, r.cpu ?? 1), o.jobs)
      if (slots > freeJobs) return undefined
      freeJobs -= slots
      freeMemory -= mem
      return {
        device: { kind: "cpu" },
        release: () => {
          freeJobs += slots
          freeMemory += mem
        },
      }
    }

    const start = (i: number, key: string, device: Device, release: () => void) =>
      Effect.gen(function* () {
        const n = nodes[i]
        const logPath = join(o.runDir, "logs", safeFileName(n))
        const hashes = inputHashes(n)
        const executionId = record(() => store.startExecution({
          run_id: o.runId,
          key,
          recipe: n.recipe,
          node: n.name,
          stage: n.stage.spec.name,
          version: n.stage.spec.version,
          source_hash: n.sourceHash ?? null,
          params: JSON.stringify(n.keyParams),
          unkeyed_params: JSON.stringify(n.unkeyedParams),
          inputs: JSON.stringify(Object.fromEntries(hashes)),
          device: JSON.stringify(device),
          log_path: logPath,
        }))
        if (executionId === undefined) {
          // Not started: the run stops, this node is left to the next run.
          record(() => store.release(key, owner))
          release()
          state[i] = { tag: "failed", status: "skipped", error: `not started: ${recordError}`, key }
          return
        }
        const req: NodeRequest = {
          runId: o.runId,
          executionId,
          recipe: n.recipe,
          key,
          inputHashes: hashes,
          gathered: gatheredInputs(n, outputOf),
          device,
          logPath,
          metricsPath: join(o.runDir, "metrics.jsonl"),
        }
        const executor = isolation(n) === "process" ? o.executors.process : o.executors.main
        reporter.started(n.name, `${executor.label}, ${device.kind === "cuda" ? `gpu ${device.gpu}` : "cpu"}`)
        const fiber = yield* Effect.forkChild(
          Effect.flatMap(Effect.exit(executor.run(n, req, (e) => (e.warning !== undefined ? warn(`${n.name}: ${e.warning}`) : reporter.progress(n.name, e)))), (exit) =>
            Queue.offer(events, { type: "exit", index: i, exit }),
          ).pipe(Effect.asVoid),
        )
        running.add(i)
        state[i] = { tag: "running", key, fiber, executionId, logPath, release, startedAt: Date.now() }
      })

    const stopAll = (status: "failed" | "interrupted") =>
      Effect.gen(function* () {
        stopping = status
        const fibers = [...running].map((i) => {
          const s = state[i]
          return s.tag === "running" ? s.fiber : undefined
        })
        yield* Fiber.interruptAll(fibers.filter((f) => f !== undefined))
        for (const i of [...running]) {
          const s = state[i]
          if (s.tag !== "running") continue
          record(() => store.finishExecution(s.executionId, "interrupted", null, "interrupted"))
          record(() => store.release(s.key, owner))
          s.release()
          state[i] = { tag: "failed", status: "interrupted", error: "interrupted", key: s.key, logPath: s.logPath }
          reporter.finished(nodes[i].name, "interrupted", "")
          running.delete(i)
        }
        const why = status === "interrupted" ? "run interrupted" : recordError !== undefined ? `not started: ${recordError}` : "not started (--fail-fast)"
        for (let i = 0; i < nodes.length; i++) {
          const s = state[i]
          if (s.tag === "waiting" || s.tag === "ready" || s.tag === "blocked") {
            if (s.tag !== "waiting") record(() => store.release(s.key, owner))
            state[i] = { tag: "failed", status: "skipped", error: why }
          }
        }
      })

    const handleExit = (i: number, exit: Exit.Exit<Published, NodeFailed | CorruptArtifact>) =>
      Effect.gen(function* () {
        const s = state[i]
        if (s.tag !== "running") return
        running.delete(i)
        s.release()
        record(() => store.release(s.key, owner))
        const n = nodes[i]
        const seconds = ((Date.now() - s.startedAt) / 1000).toFixed(1)
        if (Exit.isSuccess(exit)) {
          record(() => store.finishExecution(s.executionId, "succeeded", exit.value.hash, null))
          reporter.finished(n.name, "succeeded", `${seconds}s`)
          return markDone(i, "succeeded", s.key, exit.value.hash)
        }
        const err = Cause.findErrorOption(exit.cause)
        const error = Option.isSome(err) ? err.value : new NodeFailed({ node: n.name, message: errorMessage(Cause.squash(exit.cause)) })
        if (error._tag === "CorruptArtifact") {
          // An input's payload was bad (and has been dropped): recompute its producers, then this node.
          record(() => store.finishExecution(s.executionId, "failed", null, error.message))
          const count = (recomputes.get(error.hash) ?? 0) + 1
          recomputes.set(error.hash, count)
          const producers = n.deps.filter((d) => {
            const ds = state[d]
            return ds.tag === "done" && ds.output === error.hash
          })
          if (count <= MAX_RECOMPUTES && producers.length > 0) {
            reporter.message(`${error.message} (needed by ${n.name})`)
            state[i] = { tag: "waiting" }
            missing[i] = 0
            for (const p of producers) {
              state[p] = { tag: "waiting" }
              for (const d of nodes[p].dependents) if (state[d].tag === "waiting") missing[d]++
              toResolve.push(p)
            }
            return
          }
        }
        record(() => store.finishExecution(s.executionId, "failed", null, error.message))
        const cause = error._tag === "NodeFailed" && error.cause !== undefined ? { cause: describeError(error.cause) } : {}
        state[i] = { tag: "failed", status: "failed", error: error.message, ...cause, key: s.key, logPath: s.logPath }
        reporter.finished(n.name, "failed", `${seconds}s: ${error.message.split("\n")[0]} (log: ${s.logPath})`)
        skipDownstream(i, `upstream ${n.name} failed`)
        if (o.failFast) yield* stopAll("failed")
      })

    const dispatch = Effect.gen(function* () {
      const deferred: Array<number> = []
      // Stop when no slot of any kind is free, so thousands of ready nodes are not rescanned per event.
      const anySlotFree = () => freeJobs > 0 || [...gpuFree.values()].some((free) => free > 0)
      while (recordError === undefined && ready.size > 0 && anySlotFree()) {
        const i = ready.pop()!
        const s = state[i]
        if (s.tag !== "ready") continue
        const got = acquire(nodes[i])
        if (got === undefined) {
          deferred.push(i)
          continue
        }
        if (claim(i, s.key) === "claimed") yield* start(i, s.key, got.device, got.release)
        else got.release()
      }
      for (const i of deferred) ready.push(i)
    })

    const loop = Effect.gen(function* () {
      for (;;) {
        while (stopping === undefined && recordError === undefined && toResolve.length > 0) {
          while (toResolve.length > 0) resolve(toResolve.pop()!)
          yield* dispatch // a node found cached after claiming may make dependents resolvable
        }
        if (recordError !== undefined && stopping === undefined) {
          reporter.message(`stopping: ${recordError}`)
          yield* stopAll("failed")
        }
        if (running.size === 0 && (stopping !== undefined || blocked.size === 0)) break
        // Blocked nodes are retried every half second: the other run publishes or its claim goes stale.
        const event = blocked.size > 0 ? yield* Effect.timeoutOption(Queue.take(events), 500) : Option.some(yield* Queue.take(events))
        if (Option.isSome(event)) {
          if (event.value.type === "stop") {
            if (stopping !== "interrupted") yield* stopAll("interrupted")
          } else yield* handleExit(event.value.index, event.value.exit)
        }
        for (const i of blocked) toResolve.push(i)
        blocked.clear()
        if (stopping === undefined && toResolve.length === 0) yield* dispatch // resources freed by the exit
      }
    })
    yield* loop
    yield* Fiber.interrupt(heartbeat)
    o.signal?.removeEventListener("abort", onAbort)
    record(() => store.releaseAll(owner))

    const outcomes: Array<NodeOutcome> = nodes.map((n, i) => {
      const s = state[i]
      if (s.tag === "done") return { name: n.name, status: s.status, key: s.key, output: s.output }
      if (s.tag === "failed") return { name: n.name, status: s.status, key: s.key, error: s.error, ...(s.cause ? { cause: s.cause } : {}), logPath: s.logPath }
      return { name: n.name, status: "skipped", error: "not reached" }
    })
    const counts = { cached: 0, succeeded: 0, failed: 0, skipped: 0, interrupted: 0 }
    for (const x of outcomes) counts[x.status]++
    const status = stopping === "interrupted" ? "interrupted" : counts.failed > 0 || counts.skipped > 0 || recordError !== undefined ? "failed" : "succeeded"
    return { runId: o.runId, status, counts, nodes: outcomes, ...(recordError !== undefined ? { error: recordError } : {}) }
  })
