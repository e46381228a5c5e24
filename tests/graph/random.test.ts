// Counter-based randomness in the graph: the hash equals a BigInt re-implementation bit for bit,
// depends on (index, seed) only (a new session, a new shape's prefix), and dropout built on it
// keeps the stated fraction, is independent across seeds and neighbours, and passes gradients
// through the kept elements only.
import { describe, expect, it } from "vitest"
import { gradients, Graph } from "../../src/graph/index.ts"
import { dropout, hashBits, PRIME } from "../../src/graph/random.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { runGraph } from "./run.ts"

// The hash of random.ts, written again on the host in exact integer arithmetic.
const P = 2n ** 31n - 1n
const hostHash = (index: number, seed: number): number => {
  let x = (BigInt(index) * 0x5bd1e995n + BigInt(seed) * 0x2c1b3c6dn + 12345n) % P
  for (const c of [0x297a2d39n, 0x68e31da4n, 0x1b56c4e9n]) x = (x * x + c) % P
  return Number(x)
}

const hashGraph = () => {
  const g = new Graph("hash")
  const x = g.input("x", "float32", ["a", "b"])
  const seed = g.input("seed", "int64", [])
  g.outputAs("h", hashBits(g, x, seed))
  return g
}
const runHash = async (rows: number, cols: number, seed: number) => {
  const out = await runGraph(hashGraph(), { x: tensor("float32", [rows, cols], new Float32Array(rows * cols)), seed: tensor("int64", [], [seed]) })
  expect(out.h.dims).toEqual([rows, cols])
  return Array.from(out.h.data as BigInt64Array, Number)
}

const dropoutGraph = (p: number) => {
  const g = new Graph("dropout")
  const x = g.input("x", "float32", ["n"])
  const seed = g.input("seed", "int64", [])
  const y = dropout(g, x, p, seed)
  g.outputAs("y", y)
  g.outputAs("dx", gradients(g, g.reduceSum(y), [x])[0])
  return g
}
const runDropout = async (p: number, n: number, seed: number) => {
  const out = await runGraph(dropoutGraph(p), { x: tensor("float32", [n], new Float32Array(n).fill(1)), seed: tensor("int64", [], [seed]) })
  return { y: Array.from(out.y.data as Float32Array), dx: Array.from(out.dx.data as Float32Array) }
}

describe("hashBits", () => {
  it("equals the host re-implementation bit for bit and depends on (index, seed) only", async () => {
    const seed = 1_234_567_891
    const got = await runHash(37, 53, seed)
    expect(got).toEqual(got.map((_, i) => hostHash(i, seed)))
    // another shape, another session: element i is still hash(i, seed)
    expect((await runHash(53, 37, seed)).slice(0, 100)).toEqual(got.slice(0, 100))
    expect(Math.min(...got)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...got)).toBeLessThan(PRIME)
  })

  it("is uniform over [0, PRIME) alone and for neighbouring pairs (chi-square)", async () => {
    const chiSquare = (counts: number[], expected: number) => counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0)
    const bin = (h: number, bins: number) => Math.floor((h / PRIME) * bins)
    const n = 64_000
    const single = new Array(64).fill(0)
    const pairs = new Array(64).fill(0)
    for (let i = 0; i < n; i++) {
      const h = hostHash(i, 5)
      single[bin(h, 64)]++
      pairs[bin(h, 8) * 8 + bin(hostHash(i + 1, 5), 8)]++
    }
    // 63 degrees of freedom each: mean 63, sd 11.2; 120 is beyond the 99.99th percentile
    expect(chiSquare(single, n / 64)).toBeLessThan(120)
    expect(chiSquare(pairs, n / 64)).toBeLessThan(120)
  })
})

describe("dropout with a fed seed", () => {
  const n = 40_000
  const p = 0.3
  // binomial sd of a rate over n draws is sqrt(p(1-p)/n) ~ 0.0023; bounds below are ~5 sd

  it("drops a fraction p, scales the rest by 1/(1-p), and the gradient is the same mask", async () => {
    const { y, dx } = await runDropout(p, n, 11)
    expect(y.every((v) => v === 0 || Math.abs(v - 1 / (1 - p)) < 1e-6)).toBe(true)
    expect(Math.abs(y.filter((v) => v === 0).length / n - p)).toBeLessThan(0.012)
    expect(dx).toEqual(y)
  })

  it("the same seed gives the same mask in a new session; masks of nearby seeds and of neighbours are independent", async () => {
    const masks = await Promise.all([11, 12, 13, 14].map(async (s) => (await runDropout(p, n, s)).y.map((v) => v !== 0)))
    expect((await runDropout(p, n, 11)).y.map((v) => v !== 0)).toEqual(masks[0])
    // independent masks agree with probability p^2 + (1-p)^2 = 0.58, sd 0.0025 over n
    const agree = (u: boolean[], v: boolean[]) => u.filter((k, i) => k === v[i]).length / u.length
    const independent = p * p + (1 - p) * (1 - p)
    for (let a = 0; a < masks.length; a++) for (let b = a + 1; b < masks.length; b++) expect(Math.abs(agree(masks[a], masks[b]) - independent)).toBeLessThan(0.0125)
    for (const lag of [1, 2, 3, 64, 4096]) expect(Math.abs(agree(masks[0].slice(lag), masks[0].slice(0, -lag)) - independent)).toBeLessThan(0.0125)
  })

  it("refuses a rate outside [0, 1)", () => {
    const g = new Graph("bad")
    expect(() => dropout(g, g.input("x", "float32", [2]), 1, g.input("seed", "int64", []))).toThrow(/rate must be in \[0, 1\), got 1/)
  })
})
