// Qwen3, Phi-3 and the rope scalings yarn / dynamic / longrope end to end:
// - published config.json contents parse to the expected normalized config (rope_scaling and the
//   transformers-5 rope_parameters alike), with transformers' derived attention factors, and
//   write back to a config.json that parses to the same config; what is not implemented is
//   refused naming the field;
// - the ONNX forward of random tiny checkpoints (real config.json field names and tensor names)
//   matches the float64 reference; rows of a left-padded batch equal the rows alone (dynamic and
//   longrope take the sequence length per row);
// - KV-cache greedy generation equals the reference's greedy continuation and the uncached path;
// - LoRA on Phi-3's fused qkv_proj / gate_up_proj (lora_B of the fused output size) equals the
//   checkpoint mergeLora writes (LoRA training on both: adapters.test.ts; the lora-train stage on
//   Phi-3: tests/baking/other-model.test.ts).
// Tolerance 1e-4 absolute on O(1) logits, as in forward.test.ts: float32 with reassociated sums
// is ~1e-6 relative per op away from float64, while a wrong split, norm axis, frequency or
// attention factor moves logits by > 1e-2.
import { Effect, Exit } from "effect"
import * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { initLora, loraAdapter, loraHook } from "../../src/models/adapters.ts"
import { type ModelConfig, modelConfigJson, parseModelConfig } from "../../src/models/checkpoint.ts"
import { buildForwardGraph, forwardNames } from "../../src/models/forward.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { tinyGpt2, tinyLlama, tinyPhi3, tinyQwen3, type WeightDType } from "../../src/models/init.ts"
import { loraConfigFor, loraScale, loraTargets, mergeLora } from "../../src/models/peft.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { referenceForward, referenceLogits, referenceModel } from "../reference/reference.ts"
import { expectClose, expectForwardMatchesReference, forwardSession, ids, loraInputs, randomCheckpoint, rowsOf, run, tempDir } from "./forward-helpers.ts"

const TOL = 1e-4
const parse = (json: unknown) => Effect.runSync(parseModelConfig("config.json", json))
const parseExit = (json: unknown) => Effect.runSyncExit(parseModelConfig("config.json", json))
const failureMessage = (exit: Exit.Exit<unknown, { message: string }>) => (Exit.isFailure(exit) ? String(exit.cause) : "succeeded")
const rope = (c: ModelConfig) => (c.positions.kind === "rope" ? c.positions : expect.unreachable("rope positions"))
/** parse(toConfigJson(c)) === c */
const expectRoundTrip = (c: ModelConfig) => expect(parse(Effect.runSync(modelConfigJson(c)))).toEqual(c)

