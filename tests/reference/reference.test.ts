// Trust in the reference comes from two kinds of checks:
// 1. tiny models (1 layer, 1-2 heads, hidden 2-4) with weights set by hand, whose logits are
//    worked out step by step below in scalar arithmetic;
// 2. identities that hold whatever the weights: GQA equals multi-head attention with duplicated
//    key/value heads, tied equals untied with a copied head, causality, and position-free
//    attention being invariant to the order of earlier tokens.
// Tolerance 1e-12: everything is float64 and the hand computations follow the same operations.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadCheckpoint, type ModelConfig } from "../../src/models/checkpoint.ts"
import { tinyGemma2, tinyGemma3, tinyGpt2, tinyGptNeox, tinyLlama, tinyPhi3, tinyQwen3, writeConfigFiles, writeRandomCheckpoint } from "../../src/models/init.ts"
import { fromNumbers, readFile, type Tensor, toFloat64, writeFile } from "../../src/core/safetensors.ts"
import { activations, erf, referenceForward, referenceLogits, referenceModel, ropeInverseFrequencies, rotate, roundToDtype } from "./reference.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "pipe-ref-"))
const TOL = 1e-12

/** Writes a checkpoint whose every tensor is given: name -> [shape, row-major values]. */
const handCheckpoint = (config: ModelConfig, tensors: Record<string, [number[], number[]]>): string => {
  const dir = tmp()
  Effect.runSync(writeConfigFiles(dir, config))
  const map = new Map<string, Tensor>(Object.entries(tensors).map(([name, [shape, values]]) => [name, fromNumbers(values, "F64", shape)]))
  Effect.runSync(writeFile(path.join(dir, "model.safetensors"), map))
  return dir
}

const expectClose = (got: ArrayLike<number>, want: number[]) => {
  expect(got.length).toBe(want.length)
  for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThan(TOL)
}

const rms = (v: number[]) => {
  const s = Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length)
  return v.map((x) => x / s)
}
const ln = (v: number[]) => {
  const m = v.reduce((a, x) => a + x, 0) / v.length
  const s = Math.sqrt(v.reduce((a, x) => a + (x - m) ** 2, 0) / v.length)
  return v.map((x) => (x - m) / s)
}
const softmax2 = (a: number, b: number) => [Math.exp(a) / (Math.exp(a) + Math.exp(b)), Math.exp(b) / (Math.exp(a) + Math.exp(b))]

describe("activations and RoPE frequencies", () => {
  it("erf matches tabulated values", () => {
    const table: Array<[number, number]> = [
      [0, 0], [0.1, 0.1124629160182849], [0.5, 0.5204998778130465], [1, 0.8427007929497149], [2, 0.9953222650189527],
      [3, 0.9999779095030014], [3.5, 0.9999992569016276], [4, 0.9999999845827421], [-1.5, -0.9661051464753108],
    ]
    for (const [x, want] of table) expect(Math.abs(erf(x) - want)).toBeLessThan(1e-13)
  })
  it("gelu and silu at known points", () => {
    expect(Math.abs(activations.gelu_erf(1) - 0.8413447460685429)).toBeLessThan(1e-13)
    expect(Math.abs(activations.gelu_tanh(1) - 0.8411919906082768)).toBeLessThan(1e-13)
    expect(Math.abs(activations.silu(1) - 0.7310585786300049)).toBeLessThan(1e-15)
  })
  it("default, linear and Llama 3 scaled inverse frequencies", () => {
    const rope = (scaling: Parameters<typeof ropeInverseFrequencies>[0]["scaling"]) => ({ kind: "rope" as const, theta: 10000, rotaryDim: 4, scaling })
    expectClose(ropeInverseFrequencies(rope({ kind: "none" }), 1), [1, 0.01])
    expectClose(ropeInverseFrequencies(rope({ kind: "linear", factor: 4 }), 1), [0.25, 0.0025])
    // wavelengths 2π (< high_freq_wavelen 8: kept) and 200π (> low_freq_wavelen 32: divided by factor)
    expectClose(ropeInverseFrequencies(rope({ kind: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 32 }), 1), [1, 0.01 / 8])
    // original 1000: 200π lies between 250 and 1000, smooth = (1000/(200π) - 1) / 3
    const smooth = (1000 / (200 * Math.PI) - 1) / 3
    expectClose(ropeInverseFrequencies(rope({ kind: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 1000 }), 1), [
      1,
      (1 - smooth) * (0.01 / 8) + smooth * 0.01,
    ])
  })
})

