// Gemma 2 and Gemma 3 (text) on random tiny checkpoints of the real layout, against the float64
// reference: config.json of published models read as transformers reads them (also as the whole
// config of a sharded bf16 checkpoint), the forward (f32 and bf16 weights, left padding), KV-cache
// decode and generation across local/global layers, scoring, LoRA targets and adapter names, and
// a LoRA training step whose loss includes the final logit soft-capping.
// Tolerance 1e-4 absolute on O(1) logits (float32 graph vs float64 reference, as forward.test.ts):
// the weights are the same numbers in both (bf16 is exact in float32); the difference is float32
// rounding in ~10 matmuls, norms and softmaxes.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { crossEntropy, Graph } from "../../src/graph/index.ts"
import { buildTrainStep } from "../../src/graph/optim.ts"
import { initLora, loraAdapter, loraFromParams, loraHook, loraParamSpecs } from "../../src/models/adapters.ts"
import { type Checkpoint, loadCheckpoint, type ModelConfig, parseModelConfig } from "../../src/models/checkpoint.ts"
import { decoder, forwardNames, gemmaEmbedScale, logitsOf, tokenEmbeddings } from "../../src/models/forward.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { tinyGemma2, tinyGemma3 } from "../../src/models/init.ts"
import { adapterTensors, loraConfigFor, loraTargets } from "../../src/models/peft.ts"
import { buildScoringGraph, scoringNames } from "../../src/models/scoring.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { initTrainState, trainStep } from "../../src/runtime/train.ts"
import { referenceLogits, roundToDtype } from "../reference/reference.ts"
import { expectClose, expectPaddedForwardMatchesReference, forwardSession, ids, incrementalLogits, randomCheckpoint, rowsOf, run, tempDir } from "./forward-helpers.ts"

const TOL = 1e-4
const seq = [2, 7, 3, 60, 12, 5, 33, 41, 8, 19, 22]
const parse = (json: unknown) => Effect.runSync(parseModelConfig("config.json", json))

// hidden 24: sqrt(24) = 4.899 is not a bf16 number, so the embedding scale's rounding shows.
// Gemma 2 with small caps (attention 1.5, logits 2) so tanh is far from the identity.
const gemma2 = tinyGemma2({ hiddenSize: 24, gemma: { ...tinyGemma2().gemma!, attnLogitSoftcap: 1.5, finalLogitSoftcap: 2 } })
const gemma3 = tinyGemma3({ hiddenSize: 24 })
const models: Array<[string, ModelConfig]> = [
  ["Gemma 2", gemma2],
  ["Gemma 3", gemma3],
]

