// Every gradient rule against central finite differences (see gradcheck.ts for tolerances).
import { describe, expect, it } from "vitest"
import { differentiableOps, GradientError, gradients } from "../../src/graph/autodiff.ts"
import { Graph } from "../../src/graph/index.ts"
import { type GradCase, gradCheck } from "./gradcheck.ts"

const pos = (v: number) => 0.5 + Math.abs(v)
const away = (v: number) => (v >= 0 ? 0.1 + v : v - 0.1) // away from kinks at 0

const cases: Record<string, GradCase> = {
  "MatMul batched with broadcast batch dims": { inputs: { a: { shape: [2, 1, 3, 4] }, b: { shape: [3, 4, 2] } }, build: (g, x) => g.matMul(x.a, x.b) },
  "MatMul [B,T,K] x [K,N] (GEMM fold)": { inputs: { a: { shape: [2, 3, 4] }, b: { shape: [4, 5] } }, build: (g, x) => g.matMul(x.a, x.b) },
  "MatMul vector x batched matrix": { inputs: { a: { shape: [4] }, b: { shape: [2, 4, 3] } }, build: (g, x) => g.matMul(x.a, x.b) },
  "MatMul batched matrix x vector": { inputs: { a: { shape: [2, 3, 4] }, b: { shape: [4] } }, build: (g, x) => g.matMul(x.a, x.b) },
  "Gemm with broadcast C": { inputs: { a: { shape: [3, 4] }, b: { shape: [4, 2] }, c: { shape: [1, 2] } }, build: (g, x) => g.gemm(x.a, x.b, x.c, { alpha: 0.7, beta: 1.3 }) },
  "Gemm transA transB": { inputs: { a: { shape: [4, 3] }, b: { shape: [2, 4] }, c: { shape: [2] } }, build: (g, x) => g.gemm(x.a, x.b, x.c, { transA: true, transB: true, alpha: 1.5 }) },
  "Gemm transB": { inputs: { a: { shape: [3, 4] }, b: { shape: [2, 4] } }, build: (g, x) => g.gemm(x.a, x.b, null, { transB: true }) },
  "linear (HF [out, in] weight, 3-D input, bias)": {
    inputs: { x: { shape: [2, 3, 4], declared: ["B", "T", 4] }, w: { shape: [5, 4] }, b: { shape: [5] } },
    build: (g, x) => g.reshape(g.linear(x.x, x.w, x.b), [2, 3, 5]),
  },
  "Add broadcast": { inputs: { a: { shape: [2, 1, 3] }, b: { shape: [4, 1] } }, build: (g, x) => g.add(x.a, x.b) },
  "Sub broadcast": { inputs: { a: { shape: [3] }, b: { shape: [2, 1, 3] } }, build: (g, x) => g.sub(x.a, x.b) },
  "Mul broadcast": { inputs: { a: { shape: [2, 1, 3] }, b: { shape: [1, 4, 1] } }, build: (g, x) => g.mul(x.a, x.b) },
  "Div broadcast": { inputs: { a: { shape: [2, 3] }, b: { shape: [2, 1], map: pos } }, build: (g, x) => g.div(x.a, x.b) },
  "Add with symbolic dims (run-time unbroadcast)": {
    inputs: { a: { shape: [2, 3], declared: ["N", 3] }, b: { shape: [1, 3], declared: ["K", 3] } },
    build: (g, x) => g.reshape(g.add(x.a, x.b), [2, 3]),
  },
  Neg: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.neg(x.a) },
  Exp: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.exp(x.a) },
  Log: { inputs: { a: { shape: [2, 3], map: pos } }, build: (g, x) => g.log(x.a) },
  Sqrt: { inputs: { a: { shape: [2, 3], map: pos } }, build: (g, x) => g.sqrt(x.a) },
  Pow: { inputs: { a: { shape: [2, 3], map: pos }, b: { shape: [3] } }, build: (g, x) => g.pow(x.a, x.b) },
  Reciprocal: { inputs: { a: { shape: [2, 3], map: pos } }, build: (g, x) => g.reciprocal(x.a) },
  Tanh: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.tanh(x.a) },
  Sigmoid: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.sigmoid(x.a) },
  // onnxruntime's CPU provider has no float64 Erf kernel: checked in float32 with h = 1e-2
  // (truncation ~h^2 |erf'''| ~ 1e-4, rounding ~6e-8/h ~ 1e-5), tolerance 2e-3.
  "Erf (float32)": { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.erf(x.a), dtype: "float32" },
  Relu: { inputs: { a: { shape: [2, 3], map: away } }, build: (g, x) => g.relu(x.a) },
  Abs: { inputs: { a: { shape: [2, 3], map: away } }, build: (g, x) => g.abs(x.a) },
  Cos: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.cos(x.a) },
  Sin: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.sin(x.a) },
  "Where broadcast": {
    inputs: { c: { shape: [2, 1], dtype: "bool", values: [1, 0] }, a: { shape: [2, 3] }, b: { shape: [3] } },
    build: (g, x) => g.where(x.c, x.a, x.b),
  },
  "Max broadcast": { inputs: { a: { shape: [2, 3] }, b: { shape: [3] } }, build: (g, x) => g.max(x.a, x.b) },
  "Min broadcast": { inputs: { a: { shape: [2, 1] }, b: { shape: [2, 3] } }, build: (g, x) => g.min(x.a, x.b) },
  Softmax: { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.softmax(x.a, 1) },
  LogSoftmax: { inputs: { a: { shape: [2, 1, 4] } }, build: (g, x) => g.logSoftmax(x.a, -1) },
  ReduceSum: { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.reduceSum(x.a, [0, 2]) },
  "ReduceSum all": { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.reduceSum(x.a) },
  "ReduceMean keepdims": { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.reduceMean(x.a, [1], true) },
  ReduceMax: { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.reduceMax(x.a, [-1]) },
  ReduceLogSumExp: { inputs: { a: { shape: [2, 3, 1] } }, build: (g, x) => g.reduceLogSumExp(x.a, [1], true) },
  Reshape: { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.mul(g.reshape(x.a, [6, -1]), g.reshape(x.a, [6, 4])) },
  Transpose: { inputs: { a: { shape: [2, 3, 4] } }, build: (g, x) => g.transpose(x.a, [2, 0, 1]) },
  Squeeze: { inputs: { a: { shape: [2, 1, 3] } }, build: (g, x) => g.squeeze(x.a, [1]) },
  Unsqueeze: { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.unsqueeze(x.a, [0, 3]) },
  Concat: { inputs: { a: { shape: [2, 1] }, b: { shape: [2, 3] }, c: { shape: [2, 2] } }, build: (g, x) => g.concat([x.a, x.b, x.c, x.a], 1) },
  Split: { inputs: { a: { shape: [2, 5] } }, build: (g, x) => g.split(x.a, [2, 3], 1)[1] },
  "Split (both parts)": {
    inputs: { a: { shape: [4, 2] } },
    build: (g, x) => {
      const [p, q] = g.split(x.a, [1, 3], 0)
      return g.mul(p, q)
    },
  },
  "Slice step 1": { inputs: { a: { shape: [3, 5] } }, build: (g, x) => g.slice(x.a, [1, -4], [3, 100], [0, 1]) },
  "Slice negative step": { inputs: { a: { shape: [3, 5] } }, build: (g, x) => g.slice(x.a, [4], [0], [1], [-2]) },
  "Gather embeddings (repeated ids)": {
    inputs: { e: { shape: [5, 3] }, ids: { shape: [2, 3], dtype: "int64", values: [0, 4, 4, 2, 0, 4] } },
    build: (g, x) => g.gather(x.e, x.ids, 0),
  },
  "Gather axis 1": { inputs: { e: { shape: [2, 4, 3] }, ids: { shape: [3], dtype: "int64", values: [3, 1, 3] } }, build: (g, x) => g.gather(x.e, x.ids, 1) },
  GatherElements: {
    inputs: { a: { shape: [3, 4] }, i: { shape: [3, 2], dtype: "int64", values: [0, 3, 1, 1, 2, 0] } },
    build: (g, x) => g.gatherElements(x.a, x.i, 1),
  },
  Expand: { inputs: { a: { shape: [3, 1] } }, build: (g, x) => g.expand(x.a, [2, 3, 4]) },
  // the round trip through float32 rounds at ~6e-8 relative: h = 1e-3, tolerance 1e-3
  "Cast float64 -> float32 -> float64": { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.mul(g.cast(g.cast(x.a, "float32"), "float64"), x.a), h: 1e-3, tol: 1e-3 },
  LayerNormalization: {
    inputs: { a: { shape: [2, 3, 4] }, s: { shape: [4] }, b: { shape: [4] } },
    build: (g, x) => g.layerNorm(x.a, x.s, x.b, { epsilon: 1e-5 }),
  },
  "LayerNormalization over 2 axes": {
    inputs: { a: { shape: [2, 3, 4] }, s: { shape: [3, 4] } },
    build: (g, x) => g.layerNorm(x.a, x.s, null, { axis: 1 }),
  },
  RMSNormalization: { inputs: { a: { shape: [2, 1, 4] }, s: { shape: [4] } }, build: (g, x) => g.rmsNorm(x.a, x.s, { epsilon: 1e-6 }) },
  CumSum: { inputs: { a: { shape: [2, 4] } }, build: (g, x) => g.cumSum(x.a, 1) },
  "TopK values": { inputs: { a: { shape: [2, 5] } }, build: (g, x) => g.topK(x.a, 2)[0] },
  Trilu: { inputs: { a: { shape: [3, 3] } }, build: (g, x) => g.trilu(x.a, false) },
  "shared input used twice (accumulation)": { inputs: { a: { shape: [2, 3] } }, build: (g, x) => g.mul(g.exp(x.a), g.tanh(x.a)) },
}

