// The TPE sampler (src/core/tpe.ts) on synthetic objectives with a known optimum.
import { describe, expect, it } from "vitest"
import { type Dimension, spaceProblem, suggestTpe, type Trial } from "../../src/core/tpe.ts"

const space: Dimension[] = [
  { name: "a", low: 0.25, high: 4, log: true },
  { name: "b", low: 0.25, high: 4, log: true },
  { name: "c", low: -2, high: 2 },
]
// optimum at a = 0.8, b = 1.7, c = -0.6 (value 0); smooth, and anisotropic so a wrong axis scale shows
const optimum = { a: 0.8, b: 1.7, c: -0.6 }
const objective = (p: Readonly<Record<string, number>>) => (Math.log(p.a / optimum.a) ** 2) * 4 + Math.log(p.b / optimum.b) ** 2 + (p.c - optimum.c) ** 2

const search = (n: number, seed: number, startup?: number) => {
  const history: Trial[] = []
  for (let i = 0; i < n; i++) {
    const params = suggestTpe(space, history, { seed, ...(startup === undefined ? {} : { startup }) })
    history.push({ params, value: objective(params) })
  }
  return history
}
const bestOf = (h: ReadonlyArray<Trial>) => h.reduce((a, b) => (b.value < a.value ? b : a))

describe("TPE", () => {
  it("finds the known optimum of a 3-D objective within 100 trials", () => {
    for (const seed of [1, 2, 3]) {
      const best = bestOf(search(100, seed))
      // a 1% miss in a costs 4e-4; these bounds are ~5% of each log range / 2.5% of c's range
      expect(Math.abs(Math.log(best.params.a / optimum.a)), `seed ${seed}: a`).toBeLessThan(0.08)
      expect(Math.abs(Math.log(best.params.b / optimum.b)), `seed ${seed}: b`).toBeLessThan(0.15)
      expect(Math.abs(best.params.c - optimum.c), `seed ${seed}: c`).toBeLessThan(0.15)
    }
  })

  it("beats random search of the same budget (the model is used, not just the prior)", () => {
    const seeds = [11, 12, 13, 14, 15, 16]
    // startup = budget: every trial uniform, i.e. random search with the same generator
    const tpe = seeds.map((s) => bestOf(search(60, s)).value).sort((x, y) => x - y)
    const random = seeds.map((s) => bestOf(search(60, s, 60)).value).sort((x, y) => x - y)
    expect(tpe[3]).toBeLessThan(random[3] / 5)
  })

  it("stays in the box and on its scale, and is a function of (space, history, seed) only", () => {
    const h = search(40, 7)
    for (const t of h) {
      expect(t.params.a).toBeGreaterThanOrEqual(0.25)
      expect(t.params.a).toBeLessThanOrEqual(4)
      expect(t.params.c).toBeGreaterThanOrEqual(-2)
      expect(t.params.c).toBeLessThanOrEqual(2)
    }
    // resuming from a recorded history suggests what the uninterrupted run did
    expect(suggestTpe(space, h.slice(0, 25), { seed: 7 })).toEqual(h[25].params)
    expect(search(40, 8).map((t) => t.params)).not.toEqual(h.map((t) => t.params))
  })

  it("ranks a non-finite value last and refuses a bad space", () => {
    const h: Trial[] = search(12, 3).map((t, i) => (i === 0 ? { ...t, value: Number.NaN } : t))
    expect(() => suggestTpe(space, h, { seed: 3 })).not.toThrow()
    expect(spaceProblem([{ name: "t", low: 0, high: 1, log: true }])).toMatch(/log-scale dimension needs low > 0/)
    expect(spaceProblem([{ name: "t", low: 1, high: 1 }])).toMatch(/finite low < high/)
  })
})
