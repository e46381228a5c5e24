// In-graph token sampling from next-token logits [B, V], one set of knobs per row:
//
//   temperature  float32 [B]  0 = greedy (argmax; ties go to the lower token id)
//   top_k        int64   [B]  keep the k most likely tokens; 0 = no limit
//   top_p        float32 [B]  nucleus: keep the smallest most-likely set whose mass reaches p; 1 = off
//   uniform      float32 [B]  one uniform in [0, 1) per row, drawn on the host by `requestUniform`
//
// The order follows Hugging Face `generate`: temperature, then top-k, then top-p on the
// distribution renormalized over the top-k survivors. The row is sorted once (TopK over the
// whole vocabulary); every filter keeps a prefix of that order, and the token is picked by
// inverse CDF: the first sorted position whose cumulative kept mass exceeds uniform * total.
//
// The uniforms come in as an input so that a request's tokens depend only on its own seed and
// step, never on which other requests share the batch.
//
// `logProb` is the chosen token's log-probability under the model's UNMODIFIED distribution
// (log_softmax of the raw logits: temperature 1, no top-k/top-p), i.e. what scoring the
// sampled text with the model gives; the filtered sampling distribution is not reported.
import type { Graph, Value } from "../graph/index.ts"

export interface SamplingInputs {
  readonly temperature: Value
  readonly topK: Value
  readonly topP: Value
  readonly uniform: Value
}

export interface Sampled {
  /** int64 [B] */
  readonly token: Value
  /** float32 [B]: log p(token) under log_softmax(logits) */
  readonly logProb: Value
}

/** Declares the four per-row sampling inputs under their standard names. */
export const samplingInputs = (g: Graph, batch: string | number = "B"): SamplingInputs => ({
  temperature: g.input("temperature", "float32", [batch]),
  topK: g.input("top_k", "int64", [batch]),
  topP: g.input("top_p", "float32", [batch]),
  uniform: g.input("uniform", "float32", [batch]),
})

/**
 * Samples one token per row of `logits` (float32 [B, vocab]); `vocab` must be the static width.
 * `modelLogits` (default `logits`) is what `logProb` is computed from: pass the raw model logits
 * when `logits` carries constraints (e.g. EOS banned before the minimum length).
 */
export const sampleTokens = (g: Graph, logits: Value, s: SamplingInputs, vocab: number, modelLogits: Value = logits): Sampled => {
  const col = (v: Value) => g.unsqueeze(v, [1]) // [B] -> [B, 1]
  const [sorted, order] = g.topK(logits, vocab, 1) // descending, ties by lower index first
  const rank = g.constant("int64", [1, vocab], Array.from({ length: vocab }, (_, i) => i))

  const greedy = g.equal(s.temperature, g.scalar(0))
  const temperature = g.where(greedy, g.scalar(1), s.temperature)
  const probs = g.softmax(g.div(sorted, col(temperature)), 1)

  // top-k (and greedy = top-1) as a prefix length per row
  const kOff = g.lessOrEqual(s.topK, g.scalar(0, "int64"))
  const k = g.where(greedy, g.scalar(1, "int64"), g.where(kOff, g.scalar(vocab, "int64"), g.min(s.topK, g.scalar(vocab, "int64"))))
  const keepK = g.less(rank, col(k))
  const zero = g.scalar(0)
  const massK = g.where(keepK, probs, zero)
  // top-p over the top-k survivors renormalized: keep a token while the mass before it is < p;
  // the most likely token is always kept (so p = 0 is greedy, as in Hugging Face)
  const renorm = g.div(massK, g.reduceSum(massK, [1], true))
  const before = g.cumSum(renorm, 1, { exclusive: true })
  const keep = g.and(keepK, g.or(g.less(before, col(s.topP)), g.equal(rank, g.scalar(0, "int64"))))
  const weights = g.where(keep, probs, zero)

  // inverse CDF: number of kept positions whose cumulative mass is <= u * total
  const cdf = g.cumSum(weights, 1)
  const target = g.mul(col(s.uniform), g.reduceSum(weights, [1], true))
  const below = g.reduceSum(g.cast(g.lessOrEqual(cdf, target), "float32"), [1], true)
  const kept = g.reduceSum(g.cast(keep, "float32"), [1], true)
  // float rounding can put u * total at the last cdf value: stay on the last kept position
  const pos = g.cast(g.min(below, g.sub(kept, g.scalar(1))), "int64")
  const token = g.squeeze(g.gatherElements(order, pos, 1), [1])

  const logProb = g.squeeze(g.gatherElements(g.logSoftmax(modelLogits, 1), col(token), 1), [1])
  return { token, logProb }
}

/**
 * The uniform in [0, 1) that request `seed` uses at generation step `step`: a counter-based
 * hash (two rounds of the murmur3 finalizer over seed and step), so the value depends on
 * (seed, step) alone. 24 bits, exactly representable in float32 and strictly below 1.
 */
export const requestUniform = (seed: number, step: number): number => {
  const mix = (h: number) => {
    h ^= h >>> 16
    h = Math.imul(h, 0x85ebca6b)
    h ^= h >>> 13
    h = Math.imul(h, 0xc2b2ae35)
    return (h ^ (h >>> 16)) >>> 0
  }
  const h = mix((mix(seed >>> 0) ^ Math.imul(step + 1, 0x9e3779b9)) >>> 0)
  return (h >>> 8) / 16777216
}
