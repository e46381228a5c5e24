// An independent, deliberately plain float64 forward pass of the supported architectures,
// written for clarity, not speed: one loop per formula, no batching, no caching. It is the
// reference the ONNX model graphs are tested against, so it shares only the checkpoint reader
// (which tensor is where) with them; all the math (fused-qkv and gate-up splitting, RoPE and its
// scalings, per-head q/k norms, GQA, norms, activations, residual wiring, sliding windows, Gemma's
// features) is written out here on its own.
//
//   referenceLogits(modelDir, tokenIds) -> logits, one Float64Array of length vocabSize per position
//
// Use it on small checkpoints: cost is O(layers * seq^2 * hidden + seq * params) in plain JS.
import { Effect } from "effect"
import {
  type Checkpoint,
  type Linear,
  loadCheckpoint,
  type ModelConfig,
  type Norm,
  readWeightFloat64,
  type WeightRef,
} from "../../src/models/checkpoint.ts"

type Vec = Float64Array
/** A weight in the Linear convention: rows = output features, cols = input features. */
interface Matrix {
  readonly rows: number
  readonly cols: number
  readonly values: Float64Array
}

const load = (ref: WeightRef): Matrix => {
  const { shape, values } = Effect.runSync(readWeightFloat64(ref))
  return shape.length === 1 ? { rows: shape[0], cols: 1, values } : { rows: shape[0], cols: shape[1], values }
}

/** y = W x + b */
const linear = (l: { w: Matrix; b: Vec | undefined }, x: Vec): Vec => {
  const y = new Float64Array(l.w.rows)
  for (let o = 0; o < l.w.rows; o++) {
    let s = l.b ? l.b[o] : 0
    for (let i = 0; i < l.w.cols; i++) s += l.w.values[o * l.w.cols + i] * x[i]
    y[o] = s
  }
  return y
}

const add = (a: Vec, b: Vec): Vec => a.map((v, i) => v + b[i])

// ------------------------------------------------------------------------------ activations

/** erf to ~1e-13: Taylor series below 3, continued fraction for erfc above. */
export const erf = (x: number): number => {
  const ax = Math.abs(x)
  if (ax < 3) {
    let term = x
    let sum = x
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n
      const t = term / (2 * n + 1)
      sum += t
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break
    }
    return (2 / Math.sqrt(Math.PI)) * sum
  }
  if (ax > 6) return Math.sign(x)
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
  let f = ax
  for (let k = 80; k >= 1; k--) f = ax + k / 2 / f
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f
  return Math.sign(x) * (1 - erfc)
}

