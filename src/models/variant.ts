// A model variant: a checkpoint plus interventions, and the one function that turns it into hidden
// states (and so logits) in a graph. Training graphs (lora-train), the exact KL evaluator
// (stages/baking/distill.ts), scoring, generation (step and decode-loop graphs) and ensembles all
// build their model part with prepareVariant.
//
// Interventions (any combination; each frozen or trainable):
//   loras                  LoRA adapters (peft.ts LoraAdapter), applied additively on the linear
//                          layers they target (adapters.ts loraHook); several may share a layer.
//   softPrompt             k vectors [k, H] in inputs_embeds space (what tokenEmbeddings returns;
//                          Gemma 2 scales them by sqrt(H) like any inputs_embeds).
//   conditionalSoftPrompt  k vectors per row from a condition [B, C] through a two-layer MLP
//                          (adapters.ts conditionalSoftPrompt); the condition is a graph input.
//   prefix                 token ids (a system prompt or text prefix), embedded as the model embeds them.
// They form a block of K "virtual" positions in front of the real tokens, in the order soft prompt,
// conditional soft prompt, prefix, at positions 0..K-1. The caller's ids and mask cover the real
// tokens only; the function extends the mask by K ones on the left. With a KV cache the virtual
// positions are part of the cache: a run whose past is empty (prefill, or a full recompute) feeds
// them, a run with a past of at least K columns (decode) does not. On a left-padded row the
// padding ends up between the virtual block and the tokens; it is masked out and positions come
// from the mask, so every row sees the block at 0..K-1 and its own tokens from K on.
//
// Values: in a training graph (PrepareOptions.training) a trainable intervention's values come from
// the `params` record handed to the apply function (buildTrainStep's params), named by
// variantParams; every other value (and every value in an inference graph: generation, scoring)
// becomes an initializer of the top-level graph (prepared once, so Loop bodies can use them).
// After training, withTrainedValues puts the trained values into the variant.
//
// API
//   checkVariant(v)                         sizes, token ids, adapter modules, names (VariantError)
//   prepareVariant(g, v, source, { prefix?, training? }) -> (sub, { ids, mask, past?, condition?, loraDropout? }, params?) -> DecoderOutputs
//   variantParams(v) -> { specs, initial }  the trainable values for buildTrainStep / initTrainState
//   withTrainedValues(v, trained)           the variant with trained values, frozen
//   initSoftPrompt(ckpt, start), initConditionalSoftPrompt(ckpt, sizes, start)   trainable starts at vocabulary embeddings
//   virtualLength(v), asVariant(checkpoint | variant, adapter?)
import { Data, Effect } from "effect"
import type { Graph, Value } from "../graph/index.ts"
import type { ParamSpec } from "../graph/optim.ts"
import { conditionalSoftPrompt, conditionMlpShapes, loraHook, loraName, type LoraValues } from "./adapters.ts"
import { type Checkpoint, readWeightFloat64 } from "./checkpoint.ts"
import { decoder, type DecoderOutputs, gemmaEmbedScale, type LinearHook, tokenEmbeddings, type WeightSource } from "./forward.ts"
import { mulberry32 } from "../core/random.ts"
import { checkAdapterModules, type LoraAdapter, loraScale } from "./peft.ts"
import { fromNumbers, toFloat32 } from "../core/safetensors.ts"

export class VariantError extends Data.TaggedError("VariantError")<{ readonly message: string }> {}

export interface LoraIntervention {
  /** [A-Za-z0-9_-]+; prefixes its graph names: "<name>.lora.<module>.A|B" */
  readonly name: string
  /** the frozen values, or the starting values when trainable */
  readonly adapter: LoraAdapter
  readonly trainable?: boolean
}

export interface SoftPrompt {
  readonly k: number
  /** [k, H] row-major: the frozen values, or the starting values when trainable */
  readonly values: Float32Array
  readonly trainable?: boolean
}

export interface ConditionMlpValues {
  readonly w1: Float32Array
  readonly b1: Float32Array
  readonly w2: Float32Array
  readonly b2: Float32Array
}

export interface ConditionalSoftPrompt {
  readonly k: number
  /** C: the condition vector's length */
  readonly conditionSize: number
  /** the MLP's hidden width */
  readonly hidden: number
  /** shapes: adapters.ts conditionMlpShapes */
  readonly weights: ConditionMlpValues
  readonly trainable?: boolean
}

