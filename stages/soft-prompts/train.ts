// Stage `soft-prompt-train`: k trainable vectors in front of a frozen model's input embeddings
// (variant.ts), trained for an objective's examples (examples.ts) with AdamW in the project's
// training driver (src/runtime/train-loop.ts: checkpoints and resume, validation, early stopping,
// divergence checks). With conditions in the examples the k vectors come from the condition through
// a two-layer MLP (hidden 128 in the seed), trained instead.
//
// - k = 0 is a valid point: the frozen model itself; nothing is trained (its loss is the baseline).
// - Initialisation: "zero" (the seed's) or the input embeddings of a text's tokens (Lester et al.
//   2021), cycled or cut to k tokens. A conditional prompt starts with W2 = 0, so every condition
//   gives that start at step 0, and b2 = the start.
// - Weight decay applies to the soft prompt as in the seed (starting at zero, AdamW's decay pulls it
//   back towards its start), and to the MLP's weight matrices.
// - Steps x lanes: step s trains on examples (s - 1) * lanes ... s * lanes - 1 of an endless
//   sequence of seeded shuffles of the training split, so a resumed run sees the same batches.
// - Validation every `validateEvery` steps (and before training) on the validation split; with
//   patience > 0, early stopping and the best validation's prompt as the output.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { buildTrainStep, Graph } from "../../src/graph/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { contextLength } from "../../src/models/rope.ts"
import { initConditionalSoftPrompt, prepareVariant, tokenInputEmbeddings, variantParams } from "../../src/models/variant.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { scopedSession } from "../../src/runtime/session.ts"
import { trainLoop } from "../../src/runtime/train-loop.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { openModel } from "../baking/model.ts"
import { checkTokenizer, Examples, readExamples } from "./examples.ts"
import { lossBatch, lossBatchSpec, lossEvaluator, objectiveLoss, promptVariant, SoftPrompt, softPromptOutput, type SoftPromptValue, withValues } from "./soft-prompt.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))

export const SoftPromptTrainParams = Schema.Struct({
  /** soft-prompt length; 0 = the frozen model */
  k: NonNegativeInt,
  /** "zero" or { text }: the embeddings of the text's tokens, cycled or cut to k */
  init: Schema.Union([Schema.Literal("zero"), Schema.Struct({ text: Schema.String.check(Schema.isMinLength(1)) })]),
  /** hidden width of the condition MLP (examples with conditions only) */
  hidden: PositiveInt,
  steps: PositiveInt,
  /** examples per step */
  lanes: PositiveInt,
  lr: Schema.Finite.check(Schema.isGreaterThan(0)),
  warmupSteps: NonNegativeInt,
  schedule: Schema.Literals(["cosine", "linear", "constant"]),
  weightDecay: NonNegative,
  maxGradNorm: Schema.Finite.check(Schema.isGreaterThan(0)),
  validateEvery: PositiveInt,
  /** 0 = off; else stop after this many validations without a lower loss and output the best */
  patience: NonNegativeInt,
  /** batch order and the MLP's initialisation */
  seed: NonNegativeInt,
  /** examples per validation run (does not change results) */
  validationBatchSize: PositiveInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: NonNegativeInt,
  /** also checkpoint every this many steps, 0 = at validations only (does not change results) */
  checkpointEvery: NonNegativeInt,
})
export type SoftPromptTrainParams = typeof SoftPromptTrainParams.Type

/** The training-split rows of step `step` (1-based): a pure function of (n, lanes, seed, step). */
export const stepRows = (n: number, lanes: number, seed: number, step: number): number[] => {
  const shuffles = new Map<number, number[]>()
  const order = (pass: number) => {
    if (!shuffles.has(pass)) shuffles.set(pass, makeRng(hash32(`soft-prompt-train pass ${pass}`, seed)).shuffle(Array.from({ length: n }, (_, i) => i)))
    return shuffles.get(pass)!
  }
  return Array.from({ length: lanes }, (_, j) => {
    const i = (step - 1) * lanes + j
    return order(Math.floor(i / n))[i % n]
  })
}

