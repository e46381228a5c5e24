// Aligning a prompted teacher and an unprompted student along trajectories: the shared pieces of
// the baking stages that compare the two distributions (lora-train, evaluate).
//
// Per trajectory, the student reads studentPrompts[q] + response and the teacher reads
// teacherPrompts[q] + response (the last response token is never an input: it predicts nothing
// that is compared). Response token k is predicted by the position just before it, in each
// sequence; those positions are the rows the losses compare, so only response tokens reach the
// LM head.
//
//   pairBatch(set, trajectories, padId, pad?)   -> PairBatch: left-padded student and teacher ids
//       and masks, and per response token the flat index ([rows * width]) of the student and
//       teacher positions that predict it and its row in a TeacherLogitsSet; `pad` grows the
//       batch to a fixed shape (extra rows all padding, extra tokens masked out).
//   lengthSortedBatches(set, batchSize)         -> trajectory indices per batch, sorted by length
//       (stable), trajectories without response tokens left out.
//   pairInputs / pairFeeds(batch)               -> graph input names and specs, and their feeds.
//   lmHeadAt(g, ckpt, outputs, positions)       -> LM-head input [tokens, H] at those positions of a
//       decoder's (or a variant's, variant.ts prepareVariant) outputs.
//   headAtPositions(g, ckpt, source, ids, mask, positions, hook?) -> the same for the base model
//       (+ `hook`).
//   klEvaluator(student, opts) / meanPromptedKl(model, set, adapter, opts)
//       -> exact mean per-response-token KL(prompted || student) over the full vocabulary, the
//       student a model variant, the teacher its base checkpoint on the teacher prompt: both in
//       one forward-only graph with the base weights as external data, chunked over tokens
//       (fullForwardKL), summed in float64 on the host. The evaluator keeps its session and takes
//       the student's trainable values as inputs, so a training loop evaluates every epoch on one
//       graph.
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { StageError } from "../../src/engine/index.ts"
import { fullForwardKL, Graph, type LmHead, type Value } from "../../src/graph/index.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { decoder, type DecoderOutputs, type LinearHook, type WeightSource } from "../../src/models/forward.ts"
import { contextLength } from "../../src/models/rope.ts"
import { externalWeights, placeWeights, type WeightPlacementError, writeGraph } from "../../src/models/graph-weights.ts"
import type { LoraAdapter } from "../../src/models/peft.ts"
import { asVariant, checkVariant, prepareVariant, type Variant, variantParams } from "../../src/models/variant.ts"
import { createSession, type Device, releaseSession, type RunError, runSession, type SessionError } from "../../src/runtime/session.ts"
import type { TrajectorySet } from "./artifacts.ts"
import type { OpenModel } from "./model.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

// ------------------------------------------------------------------------------ batches

export interface PairBatch {
  /** indices into set.trajectories, one per real row (rows beyond are padding) */
  readonly trajectories: ReadonlyArray<number>
  readonly rows: number
  readonly studentWidth: number
  readonly teacherWidth: number
  /** [rows, studentWidth] left-padded ids and 1/0 mask */
  readonly studentIds: BigInt64Array
  readonly studentMask: BigInt64Array
  /** [rows, teacherWidth] */
  readonly teacherIds: BigInt64Array
  readonly teacherMask: BigInt64Array
  /** [tokens] flat index (row * width + t) of the position predicting each response token */
  readonly studentPositions: BigInt64Array
  readonly teacherPositions: BigInt64Array
  /** [tokens] 1 for a response token, 0 for padding */
  readonly tokenMask: Float32Array
  /** [tokens] row of the TeacherLogitsSet (response tokens of all trajectories in order); -1 for padding */
  readonly teacherRows: Int32Array
  /** response tokens (real entries of the token arrays) */
  readonly tokens: number
}

/** A batch shape to pad to (each at least what the batch needs). */
export interface PairShape {
  readonly rows: number
  readonly studentWidth: number
  readonly teacherWidth: number
  readonly tokens: number
}

/** First TeacherLogitsSet row of each trajectory. */
export const teacherRowStarts = (set: TrajectorySet): number[] => {
  const starts: number[] = []
  let r = 0
  for (const t of set.trajectories) {
    starts.push(r)
    r += t.tokens.length
  }
  return starts
}

