// The normalized description of a decoder-only transformer checkpoint that the graph builder and
// the reference implementation consume, whatever Hugging Face architecture it came from.
//
// Conventions shared by every architecture:
// - A linear layer computes y = x W^T + b with W of shape [out, in] (PyTorch nn.Linear). GPT-2's
//   Conv1D stores W^T ([in, out]); such weights carry `transposed: true` and their `shape` is the
//   shape stored in the file.
// - Attention scores are scaled by 1/sqrt(headDim) and causally masked.
// - RoPE rotates the first `rotaryDim` features of each head with the "rotate_half" pairing
//   (feature i pairs with i + rotaryDim/2), which is what HF Llama and GPT-NeoX checkpoints use.
import { Data, Effect, Result, Schema } from "effect"
import type { SafetensorsDType } from "../core/safetensors.ts"

/** A checkpoint is malformed or incomplete: missing file, missing tensor, wrong shape, bad config value. */
export class CheckpointError extends Data.TaggedError("CheckpointError")<{
  readonly file: string
  readonly field: string | undefined
  readonly message: string
}> {}

/** A checkpoint is well formed but asks for math this project does not implement. */
export class UnsupportedModelError extends Data.TaggedError("UnsupportedModelError")<{
  readonly file: string
  readonly field: string
  readonly message: string
}> {}

export const checkpointError = (file: string, field: string | undefined, what: string) =>
  new CheckpointError({ file, field, message: `${file}: ${field === undefined ? "" : `${field}: `}${what}` })

export const unsupported = (file: string, field: string, what: string) =>
  new UnsupportedModelError({ file, field, message: `${file}: ${field}: unsupported: ${what}` })

export type Family = "llama" | "gpt2" | "gpt_neox" | "phi3" | "gemma"

/** silu: x*sigmoid(x). gelu_erf: exact GELU. gelu_tanh: tanh approximation. relu: max(x, 0). (activationFromHf lists the HF names of each.) */
export type Activation = "silu" | "gelu_erf" | "gelu_tanh" | "relu"

export type RopeScaling =
  | { readonly kind: "none" }
  /** Positions divided by `factor` (HF rope_type "linear"). */
  | { readonly kind: "linear"; readonly factor: number }
  /** Llama 3.1 frequency-dependent scaling (HF rope_type "llama3"). */
  | {
      readonly kind: "llama3"
      readonly factor: number
      readonly lowFreqFactor: number
      readonly highFreqFactor: number
      readonly originalMaxPositions: number
    }
  /**
   * YaRN (HF rope_type "yarn"): frequencies ramp from extrapolated (unchanged) to interpolated
   * (divided by factor) between the correction dims of betaFast and betaSlow rotations over
   * originalMaxPositions; cos and sin are multiplied by attentionFactor (resolved from
   * attention_factor, mscale and mscale_all_dim at parse time).
   */
  | {
      readonly kind: "yarn"
      readonly factor: number
      readonly originalMaxPositions: number
      readonly betaFast: number
      readonly betaSlow: number
      /** Round the correction range to whole dims (HF `truncate`, default true). */
      readonly truncate: boolean
      readonly attentionFactor: number
    }
  /**
   * Dynamic NTK (HF rope_type "dynamic"): for a sequence of L > maxPositions positions the base
   * becomes theta * (factor * L / maxPositions - (factor - 1)) ^ (d / (d - 2)). L is the row's
   * largest position + 1 in the current forward, so cached keys keep the rotation they were
   * computed with (as in transformers' generate; see rope.ts).
   */
  | { readonly kind: "dynamic"; readonly factor: number; readonly maxPositions: number }
  /**
   * LongRoPE (HF rope_type "longrope", Phi-3): inverse frequencies divided per pair by
   * shortFactor, or by longFactor when the row's largest position + 1 exceeds
   * originalMaxPositions; cos and sin are multiplied by attentionFactor.
   */
  | {
      readonly kind: "longrope"
      readonly shortFactor: ReadonlyArray<number>
      readonly longFactor: ReadonlyArray<number>
      readonly originalMaxPositions: number
      readonly attentionFactor: number
    }

