// Phi3ForCausalLM (Phi-3 mini/medium, Phi-3.5-mini, Phi-4-mini): Llama math with a fused
// self_attn.qkv_proj ([q | k | v] output features) and a fused mlp.gate_up_proj ([gate | up]),
// no biases, optional partial rotary embeddings and LongRoPE scaling (rope_scaling type
// "longrope"; the older names "su" and "yarn" mean longrope for Phi-3, as Phi3Config rewrites them).
import { Effect, Schema } from "effect"
import {
  activationFromHf,
  type ArchitectureModule,
  type CheckpointError,
  checkpointError,
  commonConfig,
  commonConfigJson,
  decodeConfig,
  type Layer,
  linearSpec,
  type ModelConfig,
  normSpec,
  parseRopeScaling,
  PositiveInt,
  PositiveNumber,
  resolveLinear,
  resolveNorm,
  ropeScalingJson,
  unsupported,
  type UnsupportedModelError,
} from "./config-architecture.ts"
import { LlamaLikeFields, llamaLikeJson, llamaLikeSizes, llamaModelWeights } from "./config-llama.ts"

const Phi3ConfigJson = Schema.Struct({
  ...LlamaLikeFields,
  original_max_position_embeddings: Schema.optional(PositiveInt),
  partial_rotary_factor: Schema.optional(PositiveNumber),
})

const parseConfig: ArchitectureModule["parseConfig"] = (file, json) =>
  Effect.gen(function* () {
    const c = yield* decodeConfig(Phi3ConfigJson, file, json)
    if (c.sliding_window != null && c.sliding_window < 1) return yield* Effect.fail(checkpointError(file, "sliding_window", `${c.sliding_window} must be positive`))
    const sizes = yield* llamaLikeSizes(file, c)
    const headDim = sizes.headDim
    const ropeField = c.rope_parameters != null ? "rope_parameters" : "rope_scaling"
    const rope = c.rope_parameters ?? c.rope_scaling
    const partial = rope?.partial_rotary_factor ?? c.partial_rotary_factor ?? 1
    // HF: rotary_ndims = int(head_dim * partial_rotary_factor)
    const rotaryDim = Math.floor(headDim * partial)
    if (rotaryDim % 2 !== 0 || partial > 1)
      return yield* Effect.fail(checkpointError(file, "partial_rotary_factor", `${partial} gives rotary dimension ${rotaryDim} of head_dim ${headDim}; it must be even and at most head_dim`))
    const kind = rope?.rope_type ?? rope?.type
    const renamed = rope != null && (kind === "su" || kind === "yarn") ? { ...rope, rope_type: "longrope" } : rope
    const scaling = yield* parseRopeScaling(file, ropeField, renamed, {
      maxPositions: c.max_position_embeddings,
      rotaryDim,
      originalMaxPositions: c.original_max_position_embeddings,
    })
    const config: ModelConfig = {
      family: "phi3",
      hfArchitecture: "Phi3ForCausalLM",
      ...sizes,
      activation: yield* activationFromHf(file, "hidden_act", c.hidden_act ?? "silu"),
      mlp: "gated",
      positions: { kind: "rope", theta: rope?.rope_theta ?? c.rope_theta ?? 10000, rotaryDim, scaling },
      parallelResidual: false,
      tiedEmbeddings: c.tie_word_embeddings ?? false,
      bias: { qkv: false, o: false, mlp: false, norm: false },
      ...commonConfig(c),
      // transformers' Phi-3 windows every layer when sliding_window is set (Phi-3-mini-4k: 2047)
      ...(c.sliding_window != null ? { slidingWindow: { size: c.sliding_window, layers: Array.from({ length: c.num_hidden_layers }, () => true) } } : {}),
    }
    return config
  })

const weights: ArchitectureModule["weights"] = (config, tensors) => {
  const { hiddenSize: h, numHeads, numKvHeads, headDim, intermediateSize: m } = config
  const layer = (i: number): Effect.Effect<Layer, CheckpointError> => {
    const p = `model.layers.${i}`
    return Effect.all({
      inputNorm: resolveNorm(tensors, normSpec(`${p}.input_layernorm`, h, false)),
      attention: Effect.all({
        layout: Effect.succeed("fused_qkv" as const),
        qkv: resolveLinear(tensors, linearSpec(`${p}.self_attn.qkv_proj`, (numHeads + 2 * numKvHeads) * headDim, h, false)),
        o: resolveLinear(tensors, linearSpec(`${p}.self_attn.o_proj`, h, numHeads * headDim, false)),
      }),
      postAttentionNorm: resolveNorm(tensors, normSpec(`${p}.post_attention_layernorm`, h, false)),
      mlp: Effect.all({
        kind: Effect.succeed("gated_fused" as const),
        gateUp: resolveLinear(tensors, linearSpec(`${p}.mlp.gate_up_proj`, 2 * m, h, false)),
        down: resolveLinear(tensors, linearSpec(`${p}.mlp.down_proj`, h, m, false)),
      }),
    })
  }
  return llamaModelWeights(config, tensors, layer)
}

const toConfigJson = (c: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> => {
  const file = "config.json"
  if (c.positions.kind !== "rope") return Effect.fail(unsupported(file, "positions", "Phi-3 uses rotary embeddings"))
  if (c.slidingWindow?.layers.some((l) => !l)) return Effect.fail(unsupported(file, "sliding_window", "Phi-3 windows every layer or none"))
  if (c.norm.kind !== "rms" || c.mlp !== "gated" || c.parallelResidual || Object.values(c.bias).some((b) => b))
    return Effect.fail(unsupported(file, "norm", "Phi-3 has RMSNorm, a gated MLP, sequential residuals and no biases"))
  const { scaling } = c.positions
  return Effect.succeed({
    architectures: [c.hfArchitecture],
    model_type: "phi3",
    ...llamaLikeJson(c),
    // Phi3Config reads LongRoPE's original length from the top level.
    original_max_position_embeddings: scaling.kind === "longrope" ? scaling.originalMaxPositions : c.maxPositions,
    rope_theta: c.positions.theta,
    rope_scaling: ropeScalingJson(scaling),
    partial_rotary_factor: c.positions.rotaryDim / c.headDim,
    sliding_window: c.slidingWindow?.size ?? null,
    ...commonConfigJson(c),
  })
}

export const phi3: ArchitectureModule = { family: "phi3", hfArchitectures: ["Phi3ForCausalLM"], parseConfig, weights, toConfigJson }
