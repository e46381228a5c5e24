// Central finite-difference gradient checks. `build` makes a graph from fresh inputs and
// returns the value to check; the scalar loss is sum(out * R) with a fixed random R, so
// every output element contributes with a different weight.
import { Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { expect } from "vitest"
import { gradients } from "../../src/graph/autodiff.ts"
import { type DType, Graph, serialize, type Shape, type Value } from "../../src/graph/index.ts"
import { createSession, runSession } from "../../src/runtime/session.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { randArray, runGraph } from "./run.ts"

export interface InputSpec {
  readonly shape: readonly number[]
  /** declared shape (symbolic dims allowed); defaults to `shape` */
  readonly declared?: Shape
  readonly dtype?: DType
  /** values; random in [-1, 1) by default */
  readonly values?: readonly number[]
  readonly trainable?: boolean
  /** map a random value (e.g. keep Log's input positive) */
  readonly map?: (v: number) => number
}

export interface GradCase {
  readonly inputs: Record<string, InputSpec>
  readonly build: (g: Graph, x: Record<string, Value>) => Value
  /** float type the check runs in (float64 unless an op lacks a float64 CPU kernel) */
  readonly dtype?: "float32" | "float64"
  readonly h?: number
  readonly tol?: number
}

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1)

/** Returns the max relative error; fails the test when it exceeds the tolerance.
 * Tolerance: float64, h = 1e-6: truncation O(h^2) ~ 1e-12 and rounding ~ 1e-16/h ~ 1e-10,
 * so 1e-6 relative (to 1 + |grad|) leaves a wide margin while catching any wrong rule. */
export const gradCheck = async (c: GradCase, seed = 7): Promise<number> => {
  const ft = c.dtype ?? "float64"
  const h = c.h ?? (ft === "float64" ? 1e-6 : 1e-2)
  const tol = c.tol ?? (ft === "float64" ? 1e-6 : 2e-3)
  const values: Record<string, number[]> = {}
  let s = seed
  for (const [name, spec] of Object.entries(c.inputs)) values[name] = spec.values ? [...spec.values] : randArray(size(spec.shape), s++).map(spec.map ?? ((v) => v))
  const trainables = Object.keys(c.inputs).filter((k) => (c.inputs[k].dtype ?? ft) === ft && c.inputs[k].trainable !== false)
  const make = (withGrads: boolean) => {
    const g = new Graph()
    const xs: Record<string, Value> = {}
    for (const [name, spec] of Object.entries(c.inputs)) xs[name] = g.input(name, spec.dtype ?? ft, spec.declared ?? spec.shape)
    const out = c.build(g, xs)
    const outShape = out.shape.map((d) => {
      if (typeof d !== "number") throw new Error("gradCheck: the checked value needs a static shape")
      return d
    })
    const r = g.constant(out.dtype, outShape, randArray(size(outShape), 1000 + seed))
    const loss = g.reduceSum(g.mul(out, r))
    g.outputAs("loss", loss)
    if (withGrads) gradients(g, loss, trainables.map((k) => xs[k])).forEach((gv, i) => g.outputAs(`grad_${trainables[i]}`, gv))
    return g
  }
  const feeds = (vals: Record<string, number[]>): Record<string, ort.Tensor> => {
    const f: Record<string, ort.Tensor> = {}
    for (const [name, spec] of Object.entries(c.inputs)) f[name] = tensor((spec.dtype ?? ft) as "float64", spec.shape, vals[name])
    return f
  }
  // onnxruntime 1.30's extended optimizations fuse x*sigmoid(x) into com.microsoft.QuickGelu,
  // which has only a float32 CPU kernel, so float64 checks run with basic optimizations.
  const options = { optimization: ft === "float64" ? ("basic" as const) : ("all" as const) }
  const gradOut = await runGraph(make(true), feeds(values), options)
  const fwd = make(false)
  // one session for all perturbed evaluations
  const session = await Effect.runPromise(createSession(serialize(fwd), options))
  const lossAt = async (vals: Record<string, number[]>) => toNumbers((await Effect.runPromise(runSession(session, feeds(vals)))).loss)[0]
  let worst = 0
  for (const k of trainables) {
    const analytic = toNumbers(gradOut[`grad_${k}`])
    expect(analytic.length).toBe(values[k].length)
    for (let i = 0; i < values[k].length; i++) {
      const plus = { ...values, [k]: values[k].map((v, j) => (j === i ? v + h : v)) }
      const minus = { ...values, [k]: values[k].map((v, j) => (j === i ? v - h : v)) }
      const fd = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * h)
      const err = Math.abs(fd - analytic[i]) / (1 + Math.abs(fd))
      worst = Math.max(worst, err)
      if (err > tol) expect.fail(`d loss/d ${k}[${i}]: autodiff ${analytic[i]}, finite difference ${fd} (relative error ${err} > ${tol})`)
    }
  }
  return worst
}
