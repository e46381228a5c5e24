// Stage: full-parameter causal-LM training of a Llama checkpoint on chats (and the trainer that
// train-text and tune-domain share with it), through the project's
// autodiff (one onnxruntime run = one AdamW step with gradient clipping). The loss is the
// cross-entropy of the final assistant answer and its closing eos; the prompt (system, user) is
// context only. Learning rate: linear warmup then cosine decay to `minLrRatio` x peak. The loop
// (checkpoints every `checkpointEvery` steps, resume, divergence check, metrics) is
// src/runtime/train-loop.ts; the batch order being a function of (seed, epoch), a killed run
// resumes to the same weights as an uninterrupted one.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { errorMessage, type StageContext, StageError, stage, type TensorsValue } from "../../src/engine/index.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import { buildTrainStep, crossEntropy, serialize } from "../../src/graph/index.ts"
import type { Tensor } from "../../src/core/safetensors.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { scopedSession } from "../../src/runtime/session.ts"
import { fromOrt, toOrt, trainLoop, type TrainLoopResult } from "../../src/runtime/train-loop.ts"
import { ChatCorpusFile, configOf, LlamaWeights, materializeTokenizer, readCorpus, TokenizerJson } from "./artifacts.ts"
import { rightPaddedDecoder } from "./llama-graph.ts"
import { batchesPerEpoch, encodeChat, epochBatches, makeBatch, type TrainSequence } from "./chat-batches.ts"
import { type ModelConfig, type ModelWeights, paddingId, readWeight, weightsInFile } from "../../src/models/checkpoint.ts"
import { allWeightRefs, paramWeights } from "../../src/models/forward.ts"

const Positive = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))

export const TrainLmParams = Schema.Struct({
  epochs: Positive,
  batchSize: Positive,
  /** peak learning rate */
  lr: Schema.Finite.check(Schema.isGreaterThan(0)),
  warmupSteps: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** final learning rate as a fraction of the peak */
  minLrRatio: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  weightDecay: NonNegative,
  maxGradNorm: Schema.Finite.check(Schema.isGreaterThan(0)),
  /** longest chat in tokens (a longer one is an error, not silently cut) */
  maxLength: Positive,
  seed: Schema.Int,
  /** steps between checkpoints in the work dir (does not change results) */
  checkpointEvery: Positive,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
})

/** A causal LM to train: its config, weight layout and the initial values of every weight. */
export interface TrainableModel {
  readonly config: ModelConfig
  readonly weights: ModelWeights
  /** where the weights come from, for messages */
  readonly source: string
}

/**
 * Full-parameter training of `model` on token sequences (see TrainSequence: the loss covers the
 * targets from `answerStart` on), returning the trained weights as float32 tensors and the loop's
 * result. Shared by train-lm (chats), train-text and tune-domain (plain documents).
 */
export const trainCausalLm = (params: typeof TrainLmParams.Type, ctx: StageContext, model: TrainableModel, seqs: ReadonlyArray<TrainSequence>, what: string) =>
  Effect.gen(function* () {
    const { config, weights } = model
    const padId = paddingId(config)
    const perEpoch = batchesPerEpoch(seqs.length, params.batchSize)
    const refs = allWeightRefs(weights)
    const names = refs.map((r) => r.name)
    const graph = buildTrainStep({
      // norm scales are not weight-decayed
      params: Object.fromEntries(refs.map((r) => [r.name, { shape: [...r.shape], decay: r.shape.length > 1 }])),
      batch: { ids: { dtype: "int64", shape: ["B", "T"] }, targets: { dtype: "int64", shape: ["B", "T"] }, mask: { dtype: "float32", shape: ["B", "T"] } },
      loss: (g, p, b) => {
        const out = rightPaddedDecoder(g, config, weights, paramWeights(p), b.ids)
        const hidden = g.reshape(out.hidden, [-1, config.hiddenSize])
        return crossEntropy(g, { hidden, weight: out.lmHead }, g.reshape(b.targets, [-1]), g.reshape(b.mask, [-1]), { chunk: 512 }).mean
      },
      adamw: { weightDecay: params.weightDecay, maxGradNorm: params.maxGradNorm, beta2: 0.98 },
    })
    // released when the stage ends: on success, failure and interruption alike
    const session = yield* scopedSession(serialize(graph), params.threads > 0 ? { intraOpThreads: params.threads } : {})

    ctx.log(`${seqs.length} ${what}, ${perEpoch} steps per epoch, ${perEpoch * params.epochs} steps; ${names.length} tensors, ${refs.reduce((a, r) => a + r.shape.reduce((x, y) => x * y, 1), 0)} parameters`)
    let epochCache: { epoch: number; batches: TrainSequence[][] } | undefined
    const r = yield* trainLoop({
      session,
      ctx,
      init: () => Effect.map(Effect.forEach(refs, (ref) => readWeight(ref)), (ts) => Object.fromEntries(ts.map((t, i) => [names[i], toOrt(t)]))),
      epochs: params.epochs,
      stepsPerEpoch: perEpoch,
      schedule: { peak: params.lr, warmupSteps: params.warmupSteps, decay: "cosine", minRatio: params.minLrRatio },
      batch: (_step, epoch, index) => {
        if (epochCache?.epoch !== epoch) epochCache = { epoch, batches: epochBatches(seqs, params.batchSize, params.seed, epoch) }
        const batch = makeBatch(epochCache.batches[index], padId)
        const dims = [batch.rows, batch.width]
        return Effect.succeed({
          feeds: { ids: new ort.Tensor("int64", batch.ids, dims), targets: new ort.Tensor("int64", batch.targets, dims), mask: new ort.Tensor("float32", batch.mask, dims) },
          tokens: batch.tokens,
          // tokens through forward and backward, padding included (what the step computes)
          computedTokens: batch.rows * batch.width,
        })
      },
      checkpointEvery: params.checkpointEvery,
      divergenceHint: `lower lr (now ${params.lr}) or maxGradNorm (now ${params.maxGradNorm})`,
    })
    const tensors = new Map<string, Tensor>()
    for (const n of names) {
      yield* checkFinite(ctx.node, `weight ${n}`, r.params[n].data as Float32Array, r.params[n].dims)
      tensors.set(n, fromOrt(r.params[n]))
    }
    ctx.log(`trained ${r.totalSteps} steps in ${r.seconds.toFixed(0)} s (${(r.trainedTokens / r.seconds).toFixed(0)} trained tokens/s)`)
    // run-specific facts: metrics, never part of the weights' content-hashed metadata
    ctx.metric("train_seconds", r.seconds)
    ctx.metric("train_tokens", r.trainedTokens)
    return { tensors, result: r }
  })

