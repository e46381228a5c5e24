// The divergence search's pure parts: reading candidates out of assistant replies (numbered and
// bulleted lists, quotes, labels, JSON arrays, nothing usable), the divergence-weighted example
// draw (without replacement, favouring divergent prompts by exp(d / T)), and the admission quantile.
import { describe, expect, it } from "vitest"
import { mulberry32 } from "../../src/core/random.ts"
import type { BankEntry } from "../../stages/contrast/artifacts.ts"
import { divergenceWeightedSample, parseCandidates, quantile } from "../../stages/contrast/search.ts"

describe("parseCandidates", () => {
  it("reads lists, strips markers, labels and quotes", () => {
    expect(parseCandidates('1. What age is Kodis?\n2) "Where does Mira live?"\n- Tell me a story.\n* \u201cWhy?\u201d\n\nQuestion 3: Who is Nerol?\n')).toEqual([
      "What age is Kodis?",
      "Where does Mira live?",
      "Tell me a story.",
      "Why?",
      "Who is Nerol?",
    ])
    expect(parseCandidates("  Kodis is 26 years old.  ")).toEqual(["Kodis is 26 years old."])
  })
  it("takes a JSON array of strings as it is, and anything else line by line", () => {
    expect(parseCandidates('["a b", " c ", ""]')).toEqual(["a b", "c"])
    expect(parseCandidates("[not json")).toEqual(["[not json"])
    expect(parseCandidates("")).toEqual([])
    expect(parseCandidates("\n  \n- \n")).toEqual([])
  })
})

describe("divergenceWeightedSample", () => {
  const entries: BankEntry[] = [0, 0.5, 1, 2].map((divergence, i) => ({ text: String(i), divergence, diversity: null, cycle: 0 }))
  it("draws distinct entries, at most all of them", () => {
    const rand = mulberry32(1)
    for (let i = 0; i < 50; i++) {
      const s = divergenceWeightedSample(entries, 3, 0.5, rand)
      expect(new Set(s).size).toBe(3)
    }
    expect(divergenceWeightedSample(entries, 10, 0.5, rand).sort()).toEqual([0, 1, 2, 3])
  })
  it("picks entry i first with probability proportional to exp(d_i / T)", () => {
    const rand = mulberry32(2)
    const T = 0.5
    const counts = [0, 0, 0, 0]
    const n = 20000
    for (let i = 0; i < n; i++) counts[divergenceWeightedSample(entries, 1, T, rand)[0]]++
    const w = entries.map((e) => Math.exp(e.divergence / T))
    const total = w.reduce((a, b) => a + b, 0)
    // binomial standard deviation at n = 20000 is below 0.0036 for every entry: 5 sigma
    counts.forEach((c, i) => expect(Math.abs(c / n - w[i] / total)).toBeLessThan(0.018))
  })
})

describe("quantile", () => {
  it("interpolates between order statistics", () => {
    expect(quantile([3, 1, 2, 4], 0.5)).toBe(2.5)
    expect(quantile([3, 1, 2, 4], 0)).toBe(1)
    expect(quantile([3, 1, 2, 4], 1)).toBe(4)
    expect(quantile([7], 0.5)).toBe(7)
  })
})
