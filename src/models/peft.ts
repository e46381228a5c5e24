// LoRA adapters in the PEFT format, so they load in PEFT and vLLM: adapter_config.json plus
// adapter_model.safetensors with tensors named
//   base_model.model.<module>.lora_A.weight   [r, in]
//   base_model.model.<module>.lora_B.weight   [out, r]
// where <module> is the HF module path of the adapted linear layer (e.g.
// model.layers.0.self_attn.q_proj) and the layer computes W x + (alpha / r) * B A x
// (alpha / sqrt(r) with use_rslora). Also: which base weights a target list selects, and merging
// an adapter into the base weights as a new checkpoint.
import { Data, Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import {
  type Checkpoint,
  type CheckpointError,
  decodeConfig,
  loadCheckpoint,
  mlpLinears,
  resolveModelDir,
  type ModelConfig,
  type ModelWeights,
  type UnsupportedModelError,
  type WeightRef,
} from "./checkpoint.ts"
import {
  fromNumbers,
  readHeader,
  readFile,
  readTensor,
  type SafetensorsError,
  type StreamedTensor,
  type Tensor,
  toFloat32,
  toFloat64,
  writeFile,
  writeFileStreamed,
} from "../core/safetensors.ts"

export class PeftError extends Data.TaggedError("PeftError")<{
  readonly file: string
  readonly field: string | undefined
  readonly message: string
}> {}

const peftError = (file: string, field: string | undefined, what: string) =>
  new PeftError({ file, field, message: `${file}: ${field === undefined ? "" : `${field}: `}${what}` })

const fromOther = (e: CheckpointError | UnsupportedModelError | SafetensorsError) =>
  new PeftError({ file: e.file, field: e._tag === "SafetensorsError" ? e.tensor : e.field, message: e.message })

export const ADAPTER_CONFIG = "adapter_config.json"
export const ADAPTER_WEIGHTS = "adapter_model.safetensors"

export interface LoraConfig {
  readonly r: number
  readonly loraAlpha: number
  readonly loraDropout: number
  /** Module names as PEFT matches them: a module is adapted when its path ends with ".<target>". */
  readonly targetModules: ReadonlyArray<string>
  readonly baseModelNameOrPath: string | null
  /** Scale alpha / sqrt(r) instead of alpha / r. */
  readonly useRslora: boolean
  /** True when the adapted layers store W^T (GPT-2 Conv1D); PEFT needs it to apply the adapter. */
  readonly fanInFanOut: boolean
}

/** The factor in front of B A. */
export const loraScale = (c: LoraConfig): number => c.loraAlpha / (c.useRslora ? Math.sqrt(c.r) : c.r)

export interface LoraModuleWeights {
  /** [r, in] */
  readonly a: Tensor
  /** [out, r] */
  readonly b: Tensor
}

export interface LoraAdapter {
  readonly config: LoraConfig
  /** Keyed by module path, e.g. "model.layers.0.self_attn.q_proj". */
  readonly modules: ReadonlyMap<string, LoraModuleWeights>
}

const AdapterConfigJson = Schema.Struct({
  peft_type: Schema.String,
  task_type: Schema.optional(Schema.NullOr(Schema.String)),
  r: Schema.Int.check(Schema.isGreaterThan(0)),
  lora_alpha: Schema.Finite,
  lora_dropout: Schema.optional(Schema.Finite),
  target_modules: Schema.Union([Schema.String, Schema.Array(Schema.String)]),
  base_model_name_or_path: Schema.optional(Schema.NullOr(Schema.String)),
  use_rslora: Schema.optional(Schema.Boolean),
  use_dora: Schema.optional(Schema.Boolean),
  fan_in_fan_out: Schema.optional(Schema.Boolean),
  bias: Schema.optional(Schema.String),
  rank_pattern: Schema.optional(Schema.NullOr(Schema.Record(Schema.String, Schema.Unknown))),
  alpha_pattern: Schema.optional(Schema.NullOr(Schema.Record(Schema.String, Schema.Unknown))),
  modules_to_save: Schema.optional(Schema.NullOr(Schema.Array(Schema.String))),
  layers_to_transform: Schema.optional(Schema.Unknown),
})

/** Parses adapter_config.json; options that change the math and are not implemented are refused. */
export const parseAdapterConfig = (file: string, json: unknown): Effect.Effect<LoraConfig, PeftError> =>
  Effect.gen(function* () {
    const c = yield* Effect.mapError(decodeConfig(AdapterConfigJson, file, json), fromOther)
    const refuse = (field: string, what: string) => Effect.fail(peftError(file, field, `unsupported: ${what}`))
    if (c.peft_type !== "LORA") return yield* refuse("peft_type", `"${c.peft_type}" (only LORA)`)
    if (c.task_type != null && c.task_type !== "CAUSAL_LM") return yield* refuse("task_type", `"${c.task_type}" (only CAUSAL_LM)`)
    if (c.use_dora === true) return yield* refuse("use_dora", "DoRA adapters")
    if (c.bias !== undefined && c.bias !== "none") return yield* refuse("bias", `"${c.bias}" (trained biases)`)
    if (c.rank_pattern && Object.keys(c.rank_pattern).length > 0) return yield* refuse("rank_pattern", "per-module ranks")
    if (c.alpha_pattern && Object.keys(c.alpha_pattern).length > 0) return yield* refuse("alpha_pattern", "per-module alphas")
    if (c.modules_to_save && c.modules_to_save.length > 0) return yield* refuse("modules_to_save", "fully trained extra modules")
    if (typeof c.target_modules === "string") return yield* refuse("target_modules", "a regular expression (give a list of module names)")
    if (c.layers_to_transform != null) return yield* refuse("layers_to_transform", "adapting a subset of layers")
    return {
      r: c.r,
      loraAlpha: c.lora_alpha,
      loraDropout: c.lora_dropout ?? 0,
      targetModules: c.target_modules,
      baseModelNameOrPath: c.base_model_name_or_path ?? null,
      useRslora: c.use_rslora ?? false,
      fanInFanOut: c.fan_in_fan_out ?? false,
    }
  })

/** adapter_config.json as PEFT writes it (every field PEFT's LoraConfig reads, with its defaults). */
export const adapterConfigJson = (c: LoraConfig): Record<string, unknown> => ({
  alpha_pattern: {},
  auto_mapping: null,
  base_model_name_or_path: c.baseModelNameOrPath,
  bias: "none",
  fan_in_fan_out: c.fanInFanOut,
  inference_mode: true,
  init_lora_weights: true,
  layers_pattern: null,
  layers_to_transform: null,
  lora_alpha: c.loraAlpha,
  lora_dropout: c.loraDropout,
  modules_to_save: null,
  peft_type: "LORA",
  r: c.r,
  rank_pattern: {},
  revision: null,
  target_modules: [...c.targetModules],
  task_type: "CAUSAL_LM",
  use_dora: false,
  use_rslora: c.useRslora,
})

const PREFIX = "base_model.model."
const tensorName = (module: string, which: "A" | "B") => `${PREFIX}${module}.lora_${which}.weight`
const KEY = /^base_model\.model\.(.+)\.lora_(A|B)\.weight$/

/**
 * An adapter from PEFT-named tensors and its config (read from a directory, or from a tensors
 * artifact whose metadata holds the config); `file` names where the tensors came from, for errors.
 */
export const adapterFromTensors = (file: string, config: LoraConfig, tensors: ReadonlyMap<string, Tensor>): Effect.Effect<LoraAdapter, PeftError> =>
  Effect.gen(function* () {
    const parts = new Map<string, { a?: Tensor; b?: Tensor }>()
    for (const [name, t] of tensors) {
      const m = KEY.exec(name)
      if (m === null) return yield* Effect.fail(peftError(file, name, "not a LoRA tensor name (expected base_model.model.<module>.lora_A.weight or lora_B)"))
      const [, module, which] = m
      const entry = parts.get(module) ?? {}
      if (which === "A") entry.a = t
      else entry.b = t
      parts.set(module, entry)
    }
    const modules = new Map<string, LoraModuleWeights>()
    for (const [module, { a, b }] of parts) {
      if (a === undefined || b === undefined)
        return yield* Effect.fail(peftError(file, tensorName(module, a === undefined ? "A" : "B"), "missing (each module needs lora_A and lora_B)"))
      const shapeError = checkShapes(file, module, a, b, config.r)
      if (shapeError) return yield* Effect.fail(shapeError)
      modules.set(module, { a, b })
    }
    return { config, modules }
  })

const checkShapes = (file: string, module: string, a: Tensor, b: Tensor, r: number): PeftError | undefined =>
  a.shape.length !== 2 || b.shape.length !== 2 || a.shape[0] !== r || b.shape[1] !== r
    ? peftError(file, tensorName(module, "A"), `shapes A [${a.shape.join(", ")}] and B [${b.shape.join(", ")}] do not match r = ${r} (expected [r, in] and [out, r])`)
    : undefined

/** The adapter's tensors under PEFT names (what adapter_model.safetensors holds). */
export const adapterTensors = (adapter: LoraAdapter, file = ADAPTER_WEIGHTS): Effect.Effect<Map<string, Tensor>, PeftError> =>
  Effect.gen(function* () {
    const tensors = new Map<string, Tensor>()
    for (const [module, { a, b }] of adapter.modules) {
      const shapeError = checkShapes(file, module, a, b, adapter.config.r)
      if (shapeError) return yield* Effect.fail(shapeError)
      tensors.set(tensorName(module, "A"), a)
      tensors.set(tensorName(module, "B"), b)
    }
    return tensors
  })

/** A PEFT directory's file paths and its parsed adapter_config.json (both files must exist). */
const readAdapterDirectory = (dir: string): Effect.Effect<{ configFile: string; weightsFile: string; json: unknown }, PeftError> =>
  Effect.gen(function* () {
    const configFile = path.join(dir, ADAPTER_CONFIG)
    const weightsFile = path.join(dir, ADAPTER_WEIGHTS)
    for (const f of [configFile, weightsFile]) if (!fs.existsSync(f)) return yield* Effect.fail(peftError(f, undefined, "missing"))
    const json = yield* Effect.try({
      try: () => JSON.parse(fs.readFileSync(configFile, "utf8")) as unknown,
      catch: (e) => peftError(configFile, undefined, `invalid JSON: ${e instanceof Error ? e.message : String(e)}`),
    })
    return { configFile, weightsFile, json }
  })

/** Reads adapter_config.json and adapter_model.safetensors from a directory. */
export const readAdapter = (dir: string): Effect.Effect<LoraAdapter, PeftError> =>
  Effect.gen(function* () {
    const { configFile, weightsFile, json } = yield* readAdapterDirectory(dir)
    const config = yield* parseAdapterConfig(configFile, json)
    const contents = yield* Effect.mapError(readFile(weightsFile), fromOther)
    return yield* adapterFromTensors(weightsFile, config, contents.tensors)
  })

/** The safetensors metadata field in which a single-file adapter (the engine's adapter artifacts) keeps its adapter_config.json. */
export const ADAPTER_CONFIG_METADATA = "adapter_config"

/** An adapter stored as one safetensors file: PEFT tensor names, adapter_config.json in the metadata. */
export const readAdapterFile = (file: string): Effect.Effect<LoraAdapter, PeftError> =>
  Effect.gen(function* () {
    const contents = yield* Effect.mapError(readFile(file), fromOther)
    const text = contents.metadata[ADAPTER_CONFIG_METADATA]
    if (text === undefined) return yield* Effect.fail(peftError(file, `__metadata__.${ADAPTER_CONFIG_METADATA}`, "missing: not a LoRA adapter"))
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (e) => peftError(file, `__metadata__.${ADAPTER_CONFIG_METADATA}`, `invalid JSON: ${e instanceof Error ? e.message : String(e)}`),
    })
    const config = yield* parseAdapterConfig(`${file} (metadata ${ADAPTER_CONFIG_METADATA})`, json)
    return yield* adapterFromTensors(file, config, contents.tensors)
  })

