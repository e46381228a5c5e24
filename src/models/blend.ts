// The blend and proxy-tuning rules of seed 003, and their evaluation on stored member
// distributions (float64, on the host).
//
//   blendRule(kind, params): the ensemble.ts logit-space rule
//     blend  big/T_b + (tuned/T_t - untuned/T_u)          params { T_b, T_t, T_u }
//     proxy  big + alpha * (tuned - untuned)                params { alpha }
//   A per-member weight is not a further degree of freedom: w * log_softmax(z / T) equals
//   (w / T) * z up to a constant per row, which the final log-softmax removes, so the three
//   temperatures already span every weighting of the three members.
//
//   ruleLogProbs(rule, rows, { topK? }) -> Float64Array: log p_rule(target) at every stored row
//     rows: each member's log-softmax over the vocabulary [N, V] (float32 in memory, whatever the
//     artifact stored) and the targets. With topK, each member's row is first cut to what an API
//     that returns only the top k log-probs gives (seed 003's situation): the k largest values
//     kept, the remaining mass 1 - Σ exp(top k) spread evenly over the other V - k tokens (floored
//     at 1e-9, as float rounding can make the top k sum past 1). The rule then runs on these rows
//     exactly as on full ones, so the two modes differ only in what the members reveal.
import type { CombinationRule, LogitTerm } from "./ensemble.ts"

export type BlendKind = "blend" | "proxy"

/** The three member roles every blend uses (proxy tuning: tuned = the small expert, untuned = its base). */
export const blendRoles = ["big", "tuned", "untuned"] as const
export type BlendRole = (typeof blendRoles)[number]

export const blendRule = (kind: BlendKind, params: Readonly<Record<string, number>>): CombinationRule & { space: "logits" } => {
  const terms: LogitTerm[] =
    kind === "blend"
      ? [
          { member: "big", weight: 1, temperature: params.T_b },
          { member: "tuned", weight: 1, temperature: params.T_t },
          { member: "untuned", weight: -1, temperature: params.T_u },
        ]
      : [
          { member: "big", weight: 1 },
          { member: "tuned", weight: params.alpha },
          { member: "untuned", weight: -params.alpha },
        ]
  return { space: "logits", terms }
}

export interface MemberRows {
  readonly rows: number
  readonly vocab: number
  /** member name -> log-probs [rows, vocab] */
  readonly logProbs: ReadonlyMap<string, Float32Array>
  /** the token each row predicts */
  readonly targets: Int32Array
}

const logSumExp = (x: Float64Array) => {
  let m = -Infinity
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i]
  let s = 0
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m)
  return m + Math.log(s)
}

const TAIL_FLOOR = 1e-9

/** `row` cut to its top k with the rest of the mass spread evenly (see the file header), into `out`. */
export const topKRow = (row: Float32Array, k: number, out: Float64Array): void => {
  const V = row.length
  const top: number[] = []
  for (let i = 0; i < V; i++) {
    if (top.length < k) top.push(i)
    else if (row[i] > row[top[k - 1]]) top[k - 1] = i
    else continue
    top.sort((a, b) => row[b] - row[a])
  }
  const tail = Math.max(TAIL_FLOOR, 1 - top.reduce((s, i) => s + Math.exp(row[i]), 0))
  out.fill(V > k ? Math.log(tail / (V - k)) : -Infinity)
  for (const i of top) out[i] = row[i]
}

/** log p_rule(target) at every row (see the file header). */
export const ruleLogProbs = (rule: CombinationRule & { space: "logits" }, rows: MemberRows, options: { readonly topK?: number } = {}): Float64Array => {
  const { vocab: V, topK } = { ...rows, ...options }
  const out = new Float64Array(rows.rows)
  const members = [...new Set(rule.terms.map((t) => t.member))]
  const seen = new Map(members.map((m) => [m, new Float64Array(V)]))
  const scaled = new Float64Array(V)
  const acc = new Float64Array(V)
  for (let r = 0; r < rows.rows; r++) {
    for (const m of members) {
      const row = rows.logProbs.get(m)!.subarray(r * V, (r + 1) * V)
      if (topK === undefined) seen.get(m)!.set(row)
      else topKRow(row, topK, seen.get(m)!)
    }
    acc.fill(0)
    for (const t of rule.terms) {
      const x = seen.get(t.member)!
      const T = t.temperature ?? 1
      for (let i = 0; i < V; i++) scaled[i] = x[i] / T
      const lse = logSumExp(scaled)
      for (let i = 0; i < V; i++) acc[i] += t.weight * (scaled[i] - lse)
    }
    out[r] = acc[rows.targets[r]] - logSumExp(acc)
  }
  return out
}
