// The in-graph AdamW step: hand-computed updates (torch.optim.AdamW formulas), clipping,
// schedules, gradient accumulation, and training an MLP and a tiny transformer.
import { Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { Graph, serialize, type Value } from "../../src/graph/index.ts"
import { crossEntropy } from "../../src/graph/losses.ts"
import { buildTrainStep, learningRate, type TrainStepSpec } from "../../src/graph/optim.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { initTrainState, type StepResult, trainStep, type TrainState } from "../../src/runtime/train.ts"
import { rng } from "./run.ts"
import { initParams, paramShapes, type TinyConfig, tinyTransformerHidden } from "./transformer.ts"

const session = (spec: TrainStepSpec) => Effect.runPromise(createSession(serialize(buildTrainStep(spec))))
const params = (values: Record<string, { shape: number[]; values: number[] }>): Record<string, ort.Tensor> =>
  Object.fromEntries(Object.entries(values).map(([k, v]) => [k, tensor("float32", v.shape, v.values)]))

// float32 graph vs float64 hand values: 1e-6 relative is a few float32 ulps
const near = (got: number[], want: number[], tol = 1e-6) => got.forEach((g, i) => expect(Math.abs(g - want[i])).toBeLessThanOrEqual(tol * (1 + Math.abs(want[i]))))

describe("AdamW step", () => {
  // loss = <p, c> + 3 q^2, so grad p = c and grad q = 6 q
  const spec = (maxGradNorm?: number): TrainStepSpec => ({
    params: { p: { shape: [2] }, q: { shape: [1], decay: false } },
    batch: { c: { dtype: "float32", shape: [2] } },
    loss: (g, x, b) => g.add(g.reduceSum(g.mul(x.p, b.c)), g.mul(g.scalar(3), g.reduceSum(g.mul(x.q, x.q)))),
    adamw: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, ...(maxGradNorm ? { maxGradNorm } : {}) },
  })
  const batch = { c: tensor("float32", [2], [0.5, -1.5]) }

  it("matches torch.optim.AdamW on a hand-computed case", async () => {
    const s = await session(spec())
    let state: TrainState = initTrainState(params({ p: { shape: [2], values: [1, -2] }, q: { shape: [1], values: [0.5] } }))
    const r1 = await Effect.runPromise(trainStep(s, state, batch, 0.1))
    // step 1 by hand (bias corrections make m_hat = g, v_hat = g^2):
    //   p = 1 * (1 - 0.1*0.01) - 0.1 * 0.5 / (0.5 + 1e-8)      = 0.899000002
    //   p = -2 * 0.999        - 0.1 * -1.5 / (1.5 + 1e-8)      = -1.8980000007
    //   q = 0.5 (no decay)    - 0.1 * 3 / (3 + 1e-8)            = 0.4000000003
    near(toNumbers(r1.state.params.p), [0.899000002, -1.8980000007])
    near(toNumbers(r1.state.params.q), [0.4000000003])
    near(toNumbers(r1.state.m.p), [0.05, -0.15])
    near(toNumbers(r1.state.v.q), [0.009])
    expect(r1.loss).toBeCloseTo(0.5 + 3 + 0.75, 5)
    expect(r1.gradNorm).toBeCloseTo(Math.sqrt(0.25 + 2.25 + 9), 5)
    // step 2, lr 0.05, written as PyTorch's update loop in float64
    state = r1.state
    const r2 = await Effect.runPromise(trainStep(s, state, batch, 0.05))
    const torchStep = (p: number, g: number, m: number, v: number, t: number, lr: number, wd: number) => {
      p *= 1 - lr * wd
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      const denom = Math.sqrt(v) / Math.sqrt(1 - 0.999 ** t) + 1e-8
      return p - (lr / (1 - 0.9 ** t)) * (m / denom)
    }
    const q1 = toNumbers(r1.state.params.q)[0]
    near(toNumbers(r2.state.params.p), [0, 1].map((i) => torchStep(toNumbers(r1.state.params.p)[i], [0.5, -1.5][i], [0.05, -0.15][i], [0.00025, 0.00225][i], 2, 0.05, 0.01)))
    near(toNumbers(r2.state.params.q), [torchStep(q1, 6 * q1, 0.3, 0.009, 2, 0.05, 0)])
  })

  it("clips by global norm like clip_grad_norm_ and reports the unclipped norm", async () => {
    const s = await session(spec(1))
    const r = await Effect.runPromise(trainStep(s, initTrainState(params({ p: { shape: [2], values: [1, -2] }, q: { shape: [1], values: [0.5] } })), batch, 0.1))
    const norm = Math.sqrt(11.5)
    const coef = 1 / (norm + 1e-6)
    expect(r.gradNorm).toBeCloseTo(norm, 5)
    near(toNumbers(r.state.m.p), [0.1 * 0.5 * coef, 0.1 * -1.5 * coef])
    near(toNumbers(r.state.m.q), [0.1 * 3 * coef])
  })

  it("computes warmup + cosine/linear schedules", () => {
    const base = { peak: 1, warmupSteps: 10, totalSteps: 110 }
    expect(learningRate({ ...base, decay: "cosine" }, 5)).toBeCloseTo(0.5)
    expect(learningRate({ ...base, decay: "cosine" }, 10)).toBeCloseTo(1)
    expect(learningRate({ ...base, decay: "cosine" }, 60)).toBeCloseTo(0.5)
    expect(learningRate({ ...base, decay: "cosine" }, 110)).toBeCloseTo(0)
    expect(learningRate({ ...base, decay: "linear" }, 35)).toBeCloseTo(0.75)
    expect(learningRate({ ...base, decay: "linear", minRatio: 0.1 }, 110)).toBeCloseTo(0.1)
  })
})

