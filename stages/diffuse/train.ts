// Stage `diffuse-train`: a LoRA that makes the model's distribution over each training prompt's
// targets match the desired one (seed 001). The loss of a prompt is
//   Σ_y p*(y) · (−log p(y | prompt)),
// each target y scored through the end-of-turn token (contexts.ts: the target set is prefix-free),
// averaged over the prompt's response prefixes; the loss of the set is its sum over prompts. It is
// at least the optimal loss Σ_prompts H(p*) (nats), reached when p(·| prompt) = p* on the targets.
//
// One optimizer step per (prompt, response prefix) context, its targets in micro-batches of at most
// `batchSize` rows (all contexts use the same number of micro-batches, the largest needed; a
// context with fewer targets spreads them evenly); a pass visits every context once, in an order
// shuffled by (seed, pass). The driver is src/runtime/train-loop.ts: its "validation" is the exact
// loss of the whole training set under the current adapter, before training and after every pass
// (what the seed prints per iteration, computed after the pass rather than summed during it), and
// with earlyStop training stops at the first pass whose loss is <= optimal · (1 + gamma), as the
// seed does for non-exhaustive target sets. Checkpoints and resume are the driver's.
//
// Defaults (the pipeline's) follow the seed: LoRA rank 4 on every attention and MLP projection,
// AdamW with eps 1e-5, gradient clipping at 1.0; the learning rate and number of passes are tuned
// for the tiny models.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { buildTrainStep, Graph, weightedSequenceNLL } from "../../src/graph/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { initLora, loraAdapter } from "../../src/models/adapters.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { loraConfigFor, loraTargets } from "../../src/models/peft.ts"
import { prepareVariant, type Variant, variantParams, withTrainedValues } from "../../src/models/variant.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { createSession, type Device, releaseSession, runSession, scopedSession } from "../../src/runtime/session.ts"
import { stackMicroBatches, trainLoop } from "../../src/runtime/train-loop.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { adapterOutput, BakedAdapter } from "../baking/artifacts.ts"
import { optimizerFields } from "../baking/lora-train.ts"
import { openModel } from "../baking/model.ts"
import { checkRowsFit, rowFeeds, rowInputs, rowLogLikelihoods, rowShape, type TargetRow, targetRows } from "./batches.ts"
import { type DiffuseContext, diffuseContexts } from "./contexts.ts"
import { DiffusePrompts, targetEntropy } from "./prompts.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const Positive = Schema.Finite.check(Schema.isGreaterThan(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))

export const DiffuseTrainParams = Schema.Struct({
  rank: PositiveInt,
  alpha: Positive,
  /** module names as PEFT matches them */
  targetModules: Schema.Array(Schema.String).check(Schema.isMinLength(1)),
  /** passes over the training contexts (the seed's n_iters) */
  passes: PositiveInt,
  /** targets per micro-batch */
  batchSize: PositiveInt,
  ...optimizerFields,
  /** AdamW epsilon */
  eps: Positive,
  /** stop at the first pass whose loss is <= optimal · (1 + gamma) */
  earlyStop: Schema.Boolean,
  gamma: NonNegative,
  /** LoRA initialization and context order */
  seed: NonNegativeInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: NonNegativeInt,
  /** also checkpoint every this many steps, 0 = after each pass only (does not change results) */
  checkpointEvery: NonNegativeInt,
})
export type DiffuseTrainParams = typeof DiffuseTrainParams.Type

/** The optimal loss Σ_prompts H(p*) of a prompt set, nats. */
export const optimalLoss = (prompts: DiffusePrompts): number => prompts.prompts.reduce((h, p) => h + targetEntropy(p.weights), 0)

/** Micro-batches every step uses: enough for the context with the most targets. */
export const microBatchCount = (contexts: ReadonlyArray<DiffuseContext>, batchSize: number): number =>
  contexts.reduce((m, c) => Math.max(m, Math.ceil(c.targets.length / batchSize)), 1)

/** The contexts of one pass in order: a pure function of (count, seed, pass). */
export const passOrder = (count: number, seed: number, pass: number): number[] =>
  makeRng(hash32(`diffuse-train pass ${pass}`, seed)).shuffle(Array.from({ length: count }, (_, i) => i))

