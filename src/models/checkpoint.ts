// Loading a Hugging Face checkpoint directory: config.json normalized to a ModelConfig, and every
// weight located (file, byte offset, dtype, shape) without reading tensor data, so the graph
// builder can point ONNX external data straight into the safetensors files.
//
// Accepted layouts:
// - a plain directory: config.json, model.safetensors or shards + model.safetensors.index.json,
//   tokenizer.json, tokenizer_config.json, optional generation_config.json;
// - the HF hub cache: models--org--name/ (the snapshot named by refs/main, or the only snapshot)
//   or models--org--name/snapshots/<rev>/ directly, whose files are symlinks into ../../blobs.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import {
  type ArchitectureModule,
  CheckpointError,
  checkpointError,
  decodeConfig,
  eosIds,
  type ModelConfig,
  type ModelWeights,
  type TensorLookup,
  unsupported,
  UnsupportedModelError,
  type WeightRef,
} from "./config-architecture.ts"
import { checkWeightFiles } from "../runtime/finite.ts"
import { gemma } from "./config-gemma.ts"
import { gptNeox } from "./config-gpt-neox.ts"
import { gpt2 } from "./config-gpt2.ts"
import { llama } from "./config-llama.ts"
import { phi3 } from "./config-phi3.ts"
import { readBytes, readHeader, type SafetensorsError, type SafetensorsHeader, type Tensor, type TensorLocation, toFloat64 } from "../core/safetensors.ts"

export * from "./config-architecture.ts"

export const architectures: ReadonlyArray<ArchitectureModule> = [llama, gpt2, gptNeox, phi3, gemma]

/** config.json `model_type` for configs that lack an `architectures` list. */
const modelTypeArchitecture: Record<string, string> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
  phi3: "Phi3ForCausalLM",
  gpt2: "GPT2LMHeadModel",
  gpt_neox: "GPTNeoXForCausalLM",
  gemma2: "Gemma2ForCausalLM",
  gemma3_text: "Gemma3ForCausalLM",
}

const architectureOf = (file: string, json: unknown): Effect.Effect<[string, ArchitectureModule], CheckpointError | UnsupportedModelError> => {
  if (json === null || typeof json !== "object" || Array.isArray(json))
    return Effect.fail(checkpointError(file, undefined, "config is not a JSON object"))
  const { architectures: archs, model_type } = json as { architectures?: unknown; model_type?: unknown }
  const name = Array.isArray(archs) && typeof archs[0] === "string" ? archs[0] : typeof model_type === "string" ? modelTypeArchitecture[model_type] : undefined
  if (name === undefined) return Effect.fail(checkpointError(file, "architectures", "missing (and no known model_type)"))
  const module = architectures.find((a) => a.hfArchitectures.includes(name))
  if (module === undefined)
    return Effect.fail(
      unsupported(file, "architectures", `"${name}" (supported: ${architectures.flatMap((a) => a.hfArchitectures).join(", ")})`),
    )
  return Effect.succeed([name, module])
}

/** Normalizes a parsed config.json; `file` is used in error messages. */
export const parseModelConfig = (file: string, json: unknown): Effect.Effect<ModelConfig, CheckpointError | UnsupportedModelError> =>
  Effect.flatMap(architectureOf(file, json), ([, module]) => module.parseConfig(file, json))

/** The architecture module that reads `config`'s hfArchitecture. */
export const architectureModule = (config: ModelConfig): Effect.Effect<ArchitectureModule, UnsupportedModelError> => {
  const module = architectures.find((a) => a.hfArchitectures.includes(config.hfArchitecture))
  return module === undefined ? Effect.fail(unsupported("config.json", "architectures", `"${config.hfArchitecture}"`)) : Effect.succeed(module)
}

/** The config.json object for a ModelConfig (what `parseModelConfig` reads back to the same config). */
export const modelConfigJson = (config: ModelConfig): Effect.Effect<Record<string, unknown>, UnsupportedModelError> =>
  Effect.flatMap(architectureModule(config), (m) => m.toConfigJson(config))