export type Positions =
  | { readonly kind: "learned" }
  | { readonly kind: "rope"; readonly theta: number; readonly rotaryDim: number; readonly scaling: RopeScaling }

/** The id padding positions get: pad_token_id, else the first eos, else 0. Padding is masked out of
 *  attention and of every loss, so any id is right; many checkpoints (Llama 3, Qwen 2.5) have no
 *  pad_token_id in config.json. */
export const paddingId = (c: { readonly padTokenId: number | undefined; readonly eosTokenIds: ReadonlyArray<number> }): number => c.padTokenId ?? c.eosTokenIds[0] ?? 0

export interface ModelConfig {
  readonly family: Family
  /** The `architectures[0]` string of config.json. */
  readonly hfArchitecture: string
  readonly vocabSize: number
  readonly hiddenSize: number
  readonly numLayers: number
  readonly numHeads: number
  /** Key/value heads (< numHeads for grouped-query attention). */
  readonly numKvHeads: number
  readonly headDim: number
  readonly intermediateSize: number
  readonly maxPositions: number
  readonly norm: { readonly kind: "rms" | "layer"; readonly eps: number }
  readonly activation: Activation
  /** gated: down(act(gate(x)) * up(x)); plain: down(act(up(x))). */
  readonly mlp: "gated" | "plain"
  readonly positions: Positions
  /** GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)) instead of sequential residuals. */
  readonly parallelResidual: boolean
  readonly tiedEmbeddings: boolean
  readonly bias: { readonly qkv: boolean; readonly o: boolean; readonly mlp: boolean; readonly norm: boolean }
  readonly bosTokenId: number | undefined
  readonly eosTokenIds: ReadonlyArray<number>
  readonly padTokenId: number | undefined
  /** `torch_dtype` / `dtype` of config.json, informational. */
  readonly torchDtype: string | undefined
  /**
   * Sliding-window attention (Mistral, Qwen2 with use_sliding_window, Gemma's local layers): in
   * layer l with `layers[l]` true, the query in cache column t sees only the keys in columns
   * (t - size, t], i.e. itself and the size - 1 before it (transformers' sliding_window_overlay:
   * kv_idx > q_idx - sliding_window). Absent: every layer attends to the whole causal prefix.
   */
  readonly slidingWindow?: SlidingWindow
  /** Gemma 2 / Gemma 3 decoder features; absent for every other family. */
  readonly gemma?: GemmaFeatures
}

export interface SlidingWindow {
  readonly size: number
  /** One flag per layer: true = local (windowed) attention. */
  readonly layers: ReadonlyArray<boolean>
}

/**
 * What Gemma 2 and 3 add to the Llama-style decoder. Always implied by `gemma` being present:
 * RMSNorm multiplies by (1 + w), and the embeddings are multiplied by sqrt(hiddenSize) rounded to
 * the embedding weight's dtype (HF casts the normalizer to the hidden dtype: 55.4256 -> 55.5 in bf16).
 */
export interface GemmaFeatures {
  /**
   * Which inputs the sqrt(hiddenSize) factor multiplies: Gemma 2 scales the decoder input (token
   * embeddings and caller-given inputs_embeds alike), Gemma 3 only looked-up token embeddings.
   */
  readonly embedScale: "all_inputs" | "token_embeddings"
  /** Attention scores are scaled by queryPreAttnScalar^-1/2 instead of headDim^-1/2. */
  readonly queryPreAttnScalar: number
  /** Scores -> cap * tanh(scores / cap) after scaling, before the mask (Gemma 2). */
  readonly attnLogitSoftcap: number | undefined
  /** Logits -> cap * tanh(logits / cap) (Gemma 2). */
  readonly finalLogitSoftcap: number | undefined
  /** RoPE of the sliding-window layers when it differs from `positions` (Gemma 3: rope_local_base_freq, unscaled). */
  readonly localPositions: Positions | undefined
}