describe("YaRN, dynamic NTK and LongRoPE inverse frequencies (hand-computed)", () => {
  const rope = (rotaryDim: number, scaling: Parameters<typeof ropeInverseFrequencies>[0]["scaling"]) => ({ kind: "rope" as const, theta: 10000, rotaryDim, scaling })
  it("yarn: unchanged above betaFast rotations, divided by factor under betaSlow, linear in the pair index between", () => {
    // d = 8, base frequencies [1, 0.1, 0.01, 0.001]. Correction dims over 64 positions:
    // betaFast 32: 8 ln(64 / (2π 32)) / (2 ln 10000) = -0.497 -> floor -1 -> clamped to 0;
    // betaSlow 1: 8 ln(64 / 2π) / (2 ln 10000) = 1.008 -> ceil 2. Ramp over pairs 0..2: [0, 0.5, 1, 1].
    const yarn = { kind: "yarn" as const, factor: 4, originalMaxPositions: 64, betaFast: 32, betaSlow: 1, truncate: true, attentionFactor: 1 }
    expectClose(ropeInverseFrequencies(rope(8, yarn), 1), [1, 0.5 * 0.1 + 0.5 * (0.1 / 4), 0.01 / 4, 0.001 / 4])
    // without truncation the ramp runs from 0 to 1.008: pair 1 is interpolated by 1 / 1.008
    const ramp = 1 / ((8 * Math.log(64 / (2 * Math.PI))) / (2 * Math.log(10000)))
    expectClose(ropeInverseFrequencies(rope(8, { ...yarn, truncate: false }), 1), [1, ramp * (0.1 / 4) + (1 - ramp) * 0.1, 0.01 / 4, 0.001 / 4])
  })
  it("dynamic: the base becomes theta (factor L / max - (factor - 1))^(d/(d-2)) past max positions, unchanged up to it", () => {
    const dynamic = { kind: "dynamic" as const, factor: 2, maxPositions: 4 }
    expectClose(ropeInverseFrequencies(rope(4, dynamic), 4), [1, 0.01])
    // L = 8: base 10000 * (2*8/4 - 1)^2 = 90000, second frequency 1/300
    expectClose(ropeInverseFrequencies(rope(4, dynamic), 8), [1, 1 / 300])
  })
  it("longrope: short factors up to original max positions, long factors past it", () => {
    const longrope = { kind: "longrope" as const, shortFactor: [1, 2], longFactor: [3, 4], originalMaxPositions: 4, attentionFactor: 1.5 }
    expectClose(ropeInverseFrequencies(rope(4, longrope), 4), [1, 0.005])
    expectClose(ropeInverseFrequencies(rope(4, longrope), 5), [1 / 3, 0.0025])
  })
  it("the attention factor scales the rotated features only", () => {
    const [c, s] = [Math.cos(2), Math.sin(2)]
    expectClose(rotate(Float64Array.from([1, 2, 3]), 2, [1], 1.5), [1.5 * (c - 2 * s), 1.5 * (2 * c + s), 3])
  })
})

describe("rotary embedding pairing (HF rotate_half, not GPT-J interleaving)", () => {
  it("pairs feature i with i + rotaryDim/2 and leaves features past rotaryDim alone", () => {
    const [c1, s1, c2, s2] = [Math.cos(3), Math.sin(3), Math.cos(0.03), Math.sin(0.03)]
    // headDim 4 fully rotated, position 3, inverse frequencies [1, 0.01]
    expectClose(rotate(Float64Array.from([1, 2, 3, 4]), 3, [1, 0.01]), [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2])
    // partial rotary (NeoX): rotaryDim 2 of headDim 4
    expectClose(rotate(Float64Array.from([1, 2, 3, 4]), 3, [1]), [1 * c1 - 2 * s1, 2 * c1 + 1 * s1, 3, 4])
  })
})

