// Rotary position embeddings in the graph, for every rope type of transformers'
// modeling_rope_utils.py that ModelConfig can express (default, linear, llama3, yarn, dynamic,
// longrope), with the "rotate_half" pairing (feature i with i + rotaryDim/2).
//
// Two rope types depend on the sequence length L = the largest position id + 1 of the current
// forward: dynamic (NTK base grows with L past max_position_embeddings) and longrope (long
// factors once L exceeds original_max_position_embeddings). L is taken per batch row, so a
// left-padded row gives the same outputs as the row alone (transformers takes the maximum over
// the whole batch). With a KV cache, keys keep the rotation of the forward that computed them
// and only the new tokens use the current L: this is what transformers' generate does (its cache
// holds rotated keys too), so cached decoding past the threshold differs from a full recompute
// of the same sequence, in transformers as here.
import type { Graph, Value } from "../graph/index.ts"
import type { ModelConfig } from "./config-architecture.ts"

export type RopePositions = Extract<ModelConfig["positions"], { kind: "rope" }>

/** theta^(-2i/d) for each rotated pair i. */
const unscaledFrequencies = (p: RopePositions): number[] => Array.from({ length: p.rotaryDim / 2 }, (_, i) => 1 / p.theta ** ((2 * i) / p.rotaryDim))

/**
 * Rotary inverse frequencies, one per rotated pair, for the sequence-length-independent part:
 * dynamic returns the unscaled frequencies (its scaling is applied in-graph), longrope the
 * short-factor ones.
 */
export const ropeInverseFrequencies = (positions: RopePositions): number[] => {
  const d = positions.rotaryDim
  const base = unscaledFrequencies(positions)
  const s = positions.scaling
  switch (s.kind) {
    case "none":
    case "dynamic":
      return base
    case "linear":
      return base.map((f) => f / s.factor)
    case "longrope":
      return base.map((f, i) => f / s.shortFactor[i])
    case "llama3": {
      const lowWavelen = s.originalMaxPositions / s.lowFreqFactor
      const highWavelen = s.originalMaxPositions / s.highFreqFactor
      return base.map((f) => {
        const wavelen = (2 * Math.PI) / f
        if (wavelen < highWavelen) return f
        if (wavelen > lowWavelen) return f / s.factor
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
        return (1 - smooth) * (f / s.factor) + smooth * f
      })
    }
    case "yarn": {
      // the pair index whose wavelength fits `rotations` turns into the original context
      const correctionDim = (rotations: number) => (d * Math.log(s.originalMaxPositions / (rotations * 2 * Math.PI))) / (2 * Math.log(positions.theta))
      const [lo, hi] = [correctionDim(s.betaFast), correctionDim(s.betaSlow)]
      const low = Math.max(s.truncate ? Math.floor(lo) : lo, 0)
      const high0 = Math.min(s.truncate ? Math.ceil(hi) : hi, d - 1)
      const high = low === high0 ? high0 + 0.001 : high0
      return base.map((f, i) => {
        const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1)
        return (f / s.factor) * ramp + f * (1 - ramp)
      })
    }
  }
}

/**
 * The longest sequence a model is meant for: max_position_embeddings, times the factor of a
 * linear or dynamic scaling, or yarn's original_max_position_embeddings times its factor (vLLM's
 * rule: Qwen2.5's yarn config keeps max_position_embeddings at 32768 for a 131072 context);
 * llama3 and longrope configs already state the extended length.
 */
export const contextLength = (c: ModelConfig): { readonly length: number; readonly why: string } => {
  const max = { length: c.maxPositions, why: "max_position_embeddings" }
  if (c.positions.kind !== "rope") return max
  const s = c.positions.scaling
  switch (s.kind) {
    case "linear":
    case "dynamic":
      return { length: Math.floor(c.maxPositions * s.factor), why: `max_position_embeddings ${c.maxPositions} x ${s.kind} rope factor ${s.factor}` }
    case "yarn":
      return { length: Math.floor(s.originalMaxPositions * s.factor), why: `original_max_position_embeddings ${s.originalMaxPositions} x yarn factor ${s.factor}` }
    default:
      return max
  }
}

/** The factor yarn and longrope multiply cos and sin by (1 for the others). */
export const ropeAttentionFactor = (positions: RopePositions): number =>
  positions.scaling.kind === "yarn" || positions.scaling.kind === "longrope" ? positions.scaling.attentionFactor : 1

/**
 * Inverse frequencies for the rows of `positions` (int64 [B, T]): a constant [half] for the
 * rope types that ignore the sequence length, else [B, 1, half] from each row's L.
 */
const inverseFrequencies = (g: Graph, p: RopePositions, positions: Value): Value => {
  const fixed = g.constant("float32", [p.rotaryDim / 2], ropeInverseFrequencies(p))
  const s = p.scaling
  if (s.kind !== "dynamic" && s.kind !== "longrope") return fixed
  const L = g.unsqueeze(g.add(g.reduceMax(g.cast(positions, "float32"), [1], true), g.scalar(1)), [2]) // [B, 1, 1]
  if (s.kind === "longrope") {
    const long = g.constant("float32", [p.rotaryDim / 2], unscaledFrequencies(p).map((f, i) => f / s.longFactor[i]))
    return g.where(g.greater(L, g.scalar(s.originalMaxPositions)), long, fixed)
  }
  // base' = base * r^(d/(d-2)) with r = factor*L/max - (factor-1), at least 1 (L <= max leaves
  // the base alone), so 1/base'^(2i/d) = (1/base^(2i/d)) * r^(-2i/(d-2)).
  const d = p.rotaryDim
  const r = g.max(g.sub(g.mul(L, g.scalar(s.factor / s.maxPositions)), g.scalar(s.factor - 1)), g.scalar(1))
  const exponents = g.constant("float32", [d / 2], Array.from({ length: d / 2 }, (_, i) => (i === 0 ? 0 : (-2 * i) / (d - 2))))
  return g.mul(fixed, g.pow(r, exponents))
}

/**
 * Returns the function that rotates a [B, heads, T, headDim] query or key tensor at `positions`
 * (int64 [B, T]); features past rotaryDim pass through unscaled, as in transformers.
 */
export const ropeRotation = (g: Graph, p: RopePositions, headDim: number, positions: Value): ((v: Value) => Value) => {
  const rd = p.rotaryDim
  const half = rd / 2
  const angles = g.mul(g.unsqueeze(g.cast(positions, "float32"), [2]), inverseFrequencies(g, p, positions)) // [B, T, half]
  const factor = ropeAttentionFactor(p)
  const scaled = (v: Value) => (factor === 1 ? v : g.mul(v, g.scalar(factor)))
  const cos = g.unsqueeze(scaled(g.cos(angles)), [1]) // [B, 1, T, half]
  const sin = g.unsqueeze(scaled(g.sin(angles)), [1])
  return (v: Value) => {
    const [rot, rest] = rd < headDim ? g.split(v, [rd, headDim - rd], -1) : [v, undefined]
    const [x1, x2] = g.split(rot, [half, half], -1)
    const rotated = g.concat([g.sub(g.mul(x1, cos), g.mul(x2, sin)), g.add(g.mul(x2, cos), g.mul(x1, sin))], -1)
    return rest ? g.concat([rotated, rest], -1) : rotated
  }
}
