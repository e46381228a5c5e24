// Entry of a child process that runs one node (see executor.ts): rebuild the plan from the pipeline
// file, find the node by recipe, execute it against the shared cache directory, report, exit.
import { Cause, Effect, Exit } from "effect"
import { CorruptArtifact, NodeFailed, PipelineError, describeError, errorMessage } from "./errors.ts"
import { executeNode, type ProgressEvent } from "./execute.ts"
import type { ChildJob, ChildMessage } from "./executor.ts"
import { loadPipeline, plan } from "./plan.ts"
import { Store } from "./store.ts"

// The scheduler died (SIGKILL, crash): stop rather than run on unsupervised. Nothing half-written is
// published, and the next run resumes from this node's checkpoint directory.
process.on("disconnect", () => process.exit(1))
// Ctrl-C in a terminal reaches the whole process group: the scheduler decides, and stops us with SIGTERM.
process.on("SIGINT", () => {})

const send = (m: ChildMessage) => new Promise<void>((resolve) => process.send!(m, () => resolve()))

process.once("message", async (job: ChildJob) => {
  let message: ChildMessage
  let heldTimer: ReturnType<typeof setTimeout> | undefined
  try {
    const store = new Store(job.cacheDir)
    const pipeline = await loadPipeline(job.pipelineFile)
    const p = plan(pipeline, job.pipelineFile, {
      overrides: job.overrides,
      hashExternal: (path, kind) => (kind === "file" ? store.hashExternalFile(path) : store.hashExternalDir(path)),
    })
    const node = p.nodes.find((n) => n.recipe === job.request.recipe)
    if (node === undefined) throw new PipelineError({ file: job.pipelineFile, message: `node ${job.request.recipe.slice(0, 12)} is not in ${job.pipelineFile} any more` })
    // Progress crosses IPC at most every 50 ms (a training loop may report thousands of steps a second).
    // The latest event held back is sent when the interval is over: a node that pauses after a burst
    // (waiting, validating) shows where it is, not where it was 50 ms before.
    let lastSent = 0
    let held: ProgressEvent | undefined
    const sendProgress = (event: ProgressEvent) => {
      lastSent = Date.now()
      held = undefined
      process.send!({ type: "progress", event } satisfies ChildMessage)
    }
    const onProgress = (event: ProgressEvent) => {
      const wait = 50 - (Date.now() - lastSent)
      if (event.total !== undefined || event.warning !== undefined || wait <= 0) return sendProgress(event)
      if (held === undefined) heldTimer = setTimeout(() => held !== undefined && sendProgress(held), wait)
      held = event
    }
    const exit = await Effect.runPromiseExit(executeNode(store, node, job.request, onProgress))
    clearTimeout(heldTimer) // the outcome follows; progress held back is moot
    store.close()
    if (Exit.isSuccess(exit)) message = { type: "done", published: exit.value }
    else {
      // executeNode fails with NodeFailed or CorruptArtifact only; anything else (a defect of its own) is reported as NodeFailed.
      const err = Cause.findErrorOption(exit.cause)
      const e = err._tag === "Some" ? err.value : Cause.squash(exit.cause)
      message =
        e instanceof CorruptArtifact ? { type: "failed", tag: "CorruptArtifact", message: e.message, hash: e.hash }
        : e instanceof NodeFailed ? { type: "failed", tag: "NodeFailed", message: e.message, cause: describeError(e.cause) }
        : { type: "failed", tag: "NodeFailed", message: `defect: ${errorMessage(e)}`, cause: describeError(e) }
    }
  } catch (e) {
    message = { type: "failed", tag: "NodeFailed", message: errorMessage(e), cause: describeError(e) }
  }
  await send(message)
  process.exit(0)
})
