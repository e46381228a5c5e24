// Gemma2ForCausalLM (model_type "gemma2") and Gemma3ForCausalLM (the text-only "gemma3_text"):
// a Llama-style decoder plus the features of config-architecture.ts GemmaFeatures, read as
// transformers' modeling_gemma2.py / modeling_gemma3.py and their config classes do:
// - embeddings times sqrt(hidden_size) (in the weight dtype), RMSNorm with (1 + w), GeGLU MLP
//   (hidden_activation, default gelu_pytorch_tanh), norms before and after attention and MLP;
// - local (sliding-window) and global layers: layer_types when given, otherwise Gemma 2
//   alternates starting with a local layer and Gemma 3 makes every sliding_window_pattern-th
//   layer global (layer i is local when (i + 1) % pattern != 0);
// - scores scaled by query_pre_attn_scalar^-1/2; Gemma 2 soft-caps attention scores and logits;
// - Gemma 3: per-head q/k RMSNorm, RoPE base rope_local_base_freq (unscaled) on local layers and
//   rope_theta with rope_scaling on global layers.
// Defaults for absent keys are those of Gemma2Config / Gemma3TextConfig.
import { Effect, Schema } from "effect"
import {
  type ArchitectureModule,
  type CheckpointError,
  checkpointError,
  CommonFields,
  commonConfig,
  commonConfigJson,
  decodeConfig,
  activationFromHf,
  activationToHf,
  type Layer,
  LlamaStyleSizeFields,
  llamaStyleSizes,
  llamaStyleSizesJson,
  type ModelConfig,
  normSpec,
  parseRopeScaling,
  type Positions,
  PositiveInt,
  PositiveNumber,
  resolveNorm,
  RopeFields,
  ropeScalingJson,
  slidingLayerTypes,
  unsupported,
  type UnsupportedModelError,
} from "./config-architecture.ts"
import { llama } from "./config-llama.ts"

const GemmaConfigJson = Schema.Struct({
  ...CommonFields,
  model_type: Schema.optional(Schema.String),
  ...LlamaStyleSizeFields,
  max_position_embeddings: Schema.optional(PositiveInt),
  rms_norm_eps: Schema.optional(PositiveNumber),
  hidden_activation: Schema.optional(Schema.NullOr(Schema.String)),
  rope_theta: Schema.optional(PositiveNumber),
  rope_scaling: Schema.optional(Schema.NullOr(RopeFields)),
  rope_local_base_freq: Schema.optional(PositiveNumber),
  /** transformers 5: one set of RoPE fields, or one per layer type ({full_attention, sliding_attention}) */
  rope_parameters: Schema.optional(Schema.NullOr(Schema.Record(Schema.String, Schema.Unknown))),
  attention_bias: Schema.optional(Schema.Boolean),
  query_pre_attn_scalar: Schema.optional(PositiveNumber),
  sliding_window: Schema.optional(Schema.NullOr(PositiveInt)),
  sliding_window_pattern: Schema.optional(PositiveInt),
  layer_types: Schema.optional(Schema.Array(Schema.String)),
  attn_logit_softcapping: Schema.optional(Schema.NullOr(PositiveNumber)),
  final_logit_softcapping: Schema.optional(Schema.NullOr(PositiveNumber)),
  use_bidirectional_attention: Schema.optional(Schema.NullOr(Schema.Boolean)),
})
type GemmaConfigJson = typeof GemmaConfigJson.Type

const GEMMA2 = "Gemma2ForCausalLM"
const GEMMA3 = "Gemma3ForCausalLM"
const architectures = [GEMMA2, GEMMA3] as const

/** Gemma2Config and Gemma3TextConfig defaults for the keys a config.json may leave out. */
const defaults = {
  [GEMMA2]: { maxPositions: 8192, ropeTheta: 10000, attnSoftcap: 50, finalSoftcap: 30, pattern: 2 },
  [GEMMA3]: { maxPositions: 131072, ropeTheta: 1_000_000, attnSoftcap: undefined, finalSoftcap: undefined, pattern: 6 },
} as const

/** `null` in config.json means off; an absent key means the config class default. */
const orDefault = <T>(v: T | null | undefined, d: T | undefined): T | undefined => (v === undefined ? d : (v ?? undefined))

const decodeRope = (file: string, field: string, v: unknown) => decodeConfig(RopeFields, `${file} (${field})`, v)