const GenerationConfigJson = Schema.Struct({
  bos_token_id: Schema.optional(Schema.NullOr(Schema.Int)),
  eos_token_id: Schema.optional(Schema.NullOr(Schema.Union([Schema.Int, Schema.Array(Schema.Int)]))),
  pad_token_id: Schema.optional(Schema.NullOr(Schema.Int)),
  do_sample: Schema.optional(Schema.Boolean),
  temperature: Schema.optional(Schema.NullOr(Schema.Finite)),
  top_p: Schema.optional(Schema.NullOr(Schema.Finite)),
  top_k: Schema.optional(Schema.NullOr(Schema.Int)),
  max_new_tokens: Schema.optional(Schema.NullOr(Schema.Int)),
  max_length: Schema.optional(Schema.NullOr(Schema.Int)),
})

/** The sampling defaults and special token ids a model ships in generation_config.json. */
export interface GenerationConfig {
  readonly bosTokenId: number | undefined
  readonly eosTokenIds: ReadonlyArray<number>
  readonly padTokenId: number | undefined
  readonly doSample: boolean | undefined
  readonly temperature: number | undefined
  readonly topP: number | undefined
  readonly topK: number | undefined
  readonly maxNewTokens: number | undefined
  readonly maxLength: number | undefined
}

export interface Checkpoint {
  /** The directory holding config.json (for the hub cache, the snapshot directory). */
  readonly dir: string
  readonly configFile: string
  readonly config: ModelConfig
  /** config.json as parsed, for fields the normalized config does not carry. */
  readonly rawConfig: Readonly<Record<string, unknown>>
  readonly weights: ModelWeights
  /** The safetensors files holding the weights. */
  readonly tensorFiles: ReadonlyArray<string>
  readonly tokenizerFile: string | undefined
  readonly tokenizerConfigFile: string | undefined
  readonly generationConfig: GenerationConfig | undefined
}

const ioFail = (file: string, doing: string) => (e: unknown) =>
  checkpointError(file, undefined, `cannot ${doing}: ${e instanceof Error ? e.message : String(e)}`)

const readJson = (file: string): Effect.Effect<unknown, CheckpointError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: ioFail(file, "read") })
    return yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: ioFail(file, "parse JSON") })
  })

const exists = (p: string) => fs.existsSync(p)

/**
 * The directory holding config.json: `dir` itself, or for a hub cache `models--org--name`
 * directory the snapshot named by refs/main (or its only snapshot).
 */
export const resolveModelDir = (dir: string): Effect.Effect<string, CheckpointError> =>
  Effect.gen(function* () {
    if (!exists(dir)) return yield* Effect.fail(checkpointError(dir, undefined, "model directory does not exist"))
    if (exists(path.join(dir, "config.json"))) return dir
    const snapshots = path.join(dir, "snapshots")
    if (!exists(snapshots))
      return yield* Effect.fail(checkpointError(path.join(dir, "config.json"), undefined, "missing: not a model directory nor a hub cache models--org--name directory"))
    const refMain = path.join(dir, "refs", "main")
    if (exists(refMain)) {
      const rev = fs.readFileSync(refMain, "utf8").trim()
      const snap = path.join(snapshots, rev)
      if (!exists(path.join(snap, "config.json")))
        return yield* Effect.fail(checkpointError(refMain, undefined, `names revision ${rev} but ${snap}/config.json does not exist`))
      return snap
    }
    const revs = fs.readdirSync(snapshots).filter((r) => exists(path.join(snapshots, r, "config.json")))
    if (revs.length !== 1)
      return yield* Effect.fail(
        checkpointError(snapshots, undefined, `${revs.length === 0 ? "no snapshot has a config.json" : `several snapshots (${revs.join(", ")}) and no refs/main; pass the snapshot directory`}`),
      )
    return path.join(snapshots, revs[0])
  })

const IndexJson = Schema.Struct({ weight_map: Schema.Record(Schema.String, Schema.String) })

interface LocatedTensor {
  readonly file: string
  readonly location: TensorLocation
}

const fromSafetensorsError = (e: SafetensorsError) => new CheckpointError({ file: e.file, field: e.tensor, message: e.message })

