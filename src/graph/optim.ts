// The in-graph optimizer step: loss -> gradients (autodiff) -> global-norm clipping ->
// AdamW, so one session.run is one optimizer step and only the trainable parameters and
// their moments cross the host boundary. The update follows torch.optim.AdamW exactly:
//   p <- p * (1 - lr * wd)
//   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// and clipping follows torch.nn.utils.clip_grad_norm_: g <- g * min(1, c / (||g|| + 1e-6)).
import { gradients } from "./autodiff.ts"
import { Graph } from "./builder.ts"
import type { DType } from "./dtype.ts"
import type { Shape, Value } from "./ir.ts"

export interface AdamWConfig {
  readonly beta1?: number
  readonly beta2?: number
  readonly eps?: number
  readonly weightDecay?: number
  /** clip the global gradient norm to this value (no clipping when omitted) */
  readonly maxGradNorm?: number
}

export interface ParamSpec {
  readonly shape: readonly number[]
  /** apply weight decay to this parameter (default true; usually false for norms and biases) */
  readonly decay?: boolean
}

export interface BatchSpec {
  readonly dtype: DType
  /** shape of one micro-batch; with microBatches > 1 the input gets a leading [microBatches] axis */
  readonly shape: Shape
}

export interface TrainStepSpec {
  /** trainable parameters (float32 graph inputs), by name */
  readonly params: Readonly<Record<string, ParamSpec>>
  /** batch inputs, by name */
  readonly batch: Readonly<Record<string, BatchSpec>>
  /** builds the scalar loss of one micro-batch; frozen weights may be declared on `g`'s root
   * (as initializers or external data) and read from here */
  readonly loss: (g: Graph, params: Readonly<Record<string, Value>>, batch: Readonly<Record<string, Value>>) => Value
  readonly adamw?: AdamWConfig
  /** gradient accumulation: average loss and gradients over this many micro-batches in a Loop */
  readonly microBatches?: number
  /** a graph to build into (e.g. with frozen initializers already declared) */
  readonly graph?: Graph
}

/** Input and output names of the train-step graph. */
export const trainStepNames = {
  param: (p: string) => p,
  m: (p: string) => `${p}.adam_m`,
  v: (p: string) => `${p}.adam_v`,
  nextParam: (p: string) => `${p}.next`,
  nextM: (p: string) => `${p}.adam_m.next`,
  nextV: (p: string) => `${p}.adam_v.next`,
  /** float32 scalar: the 1-based index of this update (t in the bias corrections) */
  step: "step",
  /** float32 scalar: this step's learning rate (see learningRate for schedules) */
  lr: "lr",
  loss: "loss",
  gradNorm: "grad_norm",
} as const

/** Mean loss and gradients over the micro-batches (one pass, or a Loop accumulating sums). */
const lossAndGradients = (g: Graph, spec: TrainStepSpec, params: Record<string, Value>, batch: Record<string, Value>, names: string[]) => {
  const M = spec.microBatches ?? 1
  const list = names.map((n) => params[n])
  if (M === 1) {
    const loss = spec.loss(g, params, batch)
    return { loss, grads: gradients(g, loss, list) }
  }
  const zeros = [g.scalar(0), ...list.map((p) => g.zerosLike(p))]
  const [lossSum, ...gradSums] = g.loop(g.constant("int64", [], [M]), null, zeros, (sub, iter, [lAcc, ...gAcc]) => {
    const micro: Record<string, Value> = {}
    for (const [k, v] of Object.entries(batch)) micro[k] = sub.gather(v, iter, 0)
    const loss = spec.loss(sub, params, micro)
    const grads = gradients(sub, loss, list)
    return { carried: [sub.add(lAcc, loss), ...gAcc.map((a, i) => sub.add(a, grads[i]))] }
  })
  const inv = g.scalar(1 / M)
  return { loss: g.mul(lossSum, inv), grads: gradSums.map((s, i) => g.reshapeLike(g.mul(s, inv), list[i])) }
}