describe("hand-computed tiny models", () => {
  it("llama: RMSNorm, RoPE on 2 positions, causal attention, SwiGLU, untied head", () => {
    const config = tinyLlama({ vocabSize: 2, hiddenSize: 2, numHeads: 1, numKvHeads: 1, headDim: 2, intermediateSize: 1, numLayers: 1, norm: { kind: "rms", eps: 1e-300 } })
    const I = [1, 0, 0, 1]
    const dir = handCheckpoint(config, {
      "model.embed_tokens.weight": [[2, 2], [1, 0, 0, 2]],
      "model.layers.0.input_layernorm.weight": [[2], [1, 1]],
      "model.layers.0.self_attn.q_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.k_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.v_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.o_proj.weight": [[2, 2], I],
      "model.layers.0.post_attention_layernorm.weight": [[2], [1, 1]],
      "model.layers.0.mlp.gate_proj.weight": [[1, 2], [1, 0]],
      "model.layers.0.mlp.up_proj.weight": [[1, 2], [0, 1]],
      "model.layers.0.mlp.down_proj.weight": [[2, 1], [1, 1]],
      "model.norm.weight": [[2], [1, 0.5]],
      "lm_head.weight": [[2, 2], [1, 0, 1, 1]],
    })
    const r2 = Math.SQRT2
    // tokens [0, 1]: x0 = [1, 0], x1 = [0, 2]; rmsnorm gives [√2, 0] and [0, √2].
    // q = k = v = normed input; position 1 is rotated by angle 1 (inv_freq = 1).
    const q1 = [-r2 * Math.sin(1), r2 * Math.cos(1)]
    const [p0, p1] = softmax2((q1[0] * r2) / r2, (q1[0] * q1[0] + q1[1] * q1[1]) / r2) // scores q·k/√headDim
    const h0 = [1 + r2, 0]
    const h1 = [p0 * r2, 2 + p1 * r2]
    const mlpOut = (h: number[]) => {
      const n = rms(h)
      const m = activations.silu(n[0]) * n[1]
      return [m, m]
    }
    const x0 = h0.map((v, i) => v + mlpOut(h0)[i])
    const x1 = h1.map((v, i) => v + mlpOut(h1)[i])
    const head = (x: number[]) => {
      const n = rms(x).map((v, i) => v * [1, 0.5][i])
      return [n[0], n[0] + n[1]]
    }
    const logits = referenceLogits(dir, [0, 1])
    expect(mlpOut(h0)).toEqual([0, 0]) // sanity of the hand computation: n[1] = 0 at position 0
    expectClose(logits[0], head(x0))
    expectClose(logits[1], head(x1))
  })

  it("gpt2: learned positions, LayerNorm with biases, fused c_attn [q | k | v] stored [in, out], GELU MLP, tied head", () => {
    // 2 heads of dim 2: with the blocks layout v is columns 8-11 of c_attn; a per-head reading
    // ([q|k|v] inside each head) would take v from the zero q/k columns and give other logits.
    const config = tinyGpt2({ vocabSize: 3, hiddenSize: 4, numHeads: 2, headDim: 2, intermediateSize: 1, numLayers: 1, maxPositions: 2, norm: { kind: "layer", eps: 1e-300 } })
    const cAttn = new Array(4 * 12).fill(0) // [in=4, out=12]
    for (let i = 0; i < 4; i++) cAttn[i * 12 + 8 + i] = 1
    const I4 = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    const dir = handCheckpoint(config, {
      "transformer.wte.weight": [[3, 4], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3]],
      "transformer.wpe.weight": [[2, 4], [0, 0, 0, 0, 0.5, 0, 0, 0]],
      "transformer.h.0.ln_1.weight": [[4], [1, 1, 1, 1]],
      "transformer.h.0.ln_1.bias": [[4], [0, 0, 0, 0]],
      "transformer.h.0.attn.c_attn.weight": [[4, 12], cAttn],
      "transformer.h.0.attn.c_attn.bias": [[12], [0, 0, 0, 0, 0, 0, 0, 0, 0.5, 0, 0, 0]],
      "transformer.h.0.attn.c_proj.weight": [[4, 4], I4],
      "transformer.h.0.attn.c_proj.bias": [[4], [0, 0, 0, 0]],
      "transformer.h.0.ln_2.weight": [[4], [1, 1, 1, 1]],
      "transformer.h.0.ln_2.bias": [[4], [0, 0, 0, 0]],
      "transformer.h.0.mlp.c_fc.weight": [[4, 1], [1, 0, 0, 0]], // [in=4, out=1]
      "transformer.h.0.mlp.c_fc.bias": [[1], [0]],
      "transformer.h.0.mlp.c_proj.weight": [[1, 4], [0, 0, 0, 2]], // [in=1, out=4]
      "transformer.h.0.mlp.c_proj.bias": [[4], [0, 0, 0, 0]],
      "transformer.ln_f.weight": [[4], [1, 2, 1, 1]],
      "transformer.ln_f.bias": [[4], [0.1, 0, 0, 0]],
    })
    // tokens [0, 2]: x0 = e0 + p0 = [1, 0, 0, 0]; x1 = e2 + p1 = [0.5, 0, 0, 3]
    const x = [[1, 0, 0, 0], [0.5, 0, 0, 3]]
    const v = x.map((xi) => ln(xi).map((a, i) => a + [0.5, 0, 0, 0][i]))
    const attn = [v[0], v[0].map((a, i) => (a + v[1][i]) / 2)] // q = k = 0: uniform weights over the causal prefix
    const h = x.map((xi, t) => xi.map((a, i) => a + attn[t][i]))
    const out = h.map((hi) => {
      const g = activations.gelu_tanh(ln(hi)[0])
      return hi.map((a, i) => a + [0, 0, 0, 2 * g][i])
    })
    const head = (xi: number[]) => {
      const n = ln(xi).map((a, i) => a * [1, 2, 1, 1][i] + [0.1, 0, 0, 0][i])
      return [n[0], n[1], 3 * n[3]] // tied: rows of wte
    }
    const logits = referenceLogits(dir, [0, 2])
    expectClose(logits[0], head(out[0]))
    expectClose(logits[1], head(out[1]))
  })

  it("gpt-neox: per-head fused query_key_value, parallel residual, exact GELU, partial rotary untouched features", () => {
    // 2 heads of dim 2, hidden 4. q/k rows zero, so attention is uniform and RoPE cannot matter;
    // what matters is which rows are v for each head: layout [head][q|k|v][headDim].
    const config = tinyGptNeox({ vocabSize: 2, hiddenSize: 4, numHeads: 2, headDim: 2, intermediateSize: 1, numLayers: 1, norm: { kind: "layer", eps: 1e-300 }, positions: { kind: "rope", theta: 10000, rotaryDim: 2, scaling: { kind: "none" } } })
    const qkv = new Array(12 * 4).fill(0)
    const setRow = (r: number, values: number[]) => values.forEach((v, i) => (qkv[r * 4 + i] = v))
    setRow(4, [1, 0, 0, 0]) // head 0 v, feature 0 <- input 0
    setRow(5, [0, 1, 0, 0])
    setRow(10, [0, 0, 2, 0]) // head 1 v, feature 0 <- 2 * input 2
    setRow(11, [0, 0, 0, 2])
    const I4 = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    const dir = handCheckpoint(config, {
      "gpt_neox.embed_in.weight": [[2, 4], [1, 2, 3, 4, 0, 0, 1, -1]],
      "gpt_neox.layers.0.input_layernorm.weight": [[4], [1, 1, 1, 1]],
      "gpt_neox.layers.0.input_layernorm.bias": [[4], [0, 0, 0, 0]],
      "gpt_neox.layers.0.post_attention_layernorm.weight": [[4], [1, 1, 1, 1]],
      "gpt_neox.layers.0.post_attention_layernorm.bias": [[4], [0, 0, 0, 0]],
      "gpt_neox.layers.0.attention.query_key_value.weight": [[12, 4], qkv],
      "gpt_neox.layers.0.attention.query_key_value.bias": [[12], new Array(12).fill(0)],
      "gpt_neox.layers.0.attention.dense.weight": [[4, 4], I4],
      "gpt_neox.layers.0.attention.dense.bias": [[4], [0, 0, 0, 0]],
      "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": [[1, 4], [0, 1, 0, 0]],
      "gpt_neox.layers.0.mlp.dense_h_to_4h.bias": [[1], [0.25]],
      "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": [[4, 1], [1, 0, 0, 0]],
      "gpt_neox.layers.0.mlp.dense_4h_to_h.bias": [[4], [0, 0, 0, 0]],
      "gpt_neox.final_layer_norm.weight": [[4], [1, 1, 1, 1]],
      "gpt_neox.final_layer_norm.bias": [[4], [0, 0, 0, 0]],
      "embed_out.weight": [[2, 4], [1, 0, 0, 0, 0, 0, 0, 1]],
    })
    const x = [[1, 2, 3, 4], [0, 0, 1, -1]]
    const n = x.map(ln)
    const v = n.map((a) => [a[0], a[1], 2 * a[2], 2 * a[3]])
    const attn = [v[0], v[0].map((a, i) => (a + v[1][i]) / 2)]
    // parallel residual: both branches read the layer input x, not x + attn
    const out = x.map((xi, t) => xi.map((a, i) => a + attn[t][i] + (i === 0 ? activations.gelu_erf(n[t][1] + 0.25) : 0)))
    const logits = referenceLogits(dir, [0, 1])
    for (let t = 0; t < 2; t++) {
      const f = ln(out[t])
      expectClose(logits[t], [f[0], f[3]])
    }
  })
})

