// Trainable adapters injected into the decoder graph of forward.ts: LoRA on chosen linear layers
// and soft prompts (plain, or produced from a condition vector by a small MLP).
//
// LoRA (PEFT semantics, so a trained adapter exports with peft.ts writeAdapter and loads in PEFT):
//   y = W x + b + scale * B (A dropout(x)),  A [r, in], B [out, r],
//   scale = alpha / r (alpha / sqrt(r) with rsLoRA: peft.ts loraScale).
//   loraParamSpecs(targets, r)            -> { [loraName(module, "A"|"B")]: { shape } } for buildTrainStep
//   loraInputs(g, targets, r)             -> graph inputs for A and B of each target
//   loraHook(modules, scale, { dropout, seed }) -> a LinearHook for decoder(); `modules` maps module path -> {a, b};
//                                            dropout masks come from a fed seed (src/graph/random.ts)
//   loraFromParams(targets, params)       -> that map from the params buildTrainStep hands its loss
//   initLora(targets, r, seed)            -> host values: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's
//                                            kaiming_uniform(a=sqrt(5))), B = 0, so training starts at the base model
//   loraAdapter(config, targets, values)  -> a peft.ts LoraAdapter (for writeAdapter / mergeLora)
// A trained adapter in inference graphs (generation, scoring): a frozen LoRA of a variant.ts Variant.
//
// Conditional soft prompts: conditionalSoftPrompt(g, condition [B, C], mlp, k, H) -> [B, k, H]
//   mlp: two layers, tanh between: W1 [hidden, C], b1 [hidden], W2 [k*H, hidden], b2 [k*H]
// Soft prompts, conditional soft prompts and LoRAs are put together into one model by variant.ts.
import { dropout, type Graph, type Value } from "../graph/index.ts"
import type { ParamSpec } from "../graph/optim.ts"
import type { LinearHook } from "./forward.ts"
import type { LoraAdapter, LoraConfig, LoraTarget } from "./peft.ts"
import { fromNumbers } from "../core/safetensors.ts"
import { mulberry32 } from "../core/random.ts"

/** Graph input / train-step parameter name of a LoRA matrix. */
export const loraName = (module: string, which: "A" | "B") => `lora.${module}.${which}`

export interface LoraValues {
  readonly a: Value
  readonly b: Value
}

export const loraShapes = (t: LoraTarget, r: number) => ({ A: [r, t.inFeatures], B: [t.outFeatures, r] })

export const loraParamSpecs = (targets: ReadonlyArray<LoraTarget>, r: number): Record<string, ParamSpec> => {
  const out: Record<string, ParamSpec> = {}
  for (const t of targets) {
    const s = loraShapes(t, r)
    out[loraName(t.module, "A")] = { shape: s.A, decay: true }
    out[loraName(t.module, "B")] = { shape: s.B, decay: true }
  }
  return out
}

export const loraFromParams = (targets: ReadonlyArray<LoraTarget>, params: Readonly<Record<string, Value>>): Map<string, LoraValues> =>
  new Map(targets.map((t) => [t.module, { a: params[loraName(t.module, "A")], b: params[loraName(t.module, "B")] }]))

export interface LoraHookOptions {
  /** dropout on the adapter's input (training graphs only) */
  readonly dropout?: number
  /** with dropout: an int64 scalar input, fed anew each run (e.g. per step); layer n draws its
   * mask with seed + n, so the masks are a function of what is fed (src/graph/random.ts) */
  readonly seed?: Value
}

export const loraHook = (modules: ReadonlyMap<string, LoraValues>, scale: number, options: LoraHookOptions = {}): LinearHook => {
  const p = options.dropout ?? 0
  const seed = options.seed
  if (p > 0 && !seed) throw new Error("loraHook: dropout needs a seed input")
  let n = 0
  return (g, site, x, y) => {
    const m = modules.get(site.module)
    if (!m) return y
    const xin = p > 0 && seed ? dropout(g, x, p, g.add(seed, g.scalar(n++, "int64"))) : x
    return g.add(y, g.mul(g.linear(g.linear(xin, m.a), m.b), g.scalar(scale)))
  }
}

/** Fresh LoRA matrices as host arrays, keyed by loraName (PEFT's default initialization). */
export const initLora = (targets: ReadonlyArray<LoraTarget>, r: number, seed: number): Record<string, { shape: number[]; data: Float32Array }> => {
  const rand = mulberry32(seed)
  const out: Record<string, { shape: number[]; data: Float32Array }> = {}
  for (const t of targets) {
    const s = loraShapes(t, r)
    const bound = 1 / Math.sqrt(t.inFeatures)
    out[loraName(t.module, "A")] = { shape: s.A, data: Float32Array.from({ length: r * t.inFeatures }, () => (2 * rand() - 1) * bound) }
    out[loraName(t.module, "B")] = { shape: s.B, data: new Float32Array(t.outFeatures * r) }
  }
  return out
}

/** A PEFT adapter from trained values keyed by loraName (stored as F32). */
export const loraAdapter = (config: LoraConfig, targets: ReadonlyArray<LoraTarget>, values: Readonly<Record<string, ArrayLike<number>>>): LoraAdapter => {
  const get = (t: LoraTarget, which: "A" | "B") => {
    const v = values[loraName(t.module, which)]
    if (!v) throw new Error(`loraAdapter: no values for ${loraName(t.module, which)}`)
    return fromNumbers(v, "F32", loraShapes(t, config.r)[which])
  }
  return { config, modules: new Map(targets.map((t) => [t.module, { a: get(t, "A"), b: get(t, "B") }])) }
}

// --------------------------------------------------------------------- conditional soft prompts

export interface ConditionMlp {
  /** [hidden, C] */
  readonly w1: Value
  readonly b1: Value
  /** [k * H, hidden] */
  readonly w2: Value
  readonly b2: Value
}

export const conditionMlpShapes = (conditionSize: number, hidden: number, k: number, hiddenSize: number) => ({
  w1: [hidden, conditionSize],
  b1: [hidden],
  w2: [k * hiddenSize, hidden],
  b2: [k * hiddenSize],
})

/** Soft prompts [B, k, H] from conditions [B, C]: W2 tanh(W1 c + b1) + b2, reshaped. */
export const conditionalSoftPrompt = (g: Graph, condition: Value, mlp: ConditionMlp, k: number, hiddenSize: number): Value =>
  g.reshape(g.linear(g.tanh(g.linear(condition, mlp.w1, mlp.b1)), mlp.w2, mlp.b2), [-1, k, hiddenSize])