/**
 * base_model_name_or_path for a local model directory, as from_pretrained would be given it: the
 * repository id for a hub cache directory (models--org--name, or one of its snapshots), else the
 * absolute path.
 */
export const baseModelName = (dir: string): string => {
  const parts = path.resolve(dir).split(path.sep)
  const at = parts.findLastIndex((p) => p.startsWith("models--"))
  const isCache = at >= 0 && (at === parts.length - 1 || (at === parts.length - 3 && parts[at + 1] === "snapshots"))
  return isCache ? parts[at].slice("models--".length).split("--").join("/") : path.resolve(dir)
}

/**
 * Writes the adapter of a single-file adapter as a PEFT directory (adapter_config.json +
 * adapter_model.safetensors) in `outDir`. The base model is the one model directory among
 * `inputs` (the training node's external inputs by name); the adapter's own is kept without one.
 * Returns the config written.
 */
export const exportAdapter = (file: string, outDir: string, inputs: Readonly<Record<string, string>>): Effect.Effect<LoraConfig, PeftError> =>
  Effect.gen(function* () {
    const adapter = yield* readAdapterFile(file)
    const models = Object.entries(inputs).filter(([, p]) => Effect.runSync(Effect.isSuccess(resolveModelDir(p))))
    if (models.length > 1)
      return yield* Effect.fail(peftError(file, "base_model_name_or_path", `several model directories among the training inputs (${models.map(([n, p]) => `${n}: ${p}`).join(", ")})`))
    const baseModelNameOrPath = models.length === 1 ? baseModelName(models[0][1]) : adapter.config.baseModelNameOrPath
    const config = { ...adapter.config, baseModelNameOrPath }
    yield* writeAdapter(outDir, { config, modules: adapter.modules })
    return config
  })