/** Global and local RoPE from rope_theta / rope_scaling / rope_local_base_freq or transformers 5 rope_parameters. */
const gemmaRope = (
  file: string,
  c: GemmaConfigJson,
  arch: (typeof architectures)[number],
  headDim: number,
): Effect.Effect<{ global: Positions; local: Positions | undefined }, CheckpointError | UnsupportedModelError> =>
  Effect.gen(function* () {
    const rope = (theta: number, scaling: Extract<Positions, { kind: "rope" }>["scaling"]): Positions => ({ kind: "rope", theta, rotaryDim: headDim, scaling })
    const context = { maxPositions: c.max_position_embeddings ?? defaults[arch].maxPositions, rotaryDim: headDim }
    const fromFields = (field: string, f: RopeFields) =>
      Effect.map(parseRopeScaling(file, field, f, context), (scaling) => rope(f.rope_theta ?? defaults[arch].ropeTheta, scaling))
    // Gemma 3's local layers use the default RoPE with their own base, whatever rope_scaling says
    const gemma3Local = arch === GEMMA3 ? rope(c.rope_local_base_freq ?? 10000, { kind: "none" }) : undefined
    const p = c.rope_parameters
    if (p == null) return { global: yield* fromFields("rope_scaling", { rope_theta: c.rope_theta, ...c.rope_scaling }), local: gemma3Local }
    if (p.full_attention === undefined && p.sliding_attention === undefined)
      return { global: yield* fromFields("rope_parameters", yield* decodeRope(file, "rope_parameters", p)), local: gemma3Local }
    const global = yield* fromFields("rope_parameters.full_attention", yield* decodeRope(file, "rope_parameters.full_attention", p.full_attention ?? {}))
    if (p.sliding_attention === undefined) return { global, local: gemma3Local }
    const sliding = yield* decodeRope(file, "rope_parameters.sliding_attention", p.sliding_attention)
    return { global, local: rope(sliding.rope_theta ?? 10000, yield* parseRopeScaling(file, "rope_parameters.sliding_attention", sliding, context)) }
  })

const parseConfig: ArchitectureModule["parseConfig"] = (file, json) =>
  Effect.gen(function* () {
    const c = yield* decodeConfig(GemmaConfigJson, file, json)
    const arch = c.architectures?.[0] === GEMMA2 || c.model_type === "gemma2" ? GEMMA2 : GEMMA3
    const d = defaults[arch]
    if (c.use_bidirectional_attention)
      return yield* Effect.fail(unsupported(file, "use_bidirectional_attention", "bidirectional attention (an encoder such as EmbeddingGemma, not a causal LM)"))
    // both config classes default head_dim to 256, independent of hidden_size
    const sizes = yield* llamaStyleSizes(file, c, c.head_dim ?? 256)
    const activation = yield* activationFromHf(file, "hidden_activation", c.hidden_activation ?? "gelu_pytorch_tanh")
    // Gemma 2 always alternates; only Gemma 3 reads sliding_window_pattern
    const pattern = arch === GEMMA3 ? (c.sliding_window_pattern ?? d.pattern) : d.pattern
    const layers =
      c.layer_types === undefined
        ? Array.from({ length: c.num_hidden_layers }, (_, i) => (i + 1) % pattern !== 0)
        : yield* slidingLayerTypes(file, c.layer_types, c.num_hidden_layers)
    const window = c.sliding_window === undefined ? 4096 : c.sliding_window
    if (window === null && layers.some((l) => l))
      return yield* Effect.fail(checkpointError(file, "sliding_window", "null, but the config has sliding_attention layers"))
    const rope = yield* gemmaRope(file, c, arch, sizes.headDim)
    const attentionBias = c.attention_bias ?? false
    const config: ModelConfig = {
      family: "gemma",
      hfArchitecture: arch,
      ...sizes,
      maxPositions: c.max_position_embeddings ?? d.maxPositions,
      norm: { kind: "rms", eps: c.rms_norm_eps ?? 1e-6 },
      activation,
      mlp: "gated",
      positions: rope.global,
      parallelResidual: false,
      tiedEmbeddings: c.tie_word_embeddings ?? true,
      bias: { qkv: attentionBias, o: attentionBias, mlp: false, norm: false },
      ...commonConfig({ ...c, bos_token_id: orDefault(c.bos_token_id, 2), eos_token_id: orDefault(c.eos_token_id, 1), pad_token_id: orDefault(c.pad_token_id, 0) }),
      ...(window !== null && layers.some((l) => l) ? { slidingWindow: { size: window, layers } } : {}),
      gemma: {
        embedScale: arch === GEMMA2 ? "all_inputs" : "token_embeddings",
        queryPreAttnScalar: c.query_pre_attn_scalar ?? 256,
        // Gemma3Attention stores attn_logit_softcapping but never hands it to the attention
        // function, so transformers computes Gemma 3 without it; so do we
        attnLogitSoftcap: arch === GEMMA2 ? orDefault(c.attn_logit_softcapping, d.attnSoftcap) : undefined,
        finalLogitSoftcap: orDefault(c.final_logit_softcapping, d.finalSoftcap),
        localPositions: rope.local,
      },
    }
    return config
  })