/** Builds the train-step graph; see trainStepNames for its inputs and outputs. */
export const buildTrainStep = (spec: TrainStepSpec): Graph => {
  const g = spec.graph ?? new Graph("train_step")
  const cfg = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, ...spec.adamw }
  const M = spec.microBatches ?? 1
  const names = Object.keys(spec.params)
  const params: Record<string, Value> = {}
  for (const n of names) params[n] = g.input(trainStepNames.param(n), "float32", spec.params[n].shape)
  const batch: Record<string, Value> = {}
  for (const [k, b] of Object.entries(spec.batch)) batch[k] = g.input(k, b.dtype, M > 1 ? [M, ...b.shape] : b.shape)
  const m = names.map((n) => g.input(trainStepNames.m(n), "float32", spec.params[n].shape))
  const v = names.map((n) => g.input(trainStepNames.v(n), "float32", spec.params[n].shape))
  const step = g.input(trainStepNames.step, "float32", [])
  const lr = g.input(trainStepNames.lr, "float32", [])

  const { loss, grads } = lossAndGradients(g, spec, params, batch, names)
  if (loss.dtype !== "float32") throw new Error(`train step: the loss must be float32, got ${loss.dtype}`)
  // g^2 is computed once: it feeds both the global norm and the second moment, where the
  // clipping factor enters as a scalar (coef^2); this keeps the update at 13 elementwise
  // passes over the parameters.
  const sq = grads.map((gr) => g.mul(gr, gr))
  const sums = sq.map((s) => g.reduceSum(s))
  const norm = g.sqrt(sums.length === 1 ? sums[0] : sums.slice(1).reduce((a, b) => g.add(a, b), sums[0]))
  const coef = cfg.maxGradNorm === undefined ? null : g.min(g.div(g.scalar(cfg.maxGradNorm), g.add(norm, g.scalar(1e-6))), g.scalar(1))
  const one = g.scalar(1)
  const b1 = g.scalar(cfg.beta1)
  const b2 = g.scalar(cfg.beta2)
  const mScale = coef ? g.mul(g.scalar(1 - cfg.beta1), coef) : g.scalar(1 - cfg.beta1)
  const vScale = coef ? g.mul(g.scalar(1 - cfg.beta2), g.mul(coef, coef)) : g.scalar(1 - cfg.beta2)
  // m/(sqrt(v)/s2 + eps) = s2 * m/(sqrt(v) + eps*s2) with s2 = sqrt(1 - b2^t): the bias
  // correction of v moves into two scalars instead of a pass over the parameters.
  const sqrtBc2 = g.sqrt(g.sub(one, g.pow(b2, step)))
  const stepSize = g.mul(g.div(lr, g.sub(one, g.pow(b1, step))), sqrtBc2)
  const eps = g.mul(g.scalar(cfg.eps), sqrtBc2)
  const decay = g.sub(one, g.mul(lr, g.scalar(cfg.weightDecay)))
  names.forEach((n, i) => {
    const m1 = g.add(g.mul(b1, m[i]), g.mul(mScale, grads[i]))
    const v1 = g.add(g.mul(b2, v[i]), g.mul(vScale, sq[i]))
    const p0 = spec.params[n].decay === false || cfg.weightDecay === 0 ? params[n] : g.mul(params[n], decay)
    const denom = g.add(g.sqrt(v1), eps)
    const p1 = g.sub(p0, g.mul(g.div(m1, denom), stepSize))
    g.outputAs(trainStepNames.nextParam(n), p1)
    g.outputAs(trainStepNames.nextM(n), m1)
    g.outputAs(trainStepNames.nextV(n), v1)
  })
  g.outputAs(trainStepNames.loss, loss)
  g.outputAs(trainStepNames.gradNorm, norm)
  return g
}

export interface Schedule {
  readonly peak: number
  readonly warmupSteps: number
  readonly totalSteps: number
  readonly decay: "cosine" | "linear" | "constant"
  /** final learning rate as a fraction of peak (default 0) */
  readonly minRatio?: number
}

/** Learning rate for the 1-based step: linear warmup to peak, then cosine/linear decay. */
export const learningRate = (s: Schedule, step: number): number => {
  if (step <= s.warmupSteps) return (s.peak * step) / Math.max(1, s.warmupSteps)
  const min = s.peak * (s.minRatio ?? 0)
  const progress = Math.min(1, (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps))
  switch (s.decay) {
    case "constant":
      return s.peak
    case "linear":
      return min + (s.peak - min) * (1 - progress)
    case "cosine":
      return min + (s.peak - min) * 0.5 * (1 + Math.cos(Math.PI * progress))
  }
}
