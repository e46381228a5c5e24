// Executors run one node given its request. The cache directory is the only thing they share with
// the scheduler: a node's output is published there by whoever runs it.
//   inProcess     on the scheduler's thread (pure-TS stages that yield to the event loop)
//   childProcess  a fresh `node` process per node, pinned to its GPU with CUDA_VISIBLE_DEVICES; it
//                 imports the pipeline file, finds the node by recipe and publishes its output. A crash
//                 or OOM there fails that node only.
//   slurmExecutor an sbatch job per node on a cluster that shares the cache directory (slurm.ts)
import { Effect } from "effect"
import { fork } from "node:child_process"
import { closeSync, mkdirSync, openSync } from "node:fs"
import { dirname, join } from "node:path"
import { createRequire } from "node:module"
import { pathToFileURL } from "node:url"
import { CorruptArtifact, NodeFailed, type ErrorDescription } from "./errors.ts"
import type { NodeRequest, ProgressEvent, Published } from "./execute.ts"
import { executeNode } from "./execute.ts"
import type { PlanNode } from "./plan.ts"
import type { Store } from "./store.ts"

export interface Executor {
  /** Where it runs a node, as the progress display says it. */
  readonly label: string
  readonly run: (node: PlanNode, req: NodeRequest, onProgress: (e: ProgressEvent) => void) => Effect.Effect<Published, NodeFailed | CorruptArtifact>
}

export const inProcessExecutor = (store: Store): Executor => ({
  label: "in-process",
  run: (node, req, onProgress) => executeNode(store, node, req, onProgress),
})

/** What the scheduler sends a child: enough to rebuild the plan and find the node. */
export interface ChildJob {
  readonly pipelineFile: string
  readonly overrides: ReadonlyArray<string>
  readonly cacheDir: string
  readonly request: NodeRequest
}

/** What a child sends back. */
export type ChildMessage =
  | { readonly type: "progress"; readonly event: ProgressEvent }
  | { readonly type: "done"; readonly published: Published }
  | { readonly type: "failed"; readonly tag: "CorruptArtifact"; readonly message: string; readonly hash: string }
  | { readonly type: "failed"; readonly tag: "NodeFailed"; readonly message: string; readonly cause: ErrorDescription }

const childEntry = join(import.meta.dirname, "child.ts")
// An absolute loader URL, so children start whatever the current directory is.
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href

/** How long a child gets to exit after SIGTERM (interrupted run) before SIGKILL. */
const KILL_GRACE_MS = 5_000

export const childProcessExecutor = (pipelineFile: string, overrides: ReadonlyArray<string>, cacheDir: string): Executor => ({
  label: "child process",
  run: (node, request, onProgress) =>
    Effect.callback<Published, NodeFailed | CorruptArtifact>((resume) => {
      mkdirSync(dirname(request.logPath), { recursive: true })
      const logFd = openSync(request.logPath, "a")
      const env: NodeJS.ProcessEnv = { ...process.env }
      if (request.device.kind === "cuda") env.CUDA_VISIBLE_DEVICES = String(request.device.gpu)
      const child = fork(childEntry, [], { execArgv: ["--import", tsxLoader], env, stdio: ["ignore", logFd, logFd, "ipc"] })
      closeSync(logFd)
      let settled = false
      const settle = (e: Effect.Effect<Published, NodeFailed | CorruptArtifact>) => {
        if (!settled) {
          settled = true
          resume(e)
        }
      }
      child.on("message", (m: ChildMessage) => {
        if (m.type === "progress") onProgress(m.event)
        else if (m.type === "done") settle(Effect.succeed(m.published))
        else if (m.tag === "CorruptArtifact") settle(Effect.fail(new CorruptArtifact({ hash: m.hash, message: m.message })))
        else settle(Effect.fail(new NodeFailed({ node: node.name, message: m.message, cause: m.cause })))
      })
      child.on("error", (e) => settle(Effect.fail(new NodeFailed({ node: node.name, message: `child process: ${e.message}`, cause: e }))))
      child.on("exit", (code, signal) =>
        settle(
          Effect.fail(
            new NodeFailed({
              node: node.name,
              message: `child process exited with ${signal ? `signal ${signal}` : `code ${code}`} before publishing (crash or out of memory?)`,
            }),
          ),
        ),
      )
      const job: ChildJob = { pipelineFile, overrides, cacheDir, request }
      child.send(job)
      return Effect.callback<void>((done) => {
        settled = true
        if (child.exitCode !== null || child.signalCode !== null) return done(Effect.void)
        const timer = setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS)
        child.once("exit", () => {
          clearTimeout(timer)
          done(Effect.void)
        })
        child.kill("SIGTERM")
      })
    }),
})