export const softPromptTrain = stage({
  name: "soft-prompt-train",
  version: 1,
  params: SoftPromptTrainParams,
  unkeyed: ["validationBatchSize", "threads", "checkpointEvery"],
  inputs: { model: Directory, data: Examples },
  output: SoftPrompt,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint: ckpt, tokenizer } = yield* openModel(inputs.model.path)
      const data = yield* readExamples(inputs.data)
      yield* checkTokenizer(data, ckpt, "soft-prompt-train")
      const H = ckpt.config.hiddenSize
      const C = data.conditionSize
      const longest = data.splits.train.concat(data.splits.validation).reduce((m, x) => Math.max(m, x.ids.length), 0)
      const context = contextLength(ckpt.config)
      if (params.k + longest > context.length)
        return yield* Effect.fail(new StageError({ message: `soft-prompt-train: k ${params.k} + the longest example (${longest} tokens) exceeds the model's ${context.length} positions (${context.why} of ${inputs.model.path}); shorten the examples or lower k` }))
      if (params.k === 0) {
        ctx.log(`k = 0: the frozen model ${inputs.model.path}, nothing to train (${data.objective})`)
        return softPromptOutput({ kind: "none" }, H, { train_summary: JSON.stringify({ steps: 0 }) })
      }

      const startTokens =
        params.init === "zero" ? undefined : (() => {
          const ids = tokenizer.encode(params.init.text, { addSpecialTokens: false })
          return Array.from({ length: params.k }, (_, i) => ids[i % ids.length])
        })()
      if (startTokens?.some((t) => t === undefined)) return yield* Effect.fail(new StageError({ message: `soft-prompt-train: init.text encodes to no tokens` }))
      const start = startTokens ? yield* tokenInputEmbeddings(ckpt, startTokens) : new Float32Array(params.k * H)
      const initial: SoftPromptValue =
        C === 0
          ? { kind: "plain", k: params.k, values: start }
          : yield* Effect.map(initConditionalSoftPrompt(ckpt, { conditionSize: C, hidden: params.hidden, seed: params.seed }, { k: params.k, seed: params.seed }), (cp) => ({
              kind: "conditional" as const,
              k: params.k,
              conditionSize: C,
              hidden: params.hidden,
              weights: { ...cp.weights, b2: start },
            }))
      const variant = promptVariant(ckpt, initial, true)
      const trainable = variantParams(variant)
      // as the seed: the soft prompt decays too (towards its zero start), see the header
      const specs = Object.fromEntries(Object.entries(trainable.specs).map(([n, s]) => [n, n.endsWith(".b1") || n.endsWith(".b2") ? s : { ...s, decay: true }]))

      const graphDir = path.join(ctx.workDir, "graph")
      const placement = yield* placeWeights(ckpt, graphDir)
      const g = new Graph("soft_prompt_train")
      const forward = prepareVariant(g, variant, externalWeights(g, placement), { training: true })
      buildTrainStep({
        graph: g,
        params: specs,
        batch: lossBatchSpec(C),
        adamw: { weightDecay: params.weightDecay, maxGradNorm: params.maxGradNorm },
        loss: (sub, p, b) => objectiveLoss(sub, forward, ckpt, b, p).mean,
      })
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}
      const session = yield* scopedSession(yield* writeGraph(g, placement, "soft-prompt-train-step"), { device: ctx.device, ...threads })
      const padId = paddingId(ckpt.config)
      const evaluator = yield* Effect.acquireRelease(
        lossEvaluator(variant, { graphDir, device: ctx.device, batchSize: params.validationBatchSize, threads: params.threads, padId, conditionSize: C }),
        (e) => e.release,
      )
      const train = data.splits.train
      ctx.log(
        `${data.objective}: k = ${params.k}${C > 0 ? ` from a ${C}-number condition through an MLP (hidden ${params.hidden})` : ""}, init ${params.init === "zero" ? "zero" : JSON.stringify(params.init.text)}; ` +
          `${params.steps} steps x ${params.lanes} lanes over ${train.length} training examples on ${ctx.device.kind}`,
      )
      const r = yield* trainLoop({
        session,
        ctx,
        init: () => Effect.succeed(Object.fromEntries(Object.entries(trainable.initial).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)]))),
        epochs: 1,
        stepsPerEpoch: params.steps,
        schedule: { peak: params.lr, warmupSteps: params.warmupSteps, decay: params.schedule, minRatio: 0 },
        batch: (step) => {
          const b = lossBatch(train, stepRows(train.length, params.lanes, params.seed, step), padId, C)
          return Effect.succeed({ feeds: b.feeds, tokens: b.tokens, computedTokens: b.computed })
        },
        validation: {
          metric: "val_loss",
          label: "validation loss",
          run: (p) => Effect.map(evaluator.evaluate(data.splits.validation, p), (v) => v.mean),
          every: params.validateEvery,
          patience: params.patience,
          divergenceFactor: 0,
          startLabel: "the start prompt",
          keepBest: params.patience > 0,
        },
        checkpointEvery: params.checkpointEvery,
        divergenceHint: `lower lr (now ${params.lr}) or maxGradNorm (now ${params.maxGradNorm})`,
      })
      const values: Record<string, Float32Array> = {}
      for (const [n, t] of Object.entries(r.params)) {
        values[n] = t.data as Float32Array
        yield* checkFinite(ctx.node, n, values[n], t.dims)
      }
      const trained = withValues(initial, values)
      ctx.metric("train_seconds", r.seconds)
      ctx.metric("train_tokens_per_s", r.trainedTokens / Math.max(r.seconds, 1e-9))
      ctx.log(`validation loss ${r.history[0].value.toFixed(4)} -> ${r.output!.value.toFixed(4)} (step ${r.output!.step}) after ${r.state.step} steps${r.stopped ? `; stopped early: ${r.stopped}` : ""}`)
      const summary = { steps: r.state.step, outputStep: r.output!.step, validation: r.history.map((h) => ({ step: h.step, loss: h.value })), trainedTokens: r.trainedTokens }
      return softPromptOutput(trained, H, { train_summary: JSON.stringify(summary) })
    }).pipe(Effect.scoped),
})
