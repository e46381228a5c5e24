// Stage `lora-train`: bakes a system prompt into a LoRA adapter. The student is a model variant
// (src/models/variant.ts: the base model + one trainable LoRA, with this stage's dropout) reading
// the question without the system prompt; the loss is the forward
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
// The loop around the steps is src/runtime/train-loop.ts; this stage supplies:
// - learning rate: linear warmup, then cosine/linear decay to minLrRatio x lr (or constant);
// - validation: the exact full-vocabulary KL of distill.ts meanPromptedKl on the validation set,
//   before training (epoch 0: the base model) and after every epoch. With earlyStopPatience > 0
//   training stops once validation KL has not improved for that many epochs, and the output is the
//   best-validation epoch's adapter (possibly epoch 0: the base model); with 0 it is the last epoch's;
// - divergence: a validation KL above divergenceFactor x the base model's fails the node (default
//   2: the adapter made the model further from the prompted one than doing nothing, e.g. a far too
//   high lr), rather than publishing an adapter that is worse than none;
// - the dropout masks, a function of (seed, step, micro-batch) (fed as a seed to
//   src/graph/random.ts's dropout), so a killed run resumes to the same adapter as an
//   uninterrupted one.
// Checkpoints (every epoch and every checkpointEvery steps, with a checksum, the previous one kept)
// and metrics (loss, lr, grad_norm, tokens_per_s per step: response tokens per second of step
// time; val_kl and train_loss per epoch) are the driver's.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { type BatchSpec, buildTrainStep, fullForwardKL, Graph, topKForwardKL } from "../../src/graph/index.ts"
import { initLora, loraAdapter } from "../../src/models/adapters.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { hash32 } from "../../src/core/random.ts"
import { loraConfigFor, loraTargets } from "../../src/models/peft.ts"
import { prepareVariant, type Variant, variantParams, withTrainedValues } from "../../src/models/variant.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { scopedSession } from "../../src/runtime/session.ts"
import { bestOf, type Evaluation, stackMicroBatches, trainLoop } from "../../src/runtime/train-loop.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { adapterOutput, BakedAdapter, readTeacherLogits, readTrajectories, responseTokenCount, TeacherLogits, type TeacherLogitsSet, Trajectories, type TrajectorySet } from "./artifacts.ts"
import { checkTrajectoriesFit, klEvaluator, lmHeadAt, pairBatch, pairFeeds, pairInputs, type PairShape, pairShape, teacherRowStarts } from "./distill.ts"
import { openModel } from "./model.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))
const Positive = Schema.Finite.check(Schema.isGreaterThan(0))

