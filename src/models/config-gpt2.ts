// GPT2LMHeadModel: learned position embeddings, pre-LayerNorm blocks, fused c_attn, GELU MLP.
// Its Conv1D layers store W^T ([in, out]), so every projection weight is marked `transposed`.
import { Effect, Schema } from "effect"
import {
  activationFromHf,
  activationToHf,
  type ArchitectureModule,
  type CheckpointError,
  type UnsupportedModelError,
  checkpointError,
  CommonFields,
  commonConfig,
  commonConfigJson,
  decodeConfig,
  type Layer,
  type Linear,
  type ModelConfig,
  normSpec,
  PositiveInt,
  PositiveNumber,
  resolveLinear,
  resolveModel,
  resolveNorm,
  unsupported,
  type WeightSpec,
} from "./config-architecture.ts"

const Gpt2ConfigJson = Schema.Struct({
  ...CommonFields,
  model_type: Schema.optional(Schema.String),
  vocab_size: PositiveInt,
  n_positions: PositiveInt,
  n_embd: PositiveInt,
  n_layer: PositiveInt,
  n_head: PositiveInt,
  n_inner: Schema.optional(Schema.NullOr(PositiveInt)),
  activation_function: Schema.optional(Schema.String),
  layer_norm_epsilon: Schema.optional(PositiveNumber),
  scale_attn_weights: Schema.optional(Schema.Boolean),
  scale_attn_by_inverse_layer_idx: Schema.optional(Schema.Boolean),
  add_cross_attention: Schema.optional(Schema.Boolean),
})

const parseConfig: ArchitectureModule["parseConfig"] = (file, json) =>
  Effect.gen(function* () {
    const c = yield* decodeConfig(Gpt2ConfigJson, file, json)
    if (c.scale_attn_weights === false)
      return yield* Effect.fail(unsupported(file, "scale_attn_weights", "false (attention without 1/sqrt(head_dim) scaling)"))
    if (c.scale_attn_by_inverse_layer_idx === true)
      return yield* Effect.fail(unsupported(file, "scale_attn_by_inverse_layer_idx", "true (per-layer attention scaling)"))
    if (c.add_cross_attention === true) return yield* Effect.fail(unsupported(file, "add_cross_attention", "true (encoder-decoder cross attention)"))
    if (c.n_embd % c.n_head !== 0) return yield* Effect.fail(checkpointError(file, "n_head", `${c.n_head} does not divide n_embd ${c.n_embd}`))
    const config: ModelConfig = {
      family: "gpt2",
      hfArchitecture: "GPT2LMHeadModel",
      vocabSize: c.vocab_size,
      hiddenSize: c.n_embd,
      numLayers: c.n_layer,
      numHeads: c.n_head,
      numKvHeads: c.n_head,
      headDim: c.n_embd / c.n_head,
      intermediateSize: c.n_inner ?? 4 * c.n_embd,
      maxPositions: c.n_positions,
      norm: { kind: "layer", eps: c.layer_norm_epsilon ?? 1e-5 },
      activation: yield* activationFromHf(file, "activation_function", c.activation_function ?? "gelu_new"),
      mlp: "plain",
      positions: { kind: "learned" },
      parallelResidual: false,
      tiedEmbeddings: c.tie_word_embeddings ?? true,
      bias: { qkv: true, o: true, mlp: true, norm: true },
      ...commonConfig(c),
    }
    return config
  })

/** A Conv1D layer: weight stored [in, out]. */
const conv1dSpec = (name: string, inp: number, out: number): Linear<WeightSpec> => ({
  weight: { name: `${name}.weight`, shape: [inp, out], transposed: true },
  bias: { name: `${name}.bias`, shape: [out], transposed: false },
})

const weights: ArchitectureModule["weights"] = (config, tensors) => {
  const { hiddenSize: h, intermediateSize: m, vocabSize, maxPositions } = config
  // Checkpoints saved from GPT2LMHeadModel prefix names with "transformer."; the original OpenAI
  // conversions (saved from GPT2Model) do not.
  const t = tensors.has("transformer.wte.weight") ? "transformer." : ""
  const layer = (i: number): Effect.Effect<Layer, CheckpointError> => {
    const p = `${t}h.${i}`
    return Effect.all({
      inputNorm: resolveNorm(tensors, normSpec(`${p}.ln_1`, h, true)),
      attention: Effect.all({
        layout: Effect.succeed("fused_qkv" as const),
        qkv: resolveLinear(tensors, conv1dSpec(`${p}.attn.c_attn`, h, 3 * h)),
        o: resolveLinear(tensors, conv1dSpec(`${p}.attn.c_proj`, h, h)),
      }),
      postAttentionNorm: resolveNorm(tensors, normSpec(`${p}.ln_2`, h, true)),
      mlp: Effect.all({
        kind: Effect.succeed("plain" as const),
        up: resolveLinear(tensors, conv1dSpec(`${p}.mlp.c_fc`, h, m)),
        down: resolveLinear(tensors, conv1dSpec(`${p}.mlp.c_proj`, m, h)),
      }),
    })
  }
  return resolveModel(
    tensors,
    {
      embedTokens: { name: `${t}wte.weight`, shape: [vocabSize, h], transposed: false },
      embedPositions: { name: `${t}wpe.weight`, shape: [maxPositions, h], transposed: false },
      finalNorm: normSpec(`${t}ln_f`, h, true),
      lmHead: config.tiedEmbeddings ? undefined : { name: "lm_head.weight", shape: [vocabSize, h], transposed: false },
    },
    Array.from({ length: config.numLayers }, (_, i) => layer(i)),
  )
}

const toConfigJson = (c: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> =>
  c.positions.kind !== "learned" || c.norm.kind !== "layer" || c.mlp !== "plain" || c.parallelResidual || c.numKvHeads !== c.numHeads || c.headDim * c.numHeads !== c.hiddenSize || !(c.bias.qkv && c.bias.o && c.bias.mlp && c.bias.norm)
    ? Effect.fail(unsupported("config.json", "architectures", "GPT2LMHeadModel has learned positions, LayerNorm, biases everywhere, full multi-head attention and a plain MLP"))
    : Effect.succeed({
  architectures: ["GPT2LMHeadModel"],
  model_type: "gpt2",
  vocab_size: c.vocabSize,
  n_positions: c.maxPositions,
  n_embd: c.hiddenSize,
  n_layer: c.numLayers,
  n_head: c.numHeads,
  n_inner: c.intermediateSize,
  activation_function: activationToHf[c.activation],
  layer_norm_epsilon: c.norm.eps,
  scale_attn_weights: true,
  ...commonConfigJson(c),
  })

export const gpt2: ArchitectureModule = { family: "gpt2", hfArchitectures: ["GPT2LMHeadModel"], parseConfig, weights, toConfigJson }
