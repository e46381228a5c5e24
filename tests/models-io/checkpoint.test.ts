import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import {
  type CheckpointError,
  loadCheckpoint,
  type ModelConfig,
  parseModelConfig,
  readWeightFloat64,
  type UnsupportedModelError,
  weightsInFile,
} from "../../src/models/checkpoint.ts"
import { type InitOptions, llama31_8b, tinyGemma2, tinyGemma3, tinyGpt2, tinyGptNeox, tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { readFile, readHeader, writeFile } from "../../src/core/safetensors.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "pipe-ckpt-"))
const run = <A, E>(e: Effect.Effect<A, E>): A => Effect.runSync(e)
const failure = <E>(e: Effect.Effect<unknown, E>): E => {
  const exit = Effect.runSyncExit(Effect.flip(e))
  if (Exit.isFailure(exit)) throw new Error("expected an error value")
  return exit.value as E
}
const write = (config: ModelConfig, options: InitOptions = { seed: 1 }) => {
  const dir = tmp()
  run(writeRandomCheckpoint(dir, config, options))
  return dir
}
const withoutDtype = (c: ModelConfig) => ({ ...c, torchDtype: undefined })

describe("random checkpoints load back with the config they were written from", () => {
  const configs: Array<[string, ModelConfig]> = [
    ["llama (GQA)", tinyLlama()],
    ["llama tied, llama3 rope scaling, biases", tinyLlama({ tiedEmbeddings: true, bias: { qkv: true, o: true, mlp: true, norm: false }, positions: { kind: "rope", theta: 500000, rotaryDim: 4, scaling: { kind: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 32 } } })],
    ["qwen2", tinyLlama({ hfArchitecture: "Qwen2ForCausalLM", tiedEmbeddings: true, bias: { qkv: true, o: false, mlp: false, norm: false } })],
    ["mistral", tinyLlama({ hfArchitecture: "MistralForCausalLM" })],
    ["mistral with a sliding window", tinyLlama({ hfArchitecture: "MistralForCausalLM", slidingWindow: { size: 3, layers: [true, true] } })],
    ["qwen2 with a sliding window from layer 1", tinyLlama({ hfArchitecture: "Qwen2ForCausalLM", tiedEmbeddings: true, bias: { qkv: true, o: false, mlp: false, norm: false }, slidingWindow: { size: 3, layers: [false, true] } })],
    ["gemma 2", tinyGemma2()],
    ["gemma 3", tinyGemma3()],
    ["gpt2", tinyGpt2()],
    ["gpt-neox sequential residual", tinyGptNeox({ parallelResidual: false })],
    ["gpt-neox", tinyGptNeox()],
  ]
  for (const [what, config] of configs)
    it(what, () => {
      const dir = write(config)
      const ckpt = run(loadCheckpoint(dir))
      expect(withoutDtype(ckpt.config)).toEqual(withoutDtype(config))
      expect(ckpt.weights.layers.length).toBe(config.numLayers)
      expect(ckpt.tensorFiles).toEqual([path.join(dir, "model.safetensors")])
      expect(ckpt.weights.lmHead === ckpt.weights.embedTokens).toBe(config.tiedEmbeddings)
      // The file holds exactly the tensors the architecture asks for.
      const inFile = [...run(readFile(path.join(dir, "model.safetensors"))).tensors.keys()].sort()
      const refs = new Set<string>([ckpt.weights.embedTokens.name, ckpt.weights.lmHead.name, ckpt.weights.finalNorm.weight.name])
      if (ckpt.weights.embedPositions) refs.add(ckpt.weights.embedPositions.name)
      if (ckpt.weights.finalNorm.bias) refs.add(ckpt.weights.finalNorm.bias.name)
      for (const l of ckpt.weights.layers)
        for (const part of [l.inputNorm, l.postAttentionNorm, ...Object.values(l.outputNorms ?? {}), ...Object.values(l.headNorms ?? {}), ...Object.values(l.attention).filter((v) => typeof v === "object"), ...Object.values(l.mlp).filter((v) => typeof v === "object")] as Array<{ weight: { name: string }; bias?: { name: string } }>) {
          refs.add(part.weight.name)
          if (part.bias) refs.add(part.bias.name)
        }
      expect([...refs].sort()).toEqual(inFile)
      expect(ckpt.generationConfig?.eosTokenIds).toEqual(config.eosTokenIds)
    })

  it("refuses to write a config that its architecture's config.json cannot express", () => {
    const e = failure(writeRandomCheckpoint(tmp(), tinyLlama({ bias: { qkv: true, o: false, mlp: false, norm: false } }), { seed: 1 })) as UnsupportedModelError
    expect(e).toMatchObject({ _tag: "UnsupportedModelError", field: "bias" })
    expect(failure(writeRandomCheckpoint(tmp(), tinyGpt2({ parallelResidual: true }), { seed: 1 }))).toMatchObject({ _tag: "UnsupportedModelError" })
  })

  it("uses HF tensor names and layouts (GPT-2 Conv1D stored [in, out], NeoX fused qkv)", () => {
    const g = run(loadCheckpoint(write(tinyGpt2())))
    const a = g.weights.layers[0].attention
    expect(a.layout).toBe("fused_qkv")
    if (a.layout !== "fused_qkv") return
    expect(a.qkv.weight).toMatchObject({ name: "transformer.h.0.attn.c_attn.weight", shape: [16, 48], transposed: true })
    const n = run(loadCheckpoint(write(tinyGptNeox())))
    const b = n.weights.layers[1].attention
    expect(b.layout === "fused_qkv_per_head" && b.qkv.weight).toMatchObject({ name: "gpt_neox.layers.1.attention.query_key_value.weight", shape: [48, 16], transposed: false })
    expect(n.weights.lmHead.name).toBe("embed_out.weight")
    const l = run(loadCheckpoint(write(tinyLlama())))
    const c = l.weights.layers[0].attention
    expect(c.layout === "separate" && c.k.weight).toMatchObject({ name: "model.layers.0.self_attn.k_proj.weight", shape: [8, 16] })
  })

  it("gives absolute file offsets that address the tensor bytes, and transposes Conv1D weights on request", () => {
    const dir = write(tinyGpt2())
    const ckpt = run(loadCheckpoint(dir))
    const a = ckpt.weights.layers[0].attention
    if (a.layout !== "fused_qkv") throw new Error("layout")
    const raw = fs.readFileSync(path.join(dir, "model.safetensors"))
    const ref = a.qkv.weight
    const stored = new Float32Array(raw.buffer.slice(raw.byteOffset + ref.fileOffset, raw.byteOffset + ref.fileOffset + ref.byteLength))
    const { shape, values } = run(readWeightFloat64(ref))
    expect(shape).toEqual([48, 16])
    for (const [o, i] of [[0, 0], [5, 3], [47, 15], [20, 9]]) expect(values[o * 16 + i]).toBe(stored[i * 48 + o])
  })

  it("stores F16 / BF16 weights that round the same values as the F32 ones", () => {
    const f32 = run(loadCheckpoint(write(tinyLlama(), { seed: 3 })))
    for (const dtype of ["F16", "BF16"] as const) {
      const low = run(loadCheckpoint(write(tinyLlama(), { seed: 3, dtype })))
      expect(low.weights.embedTokens.dtype).toBe(dtype)
      const a = run(readWeightFloat64(f32.weights.layers[1].mlp.down.weight)).values
      const b = run(readWeightFloat64(low.weights.layers[1].mlp.down.weight)).values
      // Round to nearest: relative error 2^-11 for F16, 2^-8 for BF16, plus half the smallest F16
      // subnormal (2^-25) for tiny values.
      const tol = dtype === "F16" ? 2 ** -11 : 2 ** -8
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(Math.abs(a[i]) * tol + 2 ** -25)
      expect(JSON.parse(fs.readFileSync(path.join(low.dir, "config.json"), "utf8")).torch_dtype).toBe(dtype === "F16" ? "float16" : "bfloat16")
    }
  })
})

describe("sharded checkpoints and the hub cache layout", () => {
  it("reads shards through model.safetensors.index.json, values identical to the unsharded file", () => {
    const one = run(loadCheckpoint(write(tinyLlama(), { seed: 9 })))
    const dir = write(tinyLlama(), { seed: 9, maxShardBytes: 8000 })
    const ckpt = run(loadCheckpoint(dir))
    expect(ckpt.tensorFiles.length).toBeGreaterThan(2)
    expect(path.basename(ckpt.tensorFiles[0])).toMatch(/^model-00001-of-0000\d\.safetensors$/)
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8"))
    expect(Object.keys(index.weight_map).length).toBe(2 * 9 + 3)
    expect(new Set([ckpt.weights.embedTokens.file, ckpt.weights.lmHead.file]).size).toBe(2)
    for (const pick of [(c: typeof ckpt) => c.weights.embedTokens, (c: typeof ckpt) => c.weights.layers[1].mlp.down.weight, (c: typeof ckpt) => c.weights.lmHead])
      expect(Array.from(run(readWeightFloat64(pick(ckpt))).values)).toEqual(Array.from(run(readWeightFloat64(pick(one))).values))
  })

  it("names the index and the tensor when a shard is missing a tensor the index lists", () => {
    const dir = write(tinyLlama(), { seed: 9, maxShardBytes: 8000 })
    const indexFile = path.join(dir, "model.safetensors.index.json")
    const index = JSON.parse(fs.readFileSync(indexFile, "utf8"))
    const other = Object.values(index.weight_map).find((f) => f !== index.weight_map["model.norm.weight"]) as string
    index.weight_map["model.norm.weight"] = other
    fs.writeFileSync(indexFile, JSON.stringify(index))
    const e = failure(loadCheckpoint(dir)) as CheckpointError
    expect(e.file).toBe(path.join(dir, other))
    expect(e.field).toBe("model.norm.weight")
    expect(e.message).toMatch(/listed in model\.safetensors\.index\.json but not in this shard/)
  })

  it("follows a hub cache directory (refs/main, snapshots of symlinks into blobs)", () => {
    const src = write(tinyGptNeox())
    const root = path.join(tmp(), "models--org--tiny")
    const rev = "0123456789abcdef0123456789abcdef01234567"
    fs.mkdirSync(path.join(root, "blobs"), { recursive: true })
    fs.mkdirSync(path.join(root, "snapshots", rev), { recursive: true })
    fs.mkdirSync(path.join(root, "refs"))
    fs.writeFileSync(path.join(root, "refs", "main"), rev)
    for (const [i, f] of fs.readdirSync(src).entries()) {
      const blob = `blob${i}`
      fs.copyFileSync(path.join(src, f), path.join(root, "blobs", blob))
      fs.symlinkSync(path.join("..", "..", "blobs", blob), path.join(root, "snapshots", rev, f))
    }
    const fromRoot = run(loadCheckpoint(root))
    expect(fromRoot.dir).toBe(path.join(root, "snapshots", rev))
    expect(fs.realpathSync(fromRoot.weights.embedTokens.file).startsWith(path.join(fs.realpathSync(root), "blobs"))).toBe(true)
    const fromSnapshot = run(loadCheckpoint(path.join(root, "snapshots", rev)))
    expect(fromSnapshot.config).toEqual(fromRoot.config)
    expect(Array.from(run(readWeightFloat64(fromRoot.weights.lmHead)).values)).toEqual(
      Array.from(run(readWeightFloat64(run(loadCheckpoint(src)).weights.lmHead)).values),
    )
    fs.rmSync(path.join(root, "refs"), { recursive: true })
    expect(run(loadCheckpoint(root)).dir).toBe(path.join(root, "snapshots", rev))
  })

  it("reads GPT-2 checkpoints saved without the transformer. prefix (original OpenAI conversions)", () => {
    const dir = write(tinyGpt2())
    const file = path.join(dir, "model.safetensors")
    const c = run(readFile(file))
    const renamed = new Map([...c.tensors].map(([k, v]) => [k.replace(/^transformer\./, ""), { ...v, data: v.data.slice() }]))
    renamed.set("h.0.attn.bias", { dtype: "F32", shape: [1], data: new Uint8Array(4) }) // an ignored buffer
    run(writeFile(file, renamed))
    const ckpt = run(loadCheckpoint(dir))
    expect(ckpt.weights.embedTokens.name).toBe("wte.weight")
    expect(ckpt.weights.layers[1].postAttentionNorm.bias?.name).toBe("h.1.ln_2.bias")
  })
})

describe("config.json of real models", () => {
  const parse = (json: unknown) => run(parseModelConfig("config.json", json))
  it("TinyLlama-1.1B-Chat", () => {
    const c = parse({
      architectures: ["LlamaForCausalLM"], attention_bias: false, bos_token_id: 1, eos_token_id: 2, hidden_act: "silu", hidden_size: 2048,
      initializer_range: 0.02, intermediate_size: 5632, max_position_embeddings: 2048, model_type: "llama", num_attention_heads: 32,
      num_hidden_layers: 22, num_key_value_heads: 4, pretraining_tp: 1, rms_norm_eps: 1e-5, rope_scaling: null, rope_theta: 10000.0,
      tie_word_embeddings: false, torch_dtype: "bfloat16", transformers_version: "4.35.0", use_cache: true, vocab_size: 32000,
    })
    expect(c).toMatchObject({ family: "llama", numHeads: 32, numKvHeads: 4, headDim: 64, intermediateSize: 5632, tiedEmbeddings: false, bosTokenId: 1, eosTokenIds: [2] })
    expect(c.positions).toEqual({ kind: "rope", theta: 10000, rotaryDim: 64, scaling: { kind: "none" } })
  })
  it("Llama-3.1-8B-Instruct (llama3 rope scaling, eos list)", () => {
    const c = parse({
      architectures: ["LlamaForCausalLM"], attention_bias: false, attention_dropout: 0.0, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009],
      hidden_act: "silu", hidden_size: 4096, initializer_range: 0.02, intermediate_size: 14336, max_position_embeddings: 131072, mlp_bias: false,
      model_type: "llama", num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 8, pretraining_tp: 1, rms_norm_eps: 1e-05,
      rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
      rope_theta: 500000.0, tie_word_embeddings: false, torch_dtype: "bfloat16", transformers_version: "4.43.0.dev0", use_cache: true, vocab_size: 128256,
    })
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009])
    expect(withoutDtype(c)).toEqual(withoutDtype({ ...llama31_8b(), eosTokenIds: [128001, 128008, 128009] }))
  })
  it("Qwen2-0.5B (qkv biases, tied, inactive sliding window)", () => {
    const c = parse({
      architectures: ["Qwen2ForCausalLM"], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151643, hidden_act: "silu", hidden_size: 896,
      initializer_range: 0.02, intermediate_size: 4864, max_position_embeddings: 131072, max_window_layers: 24, model_type: "qwen2",
      num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-06, rope_theta: 1000000.0, sliding_window: 131072,
      tie_word_embeddings: true, torch_dtype: "bfloat16", transformers_version: "4.40.1", use_cache: true, use_sliding_window: false, vocab_size: 151936,
    })
    expect(c).toMatchObject({ headDim: 64, numKvHeads: 2, tiedEmbeddings: true, bias: { qkv: true, o: false, mlp: false, norm: false } })
  })
  it("Mistral-7B-v0.3 has no sliding window; v0.1 (and a config without the key) windows every layer with 4096", () => {
    const base = {
      architectures: ["MistralForCausalLM"], bos_token_id: 1, eos_token_id: 2, hidden_act: "silu", hidden_size: 4096, intermediate_size: 14336,
      max_position_embeddings: 32768, model_type: "mistral", num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 8,
      rms_norm_eps: 1e-05, rope_theta: 1000000.0, sliding_window: null, tie_word_embeddings: false, vocab_size: 32768,
    }
    expect(parse(base)).toMatchObject({ hfArchitecture: "MistralForCausalLM", numKvHeads: 8 })
    expect(parse(base).slidingWindow).toBeUndefined()
    const everyLayer = { size: 4096, layers: new Array(32).fill(true) }
    expect(parse({ ...base, sliding_window: 4096, rope_theta: 10000.0 }).slidingWindow).toEqual(everyLayer)
    const { sliding_window: _, ...absent } = base
    expect(parse(absent).slidingWindow).toEqual(everyLayer)
  })
  it("Qwen2 with use_sliding_window windows the layers from max_window_layers on; Llama ignores sliding_window", () => {
    const qwen = {
      architectures: ["Qwen2ForCausalLM"], hidden_size: 64, intermediate_size: 128, max_position_embeddings: 4096, num_attention_heads: 4,
      num_hidden_layers: 4, num_key_value_heads: 2, rms_norm_eps: 1e-06, rope_theta: 1000000.0, sliding_window: 1024, use_sliding_window: true, vocab_size: 100,
    }
    expect(parse({ ...qwen, max_window_layers: 2 }).slidingWindow).toEqual({ size: 1024, layers: [false, false, true, true] })
    expect(parse(qwen).slidingWindow).toBeUndefined() // default max_window_layers 28 >= 4 layers
    const types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    expect(parse({ ...qwen, layer_types: types }).slidingWindow).toEqual({ size: 1024, layers: [false, true, false, true] })
    expect(parse({ ...qwen, use_sliding_window: false, layer_types: types }).slidingWindow).toBeUndefined()
    expect(parse({ ...qwen, architectures: ["LlamaForCausalLM"] }).slidingWindow).toBeUndefined()
  })
  it("gpt2", () => {
    const c = parse({
      activation_function: "gelu_new", architectures: ["GPT2LMHeadModel"], attn_pdrop: 0.1, bos_token_id: 50256, embd_pdrop: 0.1, eos_token_id: 50256,
      initializer_range: 0.02, layer_norm_epsilon: 1e-05, model_type: "gpt2", n_ctx: 1024, n_embd: 768, n_head: 12, n_inner: null, n_layer: 12,
      n_positions: 1024, resid_pdrop: 0.1, summary_activation: null, summary_first_dropout: 0.1, summary_proj_to_labels: true,
      summary_type: "cls_index", summary_use_proj: true, task_specific_params: { "text-generation": { do_sample: true, max_length: 50 } }, vocab_size: 50257,
    })
    expect(c).toMatchObject({ family: "gpt2", hiddenSize: 768, headDim: 64, intermediateSize: 3072, activation: "gelu_tanh", tiedEmbeddings: true, maxPositions: 1024, norm: { kind: "layer", eps: 1e-5 } })
  })
  it("pythia-70m", () => {
    const c = parse({
      architectures: ["GPTNeoXForCausalLM"], bos_token_id: 0, eos_token_id: 0, hidden_act: "gelu", hidden_size: 512, initializer_range: 0.02,
      intermediate_size: 2048, layer_norm_eps: 1e-05, max_position_embeddings: 2048, model_type: "gpt_neox", num_attention_heads: 8,
      num_hidden_layers: 6, rotary_emb_base: 10000, rotary_pct: 0.25, tie_word_embeddings: false, torch_dtype: "float16",
      transformers_version: "4.24.0", use_cache: true, use_parallel_residual: true, vocab_size: 50304,
    })
    expect(c).toMatchObject({ family: "gpt_neox", headDim: 64, activation: "gelu_erf", parallelResidual: true, positions: { kind: "rope", theta: 10000, rotaryDim: 16 } })
  })
})