/** The learning-rate schedule and AdamW knobs every LoRA trainer takes. */
export const optimizerFields = {
  /** peak learning rate */
  lr: Positive,
  warmupSteps: NonNegativeInt,
  schedule: Schema.Literals(["cosine", "linear", "constant"]),
  /** final learning rate as a fraction of the peak (cosine and linear) */
  minLrRatio: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  weightDecay: NonNegative,
  /** clip the global gradient norm to this */
  maxGradNorm: Positive,
}

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
  ...optimizerFields,
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
  return { feeds: M === 1 ? parts[0] : stackMicroBatches(parts), tokens }
}

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
        return yield* Effect.fail(new StageError({ message: `${inputs.teacher.path}: ${teacher.rows} teacher rows, but the training trajectories have ${rows} response tokens (teacher logits of another trajectory set?)` }))
      if (teacher.mode === "stored" && teacher.topK > ckpt.config.vocabSize)
        return yield* Effect.fail(new StageError({ message: `${inputs.teacher.path}: top_k ${teacher.topK} exceeds the model's vocabulary of ${ckpt.config.vocabSize}` }))
      const targets = yield* loraTargets(ckpt, params.targetModules)
      const config = yield* loraConfigFor(ckpt, { r: params.rank, loraAlpha: params.alpha, loraDropout: params.dropout, targetModules: params.targetModules, useRslora: params.useRslora })
      const withDropout = params.dropout > 0
      const device = ctx.device
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}

      // the student: the base model plus one trainable LoRA, starting at initLora's values
      const student: Variant = { checkpoint: ckpt, loras: [{ name: "adapter", adapter: loraAdapter(config, targets, Object.fromEntries(Object.entries(initLora(targets, params.rank, params.seed)).map(([k, v]) => [k, v.data]))), trainable: true }] }
      const trainable = variantParams(student)

      // --- the train-step graph
      const graphDir = path.join(ctx.workDir, "graph")
      const placement = yield* placeWeights(ckpt, graphDir)
      const g = new Graph("lora_train")
      const source = externalWeights(g, placement)
      const studentForward = prepareVariant(g, student, source, { training: true })
      const baseForward = prepareVariant(g, { checkpoint: ckpt }, source)
      buildTrainStep({
        graph: g,
        params: trainable.specs,
        batch: stepInputs(teacher, withDropout),
        microBatches: params.gradAccum,
        adamw: { weightDecay: params.weightDecay, maxGradNorm: params.maxGradNorm },
        loss: (sub, p, b) => {
          const dropout = withDropout ? { loraDropout: { rate: params.dropout, seed: b[extra.dropoutSeed] } } : {}
          const out = studentForward(sub, { ids: b[pairInputs.studentIds.name], mask: b[pairInputs.studentMask.name], ...dropout }, p)
          const head = lmHeadAt(sub, ckpt, out, b[pairInputs.studentPositions.name])
          const mask = b[pairInputs.tokenMask.name]
          const kl =
            teacher.mode === "recompute"
              ? fullForwardKL(sub, head, lmHeadAt(sub, ckpt, baseForward(sub, { ids: b[pairInputs.teacherIds.name], mask: b[pairInputs.teacherMask.name] }), b[pairInputs.teacherPositions.name]), mask)
              : topKForwardKL(sub, head, { indices: b[extra.topIds], logProbs: b[extra.topLogProbs], tailMass: b[extra.tailMass] }, mask)
          return sub.mul(kl.sum, b[extra.lossScale])
        },
      })
      const graphFile = yield* writeGraph(g, placement, "lora-train-step")
      // both released when the stage ends: on success, failure and interruption alike
      const session = yield* scopedSession(graphFile, { device, ...threads })
      const evaluator = yield* Effect.acquireRelease(
        klEvaluator(student, { graphDir, device, batchSize: params.validationBatchSize, ...(params.threads > 0 ? { threads: params.threads } : {}) }),
        (e) => e.release,
      )

      const padId = paddingId(ckpt.config)
      const starts = teacherRowStarts(train)
      const perEpoch = epochSteps(train, params.batchSize, params.gradAccum, params.seed, 0).length
      if (perEpoch === 0) return yield* Effect.fail(new StageError({ message: `${inputs.trajectories.path}: no trajectory has response tokens` }))
      ctx.log(
        `${train.trajectories.length} trajectories (${rows} response tokens), teacher ${teacher.mode === "stored" ? `stored top-${teacher.topK}` : "recomputed in the graph"}; ` +
          `${perEpoch} steps per epoch of ${params.batchSize} x ${params.gradAccum} trajectories, ${perEpoch * params.epochs} steps; LoRA rank ${params.rank} on ${targets.length} layers on ${ctx.device.kind}`,
      )

      let epochCache: { epoch: number; steps: number[][][] } | undefined
      const r = yield* trainLoop({
        session,
        ctx,
        init: () => Effect.succeed(Object.fromEntries(Object.entries(trainable.initial).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)]))),
        epochs: params.epochs,
        stepsPerEpoch: perEpoch,
        schedule: { peak: params.lr, warmupSteps: params.warmupSteps, decay: params.schedule, minRatio: params.minLrRatio },
        batch: (step, epoch, index) => {
          if (epochCache?.epoch !== epoch) epochCache = { epoch, steps: epochSteps(train, params.batchSize, params.gradAccum, params.seed, epoch) }
          return Effect.succeed(stepFeeds(train, teacher, epochCache.steps[index], padId, starts, withDropout ? (m) => dropoutSeed(params.seed, step, m) : undefined))
        },
        validation: {
          metric: "val_kl",
          label: "validation KL",
          run: (p) => Effect.map(evaluator.evaluate(validation, p), (v) => v.mean),
          every: perEpoch,
          patience: params.earlyStopPatience,
          divergenceFactor: params.divergenceFactor,
          startLabel: "the base model",
          keepBest: params.earlyStopPatience > 0,
        },
        checkpointEvery: params.checkpointEvery,
        divergenceHint: `the adapter would make the model worse than none: lower lr (now ${params.lr}) or maxGradNorm (now ${params.maxGradNorm})`,
      })

      const epochOf = (e: Evaluation) => e.step / perEpoch
      const history = r.history
      const output = r.output!
      const last = history[history.length - 1]
      const best = bestOf(history)
      ctx.log(
        `output: the adapter of epoch ${epochOf(output)} (${params.earlyStopPatience > 0 ? "best validation KL" : "last epoch"}), validation KL ${output.value.toFixed(4)} vs ${history[0].value.toFixed(4)} for the base model`,
      )
      const names = Object.keys(trainable.specs)
      const values = Object.fromEntries(names.map((n) => [n, r.params[n].data as Float32Array]))
      for (const n of names) yield* checkFinite(ctx.node, `adapter ${n}`, values[n], r.params[n].dims)
      const summary = {
        epochsRun: epochOf(last),
        steps: r.state.step,
        stoppedEarly: r.state.step < r.totalSteps,
        bestEpoch: epochOf(best),
        outputEpoch: epochOf(output),
        valKl: history.map((h) => h.value),
        trainLoss: history.map((h) => h.trainLoss),
        teacher: teacher.mode,
        trainedTokens: r.trainedTokens,
      }
      // run-specific facts go to metrics: inside the adapter they would change its hash on every run
      ctx.metric("train_seconds", r.seconds)
      ctx.metric("train_tokens_per_s", r.trainedTokens / Math.max(r.seconds, 1e-9))
      const trained = withTrainedValues(student, values).loras![0].adapter
      return yield* adapterOutput(trained, { train_summary: JSON.stringify(summary), train_params: JSON.stringify(params) })
    }).pipe(Effect.scoped),
})
