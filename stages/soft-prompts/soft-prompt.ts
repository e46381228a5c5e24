// What the soft-prompt stages share: the SoftPrompt artifact, the model variant it stands for, the
// one loss every objective trains and is tested with, and its batches.
//
// SoftPrompt (tensors):
//   kind "none"         k = 0: the frozen model itself (no tensors)
//   kind "plain"        `prompt_embeddings` [k, H] (PEFT's key; `pipe`'s run folder gets a PEFT
//                       prompt-tuning directory of it)
//   kind "conditional"  the condition MLP (variant.ts names: condition_mlp.w1 [hidden, C], b1,
//                       w2 [k*H, hidden], b2): condition [C] -> k vectors
//   metadata: `soft_prompt` {kind, k, conditionSize, hidden}, `train_summary`.
//
// Loss: the mean cross-entropy over the scored positions of a batch (targets >= 0), the targets
// being whatever the objective put there (next token, skip-s, moves); the model is the variant
// (checkpoint + soft prompt) through variant.ts prepareVariant, so the k virtual positions come
// first and are never scored. Batches are right-padded (pad id, attention mask 0, not scored):
// under causal attention the padding after a row's tokens does not change them.
import { Effect, Schema } from "effect"
import * as ort from "onnxruntime-node"
import { Artifact, decodeArtifact, StageError, type TensorsOutput, type TensorsValue } from "../../src/engine/index.ts"
import { crossEntropy, Graph, type MeanLoss, type Value } from "../../src/graph/index.ts"
import { fromNumbers, type Tensor, toFloat32 } from "../../src/core/safetensors.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { conditionMlpShapes } from "../../src/models/adapters.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { PROMPT_EMBEDDINGS } from "../../src/models/peft.ts"
import { type ConditionMlpValues, prepareVariant, type Variant, type VariantForward, variantNames, variantParams } from "../../src/models/variant.ts"
import { createSession, type Device, releaseSession, runSession } from "../../src/runtime/session.ts"
import type { Example } from "./examples.ts"

export const SoftPrompt = Artifact.tensors("SoftPrompt")

export const SoftPromptMeta = Schema.Struct({
  kind: Schema.Literals(["none", "plain", "conditional"]),
  k: Schema.Int,
  conditionSize: Schema.Int,
  hidden: Schema.Int,
})
export type SoftPromptMeta = typeof SoftPromptMeta.Type

export type SoftPromptValue =
  | { readonly kind: "none" }
  | { readonly kind: "plain"; readonly k: number; readonly values: Float32Array }
  | { readonly kind: "conditional"; readonly k: number; readonly conditionSize: number; readonly hidden: number; readonly weights: ConditionMlpValues }

export const kOf = (p: SoftPromptValue): number => (p.kind === "none" ? 0 : p.k)

const mlpKeys = ["w1", "b1", "w2", "b2"] as const

/** The variant of `p` on `ckpt`, its values trainable or frozen. */
export const promptVariant = (ckpt: Checkpoint, p: SoftPromptValue, trainable: boolean): Variant =>
  p.kind === "none"
    ? { checkpoint: ckpt }
    : p.kind === "plain"
      ? { checkpoint: ckpt, softPrompt: { k: p.k, values: p.values, trainable } }
      : { checkpoint: ckpt, conditionalSoftPrompt: { k: p.k, conditionSize: p.conditionSize, hidden: p.hidden, weights: p.weights, trainable } }

/** `p` with the trained values (by variant parameter name) in place of its own. */
export const withValues = (p: SoftPromptValue, values: Readonly<Record<string, Float32Array>>): SoftPromptValue =>
  p.kind === "none"
    ? p
    : p.kind === "plain"
      ? { ...p, values: values[variantNames.softPrompt] }
      : { ...p, weights: { w1: values[variantNames.conditionMlp("w1")], b1: values[variantNames.conditionMlp("b1")], w2: values[variantNames.conditionMlp("w2")], b2: values[variantNames.conditionMlp("b2")] } }