describe("gradient rules vs central finite differences", () => {
  for (const [name, c] of Object.entries(cases)) it(name, async () => void (await gradCheck(c)))

  it("cover every op listed in the compute-core issue", () => {
    const required = "MatMul Gemm Add Sub Mul Div Neg Exp Log Sqrt Pow Reciprocal Tanh Sigmoid Erf Relu Where Max Min Softmax LogSoftmax ReduceSum ReduceMean ReduceMax ReduceLogSumExp Reshape Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements Expand Cast LayerNormalization RMSNormalization Cos Sin"
    for (const op of required.split(" ")) expect(differentiableOps()).toContain(op)
  })
})

describe("graph surgery", () => {
  it("differentiates only paths that reach a trainable input", () => {
    const g = new Graph()
    const x = g.input("x", "float32", [2, 4])
    const frozen = g.input("frozen", "float32", [4, 4])
    const lora = g.input("lora", "float32", [4, 4])
    const h = g.matMul(g.tanh(g.matMul(x, frozen)), frozen) // frozen-only chain
    const loss = g.reduceSum(g.mul(g.matMul(h, lora), h))
    const before = g.nodes.length
    gradients(g, loss, [lora])
    const added = g.nodes.slice(before)
    // d/d lora = h^T (h) only: no Tanh gradient, no gradient w.r.t. the frozen weights
    expect(added.some((n) => n.op === "Tanh" || n.op === "Sub")).toBe(false)
    expect(added.filter((n) => n.op === "MatMul" || n.op === "Gemm").length).toBe(1)
  })

  it("refuses ops without a rule with a message naming the op", () => {
    const g = new Graph()
    const x = g.input("x", "float32", [3])
    const loss = g.reduceSum(g.node("Softplus", [x], {}, [{ dtype: "float32", shape: [3] }])[0])
    expect(() => gradients(g, loss, [x])).toThrow(GradientError)
    expect(() => gradients(g, loss, [x])).toThrow(/no gradient rule for Softplus/)
  })
})
