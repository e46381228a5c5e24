// GPTNeoXForCausalLM (Pythia): partial rotary embeddings, fused per-head query_key_value,
// LayerNorm with biases, GELU MLP and (by default) parallel attention/MLP residuals.
import { Effect, Schema } from "effect"
import {
  activationFromHf,
  activationToHf,
  type ArchitectureModule,
  type CheckpointError,
  type UnsupportedModelError,
  unsupported,
  checkpointError,
  CommonFields,
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
  resolveModel,
  resolveNorm,
  RopeFields,
  ropeScalingJson,
} from "./config-architecture.ts"

const NeoxConfigJson = Schema.Struct({
  ...CommonFields,
  model_type: Schema.optional(Schema.String),
  vocab_size: PositiveInt,
  hidden_size: PositiveInt,
  num_hidden_layers: PositiveInt,
  num_attention_heads: PositiveInt,
  intermediate_size: PositiveInt,
  hidden_act: Schema.optional(Schema.String),
  rotary_pct: Schema.optional(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 }))),
  rotary_emb_base: Schema.optional(PositiveNumber),
  rope_theta: Schema.optional(PositiveNumber),
  rope_scaling: Schema.optional(Schema.NullOr(RopeFields)),
  rope_parameters: Schema.optional(Schema.NullOr(RopeFields)),
  max_position_embeddings: PositiveInt,
  layer_norm_eps: Schema.optional(PositiveNumber),
  use_parallel_residual: Schema.optional(Schema.Boolean),
  attention_bias: Schema.optional(Schema.Boolean),
})

const parseConfig: ArchitectureModule["parseConfig"] = (file, json) =>
  Effect.gen(function* () {
    const c = yield* decodeConfig(NeoxConfigJson, file, json)
    if (c.hidden_size % c.num_attention_heads !== 0)
      return yield* Effect.fail(checkpointError(file, "num_attention_heads", `${c.num_attention_heads} does not divide hidden_size ${c.hidden_size}`))
    const headDim = c.hidden_size / c.num_attention_heads
    const rotaryPct = c.rope_parameters?.partial_rotary_factor ?? c.rotary_pct ?? 0.25
    // HF: rotary_ndims = int(head_size * rotary_pct)
    const rotaryDim = Math.floor(headDim * rotaryPct)
    if (rotaryDim % 2 !== 0)
      return yield* Effect.fail(checkpointError(file, "rotary_pct", `gives an odd rotary dimension ${rotaryDim} (head_dim ${headDim})`))
    const ropeField = c.rope_parameters != null ? "rope_parameters" : "rope_scaling"
    const scaling = yield* parseRopeScaling(file, ropeField, c.rope_parameters ?? c.rope_scaling, { maxPositions: c.max_position_embeddings, rotaryDim })
    const attentionBias = c.attention_bias ?? true
    const config: ModelConfig = {
      family: "gpt_neox",
      hfArchitecture: "GPTNeoXForCausalLM",
      vocabSize: c.vocab_size,
      hiddenSize: c.hidden_size,
      numLayers: c.num_hidden_layers,
      numHeads: c.num_attention_heads,
      numKvHeads: c.num_attention_heads,
      headDim,
      intermediateSize: c.intermediate_size,
      maxPositions: c.max_position_embeddings,
      norm: { kind: "layer", eps: c.layer_norm_eps ?? 1e-5 },
      activation: yield* activationFromHf(file, "hidden_act", c.hidden_act ?? "gelu"),
      mlp: "plain",
      positions: { kind: "rope", theta: c.rope_parameters?.rope_theta ?? c.rope_theta ?? c.rotary_emb_base ?? 10000, rotaryDim, scaling },
      parallelResidual: c.use_parallel_residual ?? true,
      tiedEmbeddings: c.tie_word_embeddings ?? false,
      bias: { qkv: attentionBias, o: attentionBias, mlp: true, norm: true },
      ...commonConfig(c),
    }
    return config
  })

const weights: ArchitectureModule["weights"] = (config, tensors) => {
  const { hiddenSize: h, intermediateSize: m, vocabSize, bias } = config
  const layer = (i: number): Effect.Effect<Layer, CheckpointError> => {
    const p = `gpt_neox.layers.${i}`
    return Effect.all({
      inputNorm: resolveNorm(tensors, normSpec(`${p}.input_layernorm`, h, true)),
      attention: Effect.all({
        layout: Effect.succeed("fused_qkv_per_head" as const),
        qkv: resolveLinear(tensors, linearSpec(`${p}.attention.query_key_value`, 3 * h, h, bias.qkv)),
        o: resolveLinear(tensors, linearSpec(`${p}.attention.dense`, h, h, bias.o)),
      }),
      postAttentionNorm: resolveNorm(tensors, normSpec(`${p}.post_attention_layernorm`, h, true)),
      mlp: Effect.all({
        kind: Effect.succeed("plain" as const),
        up: resolveLinear(tensors, linearSpec(`${p}.mlp.dense_h_to_4h`, m, h, true)),
        down: resolveLinear(tensors, linearSpec(`${p}.mlp.dense_4h_to_h`, h, m, true)),
      }),
    })
  }
  return resolveModel(
    tensors,
    {
      embedTokens: { name: "gpt_neox.embed_in.weight", shape: [vocabSize, h], transposed: false },
      embedPositions: undefined,
      finalNorm: normSpec("gpt_neox.final_layer_norm", h, true),
      lmHead: config.tiedEmbeddings ? undefined : { name: "embed_out.weight", shape: [vocabSize, h], transposed: false },
    },
    Array.from({ length: config.numLayers }, (_, i) => layer(i)),
  )
}

const toConfigJson = (c: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> => {
  if (c.positions.kind !== "rope" || c.norm.kind !== "layer" || c.mlp !== "plain" || c.numKvHeads !== c.numHeads || c.headDim * c.numHeads !== c.hiddenSize || c.bias.qkv !== c.bias.o || !c.bias.mlp || !c.bias.norm)
    return Effect.fail(unsupported("config.json", "architectures", "GPTNeoXForCausalLM has rotary positions, LayerNorm, full multi-head attention, a plain MLP and attention biases on all or none of qkv and dense"))
  return Effect.succeed({
    architectures: ["GPTNeoXForCausalLM"],
    model_type: "gpt_neox",
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    intermediate_size: c.intermediateSize,
    hidden_act: activationToHf[c.activation],
    rotary_pct: c.positions.rotaryDim / c.headDim,
    // Older transformers versions read rotary_emb_base, newer ones rope_theta; both say the same.
    rotary_emb_base: c.positions.theta,
    rope_theta: c.positions.theta,
    rope_scaling: ropeScalingJson(c.positions.scaling),
    max_position_embeddings: c.maxPositions,
    layer_norm_eps: c.norm.eps,
    use_parallel_residual: c.parallelResidual,
    attention_bias: c.bias.qkv,
    ...commonConfigJson(c),
  })
}

export const gptNeox: ArchitectureModule = { family: "gpt_neox", hfArchitectures: ["GPTNeoXForCausalLM"], parseConfig, weights, toConfigJson }