describe("hand-computed Gemma", () => {
  it("gemma 2: scaled embeddings, (1 + w) norms around attention and MLP, query_pre_attn_scalar, both soft-cappings, tied head", () => {
    const config = tinyGemma2({
      vocabSize: 2, hiddenSize: 2, numHeads: 1, numKvHeads: 1, headDim: 2, intermediateSize: 1, numLayers: 1, norm: { kind: "rms", eps: 1e-300 },
      slidingWindow: undefined, gemma: { embedScale: "all_inputs", queryPreAttnScalar: 4, attnLogitSoftcap: 1, finalLogitSoftcap: 3, localPositions: undefined },
    })
    const I = [1, 0, 0, 1]
    const zero = [[2], [0, 0]] as [number[], number[]]
    const dir = handCheckpoint(config, {
      "model.embed_tokens.weight": [[2, 2], [1, 0, 0, 2]],
      "model.layers.0.input_layernorm.weight": zero,
      "model.layers.0.self_attn.q_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.k_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.v_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.o_proj.weight": [[2, 2], I],
      "model.layers.0.post_attention_layernorm.weight": zero,
      "model.layers.0.pre_feedforward_layernorm.weight": zero,
      "model.layers.0.mlp.gate_proj.weight": [[1, 2], [1, 0]],
      "model.layers.0.mlp.up_proj.weight": [[1, 2], [1, 1]],
      "model.layers.0.mlp.down_proj.weight": [[2, 1], [1, 1]],
      "model.layers.0.post_feedforward_layernorm.weight": [[2], [1, -0.5]],
      "model.norm.weight": zero,
    })
    const r2 = Math.SQRT2
    // F64 weights: the embedding scale is sqrt(2) itself. x0 = [√2, 0], x1 = [0, 2√2]; normed: [√2, 0], [0, √2]
    const x = [[r2, 0], [0, 2 * r2]]
    const n = [[r2, 0], [0, r2]]
    // position 1 rotates by angle 1: q1 = [-√2 sin 1, √2 cos 1]; scores scaled by 4^-1/2 then 1 * tanh(s / 1)
    const [p0, p1] = softmax2(Math.tanh(0.5 * (-2 * Math.sin(1))), Math.tanh(0.5 * 2))
    const attn = [n[0], [p0 * r2, p1 * r2]]
    const h = x.map((xi, t) => xi.map((v, i) => v + rms(attn[t])[i]))
    const out = h.map((hi) => {
      const nh = rms(hi)
      const m = activations.gelu_tanh(nh[0]) * (nh[0] + nh[1])
      const post = rms([m, m]).map((v, i) => v * [2, 0.5][i]) // (1 + w) = (2, 0.5)
      return hi.map((v, i) => v + post[i])
    })
    const logits = referenceLogits(dir, [0, 1])
    for (let t = 0; t < 2; t++) {
      const f = rms(out[t])
      expectClose(logits[t], [f[0], 2 * f[1]].map((z) => 3 * Math.tanh(z / 3)))
    }
  })

  it("gemma 3: q/k head norms before RoPE, a local layer rotating with the local (unscaled) base, no soft-capping", () => {
    // the global RoPE is linearly scaled by 8: a local layer that used it would rotate by 1/8, not 1
    const config = tinyGemma3({
      vocabSize: 2, hiddenSize: 2, numHeads: 1, numKvHeads: 1, headDim: 2, intermediateSize: 1, numLayers: 1, norm: { kind: "rms", eps: 1e-300 },
      positions: { kind: "rope", theta: 1e6, rotaryDim: 2, scaling: { kind: "linear", factor: 8 } },
      slidingWindow: { size: 2, layers: [true] },
      gemma: { embedScale: "token_embeddings", queryPreAttnScalar: 1, attnLogitSoftcap: undefined, finalLogitSoftcap: undefined, localPositions: { kind: "rope", theta: 10000, rotaryDim: 2, scaling: { kind: "none" } } },
    })
    const I = [1, 0, 0, 1]
    const zero = [[2], [0, 0]] as [number[], number[]]
    const dir = handCheckpoint(config, {
      "model.embed_tokens.weight": [[2, 2], [1, 0, 0, 2]],
      "model.layers.0.input_layernorm.weight": zero,
      "model.layers.0.self_attn.q_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.k_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.v_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.o_proj.weight": [[2, 2], I],
      "model.layers.0.self_attn.q_norm.weight": [[2], [1, 0]], // (1 + w) = (2, 1)
      "model.layers.0.self_attn.k_norm.weight": [[2], [0, 1]], // (1, 2)
      "model.layers.0.post_attention_layernorm.weight": zero,
      "model.layers.0.pre_feedforward_layernorm.weight": zero,
      "model.layers.0.mlp.gate_proj.weight": [[1, 2], [1, 0]],
      "model.layers.0.mlp.up_proj.weight": [[1, 2], [1, 1]],
      "model.layers.0.mlp.down_proj.weight": [[2, 1], [1, 1]],
      "model.layers.0.post_feedforward_layernorm.weight": zero,
      "model.norm.weight": zero,
    })
    const r2 = Math.SQRT2
    const x = [[r2, 0], [0, 2 * r2]] // embeddings times sqrt(2)
    const n = [[r2, 0], [0, r2]]
    // normed heads: q0 = [2√2, 0], q1 = [0, √2]; k0 = [√2, 0], k1 = [0, 2√2]; then position 1 rotates by 1:
    // q1 = √2 [-sin 1, cos 1], k1 = 2√2 [-sin 1, cos 1]; scores q1·k0 = -2 sin 1, q1·k1 = 4 (scale 1)
    const [p0, p1] = softmax2(-2 * Math.sin(1), 4)
    const attn = [n[0], [p0 * r2, p1 * r2]] // v = the normed input, no v norm
    const h = x.map((xi, t) => xi.map((v, i) => v + rms(attn[t])[i]))
    const out = h.map((hi) => {
      const nh = rms(hi)
      const m = activations.gelu_tanh(nh[0]) * (nh[0] + nh[1])
      return hi.map((v, i) => v + rms([m, m])[i])
    })
    const logits = referenceLogits(dir, [0, 1])
    for (let t = 0; t < 2; t++) {
      const f = rms(out[t])
      expectClose(logits[t], [f[0], 2 * f[1]])
    }
  })

  it("bf16 and fp16 rounding of the embedding scale (ties to even)", () => {
    expect(roundToDtype(Math.sqrt(3072), "BF16")).toBe(55.5)
    expect(roundToDtype(Math.sqrt(3072), "F16")).toBe(55.4375) // 11 significant bits: steps of 1/32 in [32, 64)
    expect(roundToDtype(1 + 2 ** -8, "BF16")).toBe(1) // tie: to the even neighbour
    expect(roundToDtype(1 + 3 * 2 ** -8, "BF16")).toBe(1 + 2 ** -6)
    expect(roundToDtype(1 + 2 ** -11, "F16")).toBe(1)
    expect(roundToDtype(1 + 3 * 2 ** -11, "F16")).toBe(1 + 2 ** -9)
  })
})