// Qwen/Qwen3-0.6B config.json as published
const qwen3_06b = {
  architectures: ["Qwen3ForCausalLM"], attention_bias: false, attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645, head_dim: 128,
  hidden_act: "silu", hidden_size: 1024, initializer_range: 0.02, intermediate_size: 3072, max_position_embeddings: 40960, max_window_layers: 28,
  model_type: "qwen3", num_attention_heads: 16, num_hidden_layers: 28, num_key_value_heads: 8, rms_norm_eps: 1e-6, rope_scaling: null,
  rope_theta: 1000000, sliding_window: null, tie_word_embeddings: true, torch_dtype: "bfloat16", transformers_version: "4.51.0", use_cache: true,
  use_sliding_window: false, vocab_size: 151936,
}
// Qwen/Qwen2.5-7B-Instruct config.json with the YaRN block its model card gives for 128k contexts
const qwen25_7b_yarn = {
  architectures: ["Qwen2ForCausalLM"], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645, hidden_act: "silu", hidden_size: 3584,
  initializer_range: 0.02, intermediate_size: 18944, max_position_embeddings: 32768, max_window_layers: 28, model_type: "qwen2", num_attention_heads: 28,
  num_hidden_layers: 28, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_theta: 1000000.0, sliding_window: 131072, tie_word_embeddings: false,
  torch_dtype: "bfloat16", transformers_version: "4.43.1", use_cache: true, use_sliding_window: false, vocab_size: 152064,
  rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: "yarn" },
}
// microsoft/Phi-3-mini-128k-instruct config.json (the 48 short/long factors shortened to a ramp)
const factors = (from: number, to: number) => Array.from({ length: 48 }, (_, i) => from + ((to - from) * i) / 47)
const phi3_mini_128k = {
  architectures: ["Phi3ForCausalLM"], attention_bias: false, attention_dropout: 0.0, bos_token_id: 1, embd_pdrop: 0.0, eos_token_id: 32000,
  hidden_act: "silu", hidden_size: 3072, initializer_range: 0.02, intermediate_size: 8192, max_position_embeddings: 131072, model_type: "phi3",
  num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 32, original_max_position_embeddings: 4096, pad_token_id: 32000,
  resid_pdrop: 0.0, rms_norm_eps: 1e-5, rope_scaling: { long_factor: factors(1, 60), short_factor: factors(1, 2), type: "longrope" }, rope_theta: 10000.0,
  sliding_window: 262144, tie_word_embeddings: false, torch_dtype: "bfloat16", transformers_version: "4.40.2", use_cache: true, vocab_size: 32064,
}

