// evaluate-blend's context buckets: the same targets scored with the last 1, 2, 4 tokens (BOS kept)
// and with the full context, each member and the blend in one ensemble graph, against the float64
// reference (tests/reference/reference.ts) run on exactly the truncated inputs.
//
// Tolerance: 1e-4 relative on perplexities, from 1e-4 absolute on each float32 log-prob (see
// tests/blend/search.test.ts) averaged over the targets.
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { blendRule } from "../../src/models/blend.ts"
import { perplexity } from "../../src/models/scoring.ts"
import { bucketTargets, scoreBuckets, tokensBackBuckets } from "../../stages/blend/evaluate.ts"
import { logSoftmax } from "../models/sampling-reference.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { type BlendFixture, blendFixture, referenceLogProbs, sequences, V } from "./fixture.ts"

let fx: BlendFixture
beforeAll(async () => {
  fx = await blendFixture()
}, 60_000)
afterAll(() => fx.cleanup())

describe("context buckets", () => {
  it("are 1, 2, 4, ... up to the maximum, and the same targets in every bucket", () => {
    expect(tokensBackBuckets(8)).toEqual([1, 2, 4, 8])
    expect(tokensBackBuckets(12)).toEqual([1, 2, 4, 8, 12])
    expect(tokensBackBuckets(1)).toEqual([1])
    const ids = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4, 5, 6, 7, 8]]
    // target j has j - 1 text tokens before it
    expect(bucketTargets({ ids, scoredFrom: [1, 1, 1] }, 3, 0)).toEqual([[0, 4], [2, 4], [2, 5], [2, 6]])
    expect(bucketTargets({ ids, scoredFrom: [1, 1, 1] }, 3, 2)).toEqual([[0, 4], [2, 5]])
    // only scored targets (a chat's answer from scoredFrom on)
    expect(bucketTargets({ ids, scoredFrom: [1, 1, 5] }, 3, 0)).toEqual([[0, 4], [2, 5], [2, 6]])
  })

  it("truncate the context each model sees: member and blend perplexities per bucket equal the float64 reference", async () => {
    const seqs = sequences([12, 18, 9], 4)
    const targets = bucketTargets({ ids: seqs, scoredFrom: seqs.map(() => 1) }, 4, 0)
    const params = { T_b: 0.8, T_t: 1.5, T_u: 2 }
    const buckets = await Effect.runPromise(
      scoreBuckets(fx.members, "blend", params, seqs, targets, [1, 2, 4], { graphDir: tempDir("pipe-blend-eval-"), batchSize: 7, threads: 0, device: { kind: "cpu" }, node: "test" }),
    )
    expect(buckets.map((b) => b.tokensBack)).toEqual([1, 2, 4, null])
    const rule = blendRule("blend", params)
    for (const b of buckets) {
      expect(b.n).toBe(targets.length)
      const want: Record<string, number[]> = { big: [], tuned: [], untuned: [], blend: [] }
      for (const [i, j] of targets) {
        const input = b.tokensBack === null ? seqs[i].slice(0, j) : [seqs[i][0], ...seqs[i].slice(j - b.tokensBack, j)]
        const lp = new Map(fx.members.map((m) => [m.name, referenceLogProbs(fx.refs.get(m.name)!, input).at(-1)!]))
        for (const [m, row] of lp) want[m].push(row[seqs[i][j]])
        const acc = new Array<number>(V).fill(0)
        for (const t of rule.terms) logSoftmax(lp.get(t.member)!.map((x) => x / t.temperature!)).forEach((x, v) => (acc[v] += t.weight * x))
        want.blend.push(logSoftmax(acc)[seqs[i][j]])
      }
      for (const [name, lps] of Object.entries(want)) expect(Math.abs(b.perplexity[name] / perplexity(lps) - 1), `${name} at ${b.tokensBack ?? "full"}`).toBeLessThan(1e-4)
    }
    // the truncation is real: one token of context is not the full context
    expect(Math.abs(buckets[0].perplexity.big / buckets[3].perplexity.big - 1)).toBeGreaterThan(1e-3)
  })
})