export const softPromptOutput = (p: SoftPromptValue, hiddenSize: number, metadata: Readonly<Record<string, string>>): TensorsOutput => {
  const tensors = new Map<string, Tensor>()
  const meta: SoftPromptMeta = { kind: p.kind, k: kOf(p), conditionSize: p.kind === "conditional" ? p.conditionSize : 0, hidden: p.kind === "conditional" ? p.hidden : 0 }
  if (p.kind === "plain") tensors.set(PROMPT_EMBEDDINGS, fromNumbers(p.values, "F32", [p.k, hiddenSize]))
  if (p.kind === "conditional") {
    const shapes = conditionMlpShapes(p.conditionSize, p.hidden, p.k, hiddenSize)
    for (const key of mlpKeys) tensors.set(variantNames.conditionMlp(key), fromNumbers(p.weights[key], "F32", shapes[key]))
  }
  return { tensors, metadata: { ...metadata, soft_prompt: JSON.stringify(meta) } }
}

export const readSoftPrompt = (value: Pick<TensorsValue, "path" | "metadata" | "read">): Effect.Effect<SoftPromptValue, Error> =>
  Effect.gen(function* () {
    const meta = yield* decodeArtifact(Schema.fromJsonString(SoftPromptMeta), value.path, "a SoftPrompt artifact (metadata soft_prompt)", value.metadata.soft_prompt)
    if (meta.kind === "none") return { kind: "none" } as const
    return yield* Effect.try({
      try: (): SoftPromptValue =>
        meta.kind === "plain"
          ? { kind: "plain", k: meta.k, values: toFloat32(value.read(PROMPT_EMBEDDINGS)) }
          : {
              kind: "conditional",
              k: meta.k,
              conditionSize: meta.conditionSize,
              hidden: meta.hidden,
              weights: { w1: toFloat32(value.read(variantNames.conditionMlp("w1"))), b1: toFloat32(value.read(variantNames.conditionMlp("b1"))), w2: toFloat32(value.read(variantNames.conditionMlp("w2"))), b2: toFloat32(value.read(variantNames.conditionMlp("b2"))) },
            },
      catch: (e) => new StageError({ message: `${value.path}: not a ${meta.kind} soft prompt: ${e instanceof Error ? e.message : String(e)}` }),
    })
  })

// ------------------------------------------------------------------------------ loss and batches

export const lossInputs = { ids: "input_ids", mask: "attention_mask", targets: "targets", lossMask: "loss_mask", condition: variantNames.condition } as const

/** The batch inputs' specs: [B, T] ids, mask, targets, loss mask; [B, C] condition when C > 0. */
export const lossBatchSpec = (conditionSize: number) => ({
  [lossInputs.ids]: { dtype: "int64" as const, shape: ["B", "T"] },
  [lossInputs.mask]: { dtype: "int64" as const, shape: ["B", "T"] },
  [lossInputs.targets]: { dtype: "int64" as const, shape: ["B", "T"] },
  [lossInputs.lossMask]: { dtype: "float32" as const, shape: ["B", "T"] },
  ...(conditionSize > 0 ? { [lossInputs.condition]: { dtype: "float32" as const, shape: ["B", conditionSize] } } : {}),
})

/** The objective's loss on one batch: cross-entropy summed and counted over the scored positions. */
export const objectiveLoss = (sub: Graph, forward: VariantForward, ckpt: Checkpoint, b: Readonly<Record<string, Value>>, params?: Readonly<Record<string, Value>>): MeanLoss => {
  const out = forward(sub, { ids: b[lossInputs.ids], mask: b[lossInputs.mask], ...(b[lossInputs.condition] ? { condition: b[lossInputs.condition] } : {}) }, params)
  const hidden = sub.reshape(out.hidden, [-1, ckpt.config.hiddenSize])
  return crossEntropy(sub, { hidden, weight: out.lmHead, ...(out.logitSoftcap === undefined ? {} : { softcap: out.logitSoftcap }) }, sub.reshape(b[lossInputs.targets], [-1]), sub.reshape(b[lossInputs.lossMask], [-1]))
}

export interface LossBatch {
  readonly feeds: Record<string, ort.Tensor>
  /** scored positions */
  readonly tokens: number
  /** rows x width: positions computed, padding included */
  readonly computed: number
}