describe("Gemma config.json", () => {
  it("gemma-2-2b: alternating local (4096) and global layers from layer 0, soft-capping, head_dim 256", () => {
    const c = parse({
      architectures: ["Gemma2ForCausalLM"], attention_bias: false, attention_dropout: 0.0, attn_logit_softcapping: 50.0, bos_token_id: 2,
      cache_implementation: "hybrid", eos_token_id: [1, 107], final_logit_softcapping: 30.0, head_dim: 256, hidden_act: "gelu_pytorch_tanh",
      hidden_activation: "gelu_pytorch_tanh", hidden_size: 2304, initializer_range: 0.02, intermediate_size: 9216, max_position_embeddings: 8192,
      model_type: "gemma2", num_attention_heads: 8, num_hidden_layers: 26, num_key_value_heads: 4, pad_token_id: 0, query_pre_attn_scalar: 256,
      rms_norm_eps: 1e-06, rope_theta: 10000.0, sliding_window: 4096, torch_dtype: "float32", transformers_version: "4.42.4", use_cache: true, vocab_size: 256000,
    })
    expect(c).toMatchObject({ family: "gemma", headDim: 256, numKvHeads: 4, activation: "gelu_tanh", tiedEmbeddings: true, eosTokenIds: [1, 107], padTokenId: 0 })
    expect(c.slidingWindow).toEqual({ size: 4096, layers: Array.from({ length: 26 }, (_, i) => i % 2 === 0) })
    expect(c.gemma).toEqual({ embedScale: "all_inputs", queryPreAttnScalar: 256, attnLogitSoftcap: 50, finalLogitSoftcap: 30, localPositions: undefined })
    expect(c.positions).toEqual({ kind: "rope", theta: 10000, rotaryDim: 256, scaling: { kind: "none" } })
  })

  it("gemma-3-1b-it: every 6th layer global, local RoPE base 10000, global 1e6; Gemma 3 4B's linear scaling on global layers only", () => {
    const json = {
      architectures: ["Gemma3ForCausalLM"], attention_bias: false, attention_dropout: 0.0, attn_logit_softcapping: null, bos_token_id: 2,
      cache_implementation: "hybrid", eos_token_id: [1, 106], final_logit_softcapping: null, head_dim: 256, hidden_activation: "gelu_pytorch_tanh",
      hidden_size: 1152, initializer_range: 0.02, intermediate_size: 6912, max_position_embeddings: 32768, model_type: "gemma3_text",
      num_attention_heads: 4, num_hidden_layers: 26, num_key_value_heads: 1, pad_token_id: 0, query_pre_attn_scalar: 256, rms_norm_eps: 1e-06,
      rope_local_base_freq: 10000, rope_scaling: null, rope_theta: 1000000, sliding_window: 512, sliding_window_pattern: 6,
      torch_dtype: "bfloat16", transformers_version: "4.50.0.dev0", use_cache: true, vocab_size: 262144,
    }
    const c = parse(json)
    expect(c.slidingWindow).toEqual({ size: 512, layers: Array.from({ length: 26 }, (_, i) => (i + 1) % 6 !== 0) })
    expect(c.gemma).toEqual({
      embedScale: "token_embeddings",
      queryPreAttnScalar: 256,
      attnLogitSoftcap: undefined,
      finalLogitSoftcap: undefined,
      localPositions: { kind: "rope", theta: 10000, rotaryDim: 256, scaling: { kind: "none" } },
    })
    expect(c.positions).toEqual({ kind: "rope", theta: 1000000, rotaryDim: 256, scaling: { kind: "none" } })
    const scaled = parse({ ...json, rope_scaling: { factor: 8.0, rope_type: "linear" } })
    expect(scaled.positions).toMatchObject({ theta: 1000000, scaling: { kind: "linear", factor: 8 } })
    expect(scaled.gemma?.localPositions).toEqual(c.gemma?.localPositions)
    // layer_types (newer configs) wins over the pattern; transformers 5 rope_parameters per layer type
    const { sliding_window_pattern: _, rope_local_base_freq: __, rope_theta: ___, rope_scaling: ____, ...bare } = json
    const newer = parse({
      ...bare,
      num_hidden_layers: 3,
      layer_types: ["full_attention", "sliding_attention", "full_attention"],
      rope_parameters: { full_attention: { rope_type: "linear", factor: 8, rope_theta: 1000000 }, sliding_attention: { rope_type: "default", rope_theta: 10000 } },
    })
    expect(newer.slidingWindow?.layers).toEqual([false, true, false])
    expect(newer.positions).toMatchObject({ theta: 1000000, scaling: { kind: "linear", factor: 8 } })
    expect(newer.gemma?.localPositions).toMatchObject({ theta: 10000, scaling: { kind: "none" } })
  })

  it("refuses what it does not compute, naming the field", () => {
    const base = { architectures: ["Gemma3ForCausalLM"], hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 2, vocab_size: 10 }
    const fail = (json: unknown) => Effect.runSync(Effect.flip(parseModelConfig("m/config.json", json)))
    expect(fail({ ...base, use_bidirectional_attention: true })).toMatchObject({ _tag: "UnsupportedModelError", field: "use_bidirectional_attention" })
    expect(fail({ ...base, layer_types: ["chunked_attention", "full_attention"] })).toMatchObject({ _tag: "UnsupportedModelError", field: "layer_types.0" })
    expect(fail({ ...base, layer_types: ["full_attention"] })).toMatchObject({ _tag: "CheckpointError", field: "layer_types" })
    expect(fail({ ...base, sliding_window: null })).toMatchObject({ _tag: "CheckpointError", field: "sliding_window" })
    expect(fail({ ...base, rope_scaling: { rope_type: "mrope", factor: 2 } })).toMatchObject({ _tag: "UnsupportedModelError", field: "rope_scaling.rope_type" })
  })

  it("the embedding scale is sqrt(hidden_size) rounded to the weight dtype, as HF's normalizer", () => {
    expect(gemmaEmbedScale(3072, "BF16")).toBe(55.5) // transformers' comment: sqrt(3072) = 55.4256 becomes 55.5
    expect(gemmaEmbedScale(2304, "BF16")).toBe(48)
    expect(gemmaEmbedScale(1152, "BF16")).toBe(34) // 33.94
    expect(gemmaEmbedScale(24, "F32")).toBe(Math.fround(Math.sqrt(24)))
    for (const h of [24, 640, 1152, 2560, 3072, 3840, 5376])
      for (const d of ["BF16", "F16", "F32"] as const) expect(gemmaEmbedScale(h, d)).toBe(roundToDtype(Math.sqrt(h), d))
  })
})