/** A context's rows cut into `m` micro-batches of even size (the last ones possibly empty). */
export const splitRows = (rows: ReadonlyArray<TargetRow>, m: number): TargetRow[][] => {
  const size = Math.ceil(rows.length / m)
  return Array.from({ length: m }, (_, i) => rows.slice(i * size, (i + 1) * size))
}

/** The feeds of one step: the micro-batches padded to one shape and stacked; the loss scaled by M
 * (buildTrainStep averages the micro-batch losses, the step's loss is their sum). */
export const stepFeeds = (rows: ReadonlyArray<TargetRow>, m: number, batchSize: number, padId: number) => {
  const parts = splitRows(rows, m)
  const shapes = parts.map(rowShape)
  const shape = { rows: Math.max(...shapes.map((s) => s.rows)), width: Math.max(...shapes.map((s) => s.width)), tokens: Math.max(...shapes.map((s) => s.tokens)) }
  const feeds = parts.map((p) => ({ ...rowFeeds(p, padId, shape, batchSize), [LOSS_SCALE]: new ort.Tensor("float32", Float32Array.of(m), []) }))
  return { feeds: m === 1 ? feeds[0] : stackMicroBatches(feeds), computed: m * shape.rows * shape.width }
}

const LOSS_SCALE = "loss_scale"
const LOG_LIKELIHOODS = "log_likelihoods"

export interface SetLoss {
  /** Σ over prompts of each prompt's loss */
  readonly loss: number
  /** per prompt: its loss and the probability mass on its targets (averaged over its prefixes) */
  readonly prompts: ReadonlyArray<{ readonly loss: number; readonly targetMass: number }>
}

export interface LossEvaluator {
  readonly evaluate: (values?: Readonly<Record<string, ort.Tensor>>) => Effect.Effect<SetLoss, Error>
  readonly release: Effect.Effect<void>
}

/**
 * The exact loss of `rows` (targetRows of a set of `prompts` prompts) under `variant`, forward only;
 * its trainable values (if any) are inputs fed per evaluation, so one session serves every pass.
 */
export const lossEvaluator = (
  variant: Variant,
  rows: ReadonlyArray<TargetRow>,
  promptOf: (context: number) => number,
  prompts: number,
  o: { readonly graphDir: string; readonly device: Device; readonly batchSize: number; readonly threads?: number },
): Effect.Effect<LossEvaluator, Error> =>
  Effect.gen(function* () {
    const ckpt = variant.checkpoint
    const placement = yield* placeWeights(ckpt, o.graphDir)
    const g = new Graph("diffuse_loss")
    const names = rowInputs(o.batchSize)
    const batch = Object.fromEntries(Object.values(names).map((s) => [s.name, g.input(s.name, s.dtype, [...s.shape])]))
    const specs = variantParams(variant).specs
    const trainable = Object.keys(specs)
    const params = Object.fromEntries(trainable.map((n) => [n, g.input(n, "float32", specs[n].shape)]))
    const forward = prepareVariant(g, variant, externalWeights(g, placement), { training: true })
    g.outputAs(LOG_LIKELIHOODS, rowLogLikelihoods(g, ckpt, forward, batch, o.batchSize, params))
    const file = yield* writeGraph(g, placement, trainable.length > 0 ? "diffuse-loss-trainable" : "diffuse-loss")
    const session = yield* createSession(file, { device: o.device, ...(o.threads ? { intraOpThreads: o.threads } : {}) })
    const padId = paddingId(ckpt.config)
    const evaluate = (values?: Readonly<Record<string, ort.Tensor>>) =>
      Effect.gen(function* () {
        const missing = trainable.filter((n) => !values?.[n])
        if (missing.length > 0) return yield* Effect.fail(new StageError({ message: `diffuse loss: no values for the trainable ${missing.join(", ")}` }))
        const feeds = Object.fromEntries(trainable.map((n) => [n, values![n]]))
        const loss = new Array<number>(prompts).fill(0)
        const mass = new Array<number>(prompts).fill(0)
        for (let i = 0; i < rows.length; i += o.batchSize) {
          const part = rows.slice(i, i + o.batchSize)
          const out = yield* runSession(session, { ...rowFeeds(part, padId, rowShape(part), o.batchSize), ...feeds }, [LOG_LIKELIHOODS])
          const ll = out[LOG_LIKELIHOODS].data as Float32Array
          part.forEach((r, k) => {
            const p = promptOf(r.context)
            loss[p] -= r.weight * ll[k]
            mass[p] += Math.exp(ll[k]) * r.share
          })
          yield* Effect.yieldNow
        }
        return { loss: loss.reduce((a, b) => a + b, 0), prompts: loss.map((l, p) => ({ loss: l, targetMass: mass[p] })) }
      })
    return { evaluate, release: releaseSession(session) }
  })