/** The metadata train-lm, train-text and tune-domain record next to the weights (see write-model). */
export const trainedMetadata = (config: string, params: typeof TrainLmParams.Type, r: TrainLoopResult) => ({
  config,
  train_params: JSON.stringify(params),
  train_steps: String(r.totalSteps),
  epoch_losses: JSON.stringify(r.epochLosses.map((l) => Number(l.toFixed(4)))),
})

/**
 * The run of a training stage whose init is a LlamaWeights artifact: the tokenizer files are
 * materialised in the work dir, `sequences` encodes the training data with them, and the trained
 * weights come back with their config and training record in the metadata.
 */
export const trainFromWeights = <E>(
  params: typeof TrainLmParams.Type,
  ctx: StageContext,
  init: TensorsValue,
  tokenizerFiles: TokenizerJson,
  sequences: (tokenizer: TextTokenizer) => Effect.Effect<ReadonlyArray<TrainSequence>, E>,
  what: string,
) =>
  Effect.gen(function* () {
    const config = yield* configOf(init)
    const tokenizer = yield* materializeTokenizer(path.join(ctx.workDir, "tokenizer"), tokenizerFiles)
    const seqs = yield* sequences(tokenizer)
    const weights = yield* weightsInFile(config, init.path, init.header)
    const { tensors, result } = yield* trainCausalLm(params, ctx, { config, weights, source: init.path }, seqs, what)
    return { tensors, metadata: trainedMetadata(init.metadata.config!, params, result) }
  })

/**
 * What train-lm, train-text and train-chat share as stages: the run (train the `init` weights on the
 * sequences that `sequences` encodes from the stage's inputs), the unkeyed params, the output and
 * the process isolation. Each declares its own stage, so the source file hashed for it is its own.
 */
export const trainingStage = {
  unkeyed: ["checkpointEvery", "threads"] as const,
  output: LlamaWeights,
  resources: { isolate: "process" } as const,
  run:
    <P extends typeof TrainLmParams.Type, I extends { readonly init: TensorsValue; readonly tokenizer: TokenizerJson }, E>(
      what: string | ((params: P) => string),
      sequences: (params: P, inputs: I, tokenizer: TextTokenizer) => Effect.Effect<ReadonlyArray<TrainSequence>, E>,
    ) =>
    ({ params, inputs, ctx }: { readonly params: P; readonly inputs: I; readonly ctx: StageContext }) =>
      trainFromWeights(params, ctx, inputs.init, inputs.tokenizer, (tokenizer) => sequences(params, inputs, tokenizer), typeof what === "string" ? what : what(params)).pipe(Effect.scoped),
}

/** Encodes sequences, turning an encoding error (a too long one) into a StageError naming `file`. */
export const encodeAll = <A>(file: string, items: ReadonlyArray<A>, encode: (a: A) => TrainSequence) =>
  Effect.try({ try: () => items.map(encode), catch: (e) => new StageError({ message: `${file}: ${errorMessage(e)}` }) })

export const trainLm = stage({
  name: "train-lm",
  version: 2, // 2: the training time is a metric, not in the weights' metadata
  params: TrainLmParams,
  inputs: { corpus: ChatCorpusFile, tokenizer: TokenizerJson, init: LlamaWeights },
  ...trainingStage,
  run: trainingStage.run("chats", (params, inputs, tokenizer) =>
    Effect.flatMap(readCorpus(inputs.corpus.path), (corpus) => encodeAll(inputs.corpus.path, corpus.train, (c) => encodeChat(tokenizer, c.messages, params.maxLength))),
  ),
})