/** Writes adapter_config.json and adapter_model.safetensors into `dir` (created if needed). */
export const writeAdapter = (dir: string, adapter: LoraAdapter): Effect.Effect<void, PeftError> =>
  Effect.gen(function* () {
    const configFile = path.join(dir, ADAPTER_CONFIG)
    const tensors = yield* adapterTensors(adapter, path.join(dir, ADAPTER_WEIGHTS))
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(configFile, JSON.stringify(adapterConfigJson(adapter.config), null, 2) + "\n")
      },
      catch: (e) => peftError(configFile, undefined, `cannot write: ${String(e)}`),
    })
    yield* Effect.mapError(writeFile(path.join(dir, ADAPTER_WEIGHTS), tensors, { format: "pt" }), fromOther)
  })

/** A linear layer LoRA can adapt: its module path, base weight and Linear-convention sizes. */
export interface LoraTarget {
  readonly module: string
  readonly weight: WeightRef
  readonly inFeatures: number
  readonly outFeatures: number
}

/**
 * The module path PEFT names a linear layer by: its path in the HF model, which is the weight's
 * name without ".weight" except for GPT-2 checkpoints saved from GPT2Model (the original OpenAI
 * conversions, e.g. openai-community/gpt2), whose tensor names lack GPT2LMHeadModel's "transformer.".
 */