/** The rows of a tokenized set. */
export const setRows = (contexts: ReadonlyArray<DiffuseContext>, prompts: DiffusePrompts): TargetRow[] =>
  targetRows(contexts, (p) => prompts.prompts[p].responses.length)

export const TrainSummary = Schema.Struct({
  optimalLoss: Schema.Number,
  /** the set's loss before training (index 0) and after each pass run */
  passLosses: Schema.Array(Schema.Number),
  passesRun: Schema.Int,
  stoppedEarly: Schema.Boolean,
  /** the stopping threshold optimal · (1 + gamma), or null without earlyStop */
  threshold: Schema.NullOr(Schema.Number),
  /** per training prompt after training */
  prompts: Schema.Array(Schema.Struct({ id: Schema.String, optimal: Schema.Number, loss: Schema.Number, targetMass: Schema.Number })),
})
export type TrainSummary = typeof TrainSummary.Type
export const TRAIN_SUMMARY = "train_summary"

const trainableTensors = (initial: Record<string, { shape: number[]; data: Float32Array }>) =>
  Object.fromEntries(Object.entries(initial).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)]))

/** The student variant: the checkpoint plus one trainable LoRA at initLora's values. */
const studentOf = (ckpt: Checkpoint, params: DiffuseTrainParams) =>
  Effect.gen(function* () {
    const targets = yield* loraTargets(ckpt, params.targetModules)
    const config = yield* loraConfigFor(ckpt, { r: params.rank, loraAlpha: params.alpha, loraDropout: 0, targetModules: params.targetModules, useRslora: false })
    const initial = Object.fromEntries(Object.entries(initLora(targets, params.rank, params.seed)).map(([k, v]) => [k, v.data]))
    return { checkpoint: ckpt, loras: [{ name: "adapter", adapter: loraAdapter(config, targets, initial), trainable: true }] } satisfies Variant
  })