// ---- a 2-layer MLP on 4 Gaussian blobs (XOR layout), loss = chunked cross-entropy
const mlpSpec = (batchSize: number, microBatches = 1): TrainStepSpec => ({
  params: { w1: { shape: [2, 16] }, b1: { shape: [16], decay: false }, w2: { shape: [2, 16] } },
  batch: { x: { dtype: "float32", shape: [batchSize, 2] }, y: { dtype: "int64", shape: [batchSize] } },
  loss: (g, p, b) => crossEntropy(g, { hidden: g.tanh(g.add(g.matMul(b.x, p.w1), p.b1)), weight: p.w2 }, b.y, undefined, { chunk: 8 }).mean,
  adamw: { weightDecay: 0.01, maxGradNorm: 1 },
  microBatches,
})
const xorData = (n: number, seed: number) => {
  const r = rng(seed)
  const x: number[] = []
  const y: number[] = []
  for (let i = 0; i < n; i++) {
    const cx = i % 2 ? 1 : -1
    const cy = (i >> 1) % 2 ? 1 : -1
    x.push(cx + 0.3 * r(), cy + 0.3 * r())
    y.push(cx * cy > 0 ? 1 : 0)
  }
  return { x, y }
}
const mlpInit = () => {
  const r = rng(5)
  const a = (n: number, s: number) => Array.from({ length: n }, () => r() * s)
  return params({ w1: { shape: [2, 16], values: a(32, 1) }, b1: { shape: [16], values: a(16, 0.1) }, w2: { shape: [2, 16], values: a(32, 0.25) } })
}