export const modulePath = (config: ModelConfig, weight: WeightRef): string => {
  const module = weight.name.replace(/\.weight$/, "")
  return config.family === "gpt2" && !module.startsWith("transformer.") ? `transformer.${module}` : module
}

/** Every linear layer of the model's blocks, in layer order. */
const linearWeights = (w: ModelWeights): WeightRef[] =>
  w.layers.flatMap((l) => {
    const a = l.attention
    const attn = a.layout === "separate" ? [a.q, a.k, a.v, a.o] : [a.qkv, a.o]
    return [...attn, ...mlpLinears(l.mlp)].map((lin) => lin.weight)
  })

/**
 * The linear layers `targetModules` selects (PEFT's rule: the module path equals a target or ends
 * with "." + target). Fails when a target matches nothing, which in PEFT is an error too.
 */
/** Every linear layer of the model as a possible target. */
const linearTargets = (ckpt: Checkpoint): LoraTarget[] =>
  linearWeights(ckpt.weights).map((weight) => {
    const [a, b] = weight.shape
    return { module: modulePath(ckpt.config, weight), weight, inFeatures: weight.transposed ? a : b, outFeatures: weight.transposed ? b : a }
  })

export const loraTargets = (ckpt: Checkpoint, targetModules: ReadonlyArray<string>): Effect.Effect<LoraTarget[], PeftError> => {
  const all = linearTargets(ckpt)
  const matches = (module: string, t: string) => module === t || module.endsWith(`.${t}`)
  for (const t of targetModules)
    if (!all.some((x) => matches(x.module, t)))
      return Effect.fail(
        peftError(ckpt.configFile, "target_modules", `"${t}" matches no linear layer of this ${ckpt.config.hfArchitecture} (e.g. ${[...new Set(all.map((x) => x.module.split(".").at(-1)))].join(", ")})`),
      )
  return Effect.succeed(all.filter((x) => targetModules.some((t) => matches(x.module, t))))
}