/**
 * Gemma's tensors are Llama's (same names for embeddings, projections, input_layernorm and the
 * final norm; tied head) plus more norms, but its post_attention_layernorm normalizes the
 * attention output rather than the MLP input: the norm in front of the MLP is
 * pre_feedforward_layernorm.
 */
const weights: ArchitectureModule["weights"] = (config, tensors) =>
  Effect.gen(function* () {
    const w = yield* llama.weights(config, tensors)
    const norm = (i: number, name: string, size = config.hiddenSize) => resolveNorm(tensors, normSpec(`model.layers.${i}.${name}`, size, false))
    const layers = yield* Effect.all(
      w.layers.map((l, i) =>
        Effect.gen(function* () {
          const layer: Layer = {
            ...l,
            postAttentionNorm: yield* norm(i, "pre_feedforward_layernorm"),
            outputNorms: { attention: l.postAttentionNorm, mlp: yield* norm(i, "post_feedforward_layernorm") },
          }
          if (config.hfArchitecture !== GEMMA3) return layer
          return { ...layer, headNorms: { q: yield* norm(i, "self_attn.q_norm", config.headDim), k: yield* norm(i, "self_attn.k_norm", config.headDim) } }
        }),
      ),
    )
    return { ...w, layers }
  })

const toConfigJson = (c: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> => {
  const file = "config.json"
  const g = c.gemma
  if (g === undefined || c.positions.kind !== "rope" || c.positions.rotaryDim !== c.headDim)
    return Effect.fail(unsupported(file, "architectures", `${c.hfArchitecture} needs Gemma features and RoPE over the whole head`))
  if (c.norm.kind !== "rms" || c.mlp !== "gated" || c.parallelResidual || c.bias.norm || c.bias.mlp || c.bias.qkv !== c.bias.o)
    return Effect.fail(unsupported(file, "norm", "Gemma has RMSNorm without bias, a gated MLP without bias, sequential residuals and attention_bias on all of q, k, v, o or none"))
  const isGemma3 = c.hfArchitecture === GEMMA3
  if ((g.embedScale === "token_embeddings") !== isGemma3 || (g.localPositions !== undefined) !== isGemma3 || (isGemma3 && g.attnLogitSoftcap !== undefined))
    return Effect.fail(unsupported(file, "architectures", `these Gemma features do not match ${c.hfArchitecture}`))
  const local = g.localPositions
  if (local !== undefined && (local.kind !== "rope" || local.scaling.kind !== "none" || local.rotaryDim !== c.headDim))
    return Effect.fail(unsupported(file, "rope_local_base_freq", "Gemma 3's local layers use unscaled RoPE over the whole head"))
  const layers = c.slidingWindow?.layers ?? new Array<boolean>(c.numLayers).fill(false)
  // transformers before layer_types (4.50 - 4.52) reads Gemma 3's pattern from sliding_window_pattern
  const pattern = layers.indexOf(false) + 1
  const followsPattern = pattern > 0 && layers.every((l, i) => l === ((i + 1) % pattern !== 0))
  return Effect.succeed({
    architectures: [c.hfArchitecture],
    model_type: isGemma3 ? "gemma3_text" : "gemma2",
    ...llamaStyleSizesJson(c),
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.norm.eps,
    hidden_activation: c.activation === "gelu_tanh" ? "gelu_pytorch_tanh" : activationToHf[c.activation],
    rope_theta: c.positions.theta,
    rope_scaling: ropeScalingJson(c.positions.scaling),
    ...(local?.kind === "rope" ? { rope_local_base_freq: local.theta } : {}),
    attention_bias: c.bias.qkv,
    query_pre_attn_scalar: g.queryPreAttnScalar,
    sliding_window: c.slidingWindow?.size ?? null,
    layer_types: layers.map((l) => (l ? "sliding_attention" : "full_attention")),
    ...(isGemma3 && followsPattern ? { sliding_window_pattern: pattern } : {}),
    attn_logit_softcapping: g.attnLogitSoftcap ?? null,
    final_logit_softcapping: g.finalLogitSoftcap ?? null,
    ...commonConfigJson(c),
  })
}

export const gemma: ArchitectureModule = { family: "gemma", hfArchitectures: architectures, parseConfig, weights, toConfigJson }