describe("training", () => {
  it("trains an MLP on XOR blobs to a cross-entropy below 0.05", async () => {
    const s = await session(mlpSpec(32))
    const data = xorData(32, 1)
    const batch = { x: tensor("float32", [32, 2], data.x), y: tensor("int64", [32], data.y) }
    let state = initTrainState(mlpInit())
    let r: StepResult | undefined
    for (let i = 1; i <= 200; i++) {
      r = await Effect.runPromise(trainStep(s, state, batch, learningRate({ peak: 0.05, warmupSteps: 10, totalSteps: 200, decay: "cosine" }, i)))
      state = r.state
    }
    expect(r?.loss).toBeLessThan(0.05)
  })

  it("accumulates gradients over micro-batches in the graph like one step on the whole batch", async () => {
    const data = xorData(16, 2)
    const whole = await Effect.runPromise(trainStep(await session(mlpSpec(16)), initTrainState(mlpInit()), { x: tensor("float32", [16, 2], data.x), y: tensor("int64", [16], data.y) }, 0.01))
    const accumulated = await Effect.runPromise(
      trainStep(await session(mlpSpec(8, 2)), initTrainState(mlpInit()), { x: tensor("float32", [2, 8, 2], data.x), y: tensor("int64", [2, 8], data.y) }, 0.01),
    )
    // equal-size micro-batches: mean of means = overall mean; float32 summation order differs
    expect(Math.abs(accumulated.loss - whole.loss)).toBeLessThan(1e-6)
    expect(Math.abs(accumulated.gradNorm - whole.gradNorm)).toBeLessThan(1e-5)
    for (const k of ["w1", "b1", "w2"]) near(toNumbers(accumulated.state.params[k]), toNumbers(whole.state.params[k]), 1e-5)
  })

  it("trains LoRA factors over a frozen initializer, with micro-batches reading it inside the Loop", async () => {
    // y = x (W + A B) with W frozen; the target is x (W + D) for a rank-1 D, so LoRA can fit it
    const r = rng(21)
    const W = Array.from({ length: 16 }, () => r())
    const u = [0.5, -1, 0.25, 1]
    const w = [1, 0.5, -0.5, 0.75]
    const D = u.flatMap((ui) => w.map((wj) => ui * wj))
    const xs = Array.from({ length: 2 * 8 * 4 }, () => r())
    const ys: number[] = []
    for (let n = 0; n < 16; n++) for (let j = 0; j < 4; j++) ys.push([0, 1, 2, 3].reduce((acc, k) => acc + xs[n * 4 + k] * (W[k * 4 + j] + D[k * 4 + j]), 0))
    const g = new Graph("lora")
    const frozen = g.initializer("W", "float32", [4, 4], { kind: "inline", data: Float32Array.from(W) })
    const s = await session({
      graph: g,
      params: { A: { shape: [4, 1] }, B: { shape: [1, 4] } },
      batch: { x: { dtype: "float32", shape: [8, 4] }, y: { dtype: "float32", shape: [8, 4] } },
      loss: (sub, p, b) => {
        const pred = sub.add(sub.matMul(b.x, frozen), sub.matMul(sub.matMul(b.x, p.A), p.B))
        const e = sub.sub(pred, b.y)
        return sub.reduceMean(sub.mul(e, e))
      },
      adamw: { weightDecay: 0 },
      microBatches: 2,
    })
    let state = initTrainState(params({ A: { shape: [4, 1], values: [0.1, 0.1, -0.1, 0.1] }, B: { shape: [1, 4], values: [0, 0, 0, 0] } }))
    const batch = { x: tensor("float32", [2, 8, 4], xs), y: tensor("float32", [2, 8, 4], ys) }
    let first = 0
    let last = 0
    for (let i = 1; i <= 300; i++) {
      const res = await Effect.runPromise(trainStep(s, state, batch, learningRate({ peak: 0.05, warmupSteps: 10, totalSteps: 300, decay: "cosine" }, i)))
      if (i === 1) first = res.loss
      last = res.loss
      state = res.state
    }
    expect(first).toBeGreaterThan(0.1)
    expect(last).toBeLessThan(1e-3)
    expect(Object.keys(state.params)).toEqual(["A", "B"])
  })

  it("trains a tiny transformer to copy a period-3 pattern (needs attention) below 0.1 nats", async () => {
    const cfg: TinyConfig = { vocab: 8, dim: 16, heads: 2, layers: 2, ffn: 32 }
    const B = 16
    const T = 10
    const shapes = paramShapes(cfg)
    const s = await session({
      params: Object.fromEntries(Object.entries(shapes).map(([k, shape]) => [k, { shape, decay: !k.endsWith("norm") }])),
      batch: { ids: { dtype: "int64", shape: [B, T] }, targets: { dtype: "int64", shape: [B * T] }, mask: { dtype: "float32", shape: [B * T] } },
      loss: (g: Graph, p: Readonly<Record<string, Value>>, b: Readonly<Record<string, Value>>) =>
        crossEntropy(g, { hidden: g.reshape(tinyTransformerHidden(g, cfg, p, b.ids), [-1, cfg.dim]), weight: p.lm_head }, b.targets, b.mask, { chunk: 64 }).mean,
      adamw: { weightDecay: 0.01, maxGradNorm: 1 },
    })
    const init = initParams(cfg, 9)
    let state = initTrainState(Object.fromEntries(Object.entries(shapes).map(([k, shape]) => [k, tensor("float32", shape, init[k])])))
    const r = rng(4)
    const makeBatch = () => {
      const ids: number[] = []
      const targets: number[] = []
      const mask: number[] = []
      for (let b = 0; b < B; b++) {
        const pattern = [0, 1, 2].map(() => Math.floor(((r() + 1) / 2) * cfg.vocab) % cfg.vocab)
        const seq = Array.from({ length: T + 1 }, (_, t) => pattern[t % 3])
        ids.push(...seq.slice(0, T))
        targets.push(...seq.slice(1))
        mask.push(...Array.from({ length: T }, (_, t) => (t >= 2 ? 1 : 0))) // positions 0, 1 cannot be known
      }
      return { ids: tensor("int64", [B, T], ids), targets: tensor("int64", [B * T], targets), mask: tensor("float32", [B * T], mask) }
    }
    const losses: number[] = []
    for (let i = 1; i <= 300; i++) {
      const res = await Effect.runPromise(trainStep(s, state, makeBatch(), learningRate({ peak: 0.02, warmupSteps: 20, totalSteps: 300, decay: "cosine" }, i)))
      state = res.state
      losses.push(res.loss)
    }
    const last = losses.slice(-10).reduce((a, b) => a + b, 0) / 10
    expect(losses[0]).toBeGreaterThan(1.5)
    expect(last).toBeLessThan(0.1)
  })
})