/** Every module of `adapter` is a linear layer of `ckpt` with matching sizes (A [r, in], B [out, r]). */
export const checkAdapterModules = (ckpt: Checkpoint, adapter: LoraAdapter): Effect.Effect<void, PeftError> =>
  Effect.gen(function* () {
    const targets = new Map(linearTargets(ckpt).map((t) => [t.module, t]))
    for (const [module, { a, b }] of adapter.modules) {
      const t = targets.get(module)
      if (t === undefined) return yield* Effect.fail(peftError(ADAPTER_WEIGHTS, tensorName(module, "A"), `${module} is not a linear layer of the model in ${ckpt.dir}`))
      if (a.shape[1] !== t.inFeatures || b.shape[0] !== t.outFeatures)
        return yield* Effect.fail(
          peftError(ADAPTER_WEIGHTS, tensorName(module, "A"), `A [${a.shape.join(", ")}] and B [${b.shape.join(", ")}] do not fit ${module} (in ${t.inFeatures}, out ${t.outFeatures})`),
        )
    }
  })

/**
 * A LoRA config for `ckpt`: checks that every target selects a linear layer and sets
 * fan_in_fan_out when the selected layers store W^T (GPT-2 Conv1D), as PEFT requires.
 */
export const loraConfigFor = (
  ckpt: Checkpoint,
  options: { readonly r: number; readonly loraAlpha: number; readonly loraDropout?: number; readonly targetModules: ReadonlyArray<string>; readonly useRslora?: boolean; readonly baseModelNameOrPath?: string | null },
): Effect.Effect<LoraConfig, PeftError> =>
  Effect.gen(function* () {
    if (!Number.isInteger(options.r) || options.r <= 0) return yield* Effect.fail(peftError(ckpt.configFile, "r", `must be a positive integer, got ${options.r}`))
    const targets = yield* loraTargets(ckpt, options.targetModules)
    const transposed = new Set(targets.map((t) => t.weight.transposed))
    if (transposed.size > 1)
      return yield* Effect.fail(peftError(ckpt.configFile, "target_modules", "mixes layers stored as W and as W^T, which one PEFT fan_in_fan_out flag cannot describe"))
    return {
      r: options.r,
      loraAlpha: options.loraAlpha,
      loraDropout: options.loraDropout ?? 0,
      targetModules: [...options.targetModules],
      baseModelNameOrPath: options.baseModelNameOrPath ?? null,
      useRslora: options.useRslora ?? false,
      fanInFanOut: transposed.has(true),
    }
  })

/**
 * Writes base + adapter as a new checkpoint in `outDir`: every weight an adapter module touches
 * becomes W + scale * B A (computed in float64, stored in the base weight's dtype); all other
 * tensors and files (config.json, tokenizer files, shard index, ...) are copied unchanged.
 * Tensors are processed one at a time, so the merge of a large model does not hold it in memory.
 */