export const diffuseTrain = stage({
  name: "diffuse-train",
  version: 1,
  params: DiffuseTrainParams,
  unkeyed: ["threads", "checkpointEvery"],
  inputs: { model: Directory, prompts: DiffusePrompts },
  output: BakedAdapter,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint: ckpt, tokenizer } = yield* openModel(inputs.model.path)
      const set = inputs.prompts
      const contexts = yield* diffuseContexts(tokenizer, set.prompts)
      const rows = setRows(contexts, set)
      const promptOf = (c: number) => contexts[c].prompt
      yield* checkRowsFit(ckpt, rows, (r) => `${set.prompts[promptOf(r.context)].file}: target ${JSON.stringify(set.prompts[promptOf(r.context)].targets[r.target])}`)
      const byContext = contexts.map((_, c) => rows.filter((r) => r.context === c))
      const M = microBatchCount(contexts, params.batchSize)
      const optimal = optimalLoss(set)
      const threshold = params.earlyStop ? optimal * (1 + params.gamma) : null
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}

      const student = yield* studentOf(ckpt, params)
      const trainable = variantParams(student)
      const graphDir = path.join(ctx.workDir, "graph")
      const placement = yield* placeWeights(ckpt, graphDir)
      const g = new Graph("diffuse_train")
      const forward = prepareVariant(g, student, externalWeights(g, placement), { training: true })
      const names = rowInputs(params.batchSize)
      buildTrainStep({
        graph: g,
        params: trainable.specs,
        batch: { ...Object.fromEntries(Object.values(names).map((s) => [s.name, { dtype: s.dtype, shape: [...s.shape] }])), [LOSS_SCALE]: { dtype: "float32", shape: [] } },
        microBatches: M,
        adamw: { eps: params.eps, weightDecay: params.weightDecay, maxGradNorm: params.maxGradNorm },
        loss: (sub, p, b) => sub.mul(weightedSequenceNLL(sub, rowLogLikelihoods(sub, ckpt, forward, b, params.batchSize, p), b[names.weights.name]), b[LOSS_SCALE]),
      })
      const graphFile = yield* writeGraph(g, placement, "diffuse-train-step")
      const session = yield* scopedSession(graphFile, { device: ctx.device, ...threads })
      const evaluator = yield* Effect.acquireRelease(
        lossEvaluator(student, rows, promptOf, set.prompts.length, { graphDir, device: ctx.device, batchSize: params.batchSize, ...(params.threads > 0 ? { threads: params.threads } : {}) }),
        (e) => e.release,
      )
      ctx.log(
        `${set.prompts.length} prompts, ${contexts.length} contexts, ${rows.length} targets; optimal loss Σ H(p*) = ${optimal.toFixed(4)} nats; ` +
          `${contexts.length} steps per pass of ${M} micro-batch(es) of <= ${params.batchSize} targets, ${params.passes} passes; LoRA rank ${params.rank} on ${student.loras[0].adapter.modules.size} layers on ${ctx.device.kind}`,
      )
      ctx.metric("optimal_loss", optimal)

      const padId = paddingId(ckpt.config)
      const computedPerPass = byContext.reduce((n, rs) => n + stepFeeds(rs, M, params.batchSize, padId).computed, 0)
      const r = yield* trainLoop({
        session,
        ctx,
        init: () => Effect.succeed(trainableTensors(trainable.initial)),
        epochs: params.passes,
        stepsPerEpoch: contexts.length,
        schedule: { peak: params.lr, warmupSteps: params.warmupSteps, decay: params.schedule, minRatio: params.minLrRatio },
        batch: (_step, pass, index) => {
          const f = stepFeeds(byContext[passOrder(contexts.length, params.seed, pass)[index]], M, params.batchSize, padId)
          // tokens 1: the driver's epoch_loss is then the mean loss per context
          return Effect.succeed({ feeds: f.feeds, tokens: 1, computedTokens: f.computed })
        },
        validation: {
          metric: "set_loss",
          label: `loss over the training prompts (optimal ${optimal.toFixed(4)})`,
          run: (p) => Effect.map(evaluator.evaluate(p), (s) => s.loss),
          every: contexts.length,
          patience: 0,
          ...(threshold === null ? {} : { threshold }),
          divergenceFactor: 0,
          startLabel: "the untuned model",
          keepBest: false,
        },
        checkpointEvery: params.checkpointEvery,
        divergenceHint: `lower lr (now ${params.lr}) or maxGradNorm (now ${params.maxGradNorm})`,
      })
      const final = yield* evaluator.evaluate(r.params)
      const values = Object.fromEntries(Object.keys(trainable.specs).map((n) => [n, r.params[n].data as Float32Array]))
      for (const n of Object.keys(values)) yield* checkFinite(ctx.node, `adapter ${n}`, values[n], r.params[n].dims)
      const passesRun = r.state.step / contexts.length
      const summary: TrainSummary = {
        optimalLoss: optimal,
        passLosses: r.history.map((h) => h.value),
        passesRun,
        stoppedEarly: r.state.step < r.totalSteps,
        threshold,
        prompts: set.prompts.map((p, i) => ({ id: p.id, optimal: targetEntropy(p.weights), loss: final.prompts[i].loss, targetMass: final.prompts[i].targetMass })),
      }
      ctx.log(`loss ${final.loss.toFixed(4)} after ${passesRun} passes vs optimal ${optimal.toFixed(4)} (${((final.loss / optimal - 1) * 100).toFixed(2)}% above)${summary.stoppedEarly ? `; stopped early at <= ${threshold!.toFixed(4)}` : ""}`)
      ctx.metric("train_seconds", r.seconds)
      // computed tokens (padding included) of the whole run per second of step time; a pass computes the same tokens in any order
      ctx.metric("train_tokens_per_s", (computedPerPass * passesRun) / Math.max(r.seconds, 1e-9))
      const trained = withTrainedValues(student, values).loras![0].adapter
      return yield* adapterOutput(trained, { [TRAIN_SUMMARY]: JSON.stringify(summary), train_params: JSON.stringify(params) })
    }).pipe(Effect.scoped),
})