export interface Variant {
  readonly checkpoint: Checkpoint
  readonly loras?: ReadonlyArray<LoraIntervention>
  readonly softPrompt?: SoftPrompt
  readonly conditionalSoftPrompt?: ConditionalSoftPrompt
  /** token ids in front of every input (a system prompt, a text prefix) */
  readonly prefix?: ReadonlyArray<number>
}

/** Graph input / parameter names of a variant's values and of the condition input. */
export const variantNames = {
  softPrompt: "soft_prompt",
  conditionMlp: (which: keyof ConditionMlpValues) => `condition_mlp.${which}`,
  lora: (intervention: string, module: string, which: "A" | "B") => `${intervention}.${loraName(module, which)}`,
  condition: "condition",
} as const

/** K: the number of virtual positions in front of the real tokens. */
export const virtualLength = (v: Variant): number => (v.softPrompt?.k ?? 0) + (v.conditionalSoftPrompt?.k ?? 0) + (v.prefix?.length ?? 0)

/**
 * The variant a model argument stands for: a checkpoint (with `adapter`: the checkpoint with that one
 * frozen LoRA, named "adapter") or a variant (which takes its LoRAs among its interventions).
 */
export const asVariant = (model: Checkpoint | Variant, adapter?: LoraAdapter): Effect.Effect<Variant, VariantError> => {
  if (!("checkpoint" in model)) return Effect.succeed({ checkpoint: model, ...(adapter ? { loras: [{ name: "adapter", adapter }] } : {}) })
  return adapter
    ? Effect.fail(new VariantError({ message: `variant of ${model.checkpoint.dir}: give the adapter as one of the variant's LoRAs, not as a separate adapter option` }))
    : Effect.succeed(model)
}

const mlpKeys = ["w1", "b1", "w2", "b2"] as const

export interface HostValue {
  readonly shape: number[]
  readonly data: Float32Array
}

/** One frozen-or-trainable value of the variant: its graph name, shape, host data and whether it decays. */
interface VariantValue extends HostValue {
  readonly name: string
  readonly trainable: boolean
  readonly decay: boolean
}

const values = (v: Variant): VariantValue[] => {
  const H = v.checkpoint.config.hiddenSize
  const out: VariantValue[] = []
  for (const l of v.loras ?? [])
    for (const [module, m] of l.adapter.modules)
      for (const [which, t] of [
        ["A", m.a],
        ["B", m.b],
      ] as const)
        out.push({ name: variantNames.lora(l.name, module, which), shape: [...t.shape], data: toFloat32(t), trainable: l.trainable === true, decay: true })
  const sp = v.softPrompt
  // soft prompts are not decayed: weight decay would pull them towards the origin of embedding space
  if (sp) out.push({ name: variantNames.softPrompt, shape: [sp.k, H], data: sp.values, trainable: sp.trainable === true, decay: false })
  const cp = v.conditionalSoftPrompt
  if (cp) {
    const shapes = conditionMlpShapes(cp.conditionSize, cp.hidden, cp.k, H)
    for (const key of mlpKeys)
      out.push({ name: variantNames.conditionMlp(key), shape: shapes[key], data: cp.weights[key], trainable: cp.trainable === true, decay: key.startsWith("w") })
  }
  return out
}

/** The trainable values by parameter name: their specs for buildTrainStep and starting values. */
export const variantParams = (v: Variant): { readonly specs: Record<string, ParamSpec>; readonly initial: Record<string, HostValue> } => {
  const trainable = values(v).filter((x) => x.trainable)
  return {
    specs: Object.fromEntries(trainable.map((x) => [x.name, { shape: x.shape, decay: x.decay }])),
    initial: Object.fromEntries(trainable.map((x) => [x.name, { shape: x.shape, data: x.data }])),
  }
}

