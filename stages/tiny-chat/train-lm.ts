// Stage: full-parameter causal-LM training of a Llama checkpoint on chats, through the project's
// autodiff (one onnxruntime run = one AdamW step with gradient clipping). The loss is the
// cross-entropy of the final assistant answer and its closing eos; the prompt (system, user) is
// context only. Learning rate: linear warmup then cosine decay to `minLrRatio` x peak.
// Every `checkpointEvery` steps the parameters, AdamW moments and step go to ctx.workDir, so a
// killed run resumes where it stopped and, the batch order being a function of (seed, epoch),
// computes the same weights as an uninterrupted one.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { stage } from "../../src/engine/index.ts"
import { buildTrainStep, crossEntropy, learningRate, type Schedule, serialize } from "../../src/graph/index.ts"
import { fromNumbers, readFile, type Tensor, toFloat32, writeFile } from "../../src/models/safetensors.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { createSession } from "../../src/runtime/session.ts"
import { initTrainState, type TrainState, trainStep } from "../../src/runtime/train.ts"
import { ChatCorpusFile, configOf, LlamaWeights, materializeTokenizer, readCorpus, TokenizerJson } from "./artifacts.ts"
import { rightPaddedDecoder } from "./llama-graph.ts"
import { batchesPerEpoch, encodeChat, epochBatches, makeBatch, type TrainSequence } from "./chat-batches.ts"
import { weightsInFile } from "../../src/models/checkpoint.ts"
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

const CHECKPOINT = "checkpoint.safetensors"

const toOrt = (t: Tensor): ort.Tensor => new ort.Tensor("float32", toFloat32(t), [...t.shape])
const fromOrt = (t: ort.Tensor): Tensor => fromNumbers(t.data as Float32Array, "F32", t.dims)

/** Parameters, moments, step, elapsed seconds and per-epoch losses, written atomically (writeFile renames). */
const saveCheckpoint = (file: string, state: TrainState, seconds: number, epochLosses: ReadonlyArray<number>) => {
  const tensors = new Map<string, Tensor>()
  for (const k of Object.keys(state.params)) {
    tensors.set(`param/${k}`, fromOrt(state.params[k]))
    tensors.set(`m/${k}`, fromOrt(state.m[k]))
    tensors.set(`v/${k}`, fromOrt(state.v[k]))
  }
  return writeFile(file, tensors, { step: String(state.step), seconds: String(seconds), epoch_losses: JSON.stringify(epochLosses) })
}

const loadCheckpoint = (file: string, names: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const c = yield* readFile(file)
    const pick = (prefix: string) => {
      const out: Record<string, ort.Tensor> = {}
      for (const k of names) {
        const t = c.tensors.get(`${prefix}/${k}`)
        if (t === undefined) throw new Error(`${file}: missing ${prefix}/${k}; delete the file to restart training`)
        out[k] = toOrt(t)
      }
      return out
    }
    const state: TrainState = { params: pick("param"), m: pick("m"), v: pick("v"), step: Number(c.metadata.step) }
    return { state, seconds: Number(c.metadata.seconds), epochLosses: JSON.parse(c.metadata.epoch_losses ?? "[]") as number[] }
  })