/** Feeds of the examples `rows` of `examples`, right-padded to the longest. */
export const lossBatch = (examples: ReadonlyArray<Example>, rows: ReadonlyArray<number>, padId: number, conditionSize: number): LossBatch => {
  const B = rows.length
  const T = rows.reduce((m, r) => Math.max(m, examples[r].ids.length), 0)
  const ids = new BigInt64Array(B * T).fill(BigInt(padId))
  const mask = new BigInt64Array(B * T)
  const targets = new BigInt64Array(B * T)
  const lossMask = new Float32Array(B * T)
  const condition = new Float32Array(B * conditionSize)
  let tokens = 0
  rows.forEach((r, i) => {
    const x = examples[r]
    x.ids.forEach((id, t) => {
      ids[i * T + t] = BigInt(id)
      mask[i * T + t] = 1n
      if (x.targets[t] >= 0) {
        targets[i * T + t] = BigInt(x.targets[t])
        lossMask[i * T + t] = 1
        tokens++
      }
    })
    if (conditionSize > 0) condition.set(x.condition ?? [], i * conditionSize)
  })
  const feeds: Record<string, ort.Tensor> = {
    [lossInputs.ids]: new ort.Tensor("int64", ids, [B, T]),
    [lossInputs.mask]: new ort.Tensor("int64", mask, [B, T]),
    [lossInputs.targets]: new ort.Tensor("int64", targets, [B, T]),
    [lossInputs.lossMask]: new ort.Tensor("float32", lossMask, [B, T]),
  }
  if (conditionSize > 0) feeds[lossInputs.condition] = new ort.Tensor("float32", condition, [B, conditionSize])
  return { feeds, tokens, computed: B * T }
}

export interface MeanTestLoss {
  readonly mean: number
  readonly tokens: number
}

export interface LossEvaluator {
  /** mean loss per scored token over `examples`; `values`: the variant's trainable values (none when frozen) */
  readonly evaluate: (examples: ReadonlyArray<Example>, values?: Readonly<Record<string, ort.Tensor>>) => Effect.Effect<MeanTestLoss, Error>
  readonly release: Effect.Effect<void>
}

const LOSS_SUM = "loss_sum"

/**
 * The objective's loss of `variant` over example sets, batch by batch, in a forward-only graph
 * whose trainable values (when any) are inputs: validation feeds the values being trained, the test
 * feeds nothing (a frozen variant).
 */
export const lossEvaluator = (
  variant: Variant,
  o: { readonly graphDir: string; readonly device: Device; readonly batchSize: number; readonly threads: number; readonly padId: number; readonly conditionSize: number },
): Effect.Effect<LossEvaluator, Error> =>
  Effect.gen(function* () {
    const ckpt = variant.checkpoint
    const placement = yield* placeWeights(ckpt, o.graphDir)
    const g = new Graph("soft_prompt_loss")
    const specs = variantParams(variant).specs
    const trainable = Object.keys(specs)
    const params = Object.fromEntries(trainable.map((n) => [n, g.input(n, "float32", [...specs[n].shape])]))
    const batch = Object.fromEntries(Object.entries(lossBatchSpec(o.conditionSize)).map(([n, s]) => [n, g.input(n, s.dtype, s.shape)]))
    const forward = prepareVariant(g, variant, externalWeights(g, placement), { training: trainable.length > 0 })
    g.outputAs(LOSS_SUM, objectiveLoss(g, forward, ckpt, batch, params).sum)
    const file = yield* writeGraph(g, placement, trainable.length > 0 ? "soft-prompt-loss-trainable" : "soft-prompt-loss")
    const session = yield* createSession(file, { device: o.device, ...(o.threads > 0 ? { intraOpThreads: o.threads } : {}) })
    const evaluate = (examples: ReadonlyArray<Example>, values?: Readonly<Record<string, ort.Tensor>>) =>
      Effect.gen(function* () {
        const missing = trainable.filter((n) => !values?.[n])
        if (missing.length > 0) return yield* Effect.fail(new StageError({ message: `soft-prompt loss: no values for the trainable ${missing.join(", ")}` }))
        const feeds = Object.fromEntries(trainable.map((n) => [n, values![n]]))
        // rows sorted by length: less padding per batch
        const order = examples.map((_, i) => i).sort((a, b) => examples[a].ids.length - examples[b].ids.length)
        let sum = 0
        let tokens = 0
        for (let s = 0; s < order.length; s += o.batchSize) {
          const b = lossBatch(examples, order.slice(s, s + o.batchSize), o.padId, o.conditionSize)
          const out = yield* runSession(session, { ...b.feeds, ...feeds }, [LOSS_SUM])
          sum += (out[LOSS_SUM].data as Float32Array)[0]
          tokens += b.tokens
          yield* Effect.yieldNow
        }
        if (tokens === 0) return yield* Effect.fail(new StageError({ message: "soft-prompt loss: the examples have no scored token" }))
        return { mean: sum / tokens, tokens }
      })
    return { evaluate, release: releaseSession(session) }
  })
