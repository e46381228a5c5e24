// Batches of scored target sequences, shared by the diffuse-train step and the loss evaluator.
// A row is one (context, target) pair: the context's tokens then the target's (end-of-turn token
// last), fed without its last token, left-padded; the positions before each target token predict it.
// The graph sums each row's target log-probabilities with graph/losses.ts sequenceLogLikelihood
// (segment = the row within the batch) and weights them with weightedSequenceNLL.
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { StageError } from "../../src/engine/index.ts"
import { type BatchSpec, type Graph, sequenceLogLikelihood, type Value } from "../../src/graph/index.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { contextLength } from "../../src/models/rope.ts"
import type { VariantForward } from "../../src/models/variant.ts"
import { lmHeadAt } from "../baking/distill.ts"
import type { DiffuseContext } from "./contexts.ts"

export interface TargetRow {
  readonly context: number
  readonly target: number
  readonly contextIds: ReadonlyArray<number>
  readonly targetIds: ReadonlyArray<number>
  /** 1 / (the prompt's number of response prefixes): each prompt weighs one in the loss */
  readonly share: number
  /** p*(y) · share */
  readonly weight: number
}

/** Every context's targets as rows, in context then target order. */
export const targetRows = (contexts: ReadonlyArray<DiffuseContext>, prefixesOf: (prompt: number) => number): TargetRow[] =>
  contexts.flatMap((c, ci) => {
    const share = 1 / prefixesOf(c.prompt)
    return c.targets.map((t, ti) => ({ context: ci, target: ti, contextIds: c.ids, targetIds: t.ids, share, weight: t.weight * share }))
  })

/** The input length of a row: context + target less its last token. */
const inputLength = (r: TargetRow) => r.contextIds.length + r.targetIds.length - 1

/** Fails when a row needs more positions than the model has. */
export const checkRowsFit = (ckpt: Checkpoint, rows: ReadonlyArray<TargetRow>, what: (r: TargetRow) => string): Effect.Effect<void, StageError> => {
  const { length: max, why } = contextLength(ckpt.config)
  const r = rows.find((x) => inputLength(x) > max)
  return r === undefined ? Effect.void : Effect.fail(new StageError({ message: `${what(r)} needs ${inputLength(r)} positions, more than the ${max} (${why}) of ${ckpt.dir}` }))
}

/** Names and specs of the batch inputs; `rows` is the weights' fixed length (sequenceLogLikelihood's numSequences). */
export const rowInputs = (rows: number) =>
  ({
    ids: { name: "ids", dtype: "int64", shape: ["batch", "seq"] },
    mask: { name: "mask", dtype: "int64", shape: ["batch", "seq"] },
    positions: { name: "positions", dtype: "int64", shape: ["tokens"] },
    targets: { name: "targets", dtype: "int64", shape: ["tokens"] },
    segments: { name: "segments", dtype: "int64", shape: ["tokens"] },
    weights: { name: "weights", dtype: "float32", shape: [rows] },
  }) as const satisfies Record<string, BatchSpec & { name: string }>

export interface RowShape {
  readonly rows: number
  readonly width: number
  readonly tokens: number
}

export const rowShape = (rows: ReadonlyArray<TargetRow>): RowShape => ({
  rows: Math.max(rows.length, 1),
  width: rows.reduce((m, r) => Math.max(m, inputLength(r)), 1),
  tokens: Math.max(rows.reduce((n, r) => n + r.targetIds.length, 0), 1),
})

/**
 * The feeds of `rows` padded to `shape` (each dimension at least what they need), weights to
 * `capacity` entries. Padding rows hold one unmasked pad token (no all-masked attention row) and
 * padding tokens segment -1, so neither reaches the loss.
 */
export const rowFeeds = (rows: ReadonlyArray<TargetRow>, padId: number, shape: RowShape, capacity: number): Record<string, ort.Tensor> => {
  const names = rowInputs(capacity)
  const { rows: R, width: W, tokens: N } = shape
  const ids = new BigInt64Array(R * W).fill(BigInt(padId))
  const mask = new BigInt64Array(R * W)
  const positions = new BigInt64Array(N)
  const targets = new BigInt64Array(N)
  const segments = new BigInt64Array(N).fill(-1n)
  const weights = new Float32Array(capacity)
  for (let row = rows.length; row < R; row++) mask[row * W + W - 1] = 1n
  let n = 0
  rows.forEach((r, row) => {
    const seq = [...r.contextIds, ...r.targetIds.slice(0, -1)]
    const offset = row * W + W - seq.length
    seq.forEach((id, k) => {
      ids[offset + k] = BigInt(id)
      mask[offset + k] = 1n
    })
    // target token k sits at contextIds.length + k; the position before it predicts it
    r.targetIds.forEach((id, k) => {
      positions[n] = BigInt(offset + r.contextIds.length + k - 1)
      targets[n] = BigInt(id)
      segments[n] = BigInt(row)
      n++
    })
    weights[row] = r.weight
  })
  return {
    [names.ids.name]: new ort.Tensor("int64", ids, [R, W]),
    [names.mask.name]: new ort.Tensor("int64", mask, [R, W]),
    [names.positions.name]: new ort.Tensor("int64", positions, [N]),
    [names.targets.name]: new ort.Tensor("int64", targets, [N]),
    [names.segments.name]: new ort.Tensor("int64", segments, [N]),
    [names.weights.name]: new ort.Tensor("float32", weights, [capacity]),
  }
}

/** Each row's log p(target | context) [capacity] of a batch fed by rowFeeds, for `forward` (a prepared variant). */
export const rowLogLikelihoods = (g: Graph, ckpt: Checkpoint, forward: VariantForward, b: Readonly<Record<string, Value>>, capacity: number, params?: Readonly<Record<string, Value>>): Value => {
  const names = rowInputs(capacity)
  const out = forward(g, { ids: b[names.ids.name], mask: b[names.mask.name] }, params)
  return sequenceLogLikelihood(g, lmHeadAt(g, ckpt, out, b[names.positions.name]), b[names.targets.name], b[names.segments.name], capacity)
}