/** Every tensor of the checkpoint by name, from the shard index or the directory's safetensors files. */
const locateTensors = (dir: string): Effect.Effect<{ files: ReadonlyArray<string>; where: string; tensors: Map<string, LocatedTensor> }, CheckpointError> =>
  Effect.gen(function* () {
    const indexFile = path.join(dir, "model.safetensors.index.json")
    const tensors = new Map<string, LocatedTensor>()
    if (exists(indexFile)) {
      const index = yield* decodeConfig(IndexJson, indexFile, yield* readJson(indexFile))
      const files = [...new Set(Object.values(index.weight_map))].sort()
      for (const f of files) {
        const file = path.join(dir, f)
        if (!exists(file)) {
          const example = Object.keys(index.weight_map).find((k) => index.weight_map[k] === f)
          return yield* Effect.fail(checkpointError(indexFile, `weight_map.${example}`, `names shard ${f}, which does not exist in ${dir}`))
        }
        const header = yield* Effect.mapError(readHeader(file), fromSafetensorsError)
        for (const t of header.tensors.values()) tensors.set(t.name, { file, location: t })
      }
      for (const [name, f] of Object.entries(index.weight_map)) {
        const found = tensors.get(name)
        if (found === undefined || path.basename(found.file) !== f)
          return yield* Effect.fail(checkpointError(path.join(dir, f), name, `listed in ${path.basename(indexFile)} but not in this shard`))
      }
      return { files: files.map((f) => path.join(dir, f)), where: indexFile, tensors }
    }
    const files = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(".safetensors") && !f.startsWith("."))
      .sort()
      .map((f) => path.join(dir, f))
    if (files.length === 0) {
      const bin = exists(path.join(dir, "pytorch_model.bin")) ? " (pytorch_model.bin is not read: convert it to safetensors)" : ""
      return yield* Effect.fail(checkpointError(path.join(dir, "model.safetensors"), undefined, `missing: no *.safetensors file in ${dir}${bin}`))
    }
    for (const file of files) {
      const header = yield* Effect.mapError(readHeader(file), fromSafetensorsError)
      for (const t of header.tensors.values()) {
        const other = tensors.get(t.name)
        if (other !== undefined)
          return yield* Effect.fail(checkpointError(file, t.name, `also in ${other.file}; several safetensors files without model.safetensors.index.json`))
        tensors.set(t.name, { file, location: t })
      }
    }
    return { files, where: files.length === 1 ? files[0] : dir, tensors }
  })

const floatDtypes = new Set(["F32", "F16", "BF16", "F64"])
const fp8Dtypes = new Set(["F8_E4M3", "F8_E5M2"])

/** config.json `quantization_config.weight_block_size` of FP8 checkpoints (DeepSeek-V3, Qwen3-FP8), if any. */
const QuantizationJson = Schema.Struct({
  quantization_config: Schema.optional(
    Schema.NullOr(Schema.Struct({ weight_block_size: Schema.optional(Schema.NullOr(Schema.Tuple([Schema.Int, Schema.Int]))) })),
  ),
})

const weightBlockSize = (file: string, json: unknown): Effect.Effect<readonly [number, number] | undefined, CheckpointError> =>
  Effect.flatMap(decodeConfig(QuantizationJson, file, json), (c) => {
    const block = c.quantization_config?.weight_block_size ?? undefined
    return block !== undefined && !(block[0] > 0 && block[1] > 0)
      ? Effect.fail(checkpointError(file, "quantization_config.weight_block_size", `expected two positive sizes, got [${block.join(", ")}]`))
      : Effect.succeed(block)
  })

/**
 * The scale of an FP8 weight, as FP8 checkpoints store it next to the weight: `<module>.weight_scale_inv`
 * (DeepSeek-V3 / Qwen3-FP8 / transformers "fp8": multiplied in, despite the name; one per block of
 * quantization_config.weight_block_size, or one for the tensor without it) or `<module>.weight_scale`
 * (compressed-tensors, FBGEMM: one for the tensor, or one per output row).
 */