describe("Gemma checkpoints with published config.json files (sizes shrunk)", () => {
  // every other key as published; the weights are random, bf16, in shards with an index
  const published: Array<[string, Record<string, unknown>]> = [
    [
      "gemma-2-2b",
      {
        architectures: ["Gemma2ForCausalLM"], attention_bias: false, attention_dropout: 0.0, attn_logit_softcapping: 50.0, bos_token_id: 2,
        cache_implementation: "hybrid", eos_token_id: [1, 107], final_logit_softcapping: 30.0, head_dim: 8, hidden_act: "gelu_pytorch_tanh",
        hidden_activation: "gelu_pytorch_tanh", hidden_size: 24, initializer_range: 0.02, intermediate_size: 48, max_position_embeddings: 8192,
        model_type: "gemma2", num_attention_heads: 4, num_hidden_layers: 4, num_key_value_heads: 2, pad_token_id: 0, query_pre_attn_scalar: 256,
        rms_norm_eps: 1e-06, rope_theta: 10000.0, sliding_window: 4, torch_dtype: "bfloat16", transformers_version: "4.42.4", use_cache: true, vocab_size: 64,
      },
    ],
    [
      "gemma-3-1b-it",
      {
        architectures: ["Gemma3ForCausalLM"], attention_bias: false, attention_dropout: 0.0, attn_logit_softcapping: null, bos_token_id: 2,
        cache_implementation: "hybrid", eos_token_id: [1, 106], final_logit_softcapping: null, head_dim: 8, hidden_activation: "gelu_pytorch_tanh",
        hidden_size: 24, initializer_range: 0.02, intermediate_size: 48, max_position_embeddings: 32768, model_type: "gemma3_text",
        num_attention_heads: 4, num_hidden_layers: 7, num_key_value_heads: 1, pad_token_id: 0, query_pre_attn_scalar: 256, rms_norm_eps: 1e-06,
        rope_local_base_freq: 10000, rope_scaling: null, rope_theta: 1000000, sliding_window: 4, sliding_window_pattern: 6,
        torch_dtype: "bfloat16", transformers_version: "4.50.0.dev0", use_cache: true, vocab_size: 64,
      },
    ],
  ]
  for (const [name, json] of published)
    it(`${name}: loads, reads every feature from the published keys, and matches the reference`, async () => {
      const config = parse(json)
      const ckpt = await randomCheckpoint(config, { dtype: "BF16", maxShardBytes: 8192 })
      fs.writeFileSync(path.join(ckpt.dir, "config.json"), JSON.stringify(json))
      const loaded = await Effect.runPromise(loadCheckpoint(ckpt.dir))
      expect(loaded.config).toEqual(config)
      expect(fs.existsSync(path.join(ckpt.dir, "model.safetensors.index.json"))).toBe(true)
      await expectPaddedForwardMatchesReference(loaded, seq, 6, TOL)
    })
})

const checkpoints = new Map<string, Checkpoint>()
const checkpoint = async (name: string, config: ModelConfig, dtype: "F32" | "BF16" = "F32") => {
  const key = `${name} ${dtype}`
  if (!checkpoints.has(key)) checkpoints.set(key, await randomCheckpoint(config, { dtype }))
  return checkpoints.get(key)!
}

