// LlamaForCausalLM and the checkpoints that share its math: Llama 2/3, TinyLlama, Mistral (with its
// sliding window on every layer), Qwen2 (Llama plus biases on q/k/v) and Qwen3 (Llama plus an
// RMSNorm over each query and key head before RoPE, head_dim independent of hidden_size); with
// use_sliding_window, Qwen2/3 layers from max_window_layers on are windowed.
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
  LlamaStyleSizeFields,
  llamaStyleSizes,
  llamaStyleSizesJson,
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
  slidingLayerTypes,
  unsupported,
} from "./config-architecture.ts"

/** The config.json fields of Llama and of the families derived from it (Phi-3). */
export const LlamaLikeFields = {
  ...CommonFields,
  model_type: Schema.optional(Schema.String),
  ...LlamaStyleSizeFields,
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
  max_window_layers: Schema.optional(Schema.Int),
  layer_types: Schema.optional(Schema.Array(Schema.String)),
})

/**
 * The ModelConfig sizes every Llama-like config.json gives under the same names, checked
 * (llamaStyleSizes); `defaultHeadDim` replaces hidden_size / heads when head_dim is absent
 * (Qwen3Config defaults it to 128).
 */
export const llamaLikeSizes = (
  file: string,
  c: Schema.Struct<typeof LlamaLikeFields>["Type"],
  defaultHeadDim?: number,
) =>
  Effect.map(llamaStyleSizes(file, c, c.head_dim ?? defaultHeadDim), (sizes) => ({
    ...sizes,
    maxPositions: c.max_position_embeddings,
    norm: { kind: "rms" as const, eps: c.rms_norm_eps },
  }))

/** The config.json form of llamaLikeSizes and the activation. */
export const llamaLikeJson = (c: ModelConfig) => ({
  ...llamaStyleSizesJson(c),
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
    // Mistral's and Qwen2/3's config classes default sliding_window to 4096 when the key is absent;
    // Qwen2/3 only use their window when use_sliding_window is true, and only from layer
    // max_window_layers (default 28) on, unless layer_types says which. LlamaForCausalLM ignores
    // sliding_window.
    const isQwen = isQwen2 || isQwen3
    const window = arch === "MistralForCausalLM" || (isQwen && c.use_sliding_window) ? (c.sliding_window === undefined ? 4096 : c.sliding_window) : null
    if (window !== null && window < 1) return yield* Effect.fail(checkpointError(file, "sliding_window", `${window} must be positive`))
    const firstLocal = isQwen ? (c.max_window_layers ?? 28) : 0
    const slidingLayers =
      isQwen && c.layer_types !== undefined
        ? yield* slidingLayerTypes(file, c.layer_types, c.num_hidden_layers)
        : Array.from({ length: c.num_hidden_layers }, (_, i) => i >= firstLocal)
    if (c.rope_parameters?.partial_rotary_factor !== undefined && c.rope_parameters.partial_rotary_factor !== 1)
      return yield* Effect.fail(unsupported(file, "rope_parameters.partial_rotary_factor", "partial rotary embeddings in a Llama-family model"))
    const activation = yield* activationFromHf(file, "hidden_act", c.hidden_act ?? "silu")
    if (activation !== "silu") return yield* Effect.fail(unsupported(file, "hidden_act", `"${c.hidden_act}" in a Llama-family model (only silu)`))
    // Qwen3Config's head_dim defaults to 128 whatever hidden_size is.
    const sizes = yield* llamaLikeSizes(file, c, isQwen3 ? 128 : undefined)
    const headDim = sizes.headDim
    const ropeField = c.rope_parameters != null ? "rope_parameters" : "rope_scaling"
    const scaling = yield* parseRopeScaling(file, ropeField, c.rope_parameters ?? c.rope_scaling, { maxPositions: c.max_position_embeddings, rotaryDim: headDim })
    const attentionBias = c.attention_bias ?? false
    const config: ModelConfig = {
      family: "llama",
      hfArchitecture: arch,
      ...sizes,
      activation,
      mlp: "gated",
      positions: { kind: "rope", theta: c.rope_parameters?.rope_theta ?? c.rope_theta ?? 10000, rotaryDim: headDim, scaling },
      parallelResidual: false,
      tiedEmbeddings: c.tie_word_embeddings ?? false,
      bias: { qkv: isQwen2 || attentionBias, o: !isQwen2 && attentionBias, mlp: c.mlp_bias ?? false, norm: false },
      ...commonConfig(c),
      ...(window !== null && slidingLayers.some((l) => l) ? { slidingWindow: { size: window, layers: slidingLayers } } : {}),
    }
    return config
  })

const weights: ArchitectureModule["weights"] = (config, tensors) => {
  const { hiddenSize: h, numHeads, numKvHeads, headDim, intermediateSize: m, bias } = config
  const qkNorm = config.hfArchitecture === "Qwen3ForCausalLM"
  const headNorms = (p: string) =>
    qkNorm
      ? Effect.all({ q: resolveNorm(tensors, normSpec(`${p}.self_attn.q_norm`, headDim, false)), k: resolveNorm(tensors, normSpec(`${p}.self_attn.k_norm`, headDim, false)) })
      : Effect.succeed(undefined)
  const layer = (i: number): Effect.Effect<Layer, CheckpointError> => {
    const p = `model.layers.${i}`
    return Effect.all({
      inputNorm: resolveNorm(tensors, normSpec(`${p}.input_layernorm`, h, false)),
      headNorms: headNorms(p),
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
  const window = c.slidingWindow
  const firstLocal = window ? window.layers.indexOf(true) : -1
  if (window && (c.hfArchitecture === "LlamaForCausalLM" || window.layers.some((l, i) => l !== i >= firstLocal) || (c.hfArchitecture === "MistralForCausalLM" && firstLocal !== 0)))
    return Effect.fail(unsupported(file, "sliding_window", `${c.hfArchitecture} cannot express this pattern of sliding-window layers`))
  const isQwen3 = c.hfArchitecture === "Qwen3ForCausalLM"
  if (isQwen2 || isQwen3) {
    json.use_sliding_window = window !== undefined
    json.sliding_window = window?.size ?? null
    if (window) json.max_window_layers = firstLocal
    if (isQwen3) json.attention_bias = c.bias.qkv
  } else {
    json.attention_bias = c.bias.qkv
    json.mlp_bias = c.bias.mlp
  }
  if (c.hfArchitecture === "MistralForCausalLM") json.sliding_window = window?.size ?? null
  return Effect.succeed(json)
}

export const llama: ArchitectureModule = { family: "llama", hfArchitectures: architectures, parseConfig, weights, toConfigJson }