export const activations = {
  silu: (x: number) => x / (1 + Math.exp(-x)),
  gelu_erf: (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
  relu: (x: number) => (x > 0 ? x : 0),
}

// ------------------------------------------------------------------------------ norms

/** `unitOffset`: Gemma's RMSNorm, x / rms(x) * (1 + w). */
const rmsNorm = (x: Vec, w: Vec, eps: number, unitOffset = false): Vec => {
  let ms = 0
  for (const v of x) ms += v * v
  const scale = 1 / Math.sqrt(ms / x.length + eps)
  return x.map((v, i) => v * scale * (unitOffset ? 1 + w[i] : w[i]))
}

const layerNorm = (x: Vec, w: Vec, b: Vec | undefined, eps: number): Vec => {
  let mean = 0
  for (const v of x) mean += v / x.length
  let variance = 0
  for (const v of x) variance += (v - mean) ** 2 / x.length
  const scale = 1 / Math.sqrt(variance + eps)
  return x.map((v, i) => (v - mean) * scale * w[i] + (b ? b[i] : 0))
}

// ------------------------------------------------------------------------------ RoPE

/**
 * Inverse frequencies of the rotary embedding, one per rotated pair, for a sequence of `seqLen`
 * positions, with every scaling of transformers' modeling_rope_utils.py that ModelConfig
 * expresses (default, linear, llama3, yarn, dynamic NTK, longrope).
 * Kept separate from src/models/rope.ts on purpose: the reference must not share code with
 * what it checks (this one is itself checked against hand-computed values in reference.test.ts).
 */
export const ropeInverseFrequencies = (positions: Extract<ModelConfig["positions"], { kind: "rope" }>, seqLen: number): number[] => {
  const d = positions.rotaryDim
  const s = positions.scaling
  const frequencies = (theta: number) => Array.from({ length: d / 2 }, (_, i) => 1 / theta ** ((2 * i) / d))
  switch (s.kind) {
    case "none":
      return frequencies(positions.theta)
    case "linear":
      return frequencies(positions.theta).map((f) => f / s.factor)
    case "dynamic": {
      // NTK-aware: a larger base once the sequence outgrows max_position_embeddings
      const length = Math.max(seqLen, s.maxPositions)
      return frequencies(positions.theta * ((s.factor * length) / s.maxPositions - (s.factor - 1)) ** (d / (d - 2)))
    }
    case "longrope": {
      const factors = seqLen > s.originalMaxPositions ? s.longFactor : s.shortFactor
      return frequencies(positions.theta).map((f, i) => f / factors[i])
    }
    case "yarn": {
      // pair i rotates dimRotations(i) times over the original context; pairs with more than
      // betaFast rotations keep their frequency, those under betaSlow are divided by factor,
      // linear in the pair index in between (bounds rounded outwards when truncating)
      const boundary = (rotations: number) => (d * Math.log(s.originalMaxPositions / (2 * Math.PI * rotations))) / (2 * Math.log(positions.theta))
      let low = boundary(s.betaFast)
      let high = boundary(s.betaSlow)
      if (s.truncate) {
        low = Math.floor(low)
        high = Math.ceil(high)
      }
      low = Math.max(low, 0)
      high = Math.min(high, d - 1)
      if (high === low) high += 0.001
      return frequencies(positions.theta).map((f, i) => {
        const interpolated = i <= low ? 0 : i >= high ? 1 : (i - low) / (high - low)
        return interpolated * (f / s.factor) + (1 - interpolated) * f
      })
    }
    case "llama3": {
      const lowFreqWavelen = s.originalMaxPositions / s.lowFreqFactor
      const highFreqWavelen = s.originalMaxPositions / s.highFreqFactor
      return frequencies(positions.theta).map((f) => {
        const wavelen = (2 * Math.PI) / f
        if (wavelen < highFreqWavelen) return f // high frequency: unchanged
        if (wavelen > lowFreqWavelen) return f / s.factor // low frequency: fully scaled
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
        return (1 - smooth) * (f / s.factor) + smooth * f
      })
    }
  }
}

/**
 * Rotates feature i with feature i + rotaryDim/2 by angle position * invFreq[i], scaling the
 * rotated features by `scale` (yarn and longrope's attention factor); the rest pass through.
 */
export const rotate = (x: Vec, position: number, invFreq: number[], scale = 1): Vec => {
  const half = invFreq.length
  const y = Float64Array.from(x)
  for (let i = 0; i < half; i++) {
    const angle = position * invFreq[i]
    const a = x[i]
    const b = x[i + half]
    y[i] = scale * (a * Math.cos(angle) - b * Math.sin(angle))
    y[i + half] = scale * (b * Math.cos(angle) + a * Math.sin(angle))
  }
  return y
}

// ------------------------------------------------------------------------------ Gemma helpers

/** x rounded to the storage dtype of a weight (what torch.tensor(x, dtype=...) gives). */
export const roundToDtype = (x: number, dtype: WeightRef["dtype"]): number => {
  if (dtype === "F64") return x
  const f32 = Math.fround(x)
  if (dtype === "F32") return f32
  if (dtype === "BF16") {
    // bfloat16 is the top half of a float32: round the low 16 bits away, ties to even
    const u = new Uint32Array(Float32Array.of(x).buffer)[0]
    const rounded = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16
    return new Float32Array(Uint32Array.of(rounded << 16).buffer)[0]
  }
  // float16, normal range: 11 significant bits
  const exponent = Math.floor(Math.log2(Math.abs(x)))
  const ulp = 2 ** (exponent - 10)
  const n = x / ulp
  const r = Math.floor(n) + (n - Math.floor(n) > 0.5 || (n - Math.floor(n) === 0.5 && Math.floor(n) % 2 === 1) ? 1 : 0)
  return r * ulp
}

/** cap * tanh(x / cap) */
const softcap = (x: number, cap: number | undefined) => (cap === undefined ? x : cap * Math.tanh(x / cap))

// ------------------------------------------------------------------------------ model

interface LinearParams {
  readonly w: Matrix
  readonly b: Vec | undefined
}
interface NormParams {
  readonly w: Vec
  readonly b: Vec | undefined
}
type AttentionParams =
  | { readonly layout: "separate"; readonly q: LinearParams; readonly k: LinearParams; readonly v: LinearParams; readonly o: LinearParams }
  | { readonly layout: "fused_qkv" | "fused_qkv_per_head"; readonly qkv: LinearParams; readonly o: LinearParams }
type MlpParams =
  | { readonly kind: "gated" | "plain"; readonly gate: LinearParams | undefined; readonly up: LinearParams; readonly down: LinearParams }
  | { readonly kind: "gated_fused"; readonly gateUp: LinearParams; readonly down: LinearParams }
interface LayerParams {
  readonly norm1: NormParams
  readonly norm2: NormParams
  /** Gemma: norms of the attention and MLP outputs (post_attention_layernorm, post_feedforward_layernorm) */
  readonly outputNorms: { readonly attention: NormParams; readonly mlp: NormParams } | undefined
  /** Qwen3, Gemma 3: per-head q/k norms */
  readonly headNorms: { readonly q: NormParams; readonly k: NormParams } | undefined
  readonly attention: AttentionParams
  readonly mlp: MlpParams
}

export interface ReferenceModel {
  readonly config: ModelConfig
  readonly embedTokens: Matrix
  readonly embedPositions: Matrix | undefined
  readonly layers: ReadonlyArray<LayerParams>
  readonly finalNorm: NormParams
  readonly lmHead: Matrix
  readonly embedDtype: WeightRef["dtype"]
}

const linearParams = (l: Linear): LinearParams => ({ w: load(l.weight), b: l.bias ? load(l.bias).values : undefined })
const normParams = (n: Norm): NormParams => ({ w: load(n.weight).values, b: n.bias ? load(n.bias).values : undefined })

/** Reads every weight of a loaded checkpoint into float64 matrices. */
export const referenceModel = (ckpt: Checkpoint): ReferenceModel => {
  const w = ckpt.weights
  return {
    config: ckpt.config,
    embedTokens: load(w.embedTokens),
    embedPositions: w.embedPositions ? load(w.embedPositions) : undefined,
    layers: w.layers.map((l) => {
      const a = l.attention
      const attention: AttentionParams =
        a.layout === "separate"
          ? { layout: "separate", q: linearParams(a.q), k: linearParams(a.k), v: linearParams(a.v), o: linearParams(a.o) }
          : { layout: a.layout, qkv: linearParams(a.qkv), o: linearParams(a.o) }
      const m = l.mlp
      const mlp: MlpParams =
        m.kind === "gated_fused"
          ? { kind: m.kind, gateUp: linearParams(m.gateUp), down: linearParams(m.down) }
          : { kind: m.kind, gate: m.kind === "gated" ? linearParams(m.gate) : undefined, up: linearParams(m.up), down: linearParams(m.down) }
      return {
        norm1: normParams(l.inputNorm),
        norm2: normParams(l.postAttentionNorm),
        outputNorms: l.outputNorms ? { attention: normParams(l.outputNorms.attention), mlp: normParams(l.outputNorms.mlp) } : undefined,
        headNorms: l.headNorms ? { q: normParams(l.headNorms.q), k: normParams(l.headNorms.k) } : undefined,
        attention,
        mlp,
      }
    }),
    finalNorm: normParams(w.finalNorm),
    lmHead: load(w.lmHead),
    embedDtype: w.embedTokens.dtype,
  }
}

const row = (m: Matrix, r: number): Vec => m.values.slice(r * m.cols, (r + 1) * m.cols)
const slice = (v: Vec, start: number, length: number): Vec => v.slice(start, start + length)

/** Per-position q, k, v vectors, each split into heads: q[t][head], k[t][kvHead], v[t][kvHead]. */
const projectQkv = (c: ModelConfig, a: AttentionParams, xs: Vec[]) => {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = c
  const heads = (v: Vec, n: number, start = 0, stride = hd) => Array.from({ length: n }, (_, j) => slice(v, start + j * stride, hd))
  return xs.map((x) => {
    if (a.layout === "separate") return { q: heads(linear(a.q, x), nh), k: heads(linear(a.k, x), nkv), v: heads(linear(a.v, x), nkv) }
    const qkv = linear(a.qkv, x)
    // GPT-2, Phi-3: [q | k | v] of nh, nkv, nkv heads, heads consecutive inside each block.
    if (a.layout === "fused_qkv") return { q: heads(qkv, nh, 0), k: heads(qkv, nkv, nh * hd), v: heads(qkv, nkv, (nh + nkv) * hd) }
    // GPT-NeoX: per head, [q | k | v] of hd each.
    return { q: heads(qkv, nh, 0, 3 * hd), k: heads(qkv, nh, hd, 3 * hd), v: heads(qkv, nh, 2 * hd, 3 * hd) }
  })
}

/** ropeLengths[t]: the sequence length position t's query and key are rotated at (see referenceForward). */
const attention = (c: ModelConfig, layerIndex: number, layer: LayerParams, xs: Vec[], ropeLengths: ReadonlyArray<number>): Vec[] => {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = c
  const a = layer.attention
  const qkv = projectQkv(c, a, xs)
  const hn = layer.headNorms
  if (hn)
    qkv.forEach((p) => {
      p.q = p.q.map((q) => rmsNorm(q, hn.q.w, c.norm.eps, c.gemma !== undefined))
      p.k = p.k.map((k) => rmsNorm(k, hn.k.w, c.norm.eps, c.gemma !== undefined))
    })
  const local = c.slidingWindow?.layers[layerIndex] === true
  // a token sees itself and the window - 1 tokens before it
  const first = (t: number) => (local ? Math.max(0, t - c.slidingWindow!.size + 1) : 0)
  const positions = local && c.gemma?.localPositions ? c.gemma.localPositions : c.positions
  const scale = c.gemma ? 1 / Math.sqrt(c.gemma.queryPreAttnScalar) : 1 / Math.sqrt(hd)
  if (positions.kind === "rope") {
    const s = positions.scaling
    const ropeScale = s.kind === "yarn" || s.kind === "longrope" ? s.attentionFactor : 1
    qkv.forEach((p, t) => {
      const invFreq = ropeInverseFrequencies(positions, ropeLengths[t])
      p.q = p.q.map((q) => rotate(q, t, invFreq, ropeScale))
      p.k = p.k.map((k) => rotate(k, t, invFreq, ropeScale))
    })
  }
  const groupSize = nh / nkv // query heads sharing one key/value head
  return xs.map((_, t) => {
    const out = new Float64Array(nh * hd)
    for (let head = 0; head < nh; head++) {
      const kvHead = Math.floor(head / groupSize)
      const scores: number[] = []
      for (let s = first(t); s <= t; s++) {
        let dot = 0
        for (let i = 0; i < hd; i++) dot += qkv[t].q[head][i] * qkv[s].k[kvHead][i]
        scores.push(softcap(dot * scale, c.gemma?.attnLogitSoftcap))
      }
      const max = Math.max(...scores)
      const weights = scores.map((s) => Math.exp(s - max))
      const total = weights.reduce((x, y) => x + y, 0)
      for (let s = first(t); s <= t; s++) for (let i = 0; i < hd; i++) out[head * hd + i] += (weights[s - first(t)] / total) * qkv[s].v[kvHead][i]
    }
    return linear(a.o, out)
  })
}

const mlp = (c: ModelConfig, l: LayerParams, x: Vec): Vec => {
  const act = activations[c.activation]
  const m = l.mlp
  if (m.kind === "gated_fused") {
    // Phi-3 gate_up_proj: first intermediateSize outputs are the gate, the rest the up projection
    const gateUp = linear(m.gateUp, x)
    const n = c.intermediateSize
    return linear(m.down, Float64Array.from({ length: n }, (_, i) => act(gateUp[i]) * gateUp[n + i]))
  }
  const up = linear(m.up, x)
  const hidden = m.gate ? linear(m.gate, x).map((g, i) => act(g) * up[i]) : up.map(act)
  return linear(m.down, hidden)
}

/**
 * Logits [seq][vocab] of a model on one sequence (no padding, positions 0..seq-1) of token ids or
 * input embeddings (HF's inputs_embeds: a vector of hiddenSize numbers, e.g. a soft prompt; Gemma 2
 * scales these by sqrt(hidden) like its token embeddings, Gemma 3 takes them as they are).
 * The rope types that depend on the sequence length (dynamic, longrope) use the whole sequence's
 * length, unless `ropeLengths` gives, per position, the length of the forward that computed it:
 * what a KV-cache decode does, where cached keys keep the rotation of an earlier, shorter forward.
 */
export const referenceForward = (
  model: ReferenceModel,
  tokenIds: ReadonlyArray<number | ArrayLike<number>>,
  ropeLengths: ReadonlyArray<number> = tokenIds.map(() => tokenIds.length),
): Float64Array[] => {
  const c = model.config
  if (ropeLengths.length !== tokenIds.length) throw new Error(`${ropeLengths.length} rope lengths for ${tokenIds.length} tokens`)
  const norm = (p: NormParams, x: Vec) => (c.norm.kind === "rms" ? rmsNorm(x, p.w, c.norm.eps, c.gemma !== undefined) : layerNorm(x, p.w, p.b, c.norm.eps))
  const embedScale = c.gemma ? roundToDtype(Math.sqrt(c.hiddenSize), model.embedDtype) : 1
  const inputScale = c.gemma?.embedScale === "all_inputs" ? embedScale : 1
  let xs = tokenIds.map((id, t) => {
    let e: Vec
    if (typeof id !== "number") {
      if (id.length !== c.hiddenSize) throw new Error(`input embedding at position ${t} has ${id.length} values, expected ${c.hiddenSize}`)
      e = Float64Array.from(id, (v) => v * inputScale)
    } else {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new Error(`token id ${id} outside the vocabulary of ${c.vocabSize}`)
      e = row(model.embedTokens, id).map((v) => v * embedScale)
    }
    return model.embedPositions ? add(e, row(model.embedPositions, t)) : e
  })
  model.layers.forEach((layer, l) => {
    const attn = attention(c, l, layer, xs.map((x) => norm(layer.norm1, x)), ropeLengths)
    if (c.parallelResidual) {
      xs = xs.map((x, t) => add(add(x, attn[t]), mlp(c, layer, norm(layer.norm2, x))))
    } else {
      const out = layer.outputNorms
      const hs = xs.map((x, t) => add(x, out ? norm(out.attention, attn[t]) : attn[t]))
      xs = hs.map((h) => {
        const m = mlp(c, layer, norm(layer.norm2, h))
        return add(h, out ? norm(out.mlp, m) : m)
      })
    }
  })
  return xs.map((x) => linear({ w: model.lmHead, b: undefined }, norm(model.finalNorm, x)).map((z) => softcap(z, c.gemma?.finalLogitSoftcap)))
}

/**
 * Logits of the checkpoint in `modelDir` on `tokenIds`: one Float64Array of length vocabSize per
 * position. Throws an Error with the checkpoint's own message when the directory cannot be loaded.
 */
export const referenceLogits = (modelDir: string, tokenIds: ReadonlyArray<number>): Float64Array[] => {
  const ckpt = Effect.runSync(Effect.mapError(loadCheckpoint(modelDir), (e) => new Error(e.message)))
  return referenceForward(referenceModel(ckpt), tokenIds)
}
