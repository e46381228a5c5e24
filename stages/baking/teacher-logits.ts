// Stage `teacher-logits`: the prompted model's distribution at every response token of a
// Trajectories artifact, for lora-train's top-k KL.
//
//   mode "stored"     per response token r, the distribution before r (the one that predicts it),
//                     read on teacherPrompts[q] + response: top-k log-probs (descending, stored as
//                     float16 or float32), their ids and the tail mass. Rows in TeacherLogitsSet order
//                     (trajectories in order, tokens in order), whatever order the batches ran in.
//   mode "recompute"  nothing stored (the row count only): lora-train runs the prompted model in its
//                     training graph and compares full distributions.
//
// The graph reads the checkpoint's safetensors as external data (placeWeights under ctx.workDir),
// so a multi-GB local checkpoint is never copied or loaded into JS; only the positions predicting
// response tokens reach the LM head, and positionStats (src/models/scoring.ts) takes the top k
// chunk by chunk, so no [tokens x vocab] block is ever whole. Batches are left-padded and sorted by
// length (distill.ts lengthSortedBatches / pairBatch), which does not change the numbers.
//
// Storage per response token: topK x (2 or 4) bytes of log-probs + topK x 4 bytes of ids + 4 bytes
// of tail mass, against 4 x vocabulary bytes for full float32 logits.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { Graph } from "../../src/graph/index.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import type { Tensor } from "../../src/core/safetensors.ts"
import { positionStats } from "../../src/models/scoring.ts"
import { type Device, runSession, scopedSession } from "../../src/runtime/session.ts"
import { readTrajectories, responseTokenCount, TeacherLogits, type TeacherLogitsSet, teacherLogitsOutput, Trajectories, type TrajectorySet } from "./artifacts.ts"
import { checkTrajectoriesFit, headAtPositions, lengthSortedBatches, pairBatch, pairFeeds, pairInputs, teacherRowStarts } from "./distill.ts"
import { type OpenModel, openModel } from "./model.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const TeacherLogitsParams = Schema.Struct({
  mode: Schema.Literals(["stored", "recompute"]),
  /** log-probs kept per response token (1..vocabulary); pipelines use 32 */
  topK: PositiveInt,
  /** storage dtype of the top-k log-probs (ids are int32, the tail mass float32) */
  dtype: Schema.Literals(["float16", "float32"]),
  /** trajectories per forward run (does not change results) */
  batchSize: PositiveInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
})
export type TeacherLogitsParams = typeof TeacherLogitsParams.Type

const outputs = { topLogProbs: "top_logprobs", topIds: "top_ids", tailMass: "tail_mass" } as const

export interface StoredTeacherOptions {
  readonly topK: number
  readonly dtype: "F16" | "F32"
  readonly batchSize: number
  /** where the graph's .onnx goes (the weights are hard-linked under it) */
  readonly graphDir: string
  readonly device: Device
  readonly threads?: number
  /** called after each batch with the trajectories it covered */
  readonly onBatch?: (trajectories: number) => void
}

export type StoredTeacherLogits = Extract<TeacherLogitsSet, { mode: "stored" }>

/**
 * The prompted model's top-k distribution at every response token of `set` (see the file header),
 * and the seconds the forward runs took (graph building and session creation not counted).
 */