export const trainLm = stage({
  name: "train-lm",
  version: 2, // 2: the training time is a metric, not in the weights' metadata
  params: TrainLmParams,
  unkeyed: ["checkpointEvery", "threads"],
  inputs: { corpus: ChatCorpusFile, tokenizer: TokenizerJson, init: LlamaWeights },
  output: LlamaWeights,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const config = yield* configOf(inputs.init)
      const tokenizer = yield* materializeTokenizer(path.join(ctx.workDir, "tokenizer"), inputs.tokenizer)
      const corpus = yield* readCorpus(inputs.corpus.path)
      const seqs: TrainSequence[] = yield* Effect.try({
        try: () => corpus.train.map((c) => encodeChat(tokenizer, c.messages, params.maxLength)),
        catch: (e) => new Error(`${inputs.corpus.path}: ${e instanceof Error ? e.message : String(e)}`),
      })
      if (config.padTokenId === undefined) return yield* Effect.fail(new Error("the model config has no pad_token_id"))
      const padId = config.padTokenId
      const perEpoch = batchesPerEpoch(seqs.length, params.batchSize)
      const totalSteps = perEpoch * params.epochs
      const schedule: Schedule = { peak: params.lr, warmupSteps: params.warmupSteps, totalSteps, decay: "cosine", minRatio: params.minLrRatio }

      const weights = yield* Effect.mapError(weightsInFile(config, inputs.init.path, inputs.init.header), (e) => new Error(e.message))
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
      const session = yield* createSession(serialize(graph), params.threads > 0 ? { intraOpThreads: params.threads } : {})

      const checkpointFile = path.join(ctx.workDir, CHECKPOINT)
      let state: TrainState
      let seconds = 0
      let epochLosses: number[] = []
      if (fs.existsSync(checkpointFile)) {
        const resumed = yield* loadCheckpoint(checkpointFile, names)
        state = resumed.state
        seconds = resumed.seconds
        epochLosses = resumed.epochLosses
        ctx.log(`resumed from ${checkpointFile} at step ${state.step} of ${totalSteps}`)
      } else {
        const init: Record<string, ort.Tensor> = {}
        for (const n of names) init[n] = toOrt(inputs.init.read(n))
        state = initTrainState(init)
      }
      ctx.log(`${seqs.length} chats, ${perEpoch} steps per epoch, ${totalSteps} steps; ${names.length} tensors, ${refs.reduce((a, r) => a + r.shape.reduce((x, y) => x * y, 1), 0)} parameters`)
      ctx.progress.total(totalSteps, "steps")
      ctx.progress.set(state.step)

      let epochCache: { epoch: number; batches: TrainSequence[][] } | undefined
      // a resumed run restarts the running mean of its epoch at the checkpoint
      let epochLoss = 0
      let epochTokens = 0
      while (state.step < totalSteps) {
        const step = state.step + 1
        const epoch = Math.floor((step - 1) / perEpoch)
        if (epochCache?.epoch !== epoch) epochCache = { epoch, batches: epochBatches(seqs, params.batchSize, params.seed, epoch) }
        const batch = makeBatch(epochCache.batches[(step - 1) % perEpoch], padId)
        const dims = [batch.rows, batch.width]
        const lr = learningRate(schedule, step)
        const started = performance.now()
        const result = yield* trainStep(
          session,
          state,
          { ids: new ort.Tensor("int64", batch.ids, dims), targets: new ort.Tensor("int64", batch.targets, dims), mask: new ort.Tensor("float32", batch.mask, dims) },
          lr,
        )
        const elapsed = (performance.now() - started) / 1000
        seconds += elapsed
        state = result.state
        if (!Number.isFinite(result.loss)) return yield* Effect.fail(new Error(`training diverged at step ${step}: loss ${result.loss} (lower lr or maxGradNorm)`))
        ctx.metric("loss", result.loss, step)
        ctx.metric("lr", lr, step)
        ctx.metric("grad_norm", result.gradNorm, step)
        // tokens through forward and backward per second, padding included (what the step computes)
        ctx.metric("tokens_per_s", (batch.rows * batch.width) / elapsed, step)
        epochLoss += result.loss * batch.tokens
        epochTokens += batch.tokens
        if (step % perEpoch === 0) {
          epochLosses = [...epochLosses, epochLoss / epochTokens]
          ctx.metric("epoch_loss", epochLoss / epochTokens, epoch + 1)
          ctx.log(`epoch ${epoch + 1}/${params.epochs}: loss ${(epochLoss / epochTokens).toFixed(4)}, ${seconds.toFixed(0)} s of training so far`)
          epochLoss = 0
          epochTokens = 0
        }
        if (step % params.checkpointEvery === 0 || step === totalSteps) yield* saveCheckpoint(checkpointFile, state, seconds, epochLosses)
        ctx.progress.set(step)
        yield* Effect.yieldNow
      }
      const tensors = new Map<string, Tensor>()
      for (const n of names) {
        yield* checkFinite(ctx.node, `weight ${n}`, state.params[n].data as Float32Array, state.params[n].dims)
        tensors.set(n, fromOrt(state.params[n]))
      }
      ctx.log(`trained ${totalSteps} steps in ${seconds.toFixed(0)} s`)
      // a run-specific fact: a metric, never part of the weights' content-hashed metadata
      ctx.metric("train_seconds", seconds)
      return { tensors, metadata: { config: inputs.init.metadata.config, train_params: JSON.stringify(params), train_steps: String(totalSteps), epoch_losses: JSON.stringify(epochLosses.map((l) => Number(l.toFixed(4)))) } }
    }),
})