const inputLengths = (set: TrajectorySet, i: number) => {
  const t = set.trajectories[i]
  return { student: set.studentPrompts[t.question].length + t.tokens.length - 1, teacher: set.teacherPrompts[t.question].length + t.tokens.length - 1 }
}

/**
 * Fails when a teacher sequence (prompt with x0 + response, less the last token) is longer than
 * the model's positions: the trajectories were sampled with another model or other settings.
 */
export const checkTrajectoriesFit = (ckpt: Checkpoint, set: TrajectorySet, what: string): Effect.Effect<void, StageError> => {
  const { length: max, why } = contextLength(ckpt.config)
  const i = set.trajectories.findIndex((_, k) => inputLengths(set, k).teacher > max)
  if (i < 0) return Effect.void
  const t = set.trajectories[i]
  return Effect.fail(
    new StageError({
      message: `${what}: trajectory ${i} (question ${set.questions[t.question]?.id}) needs ${inputLengths(set, i).teacher} positions (prompt with the system prompt + response), more than ${why === "max_position_embeddings" ? `${why} ${max}` : `${max} (${why})`} of ${ckpt.dir}; were the trajectories sampled with another model?`,
    }),
  )
}

/** The shape a batch of these trajectories needs. */
export const pairShape = (set: TrajectorySet, trajectories: ReadonlyArray<number>): PairShape => ({
  rows: trajectories.length,
  studentWidth: trajectories.reduce((m, i) => Math.max(m, inputLengths(set, i).student), 1),
  teacherWidth: trajectories.reduce((m, i) => Math.max(m, inputLengths(set, i).teacher), 1),
  tokens: trajectories.reduce((n, i) => n + set.trajectories[i].tokens.length, 0),
})

/** The left-padded batch of `trajectories` (see the file header); `pad` fixes a larger shape. */
export const pairBatch = (set: TrajectorySet, trajectories: ReadonlyArray<number>, padId: number, rowStarts: ReadonlyArray<number>, pad?: PairShape): PairBatch => {
  const need = pairShape(set, trajectories)
  const shape = pad ?? need
  if (shape.rows < need.rows || shape.studentWidth < need.studentWidth || shape.teacherWidth < need.teacherWidth || shape.tokens < need.tokens)
    throw new Error(`pairBatch: pad shape ${JSON.stringify(shape)} is smaller than the batch needs ${JSON.stringify(need)}`)
  const { rows, studentWidth: ws, teacherWidth: wt } = shape
  const studentIds = new BigInt64Array(rows * ws).fill(BigInt(padId))
  const studentMask = new BigInt64Array(rows * ws)
  const teacherIds = new BigInt64Array(rows * wt).fill(BigInt(padId))
  const teacherMask = new BigInt64Array(rows * wt)
  const studentPositions = new BigInt64Array(shape.tokens)
  const teacherPositions = new BigInt64Array(shape.tokens)
  const tokenMask = new Float32Array(shape.tokens)
  const teacherRows = new Int32Array(shape.tokens).fill(-1)
  let n = 0
  trajectories.forEach((i, row) => {
    const t = set.trajectories[i]
    const place = (prompt: ReadonlyArray<number>, width: number, ids: BigInt64Array, mask: BigInt64Array, positions: BigInt64Array) => {
      const seq = [...prompt, ...t.tokens.slice(0, -1)]
      const offset = row * width + width - seq.length
      seq.forEach((id, k) => {
        ids[offset + k] = BigInt(id)
        mask[offset + k] = 1n
      })
      // response token k sits at prompt.length + k; the position before it predicts it
      for (let k = 0; k < t.tokens.length; k++) positions[n + k] = BigInt(offset + prompt.length + k - 1)
    }
    place(set.studentPrompts[t.question], ws, studentIds, studentMask, studentPositions)
    place(set.teacherPrompts[t.question], wt, teacherIds, teacherMask, teacherPositions)
    for (let k = 0; k < t.tokens.length; k++) {
      tokenMask[n + k] = 1
      teacherRows[n + k] = rowStarts[i] + k
    }
    n += t.tokens.length
  })
  return { trajectories, rows, studentWidth: ws, teacherWidth: wt, studentIds, studentMask, teacherIds, teacherMask, studentPositions, teacherPositions, tokenMask, teacherRows, tokens: n }
}