/** Where one weight tensor lives: enough to read it, or to point ONNX external data at it. */
export interface WeightRef {
  /** Tensor name in the checkpoint. */
  readonly name: string
  /** Path of the safetensors file (as found in the model directory; may be a symlink). */
  readonly file: string
  /** Absolute byte offset of the tensor data in `file`, and its length. */
  readonly fileOffset: number
  readonly byteLength: number
  readonly dtype: SafetensorsDType
  /** Shape as stored in the file. */
  readonly shape: ReadonlyArray<number>
  /** True when the file stores W^T ([in, out], GPT-2 Conv1D) rather than W ([out, in]). */
  readonly transposed: boolean
  /**
   * FP8 weights only: the weight is the FP8 values times this scale tensor, whose element [i, j]
   * covers the block of stored rows i*block[0].. and columns j*block[1].. (the whole tensor for
   * a per-tensor scale, [1, columns] for one scale per row).
   */
  readonly scale?: { readonly ref: WeightRef; readonly block: readonly [number, number] }
}

export interface Linear<W = WeightRef> {
  readonly weight: W
  readonly bias: W | undefined
}

export interface Norm<W = WeightRef> {
  readonly weight: W
  readonly bias: W | undefined
}

export type Attention<W = WeightRef> =
  | { readonly layout: "separate"; readonly q: Linear<W>; readonly k: Linear<W>; readonly v: Linear<W>; readonly o: Linear<W> }
  /**
   * GPT-2 c_attn, Phi-3 qkv_proj: output features are [q (numHeads*headDim) | k (numKvHeads*headDim)
   * | v (numKvHeads*headDim)], heads consecutive inside each block.
   */
  | { readonly layout: "fused_qkv"; readonly qkv: Linear<W>; readonly o: Linear<W> }
  /** GPT-NeoX query_key_value: output features are [head][q | k | v][headDim]. */
  | { readonly layout: "fused_qkv_per_head"; readonly qkv: Linear<W>; readonly o: Linear<W> }

export type Mlp<W = WeightRef> =
  | { readonly kind: "gated"; readonly gate: Linear<W>; readonly up: Linear<W>; readonly down: Linear<W> }
  | { readonly kind: "plain"; readonly up: Linear<W>; readonly down: Linear<W> }
  /** Phi-3 gate_up_proj: output features are [gate | up], each intermediateSize wide. */
  | { readonly kind: "gated_fused"; readonly gateUp: Linear<W>; readonly down: Linear<W> }

/** The linear layers of an MLP, in the order they apply (gate before up). */
export const mlpLinears = <W>(m: Mlp<W>): ReadonlyArray<Linear<W>> =>
  m.kind === "gated" ? [m.gate, m.up, m.down] : m.kind === "plain" ? [m.up, m.down] : [m.gateUp, m.down]

export interface Layer<W = WeightRef> {
  readonly inputNorm: Norm<W>
  readonly attention: Attention<W>
  /** The norm in front of the MLP (Gemma: pre_feedforward_layernorm). */
  readonly postAttentionNorm: Norm<W>
  readonly mlp: Mlp<W>
  /**
   * Gemma 2/3: norms of the attention output and of the MLP output, applied before each residual
   * add (Gemma's post_attention_layernorm and post_feedforward_layernorm).
   */
  readonly outputNorms?: { readonly attention: Norm<W>; readonly mlp: Norm<W> }
  /** Qwen3, Gemma 3: RMSNorm of every query and key head over headDim, before RoPE (q_norm, k_norm). */
  readonly headNorms?: { readonly q: Norm<W>; readonly k: Norm<W> }
}

export interface ModelWeights<W = WeightRef> {
  /** [vocab, hidden] */
  readonly embedTokens: W
  /** [maxPositions, hidden], learned position embeddings (GPT-2 only). */
  readonly embedPositions: W | undefined
  readonly layers: ReadonlyArray<Layer<W>>
  readonly finalNorm: Norm<W>
  /** [vocab, hidden]; the same reference as embedTokens when embeddings are tied. */
  readonly lmHead: W
}

/** What an architecture asks of the checkpoint for one tensor. */
export interface WeightSpec {
  readonly name: string
  /** Expected shape as stored in the file. */
  readonly shape: ReadonlyArray<number>
  readonly transposed: boolean
}

/** Looks a tensor up in the checkpoint, checking its shape against what the config implies. */
export interface TensorLookup {
  readonly has: (name: string) => boolean
  readonly get: (spec: WeightSpec) => Effect.Effect<WeightRef, CheckpointError>
}

