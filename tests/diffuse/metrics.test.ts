// Sample metrics on hand-made answers, against values computed by hand.
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { setMetrics, variantMetrics } from "../../stages/diffuse/metrics.ts"
import { reportMarkdown, histogramSpec } from "../../stages/diffuse/report.ts"
import { tally } from "../../stages/diffuse/sample.ts"

const answers = (xs: Array<[string, number, boolean?]>) => xs.map(([text, count, complete]) => ({ text, count, complete: complete ?? true }))

describe("diffuse metrics", () => {
  it("valid share, coverage, entropy, KL, TV and top share of hand-made samples", () => {
    // targets a, b, c with p* = 1/2, 1/4, 1/4; 8 samples: a x4, b x2, " a" x1 (not exactly a target),
    // "c" x1 cut at maxNewTokens (not complete, so not valid)
    const m = variantMetrics("tuned", ["a", "b", "c"], [0.5, 0.25, 0.25], answers([["a", 4], ["b", 2], [" a", 1], ["c", 1, false]]))
    expect(m.counts).toEqual([4, 2, 0])
    expect(m.other).toBe(2)
    expect(m.n).toBe(8)
    expect(m.validShare).toBe(6 / 8)
    expect(m.covered).toBe(2)
    expect(m.coverage).toBeCloseTo(2 / 3, 15)
    // valid answers a:b = 4:2
    const h = -(4 / 6) * Math.log(4 / 6) - (2 / 6) * Math.log(2 / 6)
    expect(m.entropy).toBeCloseTo(h, 14)
    const hStar = 1.5 * Math.log(2)
    expect(m.entropyRatio).toBeCloseTo(h / hStar, 14)
    // add-1/2 over 3 targets + other: denominator 8 + 0.5 * 4 = 10
    const q = [4.5 / 10, 2.5 / 10, 0.5 / 10]
    expect(m.kl).toBeCloseTo(0.5 * Math.log(0.5 / q[0]) + 0.25 * Math.log(0.25 / q[1]) + 0.25 * Math.log(0.25 / q[2]), 14)
    // TV = 1/2 (|0.5 - 0.5| + |0.25 - 0.25| + |0.25 - 0| + 2/8)
    expect(m.tv).toBeCloseTo(0.25, 15)
    expect(m.topAnswer).toBe("a")
    expect(m.topShare).toBe(0.5)
  })

  it("a perfect uniform sample has KL only from smoothing, TV 0, entropy ratio 1", () => {
    const targets = Array.from({ length: 10 }, (_, i) => String(i + 1))
    const m = variantMetrics("tuned", targets, Array(10).fill(0.1), answers(targets.map((t) => [t, 100])))
    expect(m.validShare).toBe(1)
    expect(m.coverage).toBe(1)
    expect(m.entropyRatio).toBeCloseTo(1, 14)
    expect(m.tv).toBeCloseTo(0, 15)
    // q = 100.5 / 1005.5 per target: KL = ln(0.1 / (100.5 / 1005.5))
    expect(m.kl).toBeCloseTo(Math.log(0.1 / (100.5 / 1005.5)), 14)
    expect(m.kl).toBeLessThan(1e-3)
  })

  it("no valid answer: entropy 0, coverage 0, TV 1", () => {
    const m = variantMetrics("untuned", ["x", "y"], [0.5, 0.5], answers([["7", 5]]))
    expect([m.validShare, m.coverage, m.entropy, m.tv, m.topShare]).toEqual([0, 0, 0, 1, 1])
    // N = 5, K = 2: q = 0.5 / (5 + 0.5 * 3) for both targets
    expect(m.kl).toBeCloseTo(Math.log(0.5 / (0.5 / 6.5)), 14)
  })

  it("tallies answers by text and termination, most frequent first", () => {
    expect(tally([{ text: "b", complete: true }, { text: "a", complete: true }, { text: "b", complete: true }, { text: "b", complete: false }])).toEqual([
      { text: "b", complete: true, count: 2 },
      { text: "a", complete: true, count: 1 },
      { text: "b", complete: false, count: 1 },
    ])
  })

  it("a set's metrics, its means, the report table and a histogram spec", () => {
    const prompts = {
      source: "set",
      prompts: [
        { id: "p", file: "p.json", request: "Pick.", responses: [""], targets: ["a", "b"], weights: [0.5, 0.5] },
        { id: "q", file: "q.json", request: "Choose.", responses: [""], targets: ["x"], weights: [1] },
      ],
    }
    const samples = (label: string, p: Array<[string, number]>, q: Array<[string, number]>) => ({ label, n: 4, prompts: [{ id: "p", answers: answers(p) }, { id: "q", answers: answers(q) }] })
    const m = Effect.runSync(setMetrics("held-out", prompts, [samples("untuned", [["a", 4]], [["z", 4]]), samples("tuned", [["a", 2], ["b", 2]], [["x", 4]])]))
    expect(m.overall.map((o) => [o.label, o.validShare, o.coverage])).toEqual([
      ["untuned", 0.5, 0.25],
      ["tuned", 1, 1],
    ])
    // H(p*) = 0 for a single target: no entropy ratio
    expect(m.prompts[1].variants[1].entropyRatio).toBeNull()
    const md = reportMarkdown({ optimalLoss: Math.log(2), passLosses: [3, 1, 0.7], passesRun: 2, stoppedEarly: false, threshold: null, prompts: [{ id: "p", optimal: Math.log(2), loss: 0.7, targetMass: 0.99 }] }, [m])
    expect(md).toContain("| q | tuned | 100.0% | 1/1 |")
    expect(md).toContain("| p | untuned | 100.0% | 1/2 | 0.000 | 0.693 | 0.00 |")
    const spec = histogramSpec("held-out", m.prompts[0])
    const values = (spec.data as { values: Array<{ answer: string; source: string; share: number }> }).values
    expect(values.filter((v) => v.source === "tuned").map((v) => [v.answer, v.share])).toEqual([["a", 0.5], ["b", 0.5], ["(other)", 0]])
    expect(values.filter((v) => v.source === "target p*").map((v) => v.share)).toEqual([0.5, 0.5, 0])
    // a mismatched sample set is refused with both prompt lists named
    const wrong = Effect.runSync(Effect.exit(setMetrics("x", prompts, [{ label: "tuned", n: 1, prompts: [{ id: "p", answers: [] }] }])))
    expect(JSON.stringify(wrong)).toContain('the \\"tuned\\" samples are of the prompts [p], not of the set set [p, q]')
  })
})