describe("published configs", () => {
  it("Qwen3-0.6B: head_dim 128 with hidden 1024 and 16 heads, tied, no qkv bias; q_norm/k_norm expected per layer", () => {
    const c = parse(qwen3_06b)
    expect(c).toMatchObject({ family: "llama", hfArchitecture: "Qwen3ForCausalLM", headDim: 128, numHeads: 16, numKvHeads: 8, tiedEmbeddings: true })
    expect(c.bias).toEqual({ qkv: false, o: false, mlp: false, norm: false })
    expect(rope(c)).toEqual({ kind: "rope", theta: 1000000, rotaryDim: 128, scaling: { kind: "none" } })
    expectRoundTrip(c)
    // Qwen3Config's head_dim defaults to 128, not hidden / heads
    const { head_dim: _, ...noHeadDim } = qwen3_06b
    expect(parse(noHeadDim).headDim).toBe(128)
  })

  it("Qwen2.5 yarn (rope_scaling, transformers 4) and the same in rope_parameters (transformers 5)", () => {
    const c = parse(qwen25_7b_yarn)
    const yarn = { kind: "yarn", factor: 4, originalMaxPositions: 32768, betaFast: 32, betaSlow: 1, truncate: true, attentionFactor: 0.1 * Math.log(4) + 1 }
    expect(rope(c)).toEqual({ kind: "rope", theta: 1000000, rotaryDim: 128, scaling: yarn })
    expectRoundTrip(c)
    const { rope_scaling: _, rope_theta: __, ...rest } = qwen25_7b_yarn
    const v5 = parse({ ...rest, rope_parameters: { rope_type: "yarn", factor: 4.0, original_max_position_embeddings: 32768, rope_theta: 1000000.0 } })
    expect(v5).toEqual(c)
  })

  it("yarn attention factor: explicit attention_factor wins, else mscale / mscale_all_dim, else 0.1 ln(factor) + 1; no factor means max / original", () => {
    const yarnOf = (scaling: Record<string, unknown>, extra: Record<string, unknown> = {}) => {
      const s = rope(parse({ ...qwen25_7b_yarn, ...extra, rope_scaling: { type: "yarn", ...scaling } })).scaling
      return s.kind === "yarn" ? s : expect.unreachable("yarn")
    }
    expect(yarnOf({ factor: 4, attention_factor: 1.5 }).attentionFactor).toBe(1.5)
    // DeepSeek-V3 style: mscale = mscale_all_dim gives 1
    expect(yarnOf({ factor: 40, mscale: 1, mscale_all_dim: 1, original_max_position_embeddings: 4096 }).attentionFactor).toBe(1)
    expect(yarnOf({ factor: 40, mscale: 2, mscale_all_dim: 1 }).attentionFactor).toBeCloseTo((0.2 * Math.log(40) + 1) / (0.1 * Math.log(40) + 1), 14)
    expect(yarnOf({ original_max_position_embeddings: 8192 }).factor).toBe(4) // 32768 / 8192
    expect(yarnOf({ factor: 2, beta_fast: 16, beta_slow: 2, truncate: false })).toMatchObject({ betaFast: 16, betaSlow: 2, truncate: false, originalMaxPositions: 32768 })
  })

  it("Phi-3-mini-128k: longrope with the top-level original_max_position_embeddings; attention factor sqrt(1 + ln 32 / ln 4096)", () => {
    const c = parse(phi3_mini_128k)
    expect(c).toMatchObject({ family: "phi3", headDim: 96, numKvHeads: 32, maxPositions: 131072, tiedEmbeddings: false, eosTokenIds: [32000], padTokenId: 32000 })
    expect(rope(c).scaling).toEqual({
      kind: "longrope",
      shortFactor: factors(1, 2),
      longFactor: factors(1, 60),
      originalMaxPositions: 4096,
      attentionFactor: Math.sqrt(1 + Math.log(32) / Math.log(4096)),
    })
    expectRoundTrip(c)
    // early Phi-3 configs call it "su"; Phi3Config renames it to longrope
    expect(parse({ ...phi3_mini_128k, rope_scaling: { ...phi3_mini_128k.rope_scaling, type: "su" } })).toEqual(c)
    // Phi-4-mini style partial rotary
    const partial = parse({ ...phi3_mini_128k, partial_rotary_factor: 0.75, rope_scaling: null })
    expect(rope(partial)).toMatchObject({ rotaryDim: 72, scaling: { kind: "none" } })
    expectRoundTrip(partial)
  })

  it("dynamic NTK keeps max_position_embeddings as its threshold", () => {
    const c = parse({ ...qwen3_06b, rope_scaling: { rope_type: "dynamic", factor: 2 } })
    expect(rope(c).scaling).toEqual({ kind: "dynamic", factor: 2, maxPositions: 40960 })
    expectRoundTrip(c)
  })

  it("Phi-3-mini-4k windows every layer at its sliding_window", () => {
    const c = parse({ ...phi3_mini_128k, max_position_embeddings: 4096, sliding_window: 2047, rope_scaling: null })
    expect(c.slidingWindow).toEqual({ size: 2047, layers: Array.from({ length: c.numLayers }, () => true) })
    expectRoundTrip(c)
  })

  it("refusals name the field: longrope factors of the wrong length, unknown rope types and activations", () => {
    expect(failureMessage(parseExit({ ...phi3_mini_128k, rope_scaling: { ...phi3_mini_128k.rope_scaling, short_factor: [1, 2] } }))).toMatch(
      /rope_scaling\.short_factor: has 2 entries; the rotary dimension 96 needs 48/,
    )
    expect(failureMessage(parseExit({ ...phi3_mini_128k, original_max_position_embeddings: undefined }))).toMatch(/rope_scaling\.original_max_position_embeddings: missing/)
    expect(failureMessage(parseExit({ ...qwen3_06b, rope_scaling: { rope_type: "mrope", factor: 2 } }))).toMatch(/rope_scaling\.rope_type: unsupported: "mrope"/)
    expect(failureMessage(parseExit({ ...qwen3_06b, rope_scaling: { rope_type: "dynamic" } }))).toMatch(/rope_scaling\.factor: missing \(required by rope_type dynamic\)/)
    const gpt2 = Effect.runSync(modelConfigJson(tinyGpt2()))
    expect(failureMessage(parseExit({ ...gpt2, activation_function: "relu6" }))).toMatch(/activation_function: unsupported: activation "relu6"/)
  })

  it("ACT2FN aliases: gelu_fast and gelu_accurate are the tanh GELU, gelu_python the exact one, swish is silu; relu", () => {
    const gpt2 = Effect.runSync(modelConfigJson(tinyGpt2()))
    const act = (name: string) => parse({ ...gpt2, activation_function: name }).activation
    expect(["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"].map(act)).toEqual(Array(4).fill("gelu_tanh"))
    expect(["gelu", "gelu_python"].map(act)).toEqual(["gelu_erf", "gelu_erf"])
    expect(act("relu")).toBe("relu")
    expectRoundTrip(parse({ ...gpt2, activation_function: "relu" }))
    expect(parse({ ...phi3_mini_128k, hidden_act: "swish" }).activation).toBe("silu")
  })
})