/** What each architecture module provides. */
export interface ArchitectureModule {
  readonly family: Family
  /** `architectures[0]` values this module reads. */
  readonly hfArchitectures: ReadonlyArray<string>
  readonly parseConfig: (file: string, json: unknown) => Effect.Effect<ModelConfig, CheckpointError | UnsupportedModelError>
  readonly weights: (config: ModelConfig, tensors: TensorLookup) => Effect.Effect<ModelWeights, CheckpointError>
  /**
   * The config.json that `parseConfig` reads back to `config` (used to write new checkpoints);
   * fails for a config this architecture's config.json cannot express.
   */
  readonly toConfigJson: (config: ModelConfig) => Effect.Effect<Record<string, unknown>, UnsupportedModelError>
}

/** Token-id fields shared by every HF config: eos may be one id or a list. */
export const eosIds = (eos: number | ReadonlyArray<number> | null | undefined): ReadonlyArray<number> =>
  eos === null || eos === undefined ? [] : typeof eos === "number" ? [eos] : eos

/** A linear layer's specs, for architectures that store W as [out, in]. */
export const linearSpec = (name: string, out: number, inp: number, bias: boolean): Linear<WeightSpec> => ({
  weight: { name: `${name}.weight`, shape: [out, inp], transposed: false },
  bias: bias ? { name: `${name}.bias`, shape: [out], transposed: false } : undefined,
})

export const normSpec = (name: string, size: number, bias: boolean): Norm<WeightSpec> => ({
  weight: { name: `${name}.weight`, shape: [size], transposed: false },
  bias: bias ? { name: `${name}.bias`, shape: [size], transposed: false } : undefined,
})

const resolveOptional = (tensors: TensorLookup, spec: WeightSpec | undefined) =>
  spec === undefined ? Effect.succeed(undefined) : tensors.get(spec)

/** Resolves a weight and its optional bias (a linear layer or a norm). */
const resolveWeightBias = (
  tensors: TensorLookup,
  p: { readonly weight: WeightSpec; readonly bias: WeightSpec | undefined },
): Effect.Effect<{ weight: WeightRef; bias: WeightRef | undefined }, CheckpointError> =>
  Effect.all({ weight: tensors.get(p.weight), bias: resolveOptional(tensors, p.bias) })

export const resolveLinear: (tensors: TensorLookup, l: Linear<WeightSpec>) => Effect.Effect<Linear, CheckpointError> = resolveWeightBias
export const resolveNorm: (tensors: TensorLookup, n: Norm<WeightSpec>) => Effect.Effect<Norm, CheckpointError> = resolveWeightBias

/** Resolves the optional tensors of a model; `lmHead` undefined means tied to the token embedding. */
export const resolveModel = (
  tensors: TensorLookup,
  spec: {
    embedTokens: WeightSpec
    embedPositions: WeightSpec | undefined
    finalNorm: Norm<WeightSpec>
    lmHead: WeightSpec | undefined
  },
  layers: ReadonlyArray<Effect.Effect<Layer, CheckpointError>>,
): Effect.Effect<ModelWeights, CheckpointError> =>
  Effect.gen(function* () {
    const embedTokens = yield* tensors.get(spec.embedTokens)
    return {
      embedTokens,
      embedPositions: yield* resolveOptional(tensors, spec.embedPositions),
      layers: yield* Effect.all(layers),
      finalNorm: yield* resolveNorm(tensors, spec.finalNorm),
      lmHead: spec.lmHead === undefined ? embedTokens : yield* tensors.get(spec.lmHead),
    }
  })

// ---------------------------------------------------------------------------------------------
// Pieces of config.json shared by several architectures.


export const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
export const PositiveNumber = Schema.Finite.check(Schema.isGreaterThan(0))
const TokenId = Schema.NullOr(Schema.Int)

/** Token ids and dtype, identical in every HF config. */
export const CommonFields = {
  architectures: Schema.optional(Schema.Array(Schema.String)),
  bos_token_id: Schema.optional(TokenId),
  eos_token_id: Schema.optional(Schema.NullOr(Schema.Union([Schema.Int, Schema.Array(Schema.Int)]))),
  pad_token_id: Schema.optional(TokenId),
  torch_dtype: Schema.optional(Schema.NullOr(Schema.String)),
  dtype: Schema.optional(Schema.NullOr(Schema.String)),
  tie_word_embeddings: Schema.optional(Schema.Boolean),
}