describe("Gemma forward, decode and generation against the float64 reference", () => {
  for (const [name, config] of models) {
    for (const dtype of ["F32", "BF16"] as const)
      it(`${name} (${dtype}): forward equals the reference, alone and left-padded in a batch`, async () => {
        const ckpt = await checkpoint(name, config, dtype)
        const want = await expectPaddedForwardMatchesReference(ckpt, seq, 6, TOL)
        if (config.gemma?.finalLogitSoftcap !== undefined)
          for (const row of want) for (const v of row) expect(Math.abs(v)).toBeLessThan(config.gemma.finalLogitSoftcap)
      })

    it(`${name}: a sharded bf16 checkpoint (shards + model.safetensors.index.json) loads and equals the reference`, async () => {
      const ckpt = await randomCheckpoint(config, { dtype: "BF16", maxShardBytes: 4096 })
      expect(ckpt.tensorFiles.length).toBeGreaterThan(2)
      await expectPaddedForwardMatchesReference(ckpt, seq, 6, TOL)
    })

    it(`${name}: tokenEmbeddings fed as inputs_embeds give the same logits as the token ids (soft prompts see HF's convention)`, async () => {
      const ckpt = await checkpoint(name, config, "BF16")
      const session = await Effect.runPromise(
        Effect.gen(function* () {
          const placement = yield* placeWeights(ckpt, tempDir("pipe-gemma-embeds-"))
          const g = new Graph("gemma_embeds")
          const source = externalWeights(g, placement)
          const tokens = g.input(forwardNames.ids, "int64", ["batch", "seq"])
          const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
          const out = decoder(g, ckpt.config, ckpt.weights, source, { embeds: tokenEmbeddings(g, ckpt.config, ckpt.weights, source, tokens), mask })
          g.outputAs(forwardNames.logits, logitsOf(g, out, g.matMul(out.hidden, g.transpose(out.lmHead, [1, 0]))))
          return yield* createSession(yield* writeGraph(g, placement, "embeds"))
        }),
      )
      const out = await run(session, { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], Array(seq.length).fill(1)) })
      expectClose(rowsOf(out[forwardNames.logits], 0), referenceLogits(ckpt.dir, seq), TOL)
    })

    it(`${name}: KV-cache decode across local and global layers equals the full forward`, async () => {
      const ckpt = await checkpoint(name, config)
      const rows = await incrementalLogits(await forwardSession(ckpt, { cache: true }), config, seq.slice(0, 3), seq.slice(3))
      expectClose(rows, referenceLogits(ckpt.dir, seq), TOL)
    })

    it(`${name}: greedy generation (step graph and decode loop) is the reference's greedy continuation, as without the cache`, async () => {
      const ckpt = await checkpoint(name, config)
      const prompts = [seq.slice(0, 3), seq.slice(0, 6)]
      const requests = prompts.map((prompt) => ({ prompt, maxNewTokens: 8, temperature: 0, stopTokenIds: [] }))
      const step = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-gemma-gen-") }))
      const loop = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-gemma-gen-"), stepsPerRun: 4 }))
      const cached = await Effect.runPromise(step.generate(requests))
      expect((await Effect.runPromise(loop.generate(requests))).map((g) => g.tokens)).toEqual(cached.map((g) => g.tokens))
      expect((await Effect.runPromise(step.generate(requests, { cache: false }))).map((g) => g.tokens)).toEqual(cached.map((g) => g.tokens))
      cached.forEach((g, i) => {
        const s = [...prompts[i]]
        for (const tok of g.tokens) {
          const logits = referenceLogits(ckpt.dir, s).at(-1)!
          // the chosen token is the reference argmax up to float32 rounding
          expect(Math.max(...logits) - logits[tok]).toBeLessThan(1e-4)
          s.push(tok)
        }
        expect(s.length).toBeGreaterThan(2 * config.slidingWindow!.size) // the continuation runs past the window
      })
    })
  }
})

describe("Gemma scoring", () => {
  it("Gemma 2: teacher-forced log-probs and top-k are those of the soft-capped reference logits", async () => {
    const ckpt = await checkpoint("Gemma 2", gemma2)
    const session = await Effect.runPromise(
      Effect.gen(function* () {
        const placement = yield* placeWeights(ckpt, tempDir("pipe-gemma-score-"))
        const g = new Graph("gemma_scoring")
        buildScoringGraph(g, ckpt, placement, { topK: 3, chunk: 4 })
        return yield* createSession(yield* writeGraph(g, placement, "scoring"))
      }),
    )
    const input = seq.slice(0, -1)
    const out = await run(session, {
      [forwardNames.ids]: ids([input]),
      [forwardNames.mask]: tensor("int64", [1, input.length], Array(input.length).fill(1)),
      [scoringNames.targets]: ids([seq.slice(1)]),
    })
    const got = out[scoringNames.targetLogProb].data as Float32Array
    const top = out[scoringNames.topLogProbs].data as Float32Array
    referenceLogits(ckpt.dir, input).forEach((z, t) => {
      const max = Math.max(...z)
      const lse = max + Math.log(z.reduce((s, v) => s + Math.exp(v - max), 0))
      expect(Math.abs(got[t] - (z[seq[t + 1]] - lse))).toBeLessThan(TOL)
      expect(Math.abs(top[3 * t] - (max - lse))).toBeLessThan(TOL)
    })
  })
})

