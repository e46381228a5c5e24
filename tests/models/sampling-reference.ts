// The float64 references of sampling.ts: the filtered sampling distribution and the token its
// inverse CDF picks, for tests of anything that samples in-graph.

/** The filtered sampling distribution: temperature, top-k, then top-p on the renormalized top-k. */
export const filtered = (logits: readonly number[], temperature: number, topK: number, topP: number): number[] => {
  const order = logits.map((_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b)
  if (temperature === 0) return logits.map((_, i) => (i === order[0] ? 1 : 0))
  const max = logits[order[0]]
  const w = logits.map((l) => Math.exp((l - max) / temperature))
  const k = topK <= 0 ? logits.length : Math.min(topK, logits.length)
  const top = order.slice(0, k)
  const massK = top.reduce((s, i) => s + w[i], 0)
  const kept: number[] = []
  let before = 0
  for (const i of top) {
    if (kept.length > 0 && before >= topP) break
    kept.push(i)
    before += w[i] / massK
  }
  const total = kept.reduce((s, i) => s + w[i], 0)
  const p = new Array<number>(logits.length).fill(0)
  for (const i of kept) p[i] = w[i] / total
  return p
}

/** float64 log_softmax of one row. */
export const logSoftmax = (l: readonly number[]) => {
  const m = Math.max(...l)
  const lse = m + Math.log(l.reduce((s, x) => s + Math.exp(x - m), 0))
  return l.map((x) => x - lse)
}

/**
 * The token sampleTokens picks from `logits` with uniform `u`, and how far u * total lies from the
 * nearest cumulative-mass boundary (as a fraction of the total): a float32 graph may pick a
 * neighbour only when that margin is below its rounding (~1e-6).
 */
export const sampledToken = (logits: readonly number[], temperature: number, topK: number, topP: number, u: number): { token: number; margin: number } => {
  const p = filtered(logits, temperature, topK, topP)
  const order = logits.map((_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b).filter((i) => p[i] > 0)
  let cdf = 0
  for (const i of order) {
    const next = cdf + p[i]
    if (next > u || i === order[order.length - 1]) return { token: i, margin: Math.min(u - cdf, next - u) }
    cdf = next
  }
  throw new Error("unreachable: the kept set is never empty")
}