const seq = [1, 7, 3, 60, 12, 5, 9, 33]
const yarnScaling = { kind: "yarn" as const, factor: 4, originalMaxPositions: 16, betaFast: 32, betaSlow: 1, truncate: true, attentionFactor: 0.1 * Math.log(4) + 1 }
// theta 100 with rotaryDim 4 (frequencies [1, 0.1]) so that rescaling the second pair moves the
// angles over `seq` by O(0.1-1) rad; sequence length 8 crosses the dynamic and longrope thresholds (4)
const longrope = { kind: "longrope" as const, shortFactor: [1, 1.5], longFactor: [2, 5], originalMaxPositions: 4, attentionFactor: Math.sqrt(1 + Math.log(16) / Math.log(4)) }
const dynamicLlama = tinyLlama({ maxPositions: 4, positions: { kind: "rope", theta: 100, rotaryDim: 4, scaling: { kind: "dynamic", factor: 3, maxPositions: 4 } } })
const longropePhi3 = tinyPhi3({ headDim: 8, numHeads: 2, numKvHeads: 2, positions: { kind: "rope", theta: 100, rotaryDim: 4, scaling: longrope } })
const cases: Array<[string, ModelConfig, WeightDType]> = [
  ["qwen3 (q/k norm, head_dim 8 != hidden/heads, tied)", tinyQwen3(), "F32"],
  ["qwen3 (bf16, untied, GQA 4:1)", tinyQwen3({ numKvHeads: 1, tiedEmbeddings: false }), "BF16"],
  ["qwen2 (qkv bias) with yarn", tinyLlama({ hfArchitecture: "Qwen2ForCausalLM", bias: { qkv: true, o: false, mlp: false, norm: false }, positions: { kind: "rope", theta: 100, rotaryDim: 4, scaling: yarnScaling } }), "F32"],
  ["llama with dynamic NTK past max positions", dynamicLlama, "F32"],
  ["phi3 (fused qkv_proj, gate_up_proj)", tinyPhi3(), "F32"],
  ["gpt2 with relu (ACT2FN \"relu\")", tinyGpt2({ activation: "relu" }), "F32"],
  ["phi3 longrope past original max positions, partial rotary", longropePhi3, "BF16"],
]

describe("forward graph vs float64 reference", () => {
  for (const [name, config, dtype] of cases)
    it(name, () => expectForwardMatchesReference(config, dtype, seq, TOL))

  it("dynamic and longrope take the sequence length per row: a left-padded short row equals the row alone", async () => {
    for (const config of [dynamicLlama, longropePhi3]) {
      const ckpt = await randomCheckpoint(config)
      const s = await forwardSession(ckpt)
      const short = seq.slice(0, 3) // under the threshold, while the full row is past it
      const out = await run(s, {
        [forwardNames.ids]: ids([seq, [0, 0, 0, 0, 0, ...short]]),
        [forwardNames.mask]: tensor("int64", [2, 8], [...seq.map(() => 1), 0, 0, 0, 0, 0, 1, 1, 1]),
      })
      expectClose(rowsOf(out.logits, 0), referenceLogits(ckpt.dir, seq), TOL)
      expectClose(rowsOf(out.logits, 1, 5), referenceLogits(ckpt.dir, short), TOL)
    }
  })
})