describe("errors name the file and the field or tensor", () => {
  const llamaJson = () => JSON.parse(fs.readFileSync(path.join(write(tinyLlama()), "config.json"), "utf8"))
  const cases: Array<[string, (j: Record<string, unknown>) => void, string, string, RegExp]> = [
    ["unknown architecture", (j) => (j.architectures = ["T5ForConditionalGeneration"]), "UnsupportedModelError", "architectures", /"T5ForConditionalGeneration"/],
    ["unsupported rope_type", (j) => (j.rope_scaling = { rope_type: "mrope", factor: 4 }), "UnsupportedModelError", "rope_scaling.rope_type", /"mrope"/],
    ["llama3 scaling missing a field", (j) => (j.rope_scaling = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4 }), "CheckpointError", "rope_scaling.original_max_position_embeddings", /missing/],
    ["gelu in a llama", (j) => (j.hidden_act = "gelu"), "UnsupportedModelError", "hidden_act", /only silu/],
    ["GQA heads that do not divide", (j) => (j.num_key_value_heads = 3), "CheckpointError", "num_key_value_heads", /does not divide/],
  ]
  for (const [what, edit, tag, field, message] of cases)
    it(what, () => {
      const j = llamaJson()
      edit(j)
      const e = failure(parseModelConfig("/m/config.json", j)) as CheckpointError | UnsupportedModelError
      expect(e._tag).toBe(tag)
      expect(e.field).toBe(field)
      expect(e.message).toMatch(message)
      expect(e.message.startsWith("/m/config.json: ")).toBe(true)
    })

  it("a config field of the wrong type", () => {
    const j = llamaJson()
    j.vocab_size = "many"
    expect(failure(parseModelConfig("/m/config.json", j)).message).toMatch(/\/m\/config\.json: invalid config: .*vocab_size/)
  })

  it("GPT-2 scale_attn_by_inverse_layer_idx and NeoX rope scaling types are refused", () => {
    const g = JSON.parse(fs.readFileSync(path.join(write(tinyGpt2()), "config.json"), "utf8"))
    expect(failure(parseModelConfig("c", { ...g, scale_attn_by_inverse_layer_idx: true }))).toMatchObject({ _tag: "UnsupportedModelError", field: "scale_attn_by_inverse_layer_idx" })
    const n = JSON.parse(fs.readFileSync(path.join(write(tinyGptNeox()), "config.json"), "utf8"))
    expect(failure(parseModelConfig("c", { ...n, rope_scaling: { type: "mrope", factor: 2 } }))).toMatchObject({ _tag: "UnsupportedModelError", field: "rope_scaling.rope_type" })
  })

  it("missing directory, missing config.json, bad JSON, missing weights", () => {
    expect(failure(loadCheckpoint("/nonexistent/model")).message).toMatch(/\/nonexistent\/model: model directory does not exist/)
    const empty = tmp()
    expect(failure(loadCheckpoint(empty)).message).toMatch(/config\.json: missing/)
    fs.writeFileSync(path.join(empty, "config.json"), "{ not json")
    expect(failure(loadCheckpoint(empty)).message).toMatch(/config\.json: cannot parse JSON/)
    const dir = write(tinyLlama())
    fs.rmSync(path.join(dir, "model.safetensors"))
    expect(failure(loadCheckpoint(dir)).message).toMatch(/model\.safetensors: missing: no \*\.safetensors file/)
  })

  it("a missing tensor and a tensor whose shape disagrees with config.json", () => {
    const dir = write(tinyLlama())
    const file = path.join(dir, "model.safetensors")
    const c = run(readFile(file))
    const tensors = new Map([...c.tensors].map(([k, v]) => [k, { ...v, data: v.data.slice() }]))
    tensors.delete("model.layers.1.mlp.up_proj.weight")
    run(writeFile(file, tensors))
    const e = failure(loadCheckpoint(dir)) as CheckpointError
    expect(e.file).toBe(file)
    expect(e.field).toBe("model.layers.1.mlp.up_proj.weight")
    expect(e.message).toMatch(/missing tensor \(config\.json implies shape \[32, 16\]\)/)
    const cfgFile = path.join(dir, "config.json")
    const j = JSON.parse(fs.readFileSync(cfgFile, "utf8"))
    fs.writeFileSync(cfgFile, JSON.stringify({ ...j, intermediate_size: 24 }))
    const s = failure(loadCheckpoint(dir)) as CheckpointError
    expect(s.field).toBe("model.layers.0.mlp.gate_proj.weight")
    expect(s.message).toMatch(/shape \[32, 16\] does not match \[24, 16\] implied by .*config\.json/)
  })

  it("a corrupt safetensors file is reported with its path", () => {
    const dir = write(tinyLlama())
    const file = path.join(dir, "model.safetensors")
    fs.truncateSync(file, fs.statSync(file).size - 10)
    expect(failure(loadCheckpoint(dir)).message).toMatch(/model\.safetensors: .*(truncated|out of range)/)
  })
})

describe("weightsInFile: the layout of a config in one safetensors file", () => {
  it("equals the layout loadCheckpoint finds, and names the file and tensor when one is missing", () => {
    const dir = write(tinyLlama())
    const ckpt = run(loadCheckpoint(dir))
    const file = path.join(dir, "model.safetensors")
    expect(run(weightsInFile(ckpt.config, file, run(readHeader(file))))).toEqual(ckpt.weights)

    const missing = "model.layers.1.mlp.up_proj.weight"
    const kept = [...run(readFile(file)).tensors].filter(([name]) => name !== missing)
    const partial = path.join(tmp(), "partial.safetensors")
    run(writeFile(partial, Object.fromEntries(kept)))
    const e = failure(weightsInFile(ckpt.config, partial, run(readHeader(partial)))) as CheckpointError
    expect(e.message).toContain(partial)
    expect(e.message).toContain(missing)
  })
})
