// In-graph sampling vs a plain float64 TypeScript implementation of the same filters.
// The distribution check is exact and deterministic: N stratified uniforms u_j = (j + 0.5) / N
// through an inverse CDF select token i exactly N * p_i times up to +-1 (each token owns an
// interval of width p_i); we allow +-2 for float32 vs float64 rounding at interval edges.
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { requestUniform, sampleTokens, samplingInputs } from "../../src/models/sampling.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { randArray, runGraph } from "../graph/run.ts"
import { filtered, logSoftmax } from "./sampling-reference.ts"

const V = 40

const samplerGraph = () => {
  const g = new Graph("sampler")
  const logits = g.input("logits", "float32", ["B", V])
  const s = sampleTokens(g, logits, samplingInputs(g), V)
  g.outputAs("token", s.token)
  g.outputAs("log_prob", s.logProb)
  return g
}

/** Runs one logits row N times with stratified uniforms; returns token counts and log-probs. */
const sampleGrid = async (row: number[], temperature: number, topK: number, topP: number, n: number) => {
  const out = await runGraph(samplerGraph(), {
    logits: tensor("float32", [n, V], Array.from({ length: n }, () => row).flat()),
    temperature: tensor("float32", [n], new Array(n).fill(temperature)),
    top_k: tensor("int64", [n], new Array(n).fill(topK)),
    top_p: tensor("float32", [n], new Array(n).fill(topP)),
    uniform: tensor("float32", [n], Array.from({ length: n }, (_, j) => (j + 0.5) / n)),
  })
  const tokens = toNumbers(out.token)
  const counts = new Array<number>(V).fill(0)
  for (const t of tokens) counts[t]++
  return { tokens, counts, logProbs: toNumbers(out.log_prob) }
}

describe("sampleTokens", () => {
  const row = randArray(V, 7, 3)
  const cases: Array<[string, number, number, number]> = [
    ["plain softmax", 1, 0, 1],
    ["temperature 0.5", 0.5, 0, 1],
    ["temperature 2", 2, 0, 1],
    ["top-k 5", 1, 5, 1],
    ["top-p 0.6", 1, 0, 0.6],
    ["top-k 10 then top-p 0.8 at temperature 0.7", 0.7, 10, 0.8],
    ["top-p 0 keeps the argmax", 1, 0, 0],
    ["top-k 1", 1.3, 1, 1],
  ]
  for (const [name, temperature, topK, topP] of cases)
    it(`inverse CDF matches the exact filtered distribution: ${name}`, async () => {
      const n = 4000
      const { counts } = await sampleGrid(row, temperature, topK, topP, n)
      const p = filtered(row, temperature, topK, topP)
      for (let i = 0; i < V; i++) {
        if (p[i] === 0) expect(counts[i], `token ${i} is filtered out`).toBe(0)
        else expect(Math.abs(counts[i] - n * p[i]), `token ${i}: ${counts[i]} vs ${n * p[i]}`).toBeLessThanOrEqual(2)
      }
    })

  it("temperature 0 is argmax whatever the uniform, and log-probs are of the raw distribution", async () => {
    const { tokens, logProbs } = await sampleGrid(row, 0, 0, 1, 16)
    const argmax = row.indexOf(Math.max(...row))
    expect(new Set(tokens)).toEqual(new Set([argmax]))
    // float32 log_softmax of logits ~O(3): 1e-5 absolute
    for (const lp of logProbs) expect(lp).toBeCloseTo(logSoftmax(row)[argmax], 5)
  })

  it("reports the unmodified log-prob of a token sampled under temperature and top-k", async () => {
    const { tokens, logProbs } = await sampleGrid(row, 0.5, 3, 1, 64)
    const ref = logSoftmax(row)
    tokens.forEach((t, j) => expect(logProbs[j]).toBeCloseTo(ref[t], 5))
  })

  it("rows are independent: per-row knobs in one batch equal the rows run alone", async () => {
    const rows = [randArray(V, 1, 2), randArray(V, 2, 2), randArray(V, 3, 2)]
    const knobs = [
      { t: 0, k: 0, p: 1, u: 0.3 },
      { t: 0.8, k: 4, p: 1, u: 0.9 },
      { t: 1.2, k: 0, p: 0.5, u: 0.1 },
    ]
    const run = (idx: number[]) =>
      runGraph(samplerGraph(), {
        logits: tensor("float32", [idx.length, V], idx.flatMap((i) => rows[i])),
        temperature: tensor("float32", [idx.length], idx.map((i) => knobs[i].t)),
        top_k: tensor("int64", [idx.length], idx.map((i) => knobs[i].k)),
        top_p: tensor("float32", [idx.length], idx.map((i) => knobs[i].p)),
        uniform: tensor("float32", [idx.length], idx.map((i) => knobs[i].u)),
      }).then((o) => toNumbers(o.token))
    const together = await run([0, 1, 2])
    const alone = [...(await run([0])), ...(await run([1])), ...(await run([2]))]
    expect(together).toEqual(alone)
  })
})

describe("requestUniform", () => {
  it("is a function of (seed, step), in [0, 1), and roughly uniform", () => {
    expect(requestUniform(5, 3)).toBe(requestUniform(5, 3))
    expect(requestUniform(5, 3)).not.toBe(requestUniform(6, 3))
    const xs = Array.from({ length: 20000 }, (_, i) => requestUniform(i % 100, Math.floor(i / 100)))
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...xs)).toBeLessThan(1)
    // 10 bins of 2000 expected: chi-square with 9 d.o.f.; 27.9 is the 0.999 quantile (fixed inputs, not flaky)
    const bins = new Array<number>(10).fill(0)
    for (const x of xs) bins[Math.floor(x * 10)]++
    const chi2 = bins.reduce((s, c) => s + (c - 2000) ** 2 / 2000, 0)
    expect(chi2).toBeLessThan(27.9)
  })
})