/** HF `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5) object. */
export const RopeFields = Schema.Struct({
  rope_type: Schema.optional(Schema.String),
  type: Schema.optional(Schema.String),
  rope_theta: Schema.optional(PositiveNumber),
  factor: Schema.optional(PositiveNumber),
  low_freq_factor: Schema.optional(PositiveNumber),
  high_freq_factor: Schema.optional(PositiveNumber),
  original_max_position_embeddings: Schema.optional(PositiveInt),
  partial_rotary_factor: Schema.optional(PositiveNumber),
  beta_fast: Schema.optional(Schema.NullOr(PositiveNumber)),
  beta_slow: Schema.optional(Schema.NullOr(PositiveNumber)),
  attention_factor: Schema.optional(Schema.NullOr(PositiveNumber)),
  mscale: Schema.optional(Schema.NullOr(Schema.Finite)),
  mscale_all_dim: Schema.optional(Schema.NullOr(Schema.Finite)),
  truncate: Schema.optional(Schema.Boolean),
  short_factor: Schema.optional(Schema.Array(PositiveNumber)),
  long_factor: Schema.optional(Schema.Array(PositiveNumber)),
})
export type RopeFields = typeof RopeFields.Type

/** Decodes config.json with a schema; a failure names the file and the offending field path. */
export const decodeConfig = <S extends Schema.Decoder<unknown>>(schema: S, file: string, json: unknown) => {
  const r = Schema.decodeUnknownResult(schema)(json)
  return Result.isSuccess(r)
    ? Effect.succeed(r.success as S["Type"])
    : Effect.fail(checkpointError(file, undefined, `invalid config: ${r.failure.message.replace(/\n\s*/g, " ")}`))
}

/** What parseRopeScaling needs from the rest of config.json. */
export interface RopeContext {
  readonly maxPositions: number
  /** Rotated features per head (headDim * partial_rotary_factor). */
  readonly rotaryDim: number
  /** A top-level original_max_position_embeddings (Phi-3 keeps it outside rope_scaling). */
  readonly originalMaxPositions?: number | undefined
}

/**
 * The RoPE scaling a config asks for, following transformers' modeling_rope_utils.py. `field`
 * names where `rope` came from (rope_scaling or rope_parameters) for error messages. Other
 * rope types change the math in ways we do not implement, so they are refused.
 */