export const storedTeacherLogits = (model: OpenModel, set: TrajectorySet, opts: StoredTeacherOptions) =>
  Effect.gen(function* () {
    const ckpt = model.checkpoint
    const V = ckpt.config.vocabSize
    const k = opts.topK
    if (!Number.isInteger(k) || k < 1 || k > V) return yield* Effect.fail(new StageError({ message: `topK must be an integer in [1, ${V}] (the model's vocabulary), got ${k}` }))
    const placement = yield* placeWeights(ckpt, opts.graphDir)
    const g = new Graph("teacher_logits")
    const input = (key: "teacherIds" | "teacherMask" | "teacherPositions") => g.input(pairInputs[key].name, pairInputs[key].dtype, [...pairInputs[key].shape])
    const positions = input("teacherPositions")
    const head = headAtPositions(g, ckpt, externalWeights(g, placement), input("teacherIds"), input("teacherMask"), positions)
    // positionStats also scores a target per row; nothing here needs it, so every target is id 0
    const stats = positionStats(g, head.hidden, head.weight, g.zerosLike(positions), { topK: k }, head.softcap)
    g.outputAs(outputs.topLogProbs, stats.topLogProbs)
    g.outputAs(outputs.topIds, stats.topIds)
    g.outputAs(outputs.tailMass, stats.tailMass)
    const file = yield* writeGraph(g, placement, `teacher-logits-k${k}`)
    const session = yield* scopedSession(file, { device: opts.device, ...(opts.threads ? { intraOpThreads: opts.threads } : {}) })
    const rows = responseTokenCount(set)
    const topLogProbs = new Float32Array(rows * k)
    const topIds = new Int32Array(rows * k)
    const tailMass = new Float32Array(rows)
    const starts = teacherRowStarts(set)
    const padId = paddingId(ckpt.config)
    const started = performance.now()
    for (const batch of lengthSortedBatches(set, opts.batchSize)) {
      const b = pairBatch(set, batch, padId, starts)
      const out = yield* runSession(session, pairFeeds(b, ["teacherIds", "teacherMask", "teacherPositions"]), Object.values(outputs))
      const lp = out[outputs.topLogProbs].data as Float32Array
      const ids = out[outputs.topIds].data as BigInt64Array
      const tail = out[outputs.tailMass].data as Float32Array
      for (let j = 0; j < b.tokens; j++) {
        const r = b.teacherRows[j]
        topLogProbs.set(lp.subarray(j * k, (j + 1) * k), r * k)
        for (let i = 0; i < k; i++) topIds[r * k + i] = Number(ids[j * k + i])
        tailMass[r] = tail[j]
      }
      opts.onBatch?.(batch.length)
      yield* Effect.yieldNow
    }
    const teacher: StoredTeacherLogits = { mode: "stored", rows, topK: k, dtype: opts.dtype, topLogProbs, topIds, tailMass }
    return { teacher, seconds: (performance.now() - started) / 1000 }
  }).pipe(Effect.scoped)

export const teacherLogits = stage({
  name: "teacher-logits",
  version: 1,
  params: TeacherLogitsParams,
  unkeyed: ["batchSize", "threads"],
  inputs: { model: Directory, trajectories: Trajectories },
  output: TeacherLogits,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const set = yield* readTrajectories(inputs.trajectories)
      const rows = responseTokenCount(set)
      if (params.mode === "recompute") {
        ctx.log(`recompute mode: nothing stored for ${rows} response tokens (lora-train runs the prompted model itself)`)
        ctx.metric("teacher_bytes_per_token", 0)
        return teacherLogitsOutput({ mode: "recompute", rows })
      }
      const model = yield* openModel(inputs.model.path)
      yield* checkTrajectoriesFit(model.checkpoint, set, "teacher-logits")
      const withTokens = set.trajectories.filter((t) => t.tokens.length > 0).length
      ctx.log(`${set.trajectories.length} trajectories, ${rows} response tokens: top ${params.topK} log-probs as ${params.dtype} on ${ctx.device.kind}`)
      ctx.progress.total(withTokens, "trajectories")
      const { teacher, seconds } = yield* storedTeacherLogits(model, set, {
        topK: params.topK,
        dtype: params.dtype === "float16" ? "F16" : "F32",
        batchSize: params.batchSize,
        graphDir: path.join(ctx.workDir, "graph"),
        device: ctx.device,
        ...(params.threads > 0 ? { threads: params.threads } : {}),
        onBatch: (n) => ctx.progress.advance(n),
      })
      yield* checkFinite(ctx.node, "top-k log-probs [response token, k]", teacher.topLogProbs, [rows, params.topK])
      yield* checkFinite(ctx.node, "tail mass [response token]", teacher.tailMass)
      const output = teacherLogitsOutput(teacher)
      const tensors = "tensors" in output ? (output.tensors instanceof Map ? [...output.tensors.values()] : Object.values(output.tensors)) : []
      const bytes = tensors.reduce((n: number, t: Tensor) => n + t.data.byteLength, 0)
      const perToken = rows === 0 ? 0 : bytes / rows
      const full = 4 * model.checkpoint.config.vocabSize
      ctx.metric("teacher_bytes_per_token", perToken)
      ctx.metric("teacher_tokens_per_s", rows / seconds)
      ctx.log(
        `${rows} rows in ${seconds.toFixed(2)} s (${(rows / seconds).toFixed(0)} tokens/s); stored ${perToken} bytes per response token (full float32 logits: ${full}, ${(full / perToken).toFixed(1)}x more)`,
      )
      return output
    }),
})