describe("KV cache with sequence-length-dependent rope (dynamic, longrope)", () => {
  it("cached keys keep the rotation of the forward that computed them, as in transformers; a full recompute differs", async () => {
    for (const config of [dynamicLlama, longropePhi3]) {
      const ckpt = await randomCheckpoint(config)
      const model = referenceModel(ckpt)
      const s = await forwardSession(ckpt, { cache: true })
      const c = ckpt.config
      let past: Record<string, ort.Tensor> = {}
      for (let l = 0; l < c.numLayers; l++)
        for (const name of [forwardNames.pastKey(l), forwardNames.pastValue(l)]) past[name] = tensor("float32", [1, c.numKvHeads, 0, c.headDim], [])
      // prefill 4 tokens (at the threshold), then decode 4 more one by one (lengths 5..8)
      const lengths: number[] = []
      for (const [from, to] of [[0, 4], [4, 5], [5, 6], [6, 7], [7, 8]]) {
        const out = await run(s, { [forwardNames.ids]: ids([seq.slice(from, to)]), [forwardNames.mask]: tensor("int64", [1, to], Array(to).fill(1)), ...past })
        lengths.push(...Array(to - from).fill(to))
        expectClose(rowsOf(out.logits, 0), referenceForward(model, seq.slice(0, to), lengths).slice(from), TOL)
        past = {}
        for (let l = 0; l < c.numLayers; l++) {
          past[forwardNames.pastKey(l)] = out[forwardNames.presentKey(l)]
          past[forwardNames.pastValue(l)] = out[forwardNames.presentValue(l)]
        }
      }
      const cached = referenceForward(model, seq, lengths).at(-1)!
      const recomputed = referenceForward(model, seq).at(-1)!
      expect(Math.max(...Array.from(cached, (v, i) => Math.abs(v - recomputed[i])))).toBeGreaterThan(1e-2)
    }
  })
})

