// Where a model graph reads its weights from (src/models/graph-weights.ts): the HF hub cache
// layout (snapshot files are symlinks into ../../blobs), and a model the user cannot link or
// write: on another filesystem (a tmpfs), or root-owned on the cache's own filesystem
// (fs.protected_hardlinks), used by an unprivileged user. Nothing is linked or copied.
import { spawnSync } from "node:child_process"
import { Effect } from "effect"
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
// float32 graph against the float64 reference on a 2-layer tiny model: errors are ~1e-6
const tol = 1e-4

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

const treeOf = (dir: string): string[] => fs.readdirSync(dir, { recursive: true, encoding: "utf8" }).sort()

describe("weight placement", () => {
  it("hub cache: the graph reads the blobs in place from a graph directory elsewhere", async () => {
    const { flat, root, snap } = await hubCache()
    const before = treeOf(root)
    const graphDir = tempDir("pipe-hub-graph-")
    const { placement, session } = await Effect.runPromise(
      Effect.gen(function* () {
        const ckpt = yield* loadCheckpoint(snap)
        const placement = yield* placeWeights(ckpt, graphDir)
        const g = new Graph("forward")
        buildForwardGraph(g, ckpt, placement)
        return { placement, session: yield* createSession(yield* writeGraph(g, placement, "forward")) }
      }),
    )
    expect(placement.weightsRoot).toBe(fs.realpathSync(path.join(root, "blobs")))
    const out = await run(session, { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, 4], [1, 1, 1, 1]) })
    expectClose(rowsOf(out.logits, 0), referenceLogits(flat, seq), tol)
    expect(treeOf(root)).toEqual(before)
    expect(treeOf(graphDir)).toEqual(["forward.onnx"])
  })

  it("an unprivileged user reads a model on a tmpfs, and a root-owned model on the cache's filesystem", async (ctx) => {
    if (process.getuid?.() !== 0) ctx.skip("needs root: mounts a tmpfs and runs the graph as the user nobody")
    if (spawnSync("runuser", ["--version"]).status !== 0) ctx.skip("needs runuser (util-linux) to run as nobody")
    const mnt = tempDir("pipe-tmpfs-")
    const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", mnt])
    if (mounted.status !== 0) ctx.skip(`cannot mount a tmpfs here: ${String(mounted.stderr).trim()}`)
    try {
      const onTmpfs = path.join(mnt, "model")
      const sameFs = tempDir("pipe-root-model-")
      for (const dir of [onTmpfs, sameFs]) {
        await Effect.runPromise(writeRandomCheckpoint(dir, tinyLlama(), { seed: 4, std: 0.2 }))
        fs.chmodSync(dir, 0o755)
      }
      expect(fs.statSync(onTmpfs).dev).not.toBe(fs.statSync(sameFs).dev)
      const want = referenceLogits(sameFs, seq)
      for (const model of [onTmpfs, sameFs]) {
        const cache = tempDir("pipe-user-cache-")
        fs.chmodSync(cache, 0o777)
        const child = spawnSync("runuser", ["-u", "nobody", "--", process.execPath, "--import", "tsx", path.join(import.meta.dirname, "graph-weights-child.ts"), model, path.join(cache, "graph"), JSON.stringify(seq)], {
          cwd: path.join(import.meta.dirname, "..", ".."),
          encoding: "utf8",
        })
        expect(child.status, `as nobody, model ${model}: ${child.stderr}`).toBe(0)
        const V = tinyLlama().vocabSize
        const logits = JSON.parse(child.stdout) as number[]
        expectClose(seq.map((_, i) => logits.slice(i * V, (i + 1) * V)), want, tol)
      }
    } finally {
      spawnSync("umount", [mnt])
    }
  })
})