describe("Gemma LoRA", () => {
  const peftTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

  it("PEFT's target names select the seven projections of every layer (not the norms)", async () => {
    const ckpt = await checkpoint("Gemma 3", gemma3)
    const targets = await Effect.runPromise(loraTargets(ckpt, peftTargets))
    expect(targets.map((t) => t.module)).toEqual(
      Array.from({ length: gemma3.numLayers }, (_, l) => [
        ...["q_proj", "k_proj", "v_proj", "o_proj"].map((m) => `model.layers.${l}.self_attn.${m}`),
        ...["gate_proj", "up_proj", "down_proj"].map((m) => `model.layers.${l}.mlp.${m}`),
      ]).flat(),
    )
    expect(targets.find((t) => t.module.endsWith("q_proj"))).toMatchObject({ inFeatures: 24, outFeatures: 32 }) // 4 heads x head_dim 8
    // the adapter file's keys, as PEFT's get_peft_model_state_dict names them for Gemma
    const config = await Effect.runPromise(loraConfigFor(ckpt, { r: 2, loraAlpha: 4, targetModules: peftTargets }))
    const tensors = await Effect.runPromise(adapterTensors(loraAdapter(config, targets, Object.fromEntries(Object.entries(initLora(targets, 2, 1)).map(([k, v]) => [k, v.data])))))
    expect([...tensors.keys()].filter((k) => k.includes("layers.0.self_attn.q_proj"))).toEqual([
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    ])
    expect(tensors.size).toBe(2 * 7 * gemma3.numLayers)
  })

  it("a LoRA training step: its first loss is the reference's soft-capped cross-entropy, and training lowers it", async () => {
    const ckpt = await checkpoint("Gemma 2", gemma2)
    const c = ckpt.config
    const targets = await Effect.runPromise(loraTargets(ckpt, peftTargets))
    const r = 4
    const session = await Effect.runPromise(
      Effect.gen(function* () {
        const placement = yield* placeWeights(ckpt, tempDir("pipe-gemma-lora-"))
        const g = new Graph("gemma_lora_train")
        const source = externalWeights(g, placement)
        buildTrainStep({
          graph: g,
          params: loraParamSpecs(targets, r),
          batch: { input_ids: { dtype: "int64", shape: ["batch", "seq"] }, attention_mask: { dtype: "int64", shape: ["batch", "seq"] }, targets: { dtype: "int64", shape: ["batch", "seq"] } },
          adamw: { weightDecay: 0 },
          loss: (sub, params, b) => {
            const out = decoder(sub, c, ckpt.weights, source, { ids: b.input_ids, mask: b.attention_mask }, { linearHook: loraHook(loraFromParams(targets, params), 2) })
            const head = { hidden: sub.reshape(out.hidden, [-1, c.hiddenSize]), weight: out.lmHead, softcap: out.logitSoftcap }
            return crossEntropy(sub, head, sub.reshape(b.targets, [-1])).mean
          },
        })
        return yield* createSession(yield* writeGraph(g, placement, "gemma_lora_train"))
      }),
    )
    const batch = {
      input_ids: ids([seq.slice(0, -1)]),
      attention_mask: tensor("int64", [1, seq.length - 1], Array(seq.length - 1).fill(1)),
      targets: ids([seq.slice(1)]),
    }
    // B starts at 0: the first step's loss is the base model's
    const init = initLora(targets, r, 3)
    let state = initTrainState(Object.fromEntries(Object.entries(init).map(([k, v]) => [k, tensor("float32", v.shape, v.data)])))
    const want = referenceLogits(ckpt.dir, seq.slice(0, -1)).map((z, t) => {
      const max = Math.max(...z)
      return max + Math.log(z.reduce((s, v) => s + Math.exp(v - max), 0)) - z[seq[t + 1]]
    })
    const losses: number[] = []
    for (let i = 0; i < 8; i++) {
      const res = await Effect.runPromise(trainStep(session, state, batch, 0.05))
      state = res.state
      losses.push(res.loss)
    }
    expect(Math.abs(losses[0] - want.reduce((a, b) => a + b, 0) / want.length)).toBeLessThan(1e-4)
    expect(losses.at(-1)!).toBeLessThan(losses[0] * 0.8)
  })
})