export const parseRopeScaling = (
  file: string,
  field: string,
  rope: RopeFields | null | undefined,
  context: RopeContext,
): Effect.Effect<RopeScaling, UnsupportedModelError | CheckpointError> => {
  if (rope === null || rope === undefined) return Effect.succeed({ kind: "none" })
  const kind = rope.rope_type ?? rope.type ?? "default"
  const missing = (key: string) => Effect.fail(checkpointError(file, `${field}.${key}`, `missing (required by rope_type ${kind})`))
  const original = rope.original_max_position_embeddings ?? context.originalMaxPositions
  switch (kind) {
    case "default":
      return Effect.succeed({ kind: "none" })
    case "linear":
      return rope.factor === undefined ? missing("factor") : Effect.succeed({ kind: "linear", factor: rope.factor })
    case "dynamic":
      return rope.factor === undefined ? missing("factor") : Effect.succeed({ kind: "dynamic", factor: rope.factor, maxPositions: context.maxPositions })
    case "llama3": {
      const { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } = rope
      for (const [k, v] of Object.entries({ factor, low_freq_factor, high_freq_factor, original_max_position_embeddings })) if (v === undefined) return missing(k)
      if (!(high_freq_factor! > low_freq_factor!))
        return Effect.fail(checkpointError(file, `${field}.high_freq_factor`, "must be greater than low_freq_factor"))
      return Effect.succeed({
        kind: "llama3",
        factor: factor!,
        lowFreqFactor: low_freq_factor!,
        highFreqFactor: high_freq_factor!,
        originalMaxPositions: original_max_position_embeddings!,
      })
    }
    case "yarn": {
      // Without factor, transformers takes max_position_embeddings / original (DeepSeek-V3 style).
      const factor = rope.factor ?? (original === undefined ? undefined : context.maxPositions / original)
      if (factor === undefined) return missing("factor")
      const mscaleOf = (scale: number, m: number) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1)
      const attentionFactor =
        rope.attention_factor ?? (rope.mscale && rope.mscale_all_dim ? mscaleOf(factor, rope.mscale) / mscaleOf(factor, rope.mscale_all_dim) : mscaleOf(factor, 1))
      return Effect.succeed({
        kind: "yarn",
        factor,
        originalMaxPositions: original ?? context.maxPositions,
        betaFast: rope.beta_fast || 32,
        betaSlow: rope.beta_slow || 1,
        truncate: rope.truncate ?? true,
        attentionFactor,
      })
    }
    case "longrope": {
      const { short_factor, long_factor } = rope
      if (short_factor === undefined) return missing("short_factor")
      if (long_factor === undefined) return missing("long_factor")
      if (original === undefined) return missing("original_max_position_embeddings")
      for (const [k, v] of [["short_factor", short_factor], ["long_factor", long_factor]] as const)
        if (v.length !== context.rotaryDim / 2)
          return Effect.fail(checkpointError(file, `${field}.${k}`, `has ${v.length} entries; the rotary dimension ${context.rotaryDim} needs ${context.rotaryDim / 2}`))
      // Phi-3 gives no factor: transformers uses max_position_embeddings / original for the attention factor.
      const factor = rope.factor ?? context.maxPositions / original
      const attentionFactor = rope.attention_factor ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original)))
      return Effect.succeed({ kind: "longrope", shortFactor: short_factor, longFactor: long_factor, originalMaxPositions: original, attentionFactor })
    }
    default:
      return Effect.fail(unsupported(file, `${field}.rope_type`, `"${kind}" (supported: default, linear, dynamic, llama3, yarn, longrope)`))
  }
}

/** The config.json form of a RoPE scaling, or null for none; derived factors are written out so they read back unchanged. */
export const ropeScalingJson = (s: RopeScaling): Record<string, unknown> | null => {
  switch (s.kind) {
    case "none":
      return null
    case "linear":
      return { rope_type: "linear", factor: s.factor }
    case "dynamic":
      return { rope_type: "dynamic", factor: s.factor }
    case "llama3":
      return {
        rope_type: "llama3",
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositions,
      }
    case "yarn":
      return {
        rope_type: "yarn",
        factor: s.factor,
        original_max_position_embeddings: s.originalMaxPositions,
        beta_fast: s.betaFast,
        beta_slow: s.betaSlow,
        truncate: s.truncate,
        attention_factor: s.attentionFactor,
      }
    case "longrope":
      return {
        rope_type: "longrope",
        short_factor: [...s.shortFactor],
        long_factor: [...s.longFactor],
        original_max_position_embeddings: s.originalMaxPositions,
        attention_factor: s.attentionFactor,
      }
  }
}

/** The config.json keys of Llama-style configs (Llama, Mistral, Qwen2, Gemma) that give the sizes. */
export const LlamaStyleSizeFields = {
  vocab_size: PositiveInt,
  hidden_size: PositiveInt,
  intermediate_size: PositiveInt,
  num_hidden_layers: PositiveInt,
  num_attention_heads: PositiveInt,
  num_key_value_heads: Schema.optional(Schema.NullOr(PositiveInt)),
  head_dim: Schema.optional(Schema.NullOr(PositiveInt)),
}
type LlamaStyleSizesJson = Schema.Struct<typeof LlamaStyleSizeFields>["Type"]

/**
 * The sizes of a Llama-style config, checked: key/value heads divide the query heads and
 * headDim is even (RoPE rotates pairs). `headDim` undefined: hidden_size / num_attention_heads.
 */
