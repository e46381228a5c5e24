// Shared set-up for the forward/scoring/adapter tests: random tiny checkpoints, graph sessions
// over them, and comparisons with the float64 reference.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import type * as ort from "onnxruntime-node"
import { expect } from "vitest"
import { Graph, type Value } from "../../src/graph/index.ts"
import { crossEntropy } from "../../src/graph/losses.ts"
import { type Checkpoint, loadCheckpoint, type ModelConfig, readWeightFloat64 } from "../../src/models/checkpoint.ts"
import { allWeightRefs, buildForwardGraph, type ForwardGraphOptions, forwardNames, type WeightSource } from "../../src/models/forward.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { initLora, loraAdapter, loraName, loraShapes, type LoraValues } from "../../src/models/adapters.ts"
import { type InitOptions, type WeightDType, writeRandomCheckpoint } from "../../src/models/init.ts"
import { type LoraAdapter, type LoraConfig, loraConfigFor, type LoraTarget, loraTargets, mergeLora } from "../../src/models/peft.ts"
import { createSession, runSession, type Session } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { referenceLogits } from "../reference/reference.ts"

export const tempDir = (prefix: string) => fs.mkdtempSync(path.join(tmpdir(), prefix))

/**
 * A rank-2 LoRA adapter on q_proj, v_proj and down_proj of `ckpt` with non-zero B (PEFT starts B at
 * 0, which would not change the model), and the checkpoint mergeLora writes with it.
 */
export const nonZeroAdapter = (ckpt: Checkpoint): Promise<{ adapter: LoraAdapter; config: LoraConfig; merged: Checkpoint }> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const modules = ["q_proj", "v_proj", "down_proj"]
      const targets = yield* loraTargets(ckpt, modules)
      const config = yield* loraConfigFor(ckpt, { r: 2, loraAlpha: 4, targetModules: modules })
      const values = Object.fromEntries(Object.entries(initLora(targets, 2, 7)).map(([k, v]) => [k, v.data.map((x, i) => (k.endsWith(".B") ? Math.sin(i + 1) * 0.5 : x))]))
      const adapter = loraAdapter(config, targets, values)
      const mergedDir = tempDir("pipe-adapter-merged-")
      yield* mergeLora(ckpt.dir, adapter, mergedDir)
      return { adapter, config, merged: yield* loadCheckpoint(mergedDir) }
    }),
  )

/** A random checkpoint; std 0.2 so attention and MLPs do more than pass the residual through. */
export const randomCheckpoint = (config: ModelConfig, options: Partial<InitOptions> = {}): Promise<Checkpoint> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const dir = tempDir("pipe-forward-ckpt-")
      yield* writeRandomCheckpoint(dir, config, { seed: 11, std: 0.2, ...options })
      return yield* loadCheckpoint(dir)
    }),
  )

/** A session over buildForwardGraph, with the .onnx in a separate directory from the weights. */
export const forwardSession = (ckpt: Checkpoint, options: ForwardGraphOptions = {}): Promise<Session> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const placement = yield* placeWeights(ckpt, tempDir("pipe-forward-graph-"))
      const g = new Graph("forward")
      buildForwardGraph(g, ckpt, placement, options)
      const file = yield* writeGraph(g, placement, "forward")
      return yield* createSession(file)
    }),
  )

export const run = (s: Session, feeds: Record<string, ort.Tensor>) => Effect.runPromise(runSession(s, feeds))

export const ids = (rows: number[][]) => tensor("int64", [rows.length, rows[0].length], rows.flat())

/** Rows of `logits` [B, T, V] for batch row b, positions from..to-1. */
export const rowsOf = (t: ort.Tensor, b: number, from = 0, to?: number): Float32Array[] => {
  const [, T, V] = t.dims as number[]
  const data = t.data as Float32Array
  const out: Float32Array[] = []
  for (let i = from; i < (to ?? T); i++) out.push(data.slice((b * T + i) * V, (b * T + i + 1) * V))
  return out
}

/** Max absolute difference, checked against `tol`. */
export const expectClose = (got: ArrayLike<number>[], want: ArrayLike<number>[], tol: number) => {
  expect(got.length).toBe(want.length)
  let worst = 0
  got.forEach((g, i) => {
    expect(g.length).toBe(want[i].length)
    for (let j = 0; j < g.length; j++) worst = Math.max(worst, Math.abs(g[j] - want[i][j]))
  })
  expect(worst).toBeLessThan(tol)
  return worst
}

/** Cross-entropy of next-token prediction on a fixed batch, as a train-step loss. */
export const nextTokenLoss = (H: number) => (g: Graph, hidden: Value, lmHead: Value, targets: Value, mask: Value) =>
  crossEntropy(g, { hidden: g.reshape(hidden, [-1, H]), weight: lmHead }, g.reshape(targets, [-1]), g.reshape(mask, [-1])).mean

