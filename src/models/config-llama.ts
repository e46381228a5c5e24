// LlamaForCausalLM and the checkpoints that share its math: Llama 2/3, TinyLlama, Mistral (without
// an active sliding window), Qwen2 (Llama plus biases on q/k/v) and Qwen3 (Llama plus an RMSNorm
// over each query and key head before RoPE, head_dim independent of hidden_size).
import { Effect, Schema } from "effect"
import {
  type ArchitectureModule,
  type CheckpointError,
  type UnsupportedModelError,
  checkpointError,
  decodeConfig,
  CommonFields,
  commonConfig,
  commonConfigJson,
  activationFromHf,
  activationToHf,
  type Layer,
  type TensorLookup,
  linearSpec,
  type ModelConfig,
  normSpec,
  parseRopeScaling,
  PositiveInt,
  PositiveNumber,
  resolveLinear,
  resolveModel,
  resolveNorm,
  RopeFields,
  ropeScalingJson,
  unsupported,
} from "./config-architecture.ts"

/** The config.json fields of Llama and of the families derived from it (Phi-3). */
export const LlamaLikeFields = {
  ...CommonFields,
  model_type: Schema.optional(Schema.String),
  vocab_size: PositiveInt,
  hidden_size: PositiveInt,
  intermediate_size: PositiveInt,
  num_hidden_layers: PositiveInt,
  num_attention_heads: PositiveInt,
  num_key_value_heads: Schema.optional(Schema.NullOr(PositiveInt)),
  head_dim: Schema.optional(Schema.NullOr(PositiveInt)),
  max_position_embeddings: PositiveInt,
  rms_norm_eps: PositiveNumber,
  hidden_act: Schema.optional(Schema.String),
  rope_theta: Schema.optional(PositiveNumber),
  rope_scaling: Schema.optional(Schema.NullOr(RopeFields)),
  rope_parameters: Schema.optional(Schema.NullOr(RopeFields)),
  sliding_window: Schema.optional(Schema.NullOr(Schema.Int)),
}

const LlamaConfigJson = Schema.Struct({
  ...LlamaLikeFields,
  attention_bias: Schema.optional(Schema.Boolean),
  mlp_bias: Schema.optional(Schema.Boolean),
  use_sliding_window: Schema.optional(Schema.Boolean),
})

/**
 * Query heads, key/value heads and head size from config.json; `defaultHeadDim` replaces
 * hidden_size / heads when head_dim is absent (Qwen3Config defaults it to 128).
 */
export const attentionHeads = (
  file: string,
  c: { num_attention_heads: number; num_key_value_heads?: number | null; head_dim?: number | null; hidden_size: number },
  defaultHeadDim?: number,
): Effect.Effect<{ numHeads: number; numKvHeads: number; headDim: number }, CheckpointError> => {
  const numHeads = c.num_attention_heads
  const numKvHeads = c.num_key_value_heads ?? numHeads
  if (numHeads % numKvHeads !== 0)
    return Effect.fail(checkpointError(file, "num_key_value_heads", `${numKvHeads} does not divide num_attention_heads ${numHeads}`))
  if (c.head_dim == null && defaultHeadDim === undefined && c.hidden_size % numHeads !== 0)
    return Effect.fail(checkpointError(file, "num_attention_heads", `${numHeads} does not divide hidden_size ${c.hidden_size}`))
  return Effect.succeed({ numHeads, numKvHeads, headDim: c.head_dim ?? defaultHeadDim ?? c.hidden_size / numHeads })
}

/** The ModelConfig fields every Llama-like config.json gives under the same names. */
export const llamaLikeSizes = (c: {
  vocab_size: number
  hidden_size: number
  num_hidden_layers: number
  intermediate_size: number
  max_position_embeddings: number
  rms_norm_eps: number
}) => ({
  vocabSize: c.vocab_size,
  hiddenSize: c.hidden_size,
  numLayers: c.num_hidden_layers,
  intermediateSize: c.intermediate_size,
  maxPositions: c.max_position_embeddings,
  norm: { kind: "rms" as const, eps: c.rms_norm_eps },
})