export const llamaStyleSizes = (file: string, c: LlamaStyleSizesJson, headDim: number | undefined) => {
  const numHeads = c.num_attention_heads
  const numKvHeads = c.num_key_value_heads ?? numHeads
  if (numHeads % numKvHeads !== 0)
    return Effect.fail(checkpointError(file, "num_key_value_heads", `${numKvHeads} does not divide num_attention_heads ${numHeads}`))
  if (headDim === undefined && c.hidden_size % numHeads !== 0)
    return Effect.fail(checkpointError(file, "num_attention_heads", `${numHeads} does not divide hidden_size ${c.hidden_size}`))
  const hd = headDim ?? c.hidden_size / numHeads
  if (hd % 2 !== 0) return Effect.fail(checkpointError(file, "head_dim", `${hd} must be even for rotary embeddings`))
  return Effect.succeed({
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim: hd,
    intermediateSize: c.intermediate_size,
  })
}

/** One flag per layer from config.json `layer_types`: true for "sliding_attention", false for "full_attention". */
export const slidingLayerTypes = (
  file: string,
  layerTypes: ReadonlyArray<string>,
  numLayers: number,
): Effect.Effect<boolean[], CheckpointError | UnsupportedModelError> => {
  if (layerTypes.length !== numLayers) return Effect.fail(checkpointError(file, "layer_types", `${layerTypes.length} entries for num_hidden_layers ${numLayers}`))
  const other = layerTypes.findIndex((t) => t !== "sliding_attention" && t !== "full_attention")
  if (other >= 0) return Effect.fail(unsupported(file, `layer_types.${other}`, `"${layerTypes[other]}" (supported: sliding_attention, full_attention)`))
  return Effect.succeed(layerTypes.map((t) => t === "sliding_attention"))
}

/** The LlamaStyleSizeFields of a config (what llamaStyleSizes reads back). */
export const llamaStyleSizesJson = (c: ModelConfig) => ({
  vocab_size: c.vocabSize,
  hidden_size: c.hiddenSize,
  intermediate_size: c.intermediateSize,
  num_hidden_layers: c.numLayers,
  num_attention_heads: c.numHeads,
  num_key_value_heads: c.numKvHeads,
  head_dim: c.headDim,
})

/** Fields of ModelConfig that come straight from CommonFields. */
export const commonConfig = (
  c: { bos_token_id?: number | null; eos_token_id?: number | ReadonlyArray<number> | null; pad_token_id?: number | null; torch_dtype?: string | null; dtype?: string | null },
) => ({
  bosTokenId: c.bos_token_id ?? undefined,
  eosTokenIds: eosIds(c.eos_token_id),
  padTokenId: c.pad_token_id ?? undefined,
  torchDtype: c.dtype ?? c.torch_dtype ?? undefined,
})

export const commonConfigJson = (c: ModelConfig) => ({
  bos_token_id: c.bosTokenId ?? null,
  eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds.length === 0 ? null : c.eosTokenIds,
  pad_token_id: c.padTokenId ?? null,
  torch_dtype: c.torchDtype ?? "float32",
  tie_word_embeddings: c.tiedEmbeddings,
})

/**
 * transformers' ACT2FN names that compute one of our activations: "gelu_fast" and "gelu_accurate"
 * are the tanh approximation written differently (gelu_fast's constant 0.7978845608 is sqrt(2/pi)
 * to 1e-11), "gelu_python" is the exact erf GELU, "swish" is silu. The rest of ACT2FN (gelu_10,
 * quick_gelu, relu2, relu6, laplace, mish, leaky_relu, linear, sigmoid, tanh, ...) is refused.
 */
const activationNames: Record<string, Activation> = {
  silu: "silu",
  swish: "silu",
  gelu: "gelu_erf",
  gelu_python: "gelu_erf",
  gelu_new: "gelu_tanh",
  gelu_pytorch_tanh: "gelu_tanh",
  gelu_fast: "gelu_tanh",
  gelu_accurate: "gelu_tanh",
  relu: "relu",
}

export const activationFromHf = (file: string, field: string, name: string): Effect.Effect<Activation, UnsupportedModelError> => {
  const activation = Object.hasOwn(activationNames, name) ? activationNames[name] : undefined
  return activation === undefined
    ? Effect.fail(unsupported(file, field, `activation "${name}" (supported: ${Object.keys(activationNames).join(", ")})`))
    : Effect.succeed(activation)
}

export const activationToHf: Record<Activation, string> = { silu: "silu", gelu_erf: "gelu", gelu_tanh: "gelu_new", relu: "relu" }