describe("identities on random checkpoints", () => {
  const random = (config: ModelConfig, seed = 5) => {
    const dir = tmp()
    Effect.runSync(writeRandomCheckpoint(dir, config, { seed, std: 0.5 }))
    return dir
  }
  const tokens = [3, 17, 5, 60, 5, 0, 41]

  it("GQA equals multi-head attention with each key/value head repeated", () => {
    const gqaConfig = tinyLlama({ numHeads: 4, numKvHeads: 2, bias: { qkv: true, o: false, mlp: false, norm: false }, hfArchitecture: "Qwen2ForCausalLM" })
    const gqa = random(gqaConfig)
    const mha = tmp()
    Effect.runSync(writeConfigFiles(mha, { ...gqaConfig, numKvHeads: 4 }))
    const src = Effect.runSync(readFile(path.join(gqa, "model.safetensors")))
    const tensors = new Map<string, Tensor>()
    for (const [name, t] of src.tensors) {
      if (!/\.(k|v)_proj\./.test(name)) {
        tensors.set(name, { ...t, data: t.data.slice() })
        continue
      }
      // rows of kv head j (headDim rows each) are used by query heads 2j and 2j+1
      const rowBytes = t.data.byteLength / t.shape[0]
      const headBytes = rowBytes * 4
      const out = new Uint8Array(t.data.byteLength * 2)
      for (let j = 0; j < 2; j++) {
        const block = t.data.subarray(j * headBytes, (j + 1) * headBytes)
        out.set(block, 2 * j * headBytes)
        out.set(block, (2 * j + 1) * headBytes)
      }
      tensors.set(name, { dtype: t.dtype, shape: [t.shape[0] * 2, ...t.shape.slice(1)], data: out })
    }
    Effect.runSync(writeFile(path.join(mha, "model.safetensors"), tensors))
    const a = referenceLogits(gqa, tokens)
    const b = referenceLogits(mha, tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(a[t], Array.from(b[t]))
    // and the model is not trivially position-free: logits differ across positions of the same token
    expect(Math.abs(a[2][0] - a[4][0])).toBeGreaterThan(1e-6)
  })

  it("causality: changing later tokens leaves earlier logits unchanged (all architectures)", () => {
    for (const config of [tinyLlama(), tinyGpt2(), tinyGptNeox()]) {
      const dir = random(config)
      const a = referenceLogits(dir, tokens)
      const b = referenceLogits(dir, [...tokens.slice(0, 4), 9, 9, 9])
      for (let t = 0; t < 4; t++) expectClose(a[t], Array.from(b[t]))
      expect(Math.abs(a[5][0] - b[5][0])).toBeGreaterThan(1e-9)
    }
  })

  it("without rotary features, one layer of attention is blind to the order of earlier tokens; with them it is not", () => {
    // One layer only: in deeper layers earlier positions carry states that depend on their own prefix.
    const noRope = random(tinyGptNeox({ numLayers: 1, positions: { kind: "rope", theta: 10000, rotaryDim: 0, scaling: { kind: "none" } } }))
    const last = (dir: string, ids: number[]) => referenceLogits(dir, ids).at(-1)!
    expectClose(last(noRope, [1, 2, 3, 4]), Array.from(last(noRope, [3, 1, 2, 4])))
    const rope = random(tinyGptNeox({ numLayers: 1 }))
    expect(Math.abs(last(rope, [1, 2, 3, 4])[0] - last(rope, [3, 1, 2, 4])[0])).toBeGreaterThan(1e-9)
  })

  it("tied embeddings equal an untied head holding a copy of the embedding", () => {
    const tied = random(tinyLlama({ tiedEmbeddings: true }))
    const untied = tmp()
    Effect.runSync(writeConfigFiles(untied, tinyLlama({ tiedEmbeddings: false })))
    const src = Effect.runSync(readFile(path.join(tied, "model.safetensors")))
    const tensors = new Map([...src.tensors].map(([k, t]) => [k, { ...t, data: t.data.slice() }]))
    tensors.set("lm_head.weight", tensors.get("model.embed_tokens.weight")!)
    Effect.runSync(writeFile(path.join(untied, "model.safetensors"), tensors))
    const a = referenceLogits(tied, tokens)
    const b = referenceLogits(untied, tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(a[t], Array.from(b[t]))
  })

  it("sliding window: a window as long as the sequence changes nothing; a local layer ignores keys more than window - 1 back", () => {
    const config = tinyLlama({ hfArchitecture: "MistralForCausalLM", numLayers: 1 })
    const windowed = (size: number) => {
      const dir = random({ ...config, slidingWindow: { size, layers: [true] } })
      return (ids: number[]) => referenceLogits(dir, ids)
    }
    const plain = random(config)
    const long = windowed(tokens.length)
    for (let t = 0; t < tokens.length; t++) expectClose(long(tokens)[t], Array.from(referenceLogits(plain, tokens)[t]))
    // window 3: position 6 sees positions 4, 5, 6 only
    const w3 = windowed(3)
    const last = (ids: number[]) => w3(ids).at(-1)!
    expectClose(last(tokens), Array.from(last([9, 9, 9, 9, ...tokens.slice(4)])))
    expect(Math.abs(last(tokens)[0] - last([...tokens.slice(0, 4), 9, ...tokens.slice(5)])[0])).toBeGreaterThan(1e-9)
  })

  it("gemma: the local RoPE base (on local layers only) and the soft-caps change the logits; a cap far above the scores does not", () => {
    const g3 = tinyGemma3()
    const base = referenceLogits(random(g3), tokens)
    const otherLocalBase = referenceLogits(random({ ...g3, gemma: { ...g3.gemma!, localPositions: { kind: "rope", theta: 100, rotaryDim: 8, scaling: { kind: "none" } } } }), tokens)
    expect(Math.abs(base[6][0] - otherLocalBase[6][0])).toBeGreaterThan(1e-9)
    // without local layers the local base is unused
    const allGlobal = { ...g3, slidingWindow: undefined }
    const a = referenceLogits(random(allGlobal), tokens)
    const b = referenceLogits(random({ ...allGlobal, gemma: { ...g3.gemma!, localPositions: { kind: "rope", theta: 100, rotaryDim: 8, scaling: { kind: "none" } } } }), tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(a[t], Array.from(b[t]))
    const g2 = tinyGemma2()
    const uncapped = referenceLogits(random({ ...g2, gemma: { ...g2.gemma!, attnLogitSoftcap: undefined, finalLogitSoftcap: undefined } }), tokens)
    const farCaps = referenceLogits(random({ ...g2, gemma: { ...g2.gemma!, attnLogitSoftcap: 1e9, finalLogitSoftcap: 1e9 } }), tokens)
    const tightCaps = referenceLogits(random({ ...g2, gemma: { ...g2.gemma!, attnLogitSoftcap: 0.1, finalLogitSoftcap: 0.5 } }), tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(farCaps[t], Array.from(uncapped[t]))
    for (const row of tightCaps) for (const z of row) expect(Math.abs(z)).toBeLessThan(0.5)
  })

  it("referenceForward on a loaded model equals referenceLogits, and bad token ids are refused", () => {
    const dir = random(tinyGpt2())
    const model = referenceModel(Effect.runSync(loadCheckpoint(dir)))
    expectClose(referenceForward(model, [1, 2])[1], Array.from(referenceLogits(dir, [1, 2])[1]))
    expect(() => referenceForward(model, [64])).toThrow(/outside the vocabulary/)
    expect(() => referenceLogits("/nonexistent", [1])).toThrow(/does not exist/)
  })

  /** The float64 tensors of a checkpoint's model.safetensors, by name. */
  const tensorsOf = (dir: string) =>
    new Map([...Effect.runSync(readFile(path.join(dir, "model.safetensors"))).tensors].map(([k, t]) => [k, { shape: [...t.shape], values: toFloat64(t) }]))
  const writeTensors = (dir: string, tensors: Map<string, { shape: number[]; values: Float64Array }>) =>
    Effect.runSync(writeFile(path.join(dir, "model.safetensors"), new Map([...tensors].map(([k, t]) => [k, fromNumbers(t.values, "F64", t.shape)]))))
  /** Rows [from, to) of a [rows, cols] matrix. */
  const rows = (t: { shape: number[]; values: Float64Array }, from: number, to: number) => ({ shape: [to - from, t.shape[1]], values: t.values.slice(from * t.shape[1], to * t.shape[1]) })

  it("Phi-3's fused qkv_proj and gate_up_proj equal Llama's separate projections cut from their rows ([q | k | v], [gate | up])", () => {
    const config = tinyPhi3()
    const phi = random(config)
    const { numHeads: nh, numKvHeads: nkv, headDim: hd, intermediateSize: m } = config
    const llama = tmp()
    Effect.runSync(writeConfigFiles(llama, tinyLlama()))
    const tensors = new Map<string, { shape: number[]; values: Float64Array }>()
    for (const [name, t] of tensorsOf(phi)) {
      const qkv = /^(.*)\.qkv_proj\.weight$/.exec(name)
      const gateUp = /^(.*)\.gate_up_proj\.weight$/.exec(name)
      if (qkv) {
        tensors.set(`${qkv[1]}.q_proj.weight`, rows(t, 0, nh * hd))
        tensors.set(`${qkv[1]}.k_proj.weight`, rows(t, nh * hd, (nh + nkv) * hd))
        tensors.set(`${qkv[1]}.v_proj.weight`, rows(t, (nh + nkv) * hd, (nh + 2 * nkv) * hd))
      } else if (gateUp) {
        tensors.set(`${gateUp[1]}.gate_proj.weight`, rows(t, 0, m))
        tensors.set(`${gateUp[1]}.up_proj.weight`, rows(t, m, 2 * m))
      } else tensors.set(name, t)
    }
    writeTensors(llama, tensors)
    const a = referenceLogits(phi, tokens)
    const b = referenceLogits(llama, tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(a[t], Array.from(b[t]))
  })

  it("Qwen3's q/k norms work per head: scaling each head's projection rows by its own factor changes nothing, a norm weight does", () => {
    // eps 1e-300 so that RMSNorm is exactly scale-invariant
    const config = tinyQwen3({ norm: { kind: "rms", eps: 1e-300 } })
    const dir = random(config)
    const before = referenceLogits(dir, tokens)
    const tensors = tensorsOf(dir)
    const hd = config.headDim
    const scaleHeads = (name: string, factors: number[]) => {
      const t = tensors.get(name)!
      const cols = t.shape[1]
      tensors.set(name, { shape: t.shape, values: t.values.map((v, i) => v * factors[Math.floor(i / (cols * hd))]) })
    }
    scaleHeads("model.layers.0.self_attn.q_proj.weight", [3, 0.5, 2, 1])
    scaleHeads("model.layers.1.self_attn.k_proj.weight", [0.25, 4])
    const scaled = tmp()
    Effect.runSync(writeConfigFiles(scaled, config))
    writeTensors(scaled, tensors)
    const after = referenceLogits(scaled, tokens)
    for (let t = 0; t < tokens.length; t++) expectClose(after[t], Array.from(before[t]))
    const qNorm = tensors.get("model.layers.0.self_attn.q_norm.weight")!
    tensors.set("model.layers.0.self_attn.q_norm.weight", { shape: qNorm.shape, values: qNorm.values.map((v, i) => (i === 0 ? v * 3 : v)) })
    writeTensors(scaled, tensors)
    expect(Math.abs(referenceLogits(scaled, tokens)[3][0] - before[3][0])).toBeGreaterThan(1e-6)
  })
})