/** Trajectories with response tokens, sorted by teacher length (stable), cut into batches. */
export const lengthSortedBatches = (set: TrajectorySet, batchSize: number): number[][] => {
  const order = set.trajectories
    .map((t, i) => i)
    .filter((i) => set.trajectories[i].tokens.length > 0)
    .sort((a, b) => inputLengths(set, a).teacher - inputLengths(set, b).teacher)
  const out: number[][] = []
  for (let i = 0; i < order.length; i += batchSize) out.push(order.slice(i, i + batchSize))
  return out
}

// ------------------------------------------------------------------------------ graph pieces

/** Names and specs of the batch inputs (distinct symbolic dims: onnxruntime equates equal names). */
export const pairInputs = {
  studentIds: { name: "student_ids", dtype: "int64", shape: ["batch", "student_seq"] },
  studentMask: { name: "student_mask", dtype: "int64", shape: ["batch", "student_seq"] },
  teacherIds: { name: "teacher_ids", dtype: "int64", shape: ["batch", "teacher_seq"] },
  teacherMask: { name: "teacher_mask", dtype: "int64", shape: ["batch", "teacher_seq"] },
  studentPositions: { name: "student_positions", dtype: "int64", shape: ["tokens"] },
  teacherPositions: { name: "teacher_positions", dtype: "int64", shape: ["tokens"] },
  tokenMask: { name: "token_mask", dtype: "float32", shape: ["tokens"] },
} as const

type PairKey = keyof typeof pairInputs

/** The batch's arrays as onnxruntime tensors under pairInputs' names. */
export const pairFeeds = (b: PairBatch, keys: ReadonlyArray<PairKey> = Object.keys(pairInputs) as PairKey[]): Record<string, ort.Tensor> => {
  const data: Record<PairKey, { values: BigInt64Array | Float32Array; dims: number[] }> = {
    studentIds: { values: b.studentIds, dims: [b.rows, b.studentWidth] },
    studentMask: { values: b.studentMask, dims: [b.rows, b.studentWidth] },
    teacherIds: { values: b.teacherIds, dims: [b.rows, b.teacherWidth] },
    teacherMask: { values: b.teacherMask, dims: [b.rows, b.teacherWidth] },
    studentPositions: { values: b.studentPositions, dims: [b.tokenMask.length] },
    teacherPositions: { values: b.teacherPositions, dims: [b.tokenMask.length] },
    tokenMask: { values: b.tokenMask, dims: [b.tokenMask.length] },
  }
  return Object.fromEntries(keys.map((k) => [pairInputs[k].name, new ort.Tensor(pairInputs[k].dtype, data[k].values, data[k].dims)]))
}

/** LM-head input [tokens, H] at `positions` (flat row * width + t) of a decoder's outputs. */
export const lmHeadAt = (g: Graph, ckpt: Checkpoint, out: DecoderOutputs, positions: Value): LmHead => ({
  hidden: g.gather(g.reshape(out.hidden, [-1, ckpt.config.hiddenSize]), positions, 0),
  weight: out.lmHead,
  softcap: out.logitSoftcap,
})

/**
 * LM-head input [tokens, H] at the positions predicting response tokens of the base model, plus
 * `hook` if given (the prompted teacher is the base model, never adapted).
 */
export const headAtPositions = (g: Graph, ckpt: Checkpoint, source: WeightSource, ids: Value, mask: Value, positions: Value, hook?: LinearHook): LmHead =>
  lmHeadAt(g, ckpt, decoder(g, ckpt.config, ckpt.weights, source, { ids, mask }, hook ? { linearHook: hook } : {}), positions)

// ------------------------------------------------------------------------------ KL evaluation

export interface KlOptions {
  /** where the graph's .onnx goes (the base weights are read in place) */
  readonly graphDir: string
  readonly device: Device
  /** trajectories per forward run */
  readonly batchSize: number
  /** onnxruntime intra-op threads (default: onnxruntime's) */
  readonly threads?: number
}

export interface MeanKl {
  /** mean per-response-token KL(prompted || student), nats */
  readonly mean: number
  readonly tokens: number
}

export interface KlEvaluator {
  /**
   * KL over `set`; `values`: the student's trainable values by variant.ts variantParams name
   * (required when the student has trainable interventions, e.g. the train loop's params)
   */
  readonly evaluate: (set: TrajectorySet, values?: Readonly<Record<string, ort.Tensor>>) => Effect.Effect<MeanKl, StageError | RunError>
  readonly release: Effect.Effect<void>
}

