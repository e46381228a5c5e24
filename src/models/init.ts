// Randomly initialized Hugging Face checkpoints of any shape: config.json, generation_config.json
// and model.safetensors (or shards plus model.safetensors.index.json) with the standard tensor
// names, so they load in HF transformers as well as here. Tensors are generated chunk by chunk
// while the file is written, so an 8B-parameter bf16 checkpoint never sits in one JS buffer.
//
// Values: each tensor draws from its own stream, seeded by (seed, tensor name), so a tensor's
// values do not depend on which other tensors exist. Weights and embeddings are uniform with
// standard deviation `std` (HF uses a normal with initializer_range 0.02; a uniform of the same
// variance is cheaper to draw at billions of values). Unlike HF's init, biases are drawn the same
// way and norm scales are 1 + noise (Gemma's (1 + w) norms: w = noise), so tests that compare
// implementations exercise them.
import { hash32, mulberry32 } from "../core/random.ts"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import {
  type CheckpointError,
  checkpointError,
  type ModelConfig,
  type ModelWeights,
  type UnsupportedModelError,
  type WeightRef,
  type WeightSpec,
} from "./config-architecture.ts"
import { architectureModule, modelConfigJson } from "./checkpoint.ts"
import {
  dtypeByteSize,
  elementCount,
  float32ToBfloat16,
  float32ToFloat16,
  type SafetensorsError,
  type StreamedTensor,
  writeFileStreamed,
} from "../core/safetensors.ts"

export type WeightDType = "F32" | "F16" | "BF16"

export interface InitOptions {
  readonly seed: number
  /** Storage dtype of every weight (default F32). */
  readonly dtype?: WeightDType
  /** Standard deviation of weights, embeddings, biases and norm-scale noise (default 0.02). */
  readonly std?: number
  /** Split into shards of at most this many bytes, HF style (default: one model.safetensors). */
  readonly maxShardBytes?: number
}

type Role = "weight" | "bias" | "norm"

const roleOf = (name: string, normNames: ReadonlySet<string>): Role =>
  normNames.has(name) ? "norm" : name.endsWith(".bias") ? "bias" : "weight"

const CHUNK_ELEMENTS = 1 << 20

/** The values of one tensor, produced in chunks of at most CHUNK_ELEMENTS elements. */
function* tensorChunks(spec: WeightSpec, role: Role, dtype: WeightDType, seed: number, std: number, normOffset: number): Generator<Uint8Array> {
  const next = mulberry32(hash32(spec.name, seed))
  const halfWidth = std * Math.sqrt(3) // uniform(-a, a) has standard deviation a / sqrt(3)
  const offset = role === "norm" ? normOffset : 0
  let left = elementCount(spec.shape)
  while (left > 0) {
    const n = Math.min(left, CHUNK_ELEMENTS)
    const values = new Float32Array(n)
    for (let i = 0; i < n; i++) values[i] = offset + (2 * next() - 1) * halfWidth
    const stored = dtype === "F32" ? values : dtype === "BF16" ? float32ToBfloat16(values) : float32ToFloat16(values)
    yield new Uint8Array(stored.buffer, stored.byteOffset, stored.byteLength)
    left -= n
  }
}

/** Every tensor an architecture expects for `config`, with norm tensors marked. */
export const checkpointTensorSpecs = (
  config: ModelConfig,
): Effect.Effect<{ specs: ReadonlyArray<WeightSpec>; normNames: ReadonlySet<string> }, UnsupportedModelError | CheckpointError> =>
  Effect.gen(function* () {
  const module = yield* architectureModule(config)
  const specs = new Map<string, WeightSpec>()
  // Record what the architecture asks for; `has` answers yes so GPT-2 picks its canonical
  // "transformer." prefix.
  const collected = yield* module.weights(config, {
      has: () => true,
      get: (spec) => {
        specs.set(spec.name, spec)
        const ref: WeightRef = { name: spec.name, file: "", fileOffset: 0, byteLength: 0, dtype: "F32", shape: spec.shape, transposed: spec.transposed }
        return Effect.succeed(ref)
      },
    })
  return { specs: [...specs.values()], normNames: normTensorNames(collected) }
  })

