// Host side of the in-graph optimizer: holds parameters and AdamW moments as tensors and
// feeds each step's outputs back as the next step's inputs (see graph/optim.ts).
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { trainStepNames as N } from "../graph/optim.ts"
import { type RunError, runSession, type Session } from "./session.ts"

export interface TrainState {
  readonly params: Readonly<Record<string, ort.Tensor>>
  readonly m: Readonly<Record<string, ort.Tensor>>
  readonly v: Readonly<Record<string, ort.Tensor>>
  /** number of updates applied so far */
  readonly step: number
}

export interface StepResult {
  readonly state: TrainState
  readonly loss: number
  readonly gradNorm: number
}

/** Fresh state: the given float32 parameters and zero moments. */
export const initTrainState = (params: Readonly<Record<string, ort.Tensor>>): TrainState => {
  const zeros = (t: ort.Tensor) => new ort.Tensor("float32", new Float32Array(t.size), t.dims)
  const m: Record<string, ort.Tensor> = {}
  const v: Record<string, ort.Tensor> = {}
  for (const [k, t] of Object.entries(params)) {
    if (t.type !== "float32") throw new Error(`trainable parameter ${k} must be float32, got ${t.type}`)
    m[k] = zeros(t)
    v[k] = zeros(t)
  }
  return { params, m, v, step: 0 }
}

/** One optimizer step: runs the train-step session on `batch` with learning rate `lr`. */
export const trainStep = (session: Session, state: TrainState, batch: Readonly<Record<string, ort.Tensor>>, lr: number): Effect.Effect<StepResult, RunError> => {
  const feeds: Record<string, ort.Tensor> = { ...batch }
  for (const k of Object.keys(state.params)) {
    feeds[N.param(k)] = state.params[k]
    feeds[N.m(k)] = state.m[k]
    feeds[N.v(k)] = state.v[k]
  }
  const step = state.step + 1
  feeds[N.step] = new ort.Tensor("float32", Float32Array.of(step), [])
  feeds[N.lr] = new ort.Tensor("float32", Float32Array.of(lr), [])
  return Effect.map(runSession(session, feeds), (out) => {
    const params: Record<string, ort.Tensor> = {}
    const m: Record<string, ort.Tensor> = {}
    const v: Record<string, ort.Tensor> = {}
    for (const k of Object.keys(state.params)) {
      params[k] = out[N.nextParam(k)]
      m[k] = out[N.nextM(k)]
      v[k] = out[N.nextV(k)]
    }
    return { state: { params, m, v, step }, loss: (out[N.loss].data as Float32Array)[0], gradNorm: (out[N.gradNorm].data as Float32Array)[0] }
  })
}
