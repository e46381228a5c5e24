// Chunked losses: values against a plain TypeScript float64 reference, gradients against
// float64 finite differences (gradcheck.ts), and the chunking itself.
import { describe, expect, it } from "vitest"
import { Graph, type Value } from "../../src/graph/index.ts"
import { crossEntropy, fullForwardKL, sequenceLogLikelihood, topKForwardKL, weightedSequenceNLL } from "../../src/graph/losses.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { gradCheck } from "./gradcheck.ts"
import { randArray, runGraph } from "./run.ts"

const N = 5
const H = 3
const V = 7
const K = 2
// chunk 2 over 5 positions: three chunks, the last one padded
const chunk = 2

const hidden = randArray(N * H, 11, 1.5)
const weight = randArray(V * H, 12, 1.5)
const teacherHidden = randArray(N * H, 13, 1.5)
const targets = [3, 0, -100, 6, 2]
const mask = [1, 1, 0, 1, 1]

// ---- plain TypeScript reference
const logits = (h: number[], w: number[]) => Array.from({ length: N }, (_, n) => Array.from({ length: V }, (_, v) => [0, 1, 2].reduce((s, k) => s + h[n * H + k] * w[v * H + k], 0)))
const logSoftmax = (z: number[]) => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, v) => s + Math.exp(v - m), 0))
  return z.map((v) => v - lse)
}
const studentLq = logits(hidden, weight).map(logSoftmax)
const teacherLp = logits(teacherHidden, weight.map((v) => -v)).map(logSoftmax)
const topK = teacherLp.map((row) =>
  row
    .map((lp, i) => [lp, i] as const)
    .sort((a, b) => b[0] - a[0])
    .slice(0, K),
)
const topIdx = topK.flatMap((r) => r.map(([, i]) => i))
const topLp = topK.flatMap((r) => r.map(([lp]) => lp))
const tail = topK.map((r) => 1 - r.reduce((s, [lp]) => s + Math.exp(lp), 0))

const refCE = () => {
  let s = 0
  targets.forEach((t, n) => {
    if (mask[n]) s -= studentLq[n][t]
  })
  return s / 4
}
const refTopKKL = () => {
  let s = 0
  for (let n = 0; n < N; n++) {
    let qTop = 0
    for (let k = 0; k < K; k++) {
      const [lp, i] = topK[n][k]
      s += Math.exp(lp) * (lp - studentLq[n][i])
      qTop += Math.exp(studentLq[n][i])
    }
    s += tail[n] * (Math.log(tail[n]) - Math.log(1 - qTop))
  }
  return s / N
}
const refFullKL = () => {
  let s = 0
  for (let n = 0; n < N; n++) for (let v = 0; v < V; v++) s += Math.exp(teacherLp[n][v]) * (teacherLp[n][v] - studentLq[n][v])
  return s / N
}
const segments = [0, 0, -1, 1, 1]
const refSeqLL = () => [0, 1].map((s) => segments.reduce((acc, seg, n) => (seg === s ? acc + studentLq[n][targets[n]] : acc), 0))

// ---- graph builders shared by the value and gradient tests
type Build = (g: Graph, x: Record<string, Value>, chunkSize: number) => Value
const builders: Record<string, Build> = {
  crossEntropy: (g, x, c) => crossEntropy(g, { hidden: x.h, weight: x.w }, x.targets, x.mask, { chunk: c }).mean,
  topKForwardKL: (g, x, c) => topKForwardKL(g, { hidden: x.h, weight: x.w }, { indices: x.topIdx, logProbs: x.topLp, tailMass: x.tail }, undefined, { chunk: c }).mean,
  fullForwardKL: (g, x, c) => fullForwardKL(g, { hidden: x.h, weight: x.w }, { hidden: x.th, weight: g.neg(x.w) }, undefined, { chunk: c }).mean,
  weightedSequenceNLL: (g, x, c) => weightedSequenceNLL(g, sequenceLogLikelihood(g, { hidden: x.h, weight: x.w }, x.targets, x.segments, 2, { chunk: c }), g.constant("float64", [2], [0.25, 0.75])),
}
const references: Record<string, number> = {
  crossEntropy: refCE(),
  topKForwardKL: refTopKKL(),
  fullForwardKL: refFullKL(),
  weightedSequenceNLL: -(0.25 * refSeqLL()[0] + 0.75 * refSeqLL()[1]),
}

const inputSpecs = {
  h: { shape: [N, H], values: hidden },
  w: { shape: [V, H], values: weight },
  th: { shape: [N, H], values: teacherHidden, trainable: false },
  targets: { shape: [N], dtype: "int64" as const, values: targets },
  mask: { shape: [N], values: mask, trainable: false },
  segments: { shape: [N], dtype: "int64" as const, values: segments },
  topIdx: { shape: [N, K], dtype: "int64" as const, values: topIdx },
  topLp: { shape: [N, K], values: topLp, trainable: false },
  tail: { shape: [N], values: tail, trainable: false },
}

const run = async (name: string, c: number) => {
  const g = new Graph()
  const x: Record<string, Value> = {}
  const feeds: Record<string, ReturnType<typeof tensor>> = {}
  for (const [k, s] of Object.entries(inputSpecs)) {
    const dt = "dtype" in s ? s.dtype : "float64"
    x[k] = g.input(k, dt, ["N", ...s.shape.slice(1)])
    feeds[k] = tensor(dt, s.shape, s.values)
  }
  g.outputAs("loss", builders[name](g, x, c))
  // the ORT pruning of unused inputs is not relied upon: every input is fed
  return { g, value: toNumbers((await runGraph(g, feeds, { optimization: "basic" })).loss)[0] }
}

describe("chunked losses", () => {
  for (const name of Object.keys(builders)) {
    it(`${name}: value matches the TypeScript reference for any chunk size`, async () => {
      // float64 throughout: agreement to 1e-12 relative
      for (const c of [chunk, 3, 64]) expect(Math.abs((await run(name, c)).value - references[name])).toBeLessThan(1e-12 * (1 + Math.abs(references[name])))
    })

    it(`${name}: gradients w.r.t. hidden states and head weight match finite differences`, async () => {
      const used = Object.fromEntries(Object.entries(inputSpecs))
      await gradCheck({ inputs: used, build: (g, x) => builders[name](g, x, chunk) })
    })
  }

  it("never materializes [positions x vocab] outside the per-chunk loop body", async () => {
    const { g } = await run("crossEntropy", chunk)
    for (const n of g.nodes) for (const o of n.outputs) expect(o.shape.includes(V) && o.shape.length > 1).toBe(false)
  })
})
