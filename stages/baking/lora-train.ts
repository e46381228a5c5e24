// Stage `lora-train`: bakes a system prompt into a LoRA adapter. The student is the base model +
// LoRA reading the question without the system prompt; the loss is the forward
// KL(prompted || student) averaged over response tokens:
//   teacher "stored"     topKForwardKL against the TeacherLogits rows (top-k log-probs + tail mass),
//                        fed with each batch;
//   teacher "recompute"  fullForwardKL against the base model run on the teacher prompt inside the
//                        same graph (no adapter on that path; it does not depend on the LoRA
//                        matrices, so autodiff leaves it out of the backward pass).
// One onnxruntime run is one AdamW step (buildTrainStep) over `gradAccum` micro-batches of
// `batchSize` trajectories; each micro-batch's summed KL is scaled by gradAccum / (tokens of the
// step), so the step's loss and gradient are those of one batch of all its trajectories.
//
// Batches: per epoch the trajectories are shuffled by (seed, epoch), cut into steps of
// batchSize x gradAccum, and each step sorted by length (less padding) and cut into micro-batches.
// Learning rate: linear warmup, then cosine/linear decay to minLrRatio x lr (or constant).
// Validation: the exact full-vocabulary KL of distill.ts meanPromptedKl on the validation set,
// before training (epoch 0) and after every epoch. With earlyStopPatience > 0 training stops once
// validation KL has not improved for that many epochs, and the output is the best-validation
// epoch's adapter (possibly epoch 0: the base model); with 0 it is the last epoch's.
// Divergence: a non-finite loss fails at once; a validation KL that is non-finite or above
// divergenceFactor x the base model's fails the node after that epoch (default 2: the adapter made
// the model further from the prompted one than doing nothing, e.g. a far too high lr), rather than
// publishing an adapter that is worse than none.
// Checkpoints (LoRA matrices, AdamW moments, step, history, best adapter) go to ctx.workDir after
// every epoch and every checkpointEvery steps, the previous one kept beside it and both carrying a
// checksum of their tensors; a checkpoint that cannot be read or fails its checksum is moved aside
// (logged) and training resumes from the previous one, or from the start when neither is usable.
// A killed run resumes from the checkpoint and, the batch order
// being a function of (seed, epoch) and the dropout masks of (seed, step, micro-batch) (fed as a
// seed to src/graph/random.ts's dropout), ends with the same adapter as an uninterrupted run.
// Metrics per step: loss, lr, grad_norm, tokens_per_s (response tokens trained per second of
// step time); per epoch: val_kl, train_loss.
import { Effect, Schema } from "effect"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { Directory, stage } from "../../src/engine/index.ts"
import { type BatchSpec, buildTrainStep, fullForwardKL, Graph, learningRate, type Schedule, topKForwardKL } from "../../src/graph/index.ts"
import { initLora, loraAdapter, loraFromParams, loraHook, loraParamSpecs } from "../../src/models/adapters.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { hash32 } from "../../src/models/init.ts"
import { loraConfigFor, loraScale, loraTargets } from "../../src/models/peft.ts"
import { fromNumbers, readFile, type Tensor, toFloat32, writeFile } from "../../src/models/safetensors.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { createSession, releaseSession } from "../../src/runtime/session.ts"
import { initTrainState, type TrainState, trainStep } from "../../src/runtime/train.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { adapterOutput, BakedAdapter, readTeacherLogits, readTrajectories, responseTokenCount, TeacherLogits, type TeacherLogitsSet, Trajectories, type TrajectorySet } from "./artifacts.ts"
import { checkTrajectoriesFit, headAtPositions, klEvaluator, padIdOf, pairBatch, pairFeeds, pairInputs, type PairShape, pairShape, teacherRowStarts } from "./distill.ts"
import { openModel, runtimeDevice } from "./model.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))
const Positive = Schema.Finite.check(Schema.isGreaterThan(0))

