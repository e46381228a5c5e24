// Placement of the .onnx relative to the weight files (src/models/graph-weights.ts): the HF hub
// cache layout (snapshot files are symlinks into ../../blobs), a read-only checkpoint (weights
// hard-linked into the graph directory), and the clear error across filesystems.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { buildForwardGraph, forwardNames } from "../../src/models/forward.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { referenceLogits } from "../reference/reference.ts"
import { expectClose, ids, rowsOf, run, tempDir } from "./forward-helpers.ts"

const seq = [1, 2, 3, 4]

/** A hub-cache model: models--org--tiny/{blobs/<hash>, snapshots/rev/<file> -> ../../blobs/<hash>, refs/main}. */
const hubCache = async () => {
  const flat = tempDir("pipe-hub-src-")
  await Effect.runPromise(writeRandomCheckpoint(flat, tinyLlama(), { seed: 4, std: 0.2 }))
  const root = path.join(tempDir("pipe-hub-"), "models--org--tiny")
  const snap = path.join(root, "snapshots", "rev1")
  fs.mkdirSync(path.join(root, "blobs"), { recursive: true })
  fs.mkdirSync(snap, { recursive: true })
  fs.mkdirSync(path.join(root, "refs"))
  fs.writeFileSync(path.join(root, "refs", "main"), "rev1")
  fs.readdirSync(flat).forEach((f, i) => {
    fs.copyFileSync(path.join(flat, f), path.join(root, "blobs", `blob${i}`))
    fs.symlinkSync(path.join("..", "..", "blobs", `blob${i}`), path.join(snap, f))
  })
  return { flat, root, snap }
}

const logitsVia = (snapDir: string, graphDir: string) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const ckpt = yield* loadCheckpoint(snapDir)
      const placement = yield* placeWeights(ckpt, graphDir)
      const g = new Graph("forward")
      buildForwardGraph(g, ckpt, placement)
      const session = yield* createSession(yield* writeGraph(g, placement, "forward"))
      return { placement, session }
    }),
  ).then(async ({ placement, session }) => ({
    placement,
    logits: rowsOf((await run(session, { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, 4], [1, 1, 1, 1]) })).logits, 0),
  }))

describe("weight placement", () => {
  it("hub cache: a graph in the model root reads the blobs directly; elsewhere they are hard-linked", async () => {
    const { flat, root, snap } = await hubCache()
    const want = referenceLogits(flat, seq)
    const inRoot = await logitsVia(snap, root)
    expect(fs.existsSync(path.join(root, "weights"))).toBe(false)
    expectClose(inRoot.logits, want, 1e-4)
    const other = tempDir("pipe-hub-graph-")
    const linked = await logitsVia(snap, other)
    const link = path.join(fs.realpathSync(other), "weights", "0-blob" + fs.readdirSync(flat).indexOf("model.safetensors"))
    expect(fs.statSync(link).ino).toBe(fs.statSync(path.join(root, "blobs", path.basename(link).slice(2))).ino)
    expectClose(linked.logits, want, 1e-4)
    // placing again reuses the link
    await logitsVia(snap, other)
  })

  it("across filesystems: a clear error unless a copy is allowed", async () => {
    const shm = "/dev/shm"
    const ckptDir = tempDir("pipe-xfs-")
    if (!fs.existsSync(shm) || fs.statSync(shm).dev === fs.statSync(ckptDir).dev) return // needs a second filesystem
    await Effect.runPromise(writeRandomCheckpoint(ckptDir, tinyLlama(), { seed: 4 }))
    const ckpt = await Effect.runPromise(loadCheckpoint(ckptDir))
    const graphDir = fs.mkdtempSync(path.join(shm, "pipe-graph-"))
    try {
      const exit = await Effect.runPromiseExit(placeWeights(ckpt, graphDir))
      expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/cannot hard-link the weights file .*model\.safetensors/)
      const copied = await Effect.runPromise(placeWeights(ckpt, graphDir, { allowCopy: true }))
      expect(fs.statSync(copied.fileFor(ckpt.tensorFiles[0])).size).toBe(fs.statSync(ckpt.tensorFiles[0]).size)
    } finally {
      fs.rmSync(graphDir, { recursive: true, force: true })
    }
  })
})