export const mergeLora = (baseDir: string, adapter: LoraAdapter, outDir: string): Effect.Effect<void, PeftError> =>
  Effect.gen(function* () {
    const ckpt = yield* Effect.mapError(loadCheckpoint(baseDir), fromOther)
    const scale = loraScale(adapter.config)
    const targets = new Map(linearWeights(ckpt.weights).map((w) => [modulePath(ckpt.config, w), w]))
    const deltas = new Map<string, { ref: WeightRef; lora: LoraModuleWeights }>()
    for (const [module, lora] of adapter.modules) {
      const ref = targets.get(module)
      if (ref === undefined)
        return yield* Effect.fail(peftError(ADAPTER_WEIGHTS, tensorName(module, "A"), `module ${module} is not a linear layer of the base model in ${ckpt.dir}`))
      if (ref.scale !== undefined)
        return yield* Effect.fail(peftError(ref.file, ref.name, `a ${ref.dtype} weight: merging into FP8 weights would need requantizing them (load the adapter unmerged instead)`))
      const [rows, cols] = ref.shape
      const [out, inp] = ref.transposed ? [cols, rows] : [rows, cols]
      if (lora.a.shape[1] !== inp || lora.b.shape[0] !== out)
        return yield* Effect.fail(
          peftError(ADAPTER_WEIGHTS, tensorName(module, "A"), `A [${lora.a.shape.join(", ")}] and B [${lora.b.shape.join(", ")}] do not fit ${ref.name} (in ${inp}, out ${out})`),
        )
      deltas.set(ref.name, { ref, lora })
    }
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(outDir, { recursive: true })
        for (const f of fs.readdirSync(ckpt.dir)) {
          const src = path.join(ckpt.dir, f)
          if (!f.endsWith(".safetensors") && fs.statSync(src).isFile()) fs.copyFileSync(src, path.join(outDir, f))
        }
      },
      catch: (e) => peftError(outDir, undefined, `cannot copy the base checkpoint's files: ${String(e)}`),
    })
    for (const file of ckpt.tensorFiles) {
      const header = yield* Effect.mapError(readHeader(file), fromOther)
      const tensors: StreamedTensor[] = [...header.tensors.values()].map((loc) => ({
        name: loc.name,
        dtype: loc.dtype,
        shape: loc.shape,
        chunks: () => {
          const base = Effect.runSync(readTensor(header, loc.name))
          const delta = deltas.get(loc.name)
          return [delta === undefined ? base.data : mergedBytes(base, delta.ref, delta.lora, scale)]
        },
      }))
      // Same file names as the base, so a copied shard index stays valid.
      yield* Effect.mapError(writeFileStreamed(path.join(outDir, path.basename(file)), tensors, header.metadata), fromOther)
    }
  })

/** W + scale * B A in the stored layout of W, rounded to W's dtype. */
const mergedBytes = (base: Tensor, ref: WeightRef, lora: LoraModuleWeights, scale: number): Uint8Array => {
  const w = toFloat64(base)
  const a = toFloat64(lora.a)
  const b = toFloat64(lora.b)
  const r = lora.a.shape[0]
  const inp = lora.a.shape[1]
  const out = lora.b.shape[0]
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inp; i++) {
      let s = 0
      for (let k = 0; k < r; k++) s += b[o * r + k] * a[k * inp + i]
      w[ref.transposed ? i * out + o : o * inp + i] += scale * s
    }
  return fromNumbers(w, base.dtype, base.shape).data
}

// ------------------------------------------------------------------------------ prompt tuning
//
// A soft prompt in PEFT's PROMPT_TUNING format (PromptTuningConfig; what
// PeftModel.from_pretrained loads for a causal LM): adapter_config.json with
// peft_type "PROMPT_TUNING", num_virtual_tokens k, token_dim H, num_transformer_submodules 1, and
// adapter_model.safetensors holding `prompt_embeddings` [k, H] in inputs_embeds space (PEFT
// concatenates them in front of word_embeddings(input_ids), as variant.ts does).

export const PROMPT_EMBEDDINGS = "prompt_embeddings"

export interface PromptTuning {
  readonly k: number
  /** [k, H] row-major */
  readonly values: Float32Array
  readonly hiddenSize: number
  readonly baseModelNameOrPath: string | null
}

const PromptTuningConfigJson = Schema.Struct({
  peft_type: Schema.String,
  task_type: Schema.optional(Schema.NullOr(Schema.String)),
  num_virtual_tokens: Schema.Int.check(Schema.isGreaterThan(0)),
  token_dim: Schema.Int.check(Schema.isGreaterThan(0)),
  num_transformer_submodules: Schema.optional(Schema.NullOr(Schema.Int)),
  base_model_name_or_path: Schema.optional(Schema.NullOr(Schema.String)),
})

/**
 * adapter_config.json for a prompt-tuning adapter. prompt_tuning_init is "RANDOM" whatever the
 * training started from: PEFT re-initialises the prompt before loading the saved one, and "TEXT"
 * would make it load a tokenizer for an initialisation that is overwritten at once.
 */