export const LoraTrainParams = Schema.Struct({
  rank: PositiveInt,
  alpha: Positive,
  /** dropout on the adapter's input, in [0, 1) */
  dropout: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1)),
  /** module names as PEFT matches them (a layer is adapted when its path ends with ".<name>") */
  targetModules: Schema.Array(Schema.String).check(Schema.isMinLength(1)),
  /** scale alpha / sqrt(rank) instead of alpha / rank */
  useRslora: Schema.Boolean,
  epochs: PositiveInt,
  /** trajectories per micro-batch */
  batchSize: PositiveInt,
  /** micro-batches per optimizer step (the step sees batchSize x gradAccum trajectories) */
  gradAccum: PositiveInt,
  /** peak learning rate */
  lr: Positive,
  warmupSteps: NonNegativeInt,
  schedule: Schema.Literals(["cosine", "linear", "constant"]),
  /** final learning rate as a fraction of the peak (cosine and linear) */
  minLrRatio: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  weightDecay: NonNegative,
  /** clip the global gradient norm to this */
  maxGradNorm: Positive,
  /** LoRA initialization, batch order and dropout */
  seed: NonNegativeInt,
  /** 0 = off; else stop after this many epochs without a better validation KL and output the best epoch */
  earlyStopPatience: NonNegativeInt,
  /** 0 = off; else fail as diverged once validation KL exceeds this multiple of the base model's (epoch 0) */
  divergenceFactor: NonNegative,
  /** trajectories per validation forward run (does not change results) */
  validationBatchSize: PositiveInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: NonNegativeInt,
  /** also checkpoint every this many steps, 0 = only after each epoch (does not change results) */
  checkpointEvery: NonNegativeInt,
})
export type LoraTrainParams = typeof LoraTrainParams.Type

/** Validation KL after an epoch (epoch 0: before training) and the mean training loss of that epoch. */
export interface EpochRecord {
  readonly epoch: number
  readonly valKl: number
  readonly trainLoss: number | null
  readonly step: number
}

// ------------------------------------------------------------------------------ batches

/**
 * The optimizer steps of one epoch, a pure function of (trajectories, sizes, seed, epoch): per step
 * its micro-batches, each a list of trajectory indices.
 */
export const epochSteps = (set: TrajectorySet, batchSize: number, gradAccum: number, seed: number, epoch: number): number[][][] => {
  const usable = set.trajectories.map((_, i) => i).filter((i) => set.trajectories[i].tokens.length > 0)
  const order = makeRng(hash32(`lora-train epoch ${epoch}`, seed)).shuffle(usable)
  const perStep = batchSize * gradAccum
  const length = (i: number) => set.teacherPrompts[set.trajectories[i].question].length + set.trajectories[i].tokens.length
  const steps: number[][][] = []
  for (let s = 0; s < order.length; s += perStep) {
    const group = order.slice(s, s + perStep).sort((a, b) => length(a) - length(b))
    // a short last step is spread evenly over the micro-batches
    const size = Math.ceil(group.length / gradAccum)
    steps.push(Array.from({ length: gradAccum }, (_, m) => group.slice(m * size, (m + 1) * size)))
  }
  return steps
}

/** Inputs beyond distill.ts pairInputs. */
const extra = {
  lossScale: "loss_scale",
  topIds: "top_ids",
  topLogProbs: "top_logprobs",
  tailMass: "tail_mass",
  /** int64 scalar per micro-batch, only with dropout > 0 */
  dropoutSeed: "dropout_seed",
} as const

/** The dropout seed of one micro-batch: a function of (seed, step, micro-batch) only, spread over
 * [0, 2^31) so that the per-layer seeds (this + layer) of different micro-batches do not meet. */
const dropoutSeed = (seed: number, step: number, micro: number): number => hash32(`lora-train dropout step ${step} micro ${micro}`, seed) % 2 ** 31