/** Two rows of next-token training data for a 64-token vocabulary, in batchSpec's layout. */
export const trainBatch = () => {
  const rows = [
    [1, 5, 9, 13, 17, 21, 25],
    [2, 6, 10, 14, 18, 22, 26],
  ]
  return {
    input_ids: ids(rows.map((r) => r.slice(0, -1))),
    attention_mask: tensor("int64", [2, 6], Array(12).fill(1)),
    targets: ids(rows.map((r) => r.slice(1))),
    loss_mask: tensor("float32", [2, 6], Array(12).fill(1)),
  }
}
export const batchSpec = {
  input_ids: { dtype: "int64", shape: ["batch", "seq"] },
  attention_mask: { dtype: "int64", shape: ["batch", "seq"] },
  targets: { dtype: "int64", shape: ["batch", "seq"] },
  loss_mask: { dtype: "float32", shape: ["batch", "seq"] },
} as const

/**
 * Logits of a cached forward session (buildForwardGraph with cache) run incrementally: the prompt
 * in one prefill, then each of `next` alone with the K/V of everything before it. Returns one
 * logits row per position of prompt + next (batch of one).
 */
export const incrementalLogits = async (s: Session, config: ModelConfig, prompt: number[], next: number[]): Promise<Float32Array[]> => {
  const empty = tensor("float32", [1, config.numKvHeads, 0, config.headDim], [])
  let past: Record<string, ort.Tensor> = {}
  for (let l = 0; l < config.numLayers; l++) past[forwardNames.pastKey(l)] = past[forwardNames.pastValue(l)] = empty
  const rows: Float32Array[] = []
  let seen = 0
  for (const chunk of [prompt, ...next.map((t) => [t])]) {
    seen += chunk.length
    const out = await run(s, { [forwardNames.ids]: ids([chunk]), [forwardNames.mask]: tensor("int64", [1, seen], Array(seen).fill(1)), ...past })
    rows.push(...rowsOf(out[forwardNames.logits], 0))
    past = {}
    for (let l = 0; l < config.numLayers; l++) {
      past[forwardNames.pastKey(l)] = out[forwardNames.presentKey(l)]
      past[forwardNames.pastValue(l)] = out[forwardNames.presentValue(l)]
    }
  }
  return rows
}

/**
 * The forward of `seq` alone, and of its first `short` tokens left-padded in the same batch, equal
 * the float64 reference within `tol`; returns the reference logits of `seq`.
 */
export const expectPaddedForwardMatchesReference = async (ckpt: Checkpoint, seq: number[], short: number, tol: number): Promise<Float64Array[]> => {
  const want = referenceLogits(ckpt.dir, seq)
  const pad = seq.length - short
  const out = await run(await forwardSession(ckpt), {
    [forwardNames.ids]: ids([seq, [...Array(pad).fill(0), ...seq.slice(0, short)]]),
    [forwardNames.mask]: tensor("int64", [2, seq.length], [...Array(seq.length).fill(1), ...Array(pad).fill(0), ...Array(short).fill(1)]),
  })
  expectClose(rowsOf(out[forwardNames.logits], 0), want, tol)
  expectClose(rowsOf(out[forwardNames.logits], 1, pad), want.slice(0, short), tol)
  return want
}

/** The forward graph of a random checkpoint of `config` on `seq` against the float64 reference. */
export const expectForwardMatchesReference = async (config: ModelConfig, dtype: WeightDType, seq: number[], tol: number) =>
  expectPaddedForwardMatchesReference(await randomCheckpoint(config, { dtype }), seq, seq.length, tol)

/** LoRA matrices as graph inputs (fed per run), for tests that swap adapters on one session. */
export const loraInputs = (g: Graph, targets: ReadonlyArray<LoraTarget>, r: number): Map<string, LoraValues> =>
  new Map(
    targets.map((t) => {
      const s = loraShapes(t, r)
      return [t.module, { a: g.input(loraName(t.module, "A"), "float32", s.A), b: g.input(loraName(t.module, "B"), "float32", s.B) }]
    }),
  )

/** The checkpoint's weights as float32 constants (gradCheck serializes its graphs without weight files). */
export const constantWeights = async (ckpt: Checkpoint): Promise<(g: Graph) => WeightSource> => {
  const loaded = new Map<string, { shape: number[]; values: Float64Array }>()
  for (const ref of allWeightRefs(ckpt.weights)) {
    const { shape, values } = await Effect.runPromise(readWeightFloat64(ref))
    loaded.set(ref.name, { shape: [...shape], values })
  }
  return (g) => (ref) => {
    const w = loaded.get(ref.name)!
    return g.constant("float32", w.shape, Array.from(w.values))
  }
}