/** The config.json form of llamaLikeSizes, the heads and the activation. */
export const llamaLikeJson = (c: ModelConfig) => ({
  vocab_size: c.vocabSize,
  hidden_size: c.hiddenSize,
  intermediate_size: c.intermediateSize,
  num_hidden_layers: c.numLayers,
  num_attention_heads: c.numHeads,
  num_key_value_heads: c.numKvHeads,
  head_dim: c.headDim,
  max_position_embeddings: c.maxPositions,
  rms_norm_eps: c.norm.eps,
  hidden_act: activationToHf[c.activation],
})

/** Embedding, final norm and LM head under Llama's names, around the given layers. */
export const llamaModelWeights = (config: ModelConfig, tensors: TensorLookup, layer: (i: number) => Effect.Effect<Layer, CheckpointError>) =>
  resolveModel(
    tensors,
    {
      embedTokens: { name: "model.embed_tokens.weight", shape: [config.vocabSize, config.hiddenSize], transposed: false },
      embedPositions: undefined,
      finalNorm: normSpec("model.norm", config.hiddenSize, false),
      lmHead: config.tiedEmbeddings ? undefined : { name: "lm_head.weight", shape: [config.vocabSize, config.hiddenSize], transposed: false },
    },
    Array.from({ length: config.numLayers }, (_, i) => layer(i)),
  )

const architectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"] as const

const parseConfig: ArchitectureModule["parseConfig"] = (file, json) =>
  Effect.gen(function* () {
    const c = yield* decodeConfig(LlamaConfigJson, file, json)
    const arch = c.architectures?.[0] ?? "LlamaForCausalLM"
    const isQwen2 = arch === "Qwen2ForCausalLM"
    const isQwen3 = arch === "Qwen3ForCausalLM"
    // Mistral's config class defaults sliding_window to 4096 when the key is absent; Qwen2 and
    // Qwen3 only use their window when use_sliding_window is true.
    const window =
      arch === "MistralForCausalLM" ? (c.sliding_window === undefined ? 4096 : c.sliding_window) : isQwen2 || isQwen3 ? (c.use_sliding_window ? c.sliding_window : null) : c.sliding_window
    if (window !== null && window !== undefined && window < c.max_position_embeddings)
      return yield* Effect.fail(
        unsupported(file, "sliding_window", `${window} is smaller than max_position_embeddings ${c.max_position_embeddings}; sliding-window attention is not implemented`),
      )
    if (c.rope_parameters?.partial_rotary_factor !== undefined && c.rope_parameters.partial_rotary_factor !== 1)
      return yield* Effect.fail(unsupported(file, "rope_parameters.partial_rotary_factor", "partial rotary embeddings in a Llama-family model"))
    const activation = yield* activationFromHf(file, "hidden_act", c.hidden_act ?? "silu")
    if (activation !== "silu") return yield* Effect.fail(unsupported(file, "hidden_act", `"${c.hidden_act}" in a Llama-family model (only silu)`))
    // Qwen3Config's head_dim defaults to 128 whatever hidden_size is.
    const { numHeads, numKvHeads, headDim } = yield* attentionHeads(file, c, isQwen3 ? 128 : undefined)
    if (headDim % 2 !== 0) return yield* Effect.fail(checkpointError(file, "head_dim", `${headDim} must be even for rotary embeddings`))
    const ropeField = c.rope_parameters != null ? "rope_parameters" : "rope_scaling"
    const scaling = yield* parseRopeScaling(file, ropeField, c.rope_parameters ?? c.rope_scaling, { maxPositions: c.max_position_embeddings, rotaryDim: headDim })
    const attentionBias = c.attention_bias ?? false
    const config: ModelConfig = {
      family: "llama",
      hfArchitecture: arch,
      ...llamaLikeSizes(c),
      numHeads,
      numKvHeads,
      headDim,
      activation,
      mlp: "gated",
      positions: { kind: "rope", theta: c.rope_parameters?.rope_theta ?? c.rope_theta ?? 10000, rotaryDim: headDim, scaling },
      parallelResidual: false,
      tiedEmbeddings: c.tie_word_embeddings ?? false,
      bias: { qkv: isQwen2 || attentionBias, o: !isQwen2 && attentionBias, mlp: c.mlp_bias ?? false, norm: false },
      ...commonConfig(c),
    }
    return config
  })