/** The variant with `trained` (by parameter name) as the values of its trainable interventions, all now frozen. */
export const withTrainedValues = (v: Variant, trained: Readonly<Record<string, ArrayLike<number>>>): Variant => {
  const get = (name: string, fallback: Float32Array) => (trained[name] ? Float32Array.from(trained[name]) : fallback)
  const trainedMlp = (w: ConditionMlpValues): ConditionMlpValues => ({
    w1: get(variantNames.conditionMlp("w1"), w.w1),
    b1: get(variantNames.conditionMlp("b1"), w.b1),
    w2: get(variantNames.conditionMlp("w2"), w.w2),
    b2: get(variantNames.conditionMlp("b2"), w.b2),
  })
  return {
    ...v,
    loras: v.loras?.map((l) =>
      l.trainable
        ? {
            name: l.name,
            adapter: {
              config: l.adapter.config,
              modules: new Map(
                [...l.adapter.modules].map(([module, m]) => [
                  module,
                  {
                    a: fromNumbers(get(variantNames.lora(l.name, module, "A"), toFloat32(m.a)), "F32", m.a.shape),
                    b: fromNumbers(get(variantNames.lora(l.name, module, "B"), toFloat32(m.b)), "F32", m.b.shape),
                  },
                ]),
              ),
            },
          }
        : l,
    ),
    softPrompt: v.softPrompt && { k: v.softPrompt.k, values: v.softPrompt.trainable ? get(variantNames.softPrompt, v.softPrompt.values) : v.softPrompt.values },
    conditionalSoftPrompt: v.conditionalSoftPrompt && {
      ...v.conditionalSoftPrompt,
      trainable: false,
      weights: v.conditionalSoftPrompt.trainable ? trainedMlp(v.conditionalSoftPrompt.weights) : v.conditionalSoftPrompt.weights,
    },
  }
}

/**
 * The input embeddings of `tokens` (inputs_embeds space, as tokenEmbeddings gives them: Gemma 3's
 * include its sqrt(H) factor), [tokens.length * H] row-major: a soft prompt that starts as those tokens.
 */
export const tokenInputEmbeddings = (ckpt: Checkpoint, tokens: ReadonlyArray<number>): Effect.Effect<Float32Array, VariantError> =>
  Effect.gen(function* () {
    const c = ckpt.config
    const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= c.vocabSize)
    if (bad !== undefined) return yield* Effect.fail(new VariantError({ message: `soft prompt initial token ${bad} is outside the vocabulary [0, ${c.vocabSize}) of ${ckpt.dir}` }))
    const { values: table } = yield* Effect.mapError(readWeightFloat64(ckpt.weights.embedTokens), (e) => new VariantError({ message: e.message }))
    const H = c.hiddenSize
    const scale = c.gemma?.embedScale === "token_embeddings" ? gemmaEmbedScale(H, ckpt.weights.embedTokens.dtype) : 1
    return Float32Array.from(tokens.flatMap((t) => Array.from(table.subarray(t * H, (t + 1) * H), (x) => x * scale)))
  })

/** Where a soft prompt starts: the embeddings of given tokens, or of k tokens drawn uniformly from the vocabulary with `seed`. */
export type SoftPromptStart = { readonly tokens: ReadonlyArray<number> } | { readonly k: number; readonly seed: number }

const startTokens = (ckpt: Checkpoint, start: SoftPromptStart): number[] => {
  if ("tokens" in start) return [...start.tokens]
  const rand = mulberry32(start.seed)
  return Array.from({ length: start.k }, () => Math.floor(rand() * ckpt.config.vocabSize))
}

/**
 * A trainable soft prompt starting at vocabulary embeddings (Lester et al. 2021: initializing from
 * embeddings of real tokens trains better than random vectors, which sit off the embedding manifold).
 */
export const initSoftPrompt = (ckpt: Checkpoint, start: SoftPromptStart): Effect.Effect<SoftPrompt, VariantError> => {
  const tokens = startTokens(ckpt, start)
  return Effect.map(tokenInputEmbeddings(ckpt, tokens), (values) => ({ k: tokens.length, values, trainable: true }))
}

/**
 * A trainable conditional soft prompt whose output starts at the embeddings of `start` for every
 * condition: W2 = 0 and b2 = those embeddings (as LoRA starts with B = 0, so training starts at a
 * known prompt; W2 gets gradient at once and W1 through it), W1 ~ U(-1/sqrt(C), 1/sqrt(C)), b1 = 0.
 */