export const promptTuningConfigJson = (p: PromptTuning, model: { readonly numLayers: number; readonly numHeads: number }): Record<string, unknown> => ({
  auto_mapping: null,
  base_model_name_or_path: p.baseModelNameOrPath,
  inference_mode: true,
  num_attention_heads: model.numHeads,
  num_layers: model.numLayers,
  num_transformer_submodules: 1,
  num_virtual_tokens: p.k,
  peft_type: "PROMPT_TUNING",
  prompt_tuning_init: "RANDOM",
  prompt_tuning_init_text: null,
  revision: null,
  task_type: "CAUSAL_LM",
  token_dim: p.hiddenSize,
  tokenizer_kwargs: null,
  tokenizer_name_or_path: null,
})

/** Writes a soft prompt as a PEFT prompt-tuning directory (created if needed). */
export const writePromptTuning = (dir: string, p: PromptTuning, model: { readonly numLayers: number; readonly numHeads: number }): Effect.Effect<void, PeftError> =>
  Effect.gen(function* () {
    const configFile = path.join(dir, ADAPTER_CONFIG)
    if (p.values.length !== p.k * p.hiddenSize)
      return yield* Effect.fail(peftError(path.join(dir, ADAPTER_WEIGHTS), PROMPT_EMBEDDINGS, `has ${p.values.length} values, expected k x hidden size = ${p.k} x ${p.hiddenSize}`))
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(configFile, JSON.stringify(promptTuningConfigJson(p, model), null, 2) + "\n")
      },
      catch: (e) => peftError(configFile, undefined, `cannot write: ${String(e)}`),
    })
    const tensors = new Map([[PROMPT_EMBEDDINGS, fromNumbers(p.values, "F32", [p.k, p.hiddenSize])]])
    yield* Effect.mapError(writeFile(path.join(dir, ADAPTER_WEIGHTS), tensors, { format: "pt" }), fromOther)
  })

/**
 * Reads a PEFT prompt-tuning directory; with `hiddenSize`, the prompt must fit a model of that
 * hidden size. Encoder-decoder prompts (num_transformer_submodules 2) and other PEFT types are refused.
 */
export const readPromptTuning = (dir: string, hiddenSize?: number): Effect.Effect<PromptTuning, PeftError> =>
  Effect.gen(function* () {
    const { configFile, weightsFile, json } = yield* readAdapterDirectory(dir)
    const c = yield* Effect.mapError(decodeConfig(PromptTuningConfigJson, configFile, json), fromOther)
    if (c.peft_type !== "PROMPT_TUNING") return yield* Effect.fail(peftError(configFile, "peft_type", `"${c.peft_type}", expected "PROMPT_TUNING"`))
    if (c.task_type != null && c.task_type !== "CAUSAL_LM") return yield* Effect.fail(peftError(configFile, "task_type", `unsupported: "${c.task_type}" (only CAUSAL_LM)`))
    if ((c.num_transformer_submodules ?? 1) !== 1)
      return yield* Effect.fail(peftError(configFile, "num_transformer_submodules", `unsupported: ${c.num_transformer_submodules} (only 1: decoder-only models)`))
    if (hiddenSize !== undefined && c.token_dim !== hiddenSize) return yield* Effect.fail(peftError(configFile, "token_dim", `${c.token_dim}, but the model's hidden size is ${hiddenSize}`))
    const contents = yield* Effect.mapError(readFile(weightsFile), fromOther)
    const t = contents.tensors.get(PROMPT_EMBEDDINGS)
    if (t === undefined) return yield* Effect.fail(peftError(weightsFile, PROMPT_EMBEDDINGS, `missing (tensors: ${[...contents.tensors.keys()].join(", ") || "none"})`))
    if (t.shape.length !== 2 || t.shape[0] !== c.num_virtual_tokens || t.shape[1] !== c.token_dim)
      return yield* Effect.fail(peftError(weightsFile, PROMPT_EMBEDDINGS, `shape [${t.shape.join(", ")}], expected [num_virtual_tokens, token_dim] = [${c.num_virtual_tokens}, ${c.token_dim}]`))
    return { k: c.num_virtual_tokens, values: toFloat32(t), hiddenSize: c.token_dim, baseModelNameOrPath: c.base_model_name_or_path ?? null }
  })
