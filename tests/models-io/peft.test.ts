import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadCheckpoint, type ModelConfig, readWeightFloat64 } from "../../src/models/checkpoint.ts"
import { type InitOptions, tinyGpt2, tinyGptNeox, tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { mulberry32 } from "../../src/core/random.ts"
import {
  ADAPTER_CONFIG_METADATA,
  adapterConfigJson,
  adapterTensors,
  baseModelName,
  exportAdapter,
  type LoraAdapter,
  type LoraConfig,
  loraConfigFor,
  loraScale,
  loraTargets,
  mergeLora,
  type PeftError,
  readAdapter,
  writeAdapter,
} from "../../src/models/peft.ts"
import { fromNumbers, readFile, writeFile } from "../../src/core/safetensors.ts"
import { referenceLogits } from "../reference/reference.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "pipe-peft-"))
const run = <A, E>(e: Effect.Effect<A, E>): A => Effect.runSync(e)
const failure = <E>(e: Effect.Effect<unknown, E>): E => {
  const exit = Effect.runSyncExit(Effect.flip(e))
  if (Exit.isFailure(exit)) throw new Error("expected an error value")
  return exit.value as E
}
const base = (config: ModelConfig, options: InitOptions = { seed: 11, std: 0.3 }) => {
  const dir = tmp()
  run(writeRandomCheckpoint(dir, config, options))
  return dir
}
const loraConfig = (targetModules: string[], extra: Partial<LoraConfig> = {}): LoraConfig => ({
  r: 2, loraAlpha: 4, loraDropout: 0.05, targetModules, baseModelNameOrPath: "org/tiny", useRslora: false, fanInFanOut: false, ...extra,
})

/** An adapter on every module the targets select, with random A and B (or zero B). */
const randomAdapter = (modelDir: string, config: LoraConfig, zeroB = false, seed = 3): LoraAdapter => {
  const next = mulberry32(seed)
  const targets = run(loraTargets(run(loadCheckpoint(modelDir)), config.targetModules))
  const rand = (n: number) => Array.from({ length: n }, () => (zeroB ? 0 : next() - 0.5))
  return {
    config,
    modules: new Map(
      targets.map((t) => [
        t.module,
        {
          a: fromNumbers(Array.from({ length: config.r * t.inFeatures }, () => next() - 0.5), "F32", [config.r, t.inFeatures]),
          b: fromNumbers(rand(t.outFeatures * config.r), "F32", [t.outFeatures, config.r]),
        },
      ]),
    ),
  }
}

describe("PEFT adapter files", () => {
  it("writes PEFT's adapter_config.json and tensor names, and reads them back", () => {
    const model = base(tinyLlama())
    const adapter = randomAdapter(model, loraConfig(["q_proj", "v_proj"]))
    const dir = path.join(tmp(), "adapter")
    run(writeAdapter(dir, adapter))
    const json = JSON.parse(fs.readFileSync(path.join(dir, "adapter_config.json"), "utf8"))
    expect(json).toMatchObject({ peft_type: "LORA", task_type: "CAUSAL_LM", r: 2, lora_alpha: 4, lora_dropout: 0.05, target_modules: ["q_proj", "v_proj"], base_model_name_or_path: "org/tiny", bias: "none", use_rslora: false })
    const names = [...run(readFile(path.join(dir, "adapter_model.safetensors"))).tensors.keys()].sort()
    expect(names).toContain("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    expect(names).toContain("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
    expect(names.length).toBe(2 * 2 * 2)
    const back = run(readAdapter(dir))
    expect(back.config).toEqual(adapter.config)
    for (const [m, w] of adapter.modules) {
      expect(Array.from(back.modules.get(m)!.a.data)).toEqual(Array.from(w.a.data))
      expect(back.modules.get(m)!.b.shape).toEqual(w.b.shape)
    }
  })

  it("reads an adapter_config.json with the extra fields recent PEFT versions write", () => {
    const model = base(tinyLlama())
    const dir = path.join(tmp(), "a")
    run(writeAdapter(dir, randomAdapter(model, loraConfig(["o_proj"]))))
    fs.writeFileSync(
      path.join(dir, "adapter_config.json"),
      JSON.stringify({
        alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: "TinyLlama/TinyLlama-1.1B-Chat-v1.0", bias: "none", eva_config: null,
        exclude_modules: null, fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, layer_replication: null,
        layers_pattern: null, layers_to_transform: null, loftq_config: {}, lora_alpha: 16, lora_bias: false, lora_dropout: 0.0,
        megatron_config: null, megatron_core: "megatron.core", modules_to_save: null, peft_type: "LORA", r: 2, rank_pattern: {},
        revision: null, target_modules: ["o_proj"], task_type: "CAUSAL_LM", use_dora: false, use_rslora: true,
      }),
    )
    const a = run(readAdapter(dir))
    expect(a.config).toMatchObject({ r: 2, loraAlpha: 16, useRslora: true, targetModules: ["o_proj"] })
    expect(loraScale(a.config)).toBeCloseTo(16 / Math.SQRT2, 12)
  })

  it("refuses adapter options that change the math, naming the field", () => {
    const model = base(tinyLlama())
    const dir = path.join(tmp(), "a")
    run(writeAdapter(dir, randomAdapter(model, loraConfig(["q_proj"]))))
    const file = path.join(dir, "adapter_config.json")
    const good = JSON.parse(fs.readFileSync(file, "utf8"))
    for (const [field, value] of [["peft_type", "PREFIX_TUNING"], ["use_dora", true], ["bias", "all"], ["rank_pattern", { q_proj: 4 }], ["target_modules", ".*q_proj"], ["modules_to_save", ["lm_head"]]] as const) {
      fs.writeFileSync(file, JSON.stringify({ ...good, [field]: value }))
      const e = failure(readAdapter(dir)) as PeftError
      expect(e.field).toBe(field)
      expect(e.message).toMatch(new RegExp(`adapter_config\\.json: ${field}: unsupported`))
    }
    fs.writeFileSync(file, JSON.stringify({ ...good, r: "two" }))
    expect(failure(readAdapter(dir)).message).toMatch(/adapter_config\.json: invalid config: .*r/)
  })

  it("names the file and tensor of a broken adapter", () => {
    const model = base(tinyLlama())
    const dir = path.join(tmp(), "a")
    const adapter = randomAdapter(model, loraConfig(["q_proj"]))
    run(writeAdapter(dir, adapter))
    // drop one lora_B
    const weights = path.join(dir, "adapter_model.safetensors")
    const c = run(readFile(weights))
    const kept = new Map([...c.tensors].filter(([k]) => k !== "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight").map(([k, t]) => [k, { ...t, data: t.data.slice() }]))
    fs.rmSync(dir, { recursive: true })
    run(writeAdapter(dir, { ...adapter, modules: new Map() }))
    run(writeFile(weights, kept))
    const e = failure(readAdapter(dir)) as PeftError
    expect(e.file).toBe(weights)
    expect(e.field).toBe("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight")
    expect(failure(readAdapter(tmp())).message).toMatch(/adapter_config\.json: missing/)
  })
})

describe("exporting a single-file adapter as a PEFT directory", () => {
  it("names the base model: the hub id of a hub cache directory, else the absolute path", () => {
    expect(baseModelName("/data/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/0123abcd")).toBe("Qwen/Qwen2.5-7B-Instruct")
    expect(baseModelName("/data/hub/models--meta-llama--Llama-3.1-8B-Instruct")).toBe("meta-llama/Llama-3.1-8B-Instruct")
    expect(baseModelName("/data/hub/models--gpt2/snapshots/x/")).toBe("gpt2")
    expect(baseModelName("models/tiny-chat")).toBe(path.resolve("models/tiny-chat"))
    expect(baseModelName("/data/models--x/snapshots/r/sub")).toBe("/data/models--x/snapshots/r/sub")
  })

  it("writes the adapter with base_model_name_or_path from the one model directory among the inputs", () => {
    const model = base(tinyLlama())
    const adapter = randomAdapter(model, loraConfig(["q_proj", "down_proj"], { baseModelNameOrPath: null }))
    const file = path.join(tmp(), "adapter.safetensors")
    run(writeFile(file, run(adapterTensors(adapter)), { [ADAPTER_CONFIG_METADATA]: JSON.stringify(adapterConfigJson(adapter.config)) }))
    const questions = path.join(tmp(), "questions.jsonl")
    fs.writeFileSync(questions, "{}\n")

    const out = path.join(tmp(), "exported")
    expect(run(exportAdapter(file, out, { model, questions })).baseModelNameOrPath).toBe(path.resolve(model))
    expect(JSON.parse(fs.readFileSync(path.join(out, "adapter_config.json"), "utf8")).base_model_name_or_path).toBe(path.resolve(model))
    const back = run(readAdapter(out))
    expect([...back.modules.keys()].sort()).toEqual([...adapter.modules.keys()].sort())
    for (const [m, { a, b }] of adapter.modules) {
      expect(Buffer.compare(back.modules.get(m)!.a.data, a.data)).toBe(0)
      expect(Buffer.compare(back.modules.get(m)!.b.data, b.data)).toBe(0)
    }
    // no model among the inputs: the adapter's own (here none); two: refused
    expect(run(exportAdapter(file, path.join(tmp(), "x"), { questions })).baseModelNameOrPath).toBe(null)
    expect(failure(exportAdapter(file, path.join(tmp(), "y"), { model, other: base(tinyLlama()) })).message).toContain("several model directories among the training inputs (model: ")

    const plain = path.join(tmp(), "plain.safetensors")
    run(writeFile(plain, run(adapterTensors(adapter))))
    expect(failure(exportAdapter(plain, path.join(tmp(), "z"), {})).message).toBe(`${plain}: __metadata__.adapter_config: missing: not a LoRA adapter`)
  })
})

describe("LoRA targets", () => {
  it("selects modules by PEFT's suffix rule, with Linear-convention sizes", () => {
    const llama = run(loadCheckpoint(base(tinyLlama())))
    const t = run(loraTargets(llama, ["k_proj", "down_proj"]))
    expect(t.map((x) => x.module)).toEqual(["model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj"])
    expect(t[0]).toMatchObject({ inFeatures: 16, outFeatures: 8 })
    const gpt2 = run(loadCheckpoint(base(tinyGpt2())))
    expect(run(loraTargets(gpt2, ["c_attn"]))[0]).toMatchObject({ module: "transformer.h.0.attn.c_attn", inFeatures: 16, outFeatures: 48 })
    const e = failure(loraTargets(gpt2, ["q_proj"])) as PeftError
    expect(e.field).toBe("target_modules")
    expect(e.message).toMatch(/"q_proj" matches no linear layer of this GPT2LMHeadModel \(e\.g\. c_attn, c_proj, c_fc\)/)
  })
})

describe("GPT-2 saved without the transformer. prefix (openai-community/gpt2)", () => {
  it("gets PEFT's module names, so one adapter file fits both namings and merges to the same model", () => {
    const prefixed = base(tinyGpt2())
    const bare = tmp()
    for (const f of fs.readdirSync(prefixed)) fs.copyFileSync(path.join(prefixed, f), path.join(bare, f))
    const file = path.join(bare, "model.safetensors")
    run(writeFile(file, new Map([...run(readFile(file)).tensors].map(([k, v]) => [k.replace(/^transformer\./, ""), { ...v, data: v.data.slice() }]))))
    expect(run(loadCheckpoint(bare)).weights.layers[0].attention).toMatchObject({ qkv: { weight: { name: "h.0.attn.c_attn.weight" } } })

    const targets = ["c_attn", "c_proj", "c_fc"]
    expect(run(loraTargets(run(loadCheckpoint(bare)), targets)).map((t) => t.module)).toEqual(run(loraTargets(run(loadCheckpoint(prefixed)), targets)).map((t) => t.module))
    const adapter = randomAdapter(bare, loraConfig(targets, { fanInFanOut: true }))
    const dir = path.join(tmp(), "adapter")
    run(writeAdapter(dir, adapter))
    const names = [...run(readFile(path.join(dir, "adapter_model.safetensors"))).tensors.keys()]
    // what PEFT's get_peft_model_state_dict gives for GPT2LMHeadModel
    expect(names).toContain("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight")
    expect(names).toContain("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight")
    expect(names).toContain("base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight")
    expect(names.filter((n) => !n.startsWith("base_model.model.transformer.h."))).toEqual([])

    const merged = (model: string) => {
      const out = path.join(tmp(), "merged")
      run(mergeLora(model, run(readAdapter(dir)), out))
      return referenceLogits(out, [5, 6, 7]).at(-1)!
    }
    const a = merged(bare)
    expect(Array.from(a)).toEqual(Array.from(merged(prefixed)))
    expect(Math.max(...a.map((v, i) => Math.abs(v - referenceLogits(bare, [5, 6, 7]).at(-1)![i])))).toBeGreaterThan(1e-6)
  })
})

describe("loraConfigFor", () => {
  it("sets fan_in_fan_out for GPT-2 Conv1D targets only, and validates targets and rank", () => {
    const gpt2 = run(loadCheckpoint(base(tinyGpt2())))
    expect(run(loraConfigFor(gpt2, { r: 4, loraAlpha: 8, targetModules: ["c_attn"] }))).toMatchObject({ fanInFanOut: true, r: 4, loraDropout: 0 })
    const llama = run(loadCheckpoint(base(tinyLlama())))
    expect(run(loraConfigFor(llama, { r: 4, loraAlpha: 8, targetModules: ["q_proj", "v_proj"], baseModelNameOrPath: "x" }))).toMatchObject({ fanInFanOut: false, baseModelNameOrPath: "x" })
    expect(failure(loraConfigFor(llama, { r: 0, loraAlpha: 8, targetModules: ["q_proj"] }))).toMatchObject({ field: "r" })
    expect(failure(loraConfigFor(llama, { r: 2, loraAlpha: 8, targetModules: ["c_attn"] }))).toMatchObject({ field: "target_modules" })
  })
})

describe("merging a LoRA into the base weights", () => {
  it("B = 0 leaves every weight byte-identical and the logits equal", () => {
    const model = base(tinyLlama())
    const out = path.join(tmp(), "merged")
    run(mergeLora(model, randomAdapter(model, loraConfig(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), true), out))
    expect(Buffer.compare(fs.readFileSync(path.join(model, "model.safetensors")), fs.readFileSync(path.join(out, "model.safetensors")))).toBe(0)
    expect(fs.readFileSync(path.join(out, "config.json"), "utf8")).toBe(fs.readFileSync(path.join(model, "config.json"), "utf8"))
    expect(Array.from(referenceLogits(out, [1, 2, 3])[2])).toEqual(Array.from(referenceLogits(model, [1, 2, 3])[2]))
  })

  const cases: Array<[string, ModelConfig, string[]]> = [
    ["llama", tinyLlama(), ["q_proj", "down_proj"]],
    ["gpt2 (Conv1D stored transposed)", tinyGpt2(), ["c_attn", "c_fc"]],
    ["gpt-neox", tinyGptNeox(), ["query_key_value", "dense_4h_to_h"]],
  ]
  for (const [what, config, targets] of cases)
    it(`${what}: merged W equals W + (alpha/r) B A in the Linear convention, other weights unchanged`, () => {
      const model = base(config)
      const adapter = randomAdapter(model, loraConfig(targets, { fanInFanOut: config.family === "gpt2" }))
      const out = path.join(tmp(), "merged")
      run(mergeLora(model, adapter, out))
      const before = run(loadCheckpoint(model))
      const after = run(loadCheckpoint(out))
      const scale = 4 / 2
      const targetSet = run(loraTargets(before, targets))
      for (const t of targetSet) {
        const lora = adapter.modules.get(t.module)!
        const a = new Float32Array(lora.a.data.slice().buffer)
        const b = new Float32Array(lora.b.data.slice().buffer)
        const w0 = run(readWeightFloat64(t.weight)).values
        const mergedRef = run(loraTargets(after, [t.module.split(".").at(-1)!])).find((x) => x.module === t.module)!.weight
        const w1 = run(readWeightFloat64(mergedRef)).values
        for (let o = 0; o < t.outFeatures; o++)
          for (let i = 0; i < t.inFeatures; i++) {
            let ba = 0
            for (let k = 0; k < 2; k++) ba += b[o * 2 + k] * a[k * t.inFeatures + i]
            // float32 storage of the merged value: relative rounding 2^-24
            expect(Math.abs(w1[o * t.inFeatures + i] - (w0[o * t.inFeatures + i] + scale * ba))).toBeLessThanOrEqual(Math.abs(w0[o * t.inFeatures + i] + scale * ba) * 2 ** -23 + 1e-12)
          }
      }
      const untouched = before.weights.layers[0].postAttentionNorm.weight
      expect(Array.from(run(readWeightFloat64(untouched)).values)).toEqual(Array.from(run(readWeightFloat64(after.weights.layers[0].postAttentionNorm.weight)).values))
      const l0 = referenceLogits(model, [5, 6, 7]).at(-1)!
      const l1 = referenceLogits(out, [5, 6, 7]).at(-1)!
      expect(Math.max(...l0.map((v, i) => Math.abs(v - l1[i])))).toBeGreaterThan(1e-6)
    })

  it("keeps a sharded base's shard names and index, and keeps bf16 storage", () => {
    const model = base(tinyLlama(), { seed: 2, dtype: "BF16", maxShardBytes: 4000 })
    const out = path.join(tmp(), "merged")
    run(mergeLora(model, randomAdapter(model, loraConfig(["up_proj"])), out))
    const names = (d: string) => fs.readdirSync(d).sort()
    expect(names(out)).toEqual(names(model))
    const merged = run(loadCheckpoint(out))
    const mlp = merged.weights.layers[1].mlp
    expect(mlp.kind === "gated" && mlp.up.weight.dtype).toBe("BF16")
  })

  it("refuses an adapter module the base model does not have, or of the wrong size", () => {
    const model = base(tinyLlama())
    const other = base(tinyLlama({ hiddenSize: 8, numHeads: 2 }))
    const e = failure(mergeLora(model, randomAdapter(other, loraConfig(["q_proj"])), path.join(tmp(), "m"))) as PeftError
    expect(e.field).toBe("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    expect(e.message).toMatch(/do not fit model\.layers\.0\.self_attn\.q_proj\.weight \(in 16, out 16\)/)
    const gpt = randomAdapter(base(tinyGpt2()), loraConfig(["c_fc"]))
    expect(failure(mergeLora(model, gpt, path.join(tmp(), "m"))).message).toMatch(/module transformer\.h\.0\.mlp\.c_fc is not a linear layer of the base model/)
  })
})