const KL_SUM = "kl_sum"

/**
 * A forward-only graph of teacher and student: the student is `student` (variant.ts) on the
 * student prompts, the teacher its base checkpoint on the teacher prompts (which carry the system
 * prompt). The student's frozen values are part of the graph; its trainable ones are inputs, fed
 * per evaluation, so one session serves every epoch of a training run.
 */
export const klEvaluator = (student: Variant, opts: KlOptions): Effect.Effect<KlEvaluator, StageError | WeightPlacementError | SessionError> =>
  Effect.gen(function* () {
    yield* Effect.mapError(checkVariant(student), (e) => new StageError({ message: `prompted KL: ${e.message}` }))
    const ckpt = student.checkpoint
    const placement = yield* placeWeights(ckpt, opts.graphDir)
    const g = new Graph("prompted_kl")
    const source = externalWeights(g, placement)
    const input = (k: PairKey) => g.input(pairInputs[k].name, pairInputs[k].dtype, [...pairInputs[k].shape])
    const [sIds, sMask, tIds, tMask, sPos, tPos, tokenMask] = (["studentIds", "studentMask", "teacherIds", "teacherMask", "studentPositions", "teacherPositions", "tokenMask"] as const).map(input)
    const specs = variantParams(student).specs
    const trainable = Object.keys(specs)
    const params = Object.fromEntries(trainable.map((n) => [n, g.input(n, "float32", specs[n].shape)]))
    const studentHead = lmHeadAt(g, ckpt, prepareVariant(g, student, source, { training: true })(g, { ids: sIds, mask: sMask }, params), sPos)
    const teacherHead = lmHeadAt(g, ckpt, prepareVariant(g, { checkpoint: ckpt }, source)(g, { ids: tIds, mask: tMask }), tPos)
    g.outputAs(KL_SUM, fullForwardKL(g, studentHead, teacherHead, tokenMask).sum)
    const file = yield* writeGraph(g, placement, trainable.length > 0 ? "prompted-kl-trainable" : "prompted-kl")
    const session = yield* createSession(file, { device: opts.device, ...(opts.threads ? { intraOpThreads: opts.threads } : {}) })
    const padId = paddingId(ckpt.config)
    const evaluate = (set: TrajectorySet, values?: Readonly<Record<string, ort.Tensor>>): Effect.Effect<MeanKl, StageError | RunError> =>
      Effect.gen(function* () {
        const missing = trainable.filter((n) => !values?.[n])
        if (missing.length > 0) return yield* Effect.fail(new StageError({ message: `prompted KL: no values for the student's trainable ${missing.join(", ")}` }))
        const feeds = Object.fromEntries(trainable.map((n) => [n, values![n]]))
        const starts = teacherRowStarts(set)
        let sum = 0
        let tokens = 0
        for (const rows of lengthSortedBatches(set, opts.batchSize)) {
          const b = pairBatch(set, rows, padId, starts)
          const out = yield* runSession(session, { ...pairFeeds(b), ...feeds }, [KL_SUM])
          sum += (out[KL_SUM].data as Float32Array)[0]
          tokens += b.tokens
          yield* Effect.yieldNow
        }
        if (tokens === 0) return yield* Effect.fail(new StageError({ message: "prompted KL: the trajectory set has no response tokens" }))
        return { mean: sum / tokens, tokens }
      })
    return { evaluate, release: releaseSession(session) }
  })

/**
 * Exact mean per-response-token KL(prompted || student) over the full vocabulary: the student is
 * the model with `adapter` (or the model itself) on the student prompt (klEvaluator takes any
 * variant), the teacher the base model on the teacher prompt. The same measure lora-train validates with.
 */
export const meanPromptedKl = (
  model: OpenModel,
  set: TrajectorySet,
  adapter: LoraAdapter | undefined,
  opts: KlOptions,
): Effect.Effect<MeanKl, StageError | WeightPlacementError | SessionError | RunError> =>
  Effect.gen(function* () {
    yield* checkTrajectoriesFit(model.checkpoint, set, "KL evaluation")
    const variant = yield* Effect.mapError(asVariant(model.checkpoint, adapter), (e) => new StageError({ message: e.message }))
    const evaluator = yield* Effect.acquireRelease(klEvaluator(variant, opts), (e) => e.release)
    return yield* evaluator.evaluate(set)
  }).pipe(Effect.scoped)