const stepInputs = (teacher: TeacherLogitsSet, dropout: boolean): Record<string, BatchSpec> => {
  const spec = (k: keyof typeof pairInputs): [string, BatchSpec] => [pairInputs[k].name, { dtype: pairInputs[k].dtype, shape: [...pairInputs[k].shape] }]
  const student: [string, BatchSpec][] = [spec("studentIds"), spec("studentMask"), spec("studentPositions"), spec("tokenMask"), [extra.lossScale, { dtype: "float32", shape: [] }]]
  if (dropout) student.push([extra.dropoutSeed, { dtype: "int64", shape: [] }])
  if (teacher.mode === "recompute") return Object.fromEntries([...student, spec("teacherIds"), spec("teacherMask"), spec("teacherPositions")])
  return Object.fromEntries([
    ...student,
    [extra.topIds, { dtype: "int64", shape: ["tokens", teacher.topK] }],
    [extra.topLogProbs, { dtype: "float32", shape: ["tokens", teacher.topK] }],
    [extra.tailMass, { dtype: "float32", shape: ["tokens"] }],
  ])
}

/** One micro-batch's feeds, padded to `shape`; `scale` multiplies its summed KL. */
const microFeeds = (set: TrajectorySet, teacher: TeacherLogitsSet, rows: number[], padId: number, starts: number[], shape: PairShape, scale: number, seed: number | undefined) => {
  const b = pairBatch(set, rows, padId, starts, shape)
  const feeds: Record<string, ort.Tensor> = {
    ...pairFeeds(b, teacher.mode === "recompute" ? undefined : ["studentIds", "studentMask", "studentPositions", "tokenMask"]),
    [extra.lossScale]: new ort.Tensor("float32", Float32Array.of(scale), []),
  }
  if (seed !== undefined) feeds[extra.dropoutSeed] = new ort.Tensor("int64", BigInt64Array.of(BigInt(seed)), [])
  if (teacher.mode === "stored") {
    const k = teacher.topK
    const ids = new BigInt64Array(shape.tokens * k)
    const lps = new Float32Array(shape.tokens * k)
    const tail = new Float32Array(shape.tokens)
    b.teacherRows.forEach((r, n) => {
      if (r < 0) return
      for (let j = 0; j < k; j++) {
        ids[n * k + j] = BigInt(teacher.topIds[r * k + j])
        lps[n * k + j] = teacher.topLogProbs[r * k + j]
      }
      tail[n] = teacher.tailMass[r]
    })
    feeds[extra.topIds] = new ort.Tensor("int64", ids, [shape.tokens, k])
    feeds[extra.topLogProbs] = new ort.Tensor("float32", lps, [shape.tokens, k])
    feeds[extra.tailMass] = new ort.Tensor("float32", tail, [shape.tokens])
  }
  return feeds
}

/** Micro-batch feeds stacked on a leading [gradAccum] axis (what buildTrainStep's Loop slices). */
const stack = (parts: ReadonlyArray<Record<string, ort.Tensor>>): Record<string, ort.Tensor> =>
  Object.fromEntries(
    Object.keys(parts[0]).map((name) => {
      const ts = parts.map((p) => p[name])
      const n = ts[0].size
      const data = ts[0].type === "int64" ? new BigInt64Array(n * ts.length) : new Float32Array(n * ts.length)
      ts.forEach((t, i) => data.set(t.data as never, i * n))
      return [name, new ort.Tensor(ts[0].type as "int64" | "float32", data, [ts.length, ...ts[0].dims])]
    }),
  )

/** The feeds of one optimizer step: micro-batches padded to one shape, KL scaled to the step's
 * token mean; with `seedOf`, micro-batch m's dropout seed is seedOf(m). */
const stepFeeds = (set: TrajectorySet, teacher: TeacherLogitsSet, micro: number[][], padId: number, starts: number[], seedOf?: (m: number) => number) => {
  const shapes = micro.map((rows) => pairShape(set, rows))
  const tokens = shapes.reduce((n, s) => n + s.tokens, 0)
  const M = micro.length
  const shape: PairShape =
    M === 1
      ? shapes[0]
      : {
          rows: shapes.reduce((m, s) => Math.max(m, s.rows), 0),
          studentWidth: shapes.reduce((m, s) => Math.max(m, s.studentWidth), 0),
          teacherWidth: shapes.reduce((m, s) => Math.max(m, s.teacherWidth), 0),
          tokens: shapes.reduce((m, s) => Math.max(m, s.tokens), 1),
        }
  // buildTrainStep averages the micro-batch losses: M / tokens makes the average Σ KL / tokens
  const parts = micro.map((rows, m) => microFeeds(set, teacher, rows, padId, starts, shape, M / tokens, seedOf?.(m)))
  return { feeds: M === 1 ? parts[0] : stack(parts), tokens }
}