export const initConditionalSoftPrompt = (
  ckpt: Checkpoint,
  sizes: { readonly conditionSize: number; readonly hidden: number; readonly seed: number },
  start: SoftPromptStart,
): Effect.Effect<ConditionalSoftPrompt, VariantError> => {
  const tokens = startTokens(ckpt, start)
  const k = tokens.length
  const shapes = conditionMlpShapes(sizes.conditionSize, sizes.hidden, k, ckpt.config.hiddenSize)
  const rand = mulberry32(sizes.seed + 1)
  const bound = 1 / Math.sqrt(sizes.conditionSize)
  return Effect.map(tokenInputEmbeddings(ckpt, tokens), (b2) => ({
    k,
    conditionSize: sizes.conditionSize,
    hidden: sizes.hidden,
    trainable: true,
    weights: {
      w1: Float32Array.from({ length: sizes.hidden * sizes.conditionSize }, () => (2 * rand() - 1) * bound),
      b1: new Float32Array(sizes.hidden),
      w2: new Float32Array(shapes.w2[0] * shapes.w2[1]),
      b2,
    },
  }))
}

/** Checks the interventions against the checkpoint (sizes, token ids, adapter modules, names). */
export const checkVariant = (v: Variant): Effect.Effect<void, VariantError> =>
  Effect.gen(function* () {
    const c = v.checkpoint.config
    const H = c.hiddenSize
    const where = `variant of ${v.checkpoint.dir}`
    const fail = (m: string) => Effect.fail(new VariantError({ message: `${where}: ${m}` }))
    const names = (v.loras ?? []).map((l) => l.name)
    const bad = names.find((n) => !/^[A-Za-z0-9_-]+$/.test(n))
    if (bad !== undefined) return yield* fail(`LoRA name "${bad}" must match [A-Za-z0-9_-]+ (it prefixes graph names)`)
    const twice = names.find((n, i) => names.indexOf(n) !== i)
    if (twice !== undefined) return yield* fail(`LoRA name "${twice}" is used twice`)
    for (const l of v.loras ?? []) yield* Effect.mapError(checkAdapterModules(v.checkpoint, l.adapter), (e) => new VariantError({ message: `${where}: LoRA "${l.name}": ${e.message}` }))
    const sp = v.softPrompt
    if (sp) {
      if (!Number.isInteger(sp.k) || sp.k < 1) return yield* fail(`soft prompt length k must be a positive integer, got ${sp.k}`)
      if (sp.values.length !== sp.k * H) return yield* fail(`soft prompt has ${sp.values.length} values, expected k x hidden size = ${sp.k} x ${H}`)
    }
    const cp = v.conditionalSoftPrompt
    if (cp) {
      for (const key of ["k", "conditionSize", "hidden"] as const)
        if (!Number.isInteger(cp[key]) || cp[key] < 1) return yield* fail(`conditional soft prompt: ${key} must be a positive integer, got ${cp[key]}`)
      const shapes = conditionMlpShapes(cp.conditionSize, cp.hidden, cp.k, H)
      for (const key of mlpKeys) {
        const n = shapes[key].reduce((a, b) => a * b, 1)
        if (cp.weights[key].length !== n) return yield* fail(`conditional soft prompt: ${key} has ${cp.weights[key].length} values, expected ${JSON.stringify(shapes[key])} = ${n}`)
      }
    }
    const t = (v.prefix ?? []).find((id) => !Number.isInteger(id) || id < 0 || id >= c.vocabSize)
    if (t !== undefined) return yield* fail(`prefix token ${t} is outside the vocabulary [0, ${c.vocabSize})`)
  })

export interface VariantInputs {
  /** int64 [B, T]: the real tokens */
  readonly ids: Value
  /** int64 [B, P + T] over the real tokens (P: real tokens in the cache) */
  readonly mask: Value
  /** per layer, [B, kvHeads, P', headDim]; P' = K + P once the virtual block is cached */
  readonly past?: ReadonlyArray<{ readonly key: Value; readonly value: Value }>
  /** float32 [B, C]: needed with a conditional soft prompt */
  readonly condition?: Value
  /**
   * Training graphs: dropout on the inputs of the trainable LoRAs (PEFT's lora_dropout), masks drawn
   * from `seed` (an int64 scalar fed anew each step; adapters.ts loraHook), LoRA i from seed + i * 2^16.
   */
  readonly loraDropout?: { readonly rate: number; readonly seed: Value }
}

/** DecoderOutputs with `hidden` [B, T, H] at the real tokens only; `present` includes the virtual block. */
export type VariantForward = (sub: Graph, inputs: VariantInputs, params?: Readonly<Record<string, Value>>) => DecoderOutputs

export interface PrepareOptions {
  /** before the initializer names (one per model when several share a graph) */
  readonly prefix?: string
  /**
   * trainable values come from the apply's `params` (a train step's, or graph inputs fed per run
   * as distill.ts klEvaluator's are); otherwise (inference) every value is frozen
   */
  readonly training?: boolean
}