const normTensorNames = (w: ModelWeights): ReadonlySet<string> => {
  const names = new Set<string>([w.finalNorm.weight.name])
  for (const l of w.layers) {
    names.add(l.inputNorm.weight.name)
    names.add(l.postAttentionNorm.weight.name)
    for (const n of [l.outputNorms?.attention, l.outputNorms?.mlp, l.headNorms?.q, l.headNorms?.k]) if (n) names.add(n.weight.name)
  }
  return names
}

/** Groups tensors into shards of at most maxBytes (a tensor bigger than that gets its own shard). */
const shardsOf = <T extends { byteLength: number }>(items: ReadonlyArray<T>, maxBytes: number): T[][] => {
  const shards: T[][] = []
  let current: T[] = []
  let size = 0
  for (const item of items) {
    if (current.length > 0 && size + item.byteLength > maxBytes) {
      shards.push(current)
      current = []
      size = 0
    }
    current.push(item)
    size += item.byteLength
  }
  if (current.length > 0) shards.push(current)
  return shards
}

const writeJson = (file: string, value: unknown) =>
  Effect.try({
    try: () => fs.writeFileSync(file, JSON.stringify(value, null, 2) + "\n"),
    catch: (e) => checkpointError(file, undefined, `cannot write: ${e instanceof Error ? e.message : String(e)}`),
  })

/**
 * Writes tensors as one model.safetensors or as HF shards model-0000i-of-0000n.safetensors with
 * model.safetensors.index.json. Safetensors metadata is {"format": "pt"}, which transformers expects.
 */