const fp8Scale = (
  location: TensorLocation,
  file: string,
  tensors: ReadonlyMap<string, LocatedTensor>,
  blockSize: readonly [number, number] | undefined,
  configFile: string,
): Effect.Effect<NonNullable<WeightRef["scale"]>, CheckpointError> => {
  const what = `an FP8 (${location.dtype}) weight`
  if (location.shape.length !== 2) return Effect.fail(checkpointError(file, location.name, `${what} of shape [${location.shape.join(", ")}]: only 2-d FP8 weights are dequantized`))
  const [rows, cols] = location.shape
  const stem = location.name.endsWith(".weight") ? location.name : `${location.name}.weight`
  const names = [`${stem}_scale_inv`, `${stem}_scale`]
  const name = names.find((n) => tensors.has(n))
  if (name === undefined) return Effect.fail(checkpointError(file, location.name, `${what} without a scale tensor (looked for ${names.join(", ")})`))
  const found = tensors.get(name)!
  const scale = found.location
  if (!floatDtypes.has(scale.dtype) || scale.dtype === "F64")
    return Effect.fail(checkpointError(found.file, name, `the scale of ${location.name} has dtype ${scale.dtype} (expected F32, BF16 or F16)`))
  const n = scale.shape.reduce((a, b) => a * b, 1)
  const inverse = name.endsWith("_inv")
  const block: readonly [number, number] | undefined =
    inverse && blockSize !== undefined ? blockSize : n === 1 ? [rows, cols] : n === rows && scale.shape[0] === rows ? [1, cols] : undefined
  if (block === undefined)
    return Effect.fail(
      checkpointError(
        found.file,
        name,
        `shape [${scale.shape.join(", ")}] is neither one scale nor one per row of [${rows}, ${cols}]${inverse ? ` (blocks need quantization_config.weight_block_size in ${configFile})` : ""}`,
      ),
    )
  const grid = [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])]
  if (n !== grid[0] * grid[1] || (scale.shape.length === 2 && (scale.shape[0] !== grid[0] || scale.shape[1] !== grid[1])))
    return Effect.fail(checkpointError(found.file, name, `shape [${scale.shape.join(", ")}] does not match [${grid.join(", ")}] blocks of [${block.join(", ")}] over the weight's [${rows}, ${cols}]`))
  return Effect.succeed({
    ref: { name, file: found.file, fileOffset: scale.fileOffset, byteLength: scale.byteLength, dtype: scale.dtype, shape: grid, transposed: false },
    block,
  })
}

const lookupIn = (
  where: string,
  tensors: ReadonlyMap<string, LocatedTensor>,
  configFile: string,
  blockSize: readonly [number, number] | undefined = undefined,
): TensorLookup => ({
  has: (name) => tensors.has(name),
  get: (spec) => {
    const found = tensors.get(spec.name)
    if (found === undefined)
      return Effect.fail(checkpointError(where, spec.name, `missing tensor (config.json implies shape [${spec.shape.join(", ")}])`))
    const { location, file } = found
    if (location.shape.length !== spec.shape.length || location.shape.some((d, i) => d !== spec.shape[i]))
      return Effect.fail(
        checkpointError(file, spec.name, `shape [${location.shape.join(", ")}] does not match [${spec.shape.join(", ")}] implied by ${configFile}`),
      )
    if (!floatDtypes.has(location.dtype) && !fp8Dtypes.has(location.dtype))
      return Effect.fail(checkpointError(file, spec.name, `dtype ${location.dtype} is not a floating-point weight type (F32, F16, BF16, F64, or FP8 with a scale)`))
    const ref: WeightRef = {
      name: spec.name,
      file,
      fileOffset: location.fileOffset,
      byteLength: location.byteLength,
      dtype: location.dtype,
      shape: location.shape,
      transposed: spec.transposed,
    }
    if (!fp8Dtypes.has(location.dtype)) return Effect.succeed(ref)
    return Effect.map(fp8Scale(location, file, tensors, blockSize, configFile), (scale) => ({ ...ref, scale }))
  },
})

/**
 * The weight layout of `config` in one safetensors file given its parsed header (e.g. a tensors
 * artifact of the engine): what `decoder` needs when no checkpoint directory exists yet.
 */
export const weightsInFile = (
  config: ModelConfig,
  file: string,
  header: SafetensorsHeader,
): Effect.Effect<ModelWeights, CheckpointError | UnsupportedModelError> =>
  Effect.gen(function* () {
    const module = yield* architectureModule(config)
    const tensors = new Map<string, LocatedTensor>([...header.tensors].map(([name, location]) => [name, { file, location }]))
    return yield* module.weights(config, lookupIn(file, tensors, file))
  })