// ------------------------------------------------------------------------------ checkpoints

const CHECKPOINT = "checkpoint.safetensors"
const PREVIOUS = "checkpoint.previous.safetensors"

interface Progress {
  readonly state: TrainState
  readonly best: Readonly<Record<string, ort.Tensor>>
  readonly history: ReadonlyArray<EpochRecord>
  /** training step seconds and response tokens so far */
  readonly seconds: number
  readonly trainedTokens: number
  /** running loss of the current epoch: Σ loss x tokens and tokens */
  readonly epochLoss: number
  readonly epochTokens: number
}

const toOrt = (t: Tensor): ort.Tensor => new ort.Tensor("float32", toFloat32(t), [...t.shape])
const fromOrt = (t: ort.Tensor): Tensor => fromNumbers(t.data as Float32Array, "F32", t.dims)

/** sha256 over the tensors' names and bytes in name order: detects a damaged file that still parses. */
const checksumOf = (tensors: ReadonlyMap<string, Tensor>): string => {
  const h = createHash("sha256")
  for (const name of [...tensors.keys()].sort()) h.update(name).update(tensors.get(name)!.data)
  return h.digest("hex")
}

/** Written atomically (writeFile writes a temp file and renames it); the checkpoint it replaces becomes PREVIOUS. */
const saveCheckpoint = (workDir: string, p: Progress) => {
  const tensors = new Map<string, Tensor>()
  for (const k of Object.keys(p.state.params)) {
    tensors.set(`param/${k}`, fromOrt(p.state.params[k]))
    tensors.set(`m/${k}`, fromOrt(p.state.m[k]))
    tensors.set(`v/${k}`, fromOrt(p.state.v[k]))
    tensors.set(`best/${k}`, fromOrt(p.best[k]))
  }
  const { state, best, ...rest } = p
  const file = path.join(workDir, CHECKPOINT)
  return Effect.andThen(
    Effect.try({
      try: () => fs.existsSync(file) && fs.renameSync(file, path.join(workDir, PREVIOUS)),
      catch: (e) => new Error(`cannot keep the previous checkpoint ${file}: ${e instanceof Error ? e.message : String(e)}`),
    }),
    writeFile(file, tensors, { step: String(state.step), progress: JSON.stringify(rest), checksum: checksumOf(tensors) }),
  )
}

const readCheckpoint = (file: string, names: ReadonlyArray<string>): Effect.Effect<Progress, Error> =>
  Effect.gen(function* () {
    const c = yield* Effect.mapError(readFile(file), (e) => new Error(e.message))
    return yield* Effect.try({
      try: () => {
        if (c.metadata.checksum !== checksumOf(c.tensors)) throw new Error("its tensors do not match the checksum written with them")
        const pick = (prefix: string) => {
          const out: Record<string, ort.Tensor> = {}
          for (const k of names) {
            const t = c.tensors.get(`${prefix}/${k}`)
            if (t === undefined) throw new Error(`missing ${prefix}/${k}`)
            out[k] = toOrt(t)
          }
          return out
        }
        const rest = JSON.parse(c.metadata.progress ?? "") as Omit<Progress, "state" | "best">
        return { ...rest, state: { params: pick("param"), m: pick("m"), v: pick("v"), step: Number(c.metadata.step) }, best: pick("best") }
      },
      catch: (e) => new Error(`${file}: not a usable lora-train checkpoint of this run (${e instanceof Error ? e.message : String(e)})`),
    })
  })

/**
 * The newest usable checkpoint in `workDir` (undefined when there is none): a damaged one is
 * renamed to `<name>.damaged` (kept for inspection, never read again) and the previous one tried.
 */