export const writeWeightFiles = (
  dir: string,
  tensors: ReadonlyArray<StreamedTensor>,
  maxShardBytes = Infinity,
): Effect.Effect<ReadonlyArray<string>, SafetensorsError | CheckpointError> =>
  Effect.gen(function* () {
    const sized = tensors.map((t) => ({ tensor: t, byteLength: elementCount(t.shape) * dtypeByteSize[t.dtype] }))
    const shards = shardsOf(sized, maxShardBytes)
    const metadata = { format: "pt" }
    if (shards.length <= 1) {
      const file = path.join(dir, "model.safetensors")
      yield* writeFileStreamed(file, tensors, metadata)
      return [file]
    }
    const n = shards.length
    const pad = (i: number) => String(i).padStart(5, "0")
    const files: string[] = []
    const weightMap: Record<string, string> = {}
    for (let i = 0; i < n; i++) {
      const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`
      yield* writeFileStreamed(path.join(dir, name), shards[i].map((s) => s.tensor), metadata)
      for (const s of shards[i]) weightMap[s.tensor.name] = name
      files.push(path.join(dir, name))
    }
    const totalSize = sized.reduce((a, s) => a + s.byteLength, 0)
    yield* writeJson(path.join(dir, "model.safetensors.index.json"), { metadata: { total_size: totalSize }, weight_map: weightMap })
    return files
  })

/** Writes config.json and generation_config.json for a config. */
export const writeConfigFiles = (
  dir: string,
  config: ModelConfig,
  dtype: WeightDType = "F32",
): Effect.Effect<void, CheckpointError | UnsupportedModelError> =>
  Effect.gen(function* () {
    const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype]
    yield* writeJson(path.join(dir, "config.json"), { ...(yield* modelConfigJson(config)), torch_dtype: torchDtype })
    const eos = config.eosTokenIds.length === 1 ? config.eosTokenIds[0] : config.eosTokenIds
    yield* writeJson(path.join(dir, "generation_config.json"), {
      bos_token_id: config.bosTokenId ?? null,
      eos_token_id: config.eosTokenIds.length === 0 ? null : eos,
      ...(config.padTokenId === undefined ? {} : { pad_token_id: config.padTokenId }),
    })
  })

/** Creates `dir` and writes a randomly initialized checkpoint of `config` into it. */
export const writeRandomCheckpoint = (
  dir: string,
  config: ModelConfig,
  options: InitOptions,
): Effect.Effect<void, SafetensorsError | CheckpointError | UnsupportedModelError> =>
  Effect.gen(function* () {
    const dtype = options.dtype ?? "F32"
    const std = options.std ?? 0.02
    yield* Effect.try({ try: () => fs.mkdirSync(dir, { recursive: true }), catch: (e) => checkpointError(dir, undefined, `cannot create: ${String(e)}`) })
    const { specs, normNames } = yield* checkpointTensorSpecs(config)
    yield* writeConfigFiles(dir, config, dtype)
    const tensors: StreamedTensor[] = specs.map((spec) => ({
      name: spec.name,
      dtype,
      shape: spec.shape,
      chunks: () => tensorChunks(spec, roleOf(spec.name, normNames), dtype, options.seed, std, config.gemma ? 0 : 1),
    }))
    yield* writeWeightFiles(dir, tensors, options.maxShardBytes)
  })

// ---------------------------------------------------------------------------------------------
// Configurations: a tiny default per architecture for tests, and the shapes of real models for
// benchmarks. Any field can be overridden.

const tinyBase = {
  vocabSize: 64,
  hiddenSize: 16,
  numLayers: 2,
  numHeads: 4,
  intermediateSize: 32,
  maxPositions: 64,
  bosTokenId: 1,
  eosTokenIds: [2],
  padTokenId: undefined,
  torchDtype: "float32",
} as const

/** Sizes from the overrides or the tiny defaults, with headDim and numKvHeads derived when not given. */
const sizes = (overrides: Partial<ModelConfig>, defaults: { numKvHeads?: number; intermediateSize?: number }) => {
  const hiddenSize = overrides.hiddenSize ?? tinyBase.hiddenSize
  const numHeads = overrides.numHeads ?? tinyBase.numHeads
  const headDim = overrides.headDim ?? hiddenSize / numHeads
  return {
    ...tinyBase,
    hiddenSize,
    numHeads,
    headDim,
    numKvHeads: defaults.numKvHeads ?? numHeads,
    intermediateSize: defaults.intermediateSize ?? tinyBase.intermediateSize,
  }
}

/** A small LlamaForCausalLM (GQA with 2 kv heads); rotaryDim follows headDim unless positions are given. */
export const tinyLlama = (overrides: Partial<ModelConfig> = {}): ModelConfig => {
  const base = sizes(overrides, { numKvHeads: Math.max(1, (overrides.numHeads ?? tinyBase.numHeads) / 2) })
  return {
    ...base,
    family: "llama",
    hfArchitecture: "LlamaForCausalLM",
    norm: { kind: "rms", eps: 1e-6 },
    activation: "silu",
    mlp: "gated",
    positions: { kind: "rope", theta: 10000, rotaryDim: overrides.headDim ?? base.headDim, scaling: { kind: "none" } },
    parallelResidual: false,
    tiedEmbeddings: false,
    bias: { qkv: false, o: false, mlp: false, norm: false },
    ...overrides,
  }
}

/** A small Qwen3ForCausalLM: per-head q/k RMSNorm, head_dim 8 (twice hidden/heads), tied embeddings. */
export const tinyQwen3 = (overrides: Partial<ModelConfig> = {}): ModelConfig =>
  tinyLlama({ hfArchitecture: "Qwen3ForCausalLM", headDim: 8, tiedEmbeddings: true, positions: { kind: "rope", theta: 1000000, rotaryDim: overrides.headDim ?? 8, scaling: { kind: "none" } }, ...overrides })

/** A small Phi3ForCausalLM: fused qkv_proj (GQA 4:2) and gate_up_proj, untied head. */
export const tinyPhi3 = (overrides: Partial<ModelConfig> = {}): ModelConfig => ({
  ...tinyLlama(overrides),
  family: "phi3",
  hfArchitecture: "Phi3ForCausalLM",
  ...overrides,
})

export const tinyGpt2 = (overrides: Partial<ModelConfig> = {}): ModelConfig => ({
  ...sizes(overrides, { intermediateSize: 4 * (overrides.hiddenSize ?? tinyBase.hiddenSize) }),
  family: "gpt2",
  hfArchitecture: "GPT2LMHeadModel",
  norm: { kind: "layer", eps: 1e-5 },
  activation: "gelu_tanh",
  mlp: "plain",
  positions: { kind: "learned" },
  parallelResidual: false,
  tiedEmbeddings: true,
  bias: { qkv: true, o: true, mlp: true, norm: true },
  ...overrides,
})

/** A small GPTNeoXForCausalLM with rotary_pct 0.5 unless positions are given. */
export const tinyGptNeox = (overrides: Partial<ModelConfig> = {}): ModelConfig => {
  const base = sizes(overrides, { intermediateSize: 4 * (overrides.hiddenSize ?? tinyBase.hiddenSize) })
  return {
    ...base,
    family: "gpt_neox",
    hfArchitecture: "GPTNeoXForCausalLM",
    norm: { kind: "layer", eps: 1e-5 },
    activation: "gelu_erf",
    mlp: "plain",
    positions: { kind: "rope", theta: 10000, rotaryDim: base.headDim / 2, scaling: { kind: "none" } },
    parallelResidual: true,
    tiedEmbeddings: false,
    bias: { qkv: true, o: true, mlp: true, norm: true },
    ...overrides,
  }
}

/**
 * A small Gemma2ForCausalLM: head_dim 8 independent of hidden 16 / 4 heads, GQA, layers alternating
 * local (window 4) and global, both soft-cappings (Gemma 2's defaults 50 and 30).
 */
export const tinyGemma2 = (overrides: Partial<ModelConfig> = {}): ModelConfig => {
  const base = sizes({ headDim: 8, ...overrides }, { numKvHeads: 2 })
  const numLayers = overrides.numLayers ?? 4
  return {
    ...base,
    numLayers,
    family: "gemma",
    hfArchitecture: "Gemma2ForCausalLM",
    norm: { kind: "rms", eps: 1e-6 },
    activation: "gelu_tanh",
    mlp: "gated",
    positions: { kind: "rope", theta: 10000, rotaryDim: base.headDim, scaling: { kind: "none" } },
    parallelResidual: false,
    tiedEmbeddings: true,
    bias: { qkv: false, o: false, mlp: false, norm: false },
    padTokenId: 0,
    slidingWindow: { size: 4, layers: Array.from({ length: numLayers }, (_, i) => i % 2 === 0) },
    gemma: { embedScale: "all_inputs", queryPreAttnScalar: 8, attnLogitSoftcap: 50, finalLogitSoftcap: 30, localPositions: undefined },
    ...overrides,
  }
}

/**
 * A small Gemma3ForCausalLM (text): q/k norms, local layers (window 4, RoPE base 10000) with every
 * third layer global (RoPE base 1e6, linear scaling 8 as the 4B+ models have), no soft-capping.
 */
export const tinyGemma3 = (overrides: Partial<ModelConfig> = {}): ModelConfig => {
  const numLayers = overrides.numLayers ?? 3
  return tinyGemma2({
    numLayers,
    hfArchitecture: "Gemma3ForCausalLM",
    numKvHeads: 1,
    positions: { kind: "rope", theta: 1_000_000, rotaryDim: overrides.headDim ?? 8, scaling: { kind: "linear", factor: 8 } },
    slidingWindow: { size: 4, layers: Array.from({ length: numLayers }, (_, i) => (i + 1) % 3 !== 0) },
    gemma: {
      embedScale: "token_embeddings",
      queryPreAttnScalar: 8,
      attnLogitSoftcap: undefined,
      finalLogitSoftcap: undefined,
      localPositions: { kind: "rope", theta: 10000, rotaryDim: overrides.headDim ?? 8, scaling: { kind: "none" } },
    },
    ...overrides,
  })
}

/** Llama 3.2 1B shapes (tied embeddings, Llama 3 RoPE scaling). */
export const llama32_1b = (): ModelConfig =>
  tinyLlama({
    vocabSize: 128256,
    hiddenSize: 2048,
    numLayers: 16,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 64,
    intermediateSize: 8192,
    maxPositions: 131072,
    norm: { kind: "rms", eps: 1e-5 },
    positions: {
      kind: "rope",
      theta: 500000,
      rotaryDim: 64,
      scaling: { kind: "llama3", factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    },
    tiedEmbeddings: true,
    bosTokenId: 128000,
    eosTokenIds: [128001],
    torchDtype: "bfloat16",
  })

/** Llama 3.1 8B shapes. */
export const llama31_8b = (): ModelConfig =>
  tinyLlama({
    vocabSize: 128256,
    hiddenSize: 4096,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    intermediateSize: 14336,
    maxPositions: 131072,
    norm: { kind: "rms", eps: 1e-5 },
    positions: {
      kind: "rope",
      theta: 500000,
      rotaryDim: 128,
      scaling: { kind: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    },
    tiedEmbeddings: false,
    bosTokenId: 128000,
    eosTokenIds: [128001],
    torchDtype: "bfloat16",
  })