describe("generation past max_position_embeddings with dynamic NTK", () => {
  it("is allowed up to max x factor and follows the reference decoded as the cache computed it; longer is refused", async () => {
    const ckpt = await randomCheckpoint(dynamicLlama, { std: 0.3 }) // max_position_embeddings 4, factor 3
    const model = referenceModel(ckpt)
    const gen = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-families-dynamic-") }))
    const prompt = [1, 5, 9]
    const [out] = await Effect.runPromise(gen.generate([{ prompt, maxNewTokens: 9, temperature: 0, stopTokenIds: [] }]))
    expect(out.tokens).toHaveLength(9)
    const sequence = [...prompt]
    for (const token of out.tokens) {
      // the prompt is rotated at its own length; each decoded position at the length of its step
      const logits = referenceForward(model, sequence, sequence.map((_, t) => Math.max(prompt.length, t + 1))).at(-1)!
      expect(Math.max(...logits) - logits[token]).toBeLessThan(TOL)
      sequence.push(token)
    }
    // the in-graph decode loop (ONNX Loop, 3 steps per run) computes the same lengths
    const looped = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-families-dynamic-loop-"), stepsPerRun: 3 }))
    const [again] = await Effect.runPromise(looped.generate([{ prompt, maxNewTokens: 9, temperature: 0, stopTokenIds: [] }]))
    expect(again.tokens).toEqual(out.tokens)
    const exit = await Effect.runPromiseExit(gen.generate([{ prompt, maxNewTokens: 10, temperature: 0 }]))
    expect(failureMessage(exit)).toMatch(/exceeds the model's context length 12 \(max_position_embeddings 4 x dynamic rope factor 3\)/)
  })
})

describe("KV-cache generation", () => {
  for (const [name, config] of [
    ["qwen3", tinyQwen3()],
    ["phi3", tinyPhi3()],
  ] as const)
    it(`${name}: greedy generation with the cache is the reference's greedy continuation and the uncached result`, async () => {
      // std 0.3: peaked next-token distributions, so greedy choices are not near-ties
      const ckpt = await randomCheckpoint(config, { std: 0.3 })
      const gen = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-families-gen-") }))
      const prompts = [[1, 5, 9], [1, 20, 33, 7, 41]]
      const requests = prompts.map((prompt) => ({ prompt, maxNewTokens: 6, temperature: 0, stopTokenIds: [] }))
      const cached = await Effect.runPromise(gen.generate(requests))
      const recomputed = await Effect.runPromise(gen.generate(requests, { cache: false }))
      expect(cached.map((g) => g.tokens)).toEqual(recomputed.map((g) => g.tokens))
      cached.forEach((g, i) => {
        const sequence = [...prompts[i]]
        for (const token of g.tokens) {
          const logits = referenceLogits(ckpt.dir, sequence).at(-1)!
          expect(Math.max(...logits) - logits[token]).toBeLessThan(TOL)
          sequence.push(token)
        }
      })
    })
})

describe("LoRA", () => {
  it("phi3: an adapter on the fused qkv_proj and gate_up_proj (lora_B of the fused size) equals the mergeLora checkpoint", async () => {
    const config = tinyPhi3()
    const ckpt = await randomCheckpoint(config)
    const targetModules = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    const r = 2
    const targets = await Effect.runPromise(loraTargets(ckpt, targetModules))
    const { numHeads: nh, numKvHeads: nkv, headDim: hd, intermediateSize: m, hiddenSize: h } = config
    expect(targets.filter((t) => t.module.startsWith("model.layers.0.")).map((t) => [t.module.split(".").at(-1), t.inFeatures, t.outFeatures])).toEqual([
      ["qkv_proj", h, (nh + 2 * nkv) * hd],
      ["o_proj", nh * hd, h],
      ["gate_up_proj", h, 2 * m],
      ["down_proj", m, h],
    ])
    const lc = await Effect.runPromise(loraConfigFor(ckpt, { r, loraAlpha: 4, targetModules }))
    const session = await Effect.runPromise(
      Effect.gen(function* () {
        const placement = yield* placeWeights(ckpt, tempDir("pipe-phi3-lora-"))
        const g = new Graph("lora")
        buildForwardGraph(g, ckpt, placement, { linearHook: loraHook(loraInputs(g, targets, r), loraScale(lc)) })
        return yield* createSession(yield* writeGraph(g, placement, "lora"))
      }),
    )
    // random A and B (PEFT initializes B = 0, which would make the comparison vacuous)
    const values = Object.fromEntries(Object.entries(initLora(targets, r, 5)).map(([k, v], i) => [k, Float32Array.from(v.data, (_, j) => Math.sin(7 * j + i) * 0.3)]))
    const feeds: Record<string, ort.Tensor> = { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) }
    for (const [k, v] of Object.entries(initLora(targets, r, 5))) feeds[k] = tensor("float32", v.shape, values[k])
    const adapted = rowsOf((await run(session, feeds)).logits, 0)
    const adapter = loraAdapter(lc, targets, values)
    expect(adapter.modules.get("model.layers.0.self_attn.qkv_proj")!.b.shape).toEqual([(nh + 2 * nkv) * hd, r])
    expect(adapter.modules.get("model.layers.1.mlp.gate_up_proj")!.b.shape).toEqual([2 * m, r])
    const merged = tempDir("pipe-phi3-merged-")
    await Effect.runPromise(mergeLora(ckpt.dir, adapter, merged))
    const want = referenceLogits(merged, seq)
    expectClose(adapted, want, TOL)
    const base = referenceLogits(ckpt.dir, seq)
    expect(Math.max(...want.flatMap((w, i) => Array.from(w, (x, j) => Math.abs(x - base[i][j]))))).toBeGreaterThan(1e-2)
  })
})