/**
 * Prepares `v` on the top-level graph `g` (frozen values become initializers named
 * `prefix` + variantNames) and returns the forward, applicable in `g` or any subgraph of it.
 * `source` gives the checkpoint's weights. Throws when a trainable value is missing from `params`
 * or a conditional soft prompt gets no condition (graph-building errors; checkVariant first).
 */
export const prepareVariant = (g: Graph, v: Variant, source: WeightSource, options: PrepareOptions = {}): VariantForward => {
  const c = v.checkpoint.config
  const w = v.checkpoint.weights
  const frozen = new Map(
    values(v)
      .filter((x) => !(x.trainable && options.training))
      .map((x) => [x.name, g.initializer((options.prefix ?? "") + x.name, "float32", x.shape, { kind: "inline", data: x.data })]),
  )
  const K = virtualLength(v)
  return (sub, inputs, params = {}) => {
    const value = (name: string) => {
      const x = frozen.get(name) ?? params[name]
      if (!x) throw new Error(`variant of ${v.checkpoint.dir}: no value for trainable "${name}" (pass the train step's params)`)
      return x
    }
    const dropout = inputs.loraDropout
    const hooks: LinearHook[] = (v.loras ?? []).map((l, i) =>
      loraHook(
        new Map([...l.adapter.modules.keys()].map((module): [string, LoraValues] => [module, { a: value(variantNames.lora(l.name, module, "A")), b: value(variantNames.lora(l.name, module, "B")) }])),
        loraScale(l.adapter.config),
        dropout && l.trainable && options.training ? { dropout: dropout.rate, seed: sub.add(dropout.seed, sub.scalar(i * 2 ** 16, "int64")) } : {},
      ),
    )
    const hooked = hooks.length === 0 ? {} : { linearHook: hooks.slice(1).reduce<LinearHook>((a, b) => (gg, site, x, y) => b(gg, site, x, a(gg, site, x, y)), hooks[0]) }
    if (K === 0) return decoder(sub, c, w, source, { ids: inputs.ids, mask: inputs.mask, past: inputs.past }, hooked)

    const H = c.hiddenSize
    // [1, n, H] or [B, n, H] blocks, broadcast to the batch below
    const blocks: Value[] = []
    if (v.softPrompt) blocks.push(sub.unsqueeze(value(variantNames.softPrompt), [0]))
    const cp = v.conditionalSoftPrompt
    if (cp) {
      if (!inputs.condition) throw new Error(`variant of ${v.checkpoint.dir}: a conditional soft prompt needs a condition input`)
      const mlp = { w1: value(variantNames.conditionMlp("w1")), b1: value(variantNames.conditionMlp("b1")), w2: value(variantNames.conditionMlp("w2")), b2: value(variantNames.conditionMlp("b2")) }
      blocks.push(conditionalSoftPrompt(sub, inputs.condition, mlp, cp.k, H))
    }
    if (v.prefix?.length) blocks.push(tokenEmbeddings(sub, c, w, source, sub.constant("int64", [1, v.prefix.length], v.prefix)))
    const zeros = sub.constantOfShape(sub.concat([sub.shapeOf(inputs.ids, 0, 1), sub.ints([1, 1])], 0), 0, "float32", [inputs.ids.shape[0], 1, 1])
    const virtual = sub.concat(
      blocks.map((b) => sub.add(b, zeros)),
      1,
    ) // [B, K, H]
    // virtual rows still to feed: all of them when the past is empty, none once the cache holds them
    const cached = inputs.past ? sub.min(sub.shapeOf(inputs.past[0].key, 2, 3), sub.ints([K])) : sub.ints([0])
    const fed = sub.slice(virtual, cached, sub.ints([K]), [1])
    const embeds = sub.concat([fed, tokenEmbeddings(sub, c, w, source, inputs.ids)], 1)
    const ones = sub.constantOfShape(sub.concat([sub.shapeOf(inputs.mask, 0, 1), sub.ints([K])], 0), 1, "int64", [inputs.mask.shape[0], K])
    const out = decoder(sub, c, w, source, { embeds, mask: sub.concat([ones, inputs.mask], 1), past: inputs.past }, hooked)
    return { ...out, hidden: sub.slice(out.hidden, sub.sub(sub.ints([K]), cached), sub.ints([2 ** 31 - 1]), [1]) }
  }
}