const resumeFrom = (workDir: string, names: ReadonlyArray<string>, log: (line: string) => void): Effect.Effect<{ file: string; progress: Progress } | undefined, Error> =>
  Effect.gen(function* () {
    for (const name of [CHECKPOINT, PREVIOUS]) {
      const file = path.join(workDir, name)
      if (!fs.existsSync(file)) continue
      const read = yield* Effect.result(readCheckpoint(file, names))
      if (read._tag === "Success") return { file, progress: read.success }
      yield* Effect.try({
        try: () => fs.renameSync(file, `${file}.damaged`),
        catch: (e) => new Error(`${read.failure.message}; cannot move it aside (${e instanceof Error ? e.message : String(e)}): delete ${file} to resume from the checkpoint before it`),
      })
      log(`discarded a damaged checkpoint, moved to ${file}.damaged: ${read.failure.message}`)
    }
    return undefined
  })

/** The epoch with the lowest validation KL (the earliest on ties). */
const bestOf = (history: ReadonlyArray<EpochRecord>): EpochRecord => history.reduce((a, b) => (b.valKl < a.valKl ? b : a))

const shouldStop = (history: ReadonlyArray<EpochRecord>, patience: number): boolean => patience > 0 && history[history.length - 1].epoch - bestOf(history).epoch >= patience

// ------------------------------------------------------------------------------ stage

