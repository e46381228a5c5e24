// The training/sampling forward pass of stages/tiny-chat against the independent float64
// reference (tests/reference/reference.ts) on a random checkpoint, and the sampler's greedy choice
// against the reference's argmax.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { Graph, serialize } from "../../src/graph/index.ts"
import { loadCheckpoint, readWeight } from "../../src/models/checkpoint.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { toFloat32 } from "../../src/models/safetensors.ts"
import { createSession, runSession } from "../../src/runtime/session.ts"
import { llamaHidden, llamaParamShapes, lmHeadOf } from "../../stages/tiny-chat/llama-graph.ts"
import { makeSampler } from "../../stages/tiny-chat/sampler.ts"
import { referenceLogits } from "../reference/reference.ts"

const ids = [1, 7, 3, 60, 12, 5, 9]

const setup = (tied: boolean) =>
  Effect.gen(function* () {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-graph-"))
    // std 0.2 so that attention and the MLP do more than pass the residual through
    yield* writeRandomCheckpoint(dir, tinyLlama({ vocabSize: 64, hiddenSize: 16, numHeads: 2, numKvHeads: 2, intermediateSize: 24, tiedEmbeddings: tied }), { seed: 3, std: 0.2 })
    const ckpt = yield* loadCheckpoint(dir)
    const refs = new Map<string, Parameters<typeof readWeight>[0]>()
    const w = ckpt.weights
    refs.set(w.embedTokens.name, w.embedTokens)
    refs.set(w.lmHead.name, w.lmHead)
    refs.set(w.finalNorm.weight.name, w.finalNorm.weight)
    for (const l of w.layers) {
      refs.set(l.inputNorm.weight.name, l.inputNorm.weight)
      refs.set(l.postAttentionNorm.weight.name, l.postAttentionNorm.weight)
      if (l.attention.layout === "separate") for (const x of [l.attention.q, l.attention.k, l.attention.v, l.attention.o]) refs.set(x.weight.name, x.weight)
      if (l.mlp.kind === "gated") for (const x of [l.mlp.gate, l.mlp.up, l.mlp.down]) refs.set(x.weight.name, x.weight)
    }
    const read = (name: string) => Effect.runSync(readWeight(refs.get(name)!))
    return { dir, config: ckpt.config, read }
  })

describe("stages/tiny-chat llama graph", () => {
  for (const tied of [true, false])
    it(`matches the float64 reference logits (tied embeddings: ${tied})`, async () => {
      const { dir, config, read } = await Effect.runPromise(setup(tied))
      const g = new Graph()
      const p: Record<string, ReturnType<Graph["input"]>> = {}
      for (const [name, shape] of Object.entries(llamaParamShapes(config))) p[name] = g.initializer(name, "float32", shape, { kind: "inline", data: toFloat32(read(name)) })
      const x = g.input("ids", "int64", ["B", "T"])
      g.outputAs("logits", g.matMul(llamaHidden(g, config, p, x), g.transpose(lmHeadOf(config, p), [1, 0])))
      const session = await Effect.runPromise(createSession(serialize(g)))
      const out = await Effect.runPromise(runSession(session, { ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]) }))
      const got = out.logits.data as Float32Array
      const want = referenceLogits(dir, ids)
      // float32 graph vs float64 reference on O(1) logits: 1e-4 absolute leaves room for float32
      // rounding through one attention layer pair, and is far below any real mistake (RoPE pairing,
      // mask, norm placement change logits by >1e-2 at this weight scale).
      let maxErr = 0
      want.forEach((row, t) => row.forEach((v, k) => (maxErr = Math.max(maxErr, Math.abs(v - got[t * config.vocabSize + k])))))
      expect(maxErr).toBeLessThan(1e-4)
    })

  it("the sampler's greedy tokens follow the reference's argmax", async () => {
    const { dir, config, read } = await Effect.runPromise(setup(true))
    const sampler = await Effect.runPromise(makeSampler({ ...config, eosTokenIds: [] }, read))
    // two prompts of different lengths in one batch: right padding must not change either
    const prompts = [ids.slice(0, 3), ids]
    const [a, b] = await Effect.runPromise(sampler.generate(prompts, { temperature: 0, maxNewTokens: 3, seed: 0, batchSize: 2 }))
    for (const [prompt, out] of [[prompts[0], a], [prompts[1], b]] as const) {
      const seq = [...prompt]
      for (const tok of out) {
        const logits = referenceLogits(dir, seq).at(-1)!
        expect(tok).toBe(logits.indexOf(Math.max(...logits)))
        seq.push(tok)
      }
      expect(out).toHaveLength(3)
    }
  })
})