const weights: ArchitectureModule["weights"] = (config, tensors) => {
  const { hiddenSize: h, numHeads, numKvHeads, headDim, intermediateSize: m, bias } = config
  const qkNorm = config.hfArchitecture === "Qwen3ForCausalLM"
  const headNorm = (name: string) => (qkNorm ? resolveNorm(tensors, normSpec(name, headDim, false)) : Effect.succeed(undefined))
  const layer = (i: number): Effect.Effect<Layer, CheckpointError> => {
    const p = `model.layers.${i}`
    return Effect.all({
      inputNorm: resolveNorm(tensors, normSpec(`${p}.input_layernorm`, h, false)),
      qNorm: headNorm(`${p}.self_attn.q_norm`),
      kNorm: headNorm(`${p}.self_attn.k_norm`),
      attention: Effect.all({
        layout: Effect.succeed("separate" as const),
        q: resolveLinear(tensors, linearSpec(`${p}.self_attn.q_proj`, numHeads * headDim, h, bias.qkv)),
        k: resolveLinear(tensors, linearSpec(`${p}.self_attn.k_proj`, numKvHeads * headDim, h, bias.qkv)),
        v: resolveLinear(tensors, linearSpec(`${p}.self_attn.v_proj`, numKvHeads * headDim, h, bias.qkv)),
        o: resolveLinear(tensors, linearSpec(`${p}.self_attn.o_proj`, h, numHeads * headDim, bias.o)),
      }),
      postAttentionNorm: resolveNorm(tensors, normSpec(`${p}.post_attention_layernorm`, h, false)),
      mlp: Effect.all({
        kind: Effect.succeed("gated" as const),
        gate: resolveLinear(tensors, linearSpec(`${p}.mlp.gate_proj`, m, h, bias.mlp)),
        up: resolveLinear(tensors, linearSpec(`${p}.mlp.up_proj`, m, h, bias.mlp)),
        down: resolveLinear(tensors, linearSpec(`${p}.mlp.down_proj`, h, m, bias.mlp)),
      }),
    })
  }
  return llamaModelWeights(config, tensors, layer)
}

const modelType: Record<string, string> = { LlamaForCausalLM: "llama", MistralForCausalLM: "mistral", Qwen2ForCausalLM: "qwen2", Qwen3ForCausalLM: "qwen3" }

const toConfigJson = (c: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> => {
  const file = "config.json"
  if (c.positions.kind !== "rope" || c.positions.rotaryDim !== c.headDim)
    return Effect.fail(unsupported(file, "positions", "a Llama-family model rotates the whole head"))
  if (c.norm.kind !== "rms" || c.mlp !== "gated" || c.parallelResidual || c.bias.norm || c.activation !== "silu")
    return Effect.fail(unsupported(file, "norm", "a Llama-family model has RMSNorm without bias, a gated silu MLP and sequential residuals"))
  const isQwen2 = c.hfArchitecture === "Qwen2ForCausalLM"
  if (isQwen2 ? !c.bias.qkv || c.bias.o || c.bias.mlp : c.bias.qkv !== c.bias.o)
    return Effect.fail(
      unsupported(file, "bias", isQwen2 ? "Qwen2 has biases on q, k, v only" : "Llama's attention_bias puts biases on all of q, k, v, o or none"),
    )
  const json: Record<string, unknown> = {
    architectures: [c.hfArchitecture],
    model_type: modelType[c.hfArchitecture] ?? "llama",
    ...llamaLikeJson(c),
    rope_theta: c.positions.theta,
    rope_scaling: ropeScalingJson(c.positions.scaling),
    ...commonConfigJson(c),
  }
  if (isQwen2) {
    json.use_sliding_window = false
    json.sliding_window = null
  } else if (c.hfArchitecture === "Qwen3ForCausalLM") {
    json.use_sliding_window = false
    json.sliding_window = null
    json.attention_bias = c.bias.qkv
  } else {
    json.attention_bias = c.bias.qkv
    json.mlp_bias = c.bias.mlp
  }
  if (c.hfArchitecture === "MistralForCausalLM") json.sliding_window = null
  return Effect.succeed(json)
}

export const llama: ArchitectureModule = { family: "llama", hfArchitectures: architectures, parseConfig, weights, toConfigJson }
