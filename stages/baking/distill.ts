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
//   headAtPositions(g, ckpt, source, ids, mask, positions, hook?) -> LM-head input [tokens, H] of
//       the teacher (base model) or the student (base model + `hook`, e.g. LoRA).
//   klEvaluator(model, opts) / meanPromptedKl(model, set, adapter, opts)
//       -> exact mean per-response-token KL(prompted || student) over the full vocabulary, both
//       models in one forward-only graph with the base weights as external data, chunked over
//       tokens (fullForwardKL), summed in float64 on the host. The evaluator keeps its session
//       and takes LoRA matrices as inputs, so a training loop evaluates every epoch on one graph.
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { StageError } from "../../src/engine/index.ts"
import { fullForwardKL, Graph, type LmHead, type Value } from "../../src/graph/index.ts"
import { loraInputs, loraHook, loraName } from "../../src/models/adapters.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { decoder, type LinearHook, type WeightSource } from "../../src/models/forward.ts"
import { contextLength } from "../../src/models/rope.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { type LoraAdapter, type LoraConfig, type LoraTarget, loraScale, loraTargets } from "../../src/models/peft.ts"
import { toFloat32 } from "../../src/core/safetensors.ts"
import { createSession, type Device, releaseSession, runSession } from "../../src/runtime/session.ts"
import type { TrajectorySet } from "./artifacts.ts"
import type { OpenModel } from "./model.ts"

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
export const checkTrajectoriesFit = (ckpt: Checkpoint, set: TrajectorySet, what: string): Effect.Effect<void, Error> => {
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

/** The model's padding id (any id works: padded positions are masked out). */
export const padIdOf = (ckpt: Checkpoint): number => ckpt.config.padTokenId ?? ckpt.config.eosTokenIds[0] ?? 0

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

/**
 * LM-head input [tokens, H] at the positions predicting response tokens: the base model, plus
 * `hook` for the student (e.g. LoRA); the prompted teacher is the base model, never adapted.
 */
export const headAtPositions = (g: Graph, ckpt: Checkpoint, source: WeightSource, ids: Value, mask: Value, positions: Value, hook?: LinearHook): LmHead => {
  const out = decoder(g, ckpt.config, ckpt.weights, source, { ids, mask }, hook ? { linearHook: hook } : {})
  return { hidden: g.gather(g.reshape(out.hidden, [-1, ckpt.config.hiddenSize]), positions, 0), weight: out.lmHead, ...(out.logitSoftcap === undefined ? {} : { softcap: out.logitSoftcap }) }
}

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
  /** KL over `set` with the student's LoRA matrices keyed by loraName (required when built with `lora`) */
  readonly evaluate: (set: TrajectorySet, lora?: Readonly<Record<string, ort.Tensor>>) => Effect.Effect<MeanKl, Error>
  readonly release: Effect.Effect<void>
}

const KL_SUM = "kl_sum"