const optionalFile = (dir: string, name: string) => (exists(path.join(dir, name)) ? path.join(dir, name) : undefined)

/** Loads a checkpoint directory (or hub cache directory): config, weight locations, tokenizer files. */
export const loadCheckpoint = (modelDir: string): Effect.Effect<Checkpoint, CheckpointError | UnsupportedModelError> =>
  Effect.gen(function* () {
    const dir = yield* resolveModelDir(modelDir)
    const configFile = path.join(dir, "config.json")
    const rawConfig = yield* readJson(configFile)
    const [, module] = yield* architectureOf(configFile, rawConfig)
    const config = yield* module.parseConfig(configFile, rawConfig)
    const { files, where, tensors } = yield* locateTensors(dir)
    const weights = yield* module.weights(config, lookupIn(where, tensors, configFile, yield* weightBlockSize(configFile, rawConfig)))
    // NaN weights otherwise yield garbage that looks like results; checked once per file content
    yield* Effect.mapError(checkWeightFiles(files), (e) => new CheckpointError({ file: e._tag === "NonFiniteError" ? e.source : e.file, field: undefined, message: e.message }))
    const generationFile = optionalFile(dir, "generation_config.json")
    let generationConfig: GenerationConfig | undefined
    if (generationFile !== undefined) {
      const g = yield* decodeConfig(GenerationConfigJson, generationFile, yield* readJson(generationFile))
      generationConfig = {
        bosTokenId: g.bos_token_id ?? undefined,
        eosTokenIds: eosIds(g.eos_token_id),
        padTokenId: g.pad_token_id ?? undefined,
        doSample: g.do_sample,
        temperature: g.temperature ?? undefined,
        topP: g.top_p ?? undefined,
        topK: g.top_k ?? undefined,
        maxNewTokens: g.max_new_tokens ?? undefined,
        maxLength: g.max_length ?? undefined,
      }
    }
    return {
      dir,
      configFile,
      config,
      rawConfig: rawConfig as Record<string, unknown>,
      weights,
      tensorFiles: files,
      tokenizerFile: optionalFile(dir, "tokenizer.json"),
      tokenizerConfigFile: optionalFile(dir, "tokenizer_config.json"),
      generationConfig,
    }
  })

/** Reads one weight's bytes from its file (an FP8 weight's codes, without its scale: see readWeightFloat64). */
export const readWeight = (ref: WeightRef): Effect.Effect<Tensor, CheckpointError> =>
  Effect.map(Effect.mapError(readBytes(ref.file, ref.fileOffset, ref.byteLength, ref.name), fromSafetensorsError), (data) => ({
    dtype: ref.dtype,
    shape: ref.shape,
    data,
  }))

/** An FP8 weight's values times its scale, block by block (stored layout, row-major). */
const dequantize = (values: Float64Array, shape: ReadonlyArray<number>, scale: Float64Array, block: readonly [number, number]): Float64Array => {
  const [rows, cols] = shape
  const gridCols = Math.ceil(cols / block[1])
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) values[r * cols + c] *= scale[Math.floor(r / block[0]) * gridCols + Math.floor(c / block[1])]
  return values
}

/**
 * Reads one weight as float64 values in the Linear convention: a `transposed` (Conv1D) weight is
 * transposed back, so the result is always W as [out, in] row-major, with `shape` to match. FP8
 * weights come dequantized.
 */
export const readWeightFloat64 = (ref: WeightRef): Effect.Effect<{ shape: ReadonlyArray<number>; values: Float64Array }, CheckpointError> =>
  Effect.map(Effect.all([readWeight(ref), ref.scale === undefined ? Effect.succeed(undefined) : readWeight(ref.scale.ref)]), ([t, s]) => {
    const values = s === undefined ? toFloat64(t) : dequantize(toFloat64(t), ref.shape, toFloat64(s), ref.scale!.block)
    if (!ref.transposed) return { shape: ref.shape, values }
    const [inp, out] = ref.shape
    const w = new Float64Array(values.length)
    for (let i = 0; i < inp; i++) for (let o = 0; o < out; o++) w[o * inp + i] = values[i * out + o]
    return { shape: [out, inp], values: w }
  })