export const loraTrain = stage({
  name: "lora-train",
  version: 3, // 2: dropout masks from a fed per-step seed (resumable); 3: no timings in the summary, divergenceFactor
  params: LoraTrainParams,
  unkeyed: ["validationBatchSize", "threads", "checkpointEvery"],
  inputs: { model: Directory, trajectories: Trajectories, teacher: TeacherLogits, validation: Trajectories },
  output: BakedAdapter,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const model = yield* openModel(inputs.model.path)
      const ckpt = model.checkpoint
      const train = yield* readTrajectories(inputs.trajectories)
      const validation = yield* readTrajectories(inputs.validation)
      yield* checkTrajectoriesFit(model.checkpoint, train, "lora-train (training trajectories)")
      yield* checkTrajectoriesFit(model.checkpoint, validation, "lora-train (validation trajectories)")
      const teacher = yield* readTeacherLogits(inputs.teacher)
      const rows = responseTokenCount(train)
      if (teacher.rows !== rows)
        return yield* Effect.fail(new Error(`${inputs.teacher.path}: ${teacher.rows} teacher rows, but the training trajectories have ${rows} response tokens (teacher logits of another trajectory set?)`))
      if (teacher.mode === "stored" && teacher.topK > ckpt.config.vocabSize)
        return yield* Effect.fail(new Error(`${inputs.teacher.path}: top_k ${teacher.topK} exceeds the model's vocabulary of ${ckpt.config.vocabSize}`))
      const targets = yield* Effect.mapError(loraTargets(ckpt, params.targetModules), (e) => new Error(e.message))
      const config = yield* Effect.mapError(
        loraConfigFor(ckpt, { r: params.rank, loraAlpha: params.alpha, loraDropout: params.dropout, targetModules: params.targetModules, useRslora: params.useRslora }),
        (e) => new Error(e.message),
      )
      const withDropout = params.dropout > 0
      const device = runtimeDevice(ctx.device)
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}

      // --- the train-step graph
      const graphDir = path.join(ctx.workDir, "graph")
      const placement = yield* Effect.mapError(placeWeights(ckpt, graphDir), (e) => new Error(e.message))
      const g = new Graph("lora_train")
      const source = externalWeights(g, placement)
      buildTrainStep({
        graph: g,
        params: loraParamSpecs(targets, params.rank),
        batch: stepInputs(teacher, withDropout),
        microBatches: params.gradAccum,
        adamw: { weightDecay: params.weightDecay, maxGradNorm: params.maxGradNorm },
        loss: (sub, p, b) => {
          const hook = loraHook(loraFromParams(targets, p), loraScale(config), withDropout ? { dropout: params.dropout, seed: b[extra.dropoutSeed] } : {})
          const student = headAtPositions(sub, ckpt, source, b[pairInputs.studentIds.name], b[pairInputs.studentMask.name], b[pairInputs.studentPositions.name], hook)
          const mask = b[pairInputs.tokenMask.name]
          const kl =
            teacher.mode === "recompute"
              ? fullForwardKL(sub, student, headAtPositions(sub, ckpt, source, b[pairInputs.teacherIds.name], b[pairInputs.teacherMask.name], b[pairInputs.teacherPositions.name]), mask)
              : topKForwardKL(sub, student, { indices: b[extra.topIds], logProbs: b[extra.topLogProbs], tailMass: b[extra.tailMass] }, mask)
          return sub.mul(kl.sum, b[extra.lossScale])
        },
      })
      const graphFile = yield* Effect.mapError(writeGraph(g, placement, "lora-train-step"), (e) => new Error(e.message))
      const session = yield* Effect.mapError(createSession(graphFile, { device, ...threads }), (e) => new Error(e.message))
      const evaluator = yield* klEvaluator(model, { graphDir, device, batchSize: params.validationBatchSize, ...(params.threads > 0 ? { threads: params.threads } : {}), lora: { config, targets } })

      const padId = padIdOf(ckpt)
      const starts = teacherRowStarts(train)
      const perEpoch = epochSteps(train, params.batchSize, params.gradAccum, params.seed, 0).length
      if (perEpoch === 0) return yield* Effect.fail(new Error(`${inputs.trajectories.path}: no trajectory has response tokens`))
      const totalSteps = perEpoch * params.epochs
      const schedule: Schedule = { peak: params.lr, warmupSteps: params.warmupSteps, totalSteps, decay: params.schedule, minRatio: params.minLrRatio }
      const names = Object.keys(loraParamSpecs(targets, params.rank))

      // --- start or resume
      let p: Progress
      const resumed = yield* resumeFrom(ctx.workDir, names, ctx.log)
      if (resumed) {
        p = resumed.progress
        ctx.log(`resumed from ${resumed.file} at step ${p.state.step} of ${totalSteps}`)
      } else {
        const init: Record<string, ort.Tensor> = {}
        for (const [k, v] of Object.entries(initLora(targets, params.rank, params.seed))) init[k] = new ort.Tensor("float32", v.data, v.shape)
        const state = initTrainState(init)
        const base = yield* evaluator.evaluate(validation, state.params)
        ctx.metric("val_kl", base.mean, 0)
        ctx.log(`validation KL before training (the base model): ${base.mean.toFixed(4)} nats/token over ${base.tokens} tokens`)
        p = { state, best: state.params, history: [{ epoch: 0, valKl: base.mean, trainLoss: null, step: 0 }], seconds: 0, trainedTokens: 0, epochLoss: 0, epochTokens: 0 }
        yield* saveCheckpoint(ctx.workDir, p)
      }
      ctx.log(
        `${train.trajectories.length} trajectories (${rows} response tokens), teacher ${teacher.mode === "stored" ? `stored top-${teacher.topK}` : "recomputed in the graph"}; ` +
          `${perEpoch} steps per epoch of ${params.batchSize} x ${params.gradAccum} trajectories, ${totalSteps} steps; LoRA rank ${params.rank} on ${targets.length} layers on ${ctx.device.kind}`,
      )
      ctx.progress.total(totalSteps, "steps")
      ctx.progress.set(p.state.step)

      let epochCache: { epoch: number; steps: number[][][] } | undefined
      while (p.state.step < totalSteps && !shouldStop(p.history, params.earlyStopPatience)) {
        const step = p.state.step + 1
        const epoch = Math.floor((step - 1) / perEpoch)
        if (epochCache?.epoch !== epoch) epochCache = { epoch, steps: epochSteps(train, params.batchSize, params.gradAccum, params.seed, epoch) }
        const batch = stepFeeds(train, teacher, epochCache.steps[(step - 1) % perEpoch], padId, starts, withDropout ? (m) => dropoutSeed(params.seed, step, m) : undefined)
        const lr = learningRate(schedule, step)
        const started = performance.now()
        const result = yield* Effect.mapError(trainStep(session, p.state, batch.feeds, lr), (e) => new Error(e.message))
        const elapsed = (performance.now() - started) / 1000
        if (!Number.isFinite(result.loss)) return yield* Effect.fail(new Error(`training diverged at step ${step}: loss ${result.loss} (lower lr or maxGradNorm)`))
        ctx.metric("loss", result.loss, step)
        ctx.metric("lr", lr, step)
        ctx.metric("grad_norm", result.gradNorm, step)
        ctx.metric("tokens_per_s", batch.tokens / elapsed, step)
        p = {
          ...p,
          state: result.state,
          seconds: p.seconds + elapsed,
          trainedTokens: p.trainedTokens + batch.tokens,
          epochLoss: p.epochLoss + result.loss * batch.tokens,
          epochTokens: p.epochTokens + batch.tokens,
        }
        if (step % perEpoch === 0) {
          const val = yield* evaluator.evaluate(validation, p.state.params)
          const start = p.history[0].valKl
          if (!Number.isFinite(val.mean) || (params.divergenceFactor > 0 && val.mean > params.divergenceFactor * start))
            return yield* Effect.fail(
              new Error(
                `training diverged: validation KL ${val.mean} after epoch ${epoch + 1} against ${start.toFixed(4)} for the base model ` +
                  `(${Number.isFinite(val.mean) ? `${(val.mean / start).toFixed(1)}x, above divergenceFactor ${params.divergenceFactor}` : "not finite"}); ` +
                  `the adapter would make the model worse than none: lower lr (now ${params.lr}) or maxGradNorm (now ${params.maxGradNorm})`,
              ),
            )
          const record: EpochRecord = { epoch: epoch + 1, valKl: val.mean, trainLoss: p.epochLoss / p.epochTokens, step }
          const improved = val.mean < bestOf(p.history).valKl
          p = { ...p, history: [...p.history, record], best: improved ? p.state.params : p.best, epochLoss: 0, epochTokens: 0 }
          ctx.metric("val_kl", val.mean, epoch + 1)
          ctx.metric("train_loss", record.trainLoss!, epoch + 1)
          ctx.log(`epoch ${epoch + 1}/${params.epochs}: train loss ${record.trainLoss!.toFixed(4)}, validation KL ${val.mean.toFixed(4)}${improved ? " (best)" : ""}, ${p.seconds.toFixed(1)} s of training steps`)
          yield* saveCheckpoint(ctx.workDir, p)
        } else if (params.checkpointEvery > 0 && step % params.checkpointEvery === 0) yield* saveCheckpoint(ctx.workDir, p)
        ctx.progress.set(step)
        yield* Effect.yieldNow
      }
      yield* evaluator.release
      yield* releaseSession(session)

      const best = bestOf(p.history)
      const last = p.history[p.history.length - 1]
      const stoppedEarly = p.state.step < totalSteps
      const useBest = params.earlyStopPatience > 0
      const output = useBest ? best : last
      if (stoppedEarly) ctx.log(`early stop after epoch ${last.epoch}: no better validation KL for ${params.earlyStopPatience} epochs`)
      ctx.log(`output: the adapter of epoch ${output.epoch} (${useBest ? "best validation KL" : "last epoch"}), validation KL ${output.valKl.toFixed(4)} vs ${p.history[0].valKl.toFixed(4)} for the base model`)
      const values = Object.fromEntries(names.map((n) => [n, (useBest ? p.best : p.state.params)[n].data as Float32Array]))
      for (const n of names) yield* checkFinite(ctx.node, `adapter ${n}`, values[n], (useBest ? p.best : p.state.params)[n].dims)
      const summary = {
        epochsRun: last.epoch,
        steps: p.state.step,
        stoppedEarly,
        bestEpoch: best.epoch,
        outputEpoch: output.epoch,
        valKl: p.history.map((h) => h.valKl),
        trainLoss: p.history.map((h) => h.trainLoss),
        teacher: teacher.mode,
        trainedTokens: p.trainedTokens,
      }
      // run-specific facts go to metrics: inside the adapter they would change its hash on every run
      ctx.metric("train_seconds", p.seconds)
      ctx.metric("train_tokens_per_s", p.trainedTokens / Math.max(p.seconds, 1e-9))
      return yield* adapterOutput(loraAdapter(config, targets, values), { train_summary: JSON.stringify(summary), train_params: JSON.stringify(params) })
    }),
})