/** A forward-only graph of teacher and student; with `lora`, the student's LoRA matrices are inputs. */
export const klEvaluator = (
  model: OpenModel,
  opts: KlOptions & { readonly lora?: { readonly config: LoraConfig; readonly targets: ReadonlyArray<LoraTarget> } },
): Effect.Effect<KlEvaluator, Error> =>
  Effect.gen(function* () {
    const ckpt = model.checkpoint
    const placement = yield* placeWeights(ckpt, opts.graphDir)
    const g = new Graph("prompted_kl")
    const source = externalWeights(g, placement)
    const input = (k: PairKey) => g.input(pairInputs[k].name, pairInputs[k].dtype, [...pairInputs[k].shape])
    const [sIds, sMask, tIds, tMask, sPos, tPos, tokenMask] = (["studentIds", "studentMask", "teacherIds", "teacherMask", "studentPositions", "teacherPositions", "tokenMask"] as const).map(input)
    const hook = opts.lora ? loraHook(loraInputs(g, opts.lora.targets, opts.lora.config.r), loraScale(opts.lora.config)) : undefined
    const student = headAtPositions(g, ckpt, source, sIds, sMask, sPos, hook)
    const teacher = headAtPositions(g, ckpt, source, tIds, tMask, tPos)
    g.outputAs(KL_SUM, fullForwardKL(g, student, teacher, tokenMask).sum)
    const file = yield* writeGraph(g, placement, opts.lora ? "prompted-kl-lora" : "prompted-kl")
    const session = yield* createSession(file, { device: opts.device, ...(opts.threads ? { intraOpThreads: opts.threads } : {}) })
    const padId = padIdOf(ckpt)
    const evaluate = (set: TrajectorySet, lora?: Readonly<Record<string, ort.Tensor>>): Effect.Effect<MeanKl, Error> =>
      Effect.gen(function* () {
        if (opts.lora && !lora) return yield* Effect.fail(new StageError({ message: "prompted KL: this evaluator needs the LoRA matrices" }))
        const starts = teacherRowStarts(set)
        let sum = 0
        let tokens = 0
        for (const rows of lengthSortedBatches(set, opts.batchSize)) {
          const b = pairBatch(set, rows, padId, starts)
          const out = yield* runSession(session, { ...pairFeeds(b), ...(lora ?? {}) }, [KL_SUM])
          sum += (out[KL_SUM].data as Float32Array)[0]
          tokens += b.tokens
          yield* Effect.yieldNow
        }
        if (tokens === 0) return yield* Effect.fail(new StageError({ message: "prompted KL: the trajectory set has no response tokens" }))
        return { mean: sum / tokens, tokens }
      })
    return { evaluate, release: releaseSession(session) }
  })

/** The adapter's matrices as evaluator inputs (keyed by loraName), checked against the model's targets. */
const adapterFeeds = (adapter: LoraAdapter, targets: ReadonlyArray<LoraTarget>): Effect.Effect<Record<string, ort.Tensor>, Error> =>
  Effect.gen(function* () {
    const feeds: Record<string, ort.Tensor> = {}
    for (const t of targets) {
      const m = adapter.modules.get(t.module)
      if (!m) return yield* Effect.fail(new StageError({ message: `adapter: no matrices for ${t.module}, which its target_modules ${JSON.stringify(adapter.config.targetModules)} select` }))
      feeds[loraName(t.module, "A")] = new ort.Tensor("float32", toFloat32(m.a), [...m.a.shape])
      feeds[loraName(t.module, "B")] = new ort.Tensor("float32", toFloat32(m.b), [...m.b.shape])
    }
    if (adapter.modules.size !== targets.length)
      return yield* Effect.fail(new StageError({ message: `adapter: ${adapter.modules.size} modules, but its target_modules select ${targets.length} layers of this model` }))
    return feeds
  })

/**
 * Exact mean per-response-token KL(prompted || student) over the full vocabulary: the student is
 * the base model (+ `adapter`) on the student prompt, the teacher the base model on the teacher
 * prompt. The same measure lora-train validates with.
 */
export const meanPromptedKl = (model: OpenModel, set: TrajectorySet, adapter: LoraAdapter | undefined, opts: KlOptions): Effect.Effect<MeanKl, Error> =>
  Effect.gen(function* () {
    yield* checkTrajectoriesFit(model.checkpoint, set, "KL evaluation")
    const targets = adapter ? yield* loraTargets(model.checkpoint, adapter.config.targetModules) : undefined
    const feeds = adapter && targets ? yield* adapterFeeds(adapter, targets) : undefined
    const evaluator = yield* Effect.acquireRelease(klEvaluator(model, { ...opts, ...(adapter && targets ? { lora: { config: adapter.config, targets } } : {}) }), (e) => e.release)
    return yield* evaluator.evaluate(set, feeds)
  }).pipe(Effect.scoped)
