// The training driver every trainer runs: the stage supplies a train-step session (built with
// graph/optim.ts buildTrainStep, which does the loss, backward pass, gradient accumulation over
// micro-batches, clipping and AdamW in one onnxruntime run), the initial parameters, each step's
// feeds and, optionally, a validation; the driver does everything around the steps:
// - learning rate per step from a Schedule (warmup, cosine/linear decay);
// - metrics per step (loss, lr, grad_norm, tokens_per_s), per epoch (epoch_loss: the mean loss over
//   the epoch's tokens) and per validation (the validation's metric, train_loss since the last one,
//   both at the optimizer step validated after; the one before training at step 0);
// - a NaN or infinite loss or gradient norm fails at once with a TrainingError naming the step; the
//   update of that step is never checkpointed, so the last good checkpoint stays as it was;
// - validation before training (the reference for divergence, and a candidate "best") and every
//   `every` steps; it fails as diverged when non-finite or above divergenceFactor x the start value;
// - early stopping by patience (validations without a better value), by a validation threshold and
//   by a training-loss threshold (e.g. `optimal_loss * (1 + gamma)` when the target distribution's
//   own entropy bounds the loss from below);
// - checkpoints in `workDir` (parameters, AdamW moments, the best parameters when asked for, and
//   all counters) at step 0, after each validation, every `checkpointEvery` steps, on an early stop
//   and at the last step. Each carries a sha256 of its tensors; the one it replaces is kept beside
//   it, and a checkpoint that cannot be read or fails its checksum is moved aside to `.damaged` and
//   the previous one used. Resuming is deterministic as long as the stage's feeds are a function of
//   the step (batch order of (seed, epoch), dropout seeds of (seed, step, micro-batch)): a killed run
//   ends with the same parameters, history and metrics as an uninterrupted one.
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Data, Effect, Schema } from "effect"
import * as ort from "onnxruntime-node"
import { ArtifactError } from "../engine/errors.ts"
import type { StageContext } from "../engine/stage.ts"
import { learningRate, type Schedule } from "../graph/optim.ts"
import { fromNumbers, readFile, type SafetensorsError, type Tensor, toFloat32, writeFile } from "../core/safetensors.ts"
import type { RunError, Session } from "./session.ts"
import { initTrainState, type TrainState, trainStep } from "./train.ts"

/** Training cannot go on: a non-finite loss or gradient norm, or a diverged validation. */
export class TrainingError extends Data.TaggedError("TrainingError")<{
  readonly step: number
  readonly message: string
}> {}

/** A checkpoint file cannot be written, or a damaged one cannot be moved aside. */
export class CheckpointError extends Data.TaggedError("CheckpointError")<{
  readonly file: string
  readonly message: string
}> {}

export type Params = Readonly<Record<string, ort.Tensor>>

/** One validation: index 0 is the one before training. */
export interface Evaluation {
  readonly step: number
  readonly value: number
  /** mean training loss per token since the previous validation (null before training) */
  readonly trainLoss: number | null
}

/** What one optimizer step feeds, besides parameters, moments, step and lr. */
export interface StepBatch {
  readonly feeds: Readonly<Record<string, ort.Tensor>>
  /** tokens the loss is a mean over (weights the epoch and validation-period mean losses) */
  readonly tokens: number
  /** tokens the step computes, for tokens_per_s (default `tokens`; e.g. padding included) */
  readonly computedTokens?: number
}

export interface Validation<E> {
  /** metric name and how log lines call it, e.g. "val_kl" and "validation KL" */
  readonly metric: string
  readonly label: string
  /** lower is better */
  readonly run: (params: Params) => Effect.Effect<number, E>
  /** validate every this many steps (and before training) */
  readonly every: number
  /** 0 = off; else stop after this many validations without a lower value */
  readonly patience: number
  /** stop once a validation is at or below this */
  readonly threshold?: number
  /** 0 = off; else fail once a validation exceeds this multiple of the one before training */
  readonly divergenceFactor: number
  /** what the start value is, for the divergence message, e.g. "the base model" */
  readonly startLabel: string
  /** keep the parameters of the best validation (checkpointed) and return them instead of the last */
  readonly keepBest: boolean
}

export interface TrainLoopOptions<E> {
  readonly session: Session
  readonly ctx: Pick<StageContext, "workDir" | "log" | "metric" | "progress">
  /** the trainable parameters at step 0; on a resume only their names are used (to read the checkpoint) */
  readonly init: () => Effect.Effect<Params, E>
  readonly epochs: number
  readonly stepsPerEpoch: number
  /** the peak, warmup and decay; the total is epochs x stepsPerEpoch */
  readonly schedule: Omit<Schedule, "totalSteps">
  /** the feeds of a 1-based step: a pure function of (step, epoch, index in the epoch) for a deterministic resume */
  readonly batch: (step: number, epoch: number, index: number) => Effect.Effect<StepBatch, E>
  readonly validation?: Validation<E>
  /** stop once a step's training loss is at or below this */
  readonly lossThreshold?: number
  /** also checkpoint every this many steps; 0 = only at validations, early stops and the end */
  readonly checkpointEvery: number
  /** what to tell the user to change when training diverges, e.g. "lower lr (now 0.1) or maxGradNorm (now 1)" */
  readonly divergenceHint: string
}

export interface TrainLoopResult {
  /** the best validation's parameters with keepBest, else the last step's */
  readonly params: Params
  readonly state: TrainState
  readonly history: ReadonlyArray<Evaluation>
  /** the history entry of `params` (undefined without validation) */
  readonly output: Evaluation | undefined
  readonly epochLosses: ReadonlyArray<number>
  /** why training stopped before the last step, or null */
  readonly stopped: string | null
  readonly totalSteps: number
  /** step seconds and loss tokens over the whole run, resumed parts included */
  readonly seconds: number
  readonly trainedTokens: number
}

// ------------------------------------------------------------------------------ checkpoints

const CHECKPOINT = "checkpoint.safetensors"
const PREVIOUS = "checkpoint.previous.safetensors"

const Counters = Schema.Struct({
  history: Schema.Array(Schema.Struct({ step: Schema.Number, value: Schema.Number, trainLoss: Schema.NullOr(Schema.Number) })),
  epochLosses: Schema.Array(Schema.Number),
  stopped: Schema.NullOr(Schema.String),
  seconds: Schema.Number,
  trainedTokens: Schema.Number,
  /** running Σ loss x tokens and tokens of the current epoch and of the current validation period */
  epochLoss: Schema.Number,
  epochTokens: Schema.Number,
  periodLoss: Schema.Number,
  periodTokens: Schema.Number,
})
type Counters = typeof Counters.Type
const decodeCounters = Schema.decodeUnknownSync(Schema.fromJsonString(Counters))

interface Progress extends Counters {
  readonly state: TrainState
  readonly best: Params | undefined
}

/** A safetensors tensor as the float32 ort.Tensor a train step takes, and back. */
export const toOrt = (t: Tensor): ort.Tensor => new ort.Tensor("float32", toFloat32(t), [...t.shape])
export const fromOrt = (t: ort.Tensor): Tensor => fromNumbers(t.data as Float32Array, "F32", t.dims)
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e))

/** sha256 over the tensors' names and bytes in name order: detects a damaged file that still parses. */
const checksumOf = (tensors: ReadonlyMap<string, Tensor>): string => {
  const h = createHash("sha256")
  for (const name of [...tensors.keys()].sort()) h.update(name).update(tensors.get(name)!.data)
  return h.digest("hex")
}

/** Written atomically (writeFile writes a temp file and renames it); the checkpoint it replaces becomes PREVIOUS. */
const saveCheckpoint = (workDir: string, p: Progress): Effect.Effect<string, CheckpointError | SafetensorsError> => {
  const tensors = new Map<string, Tensor>()
  for (const k of Object.keys(p.state.params)) {
    tensors.set(`param/${k}`, fromOrt(p.state.params[k]))
    tensors.set(`m/${k}`, fromOrt(p.state.m[k]))
    tensors.set(`v/${k}`, fromOrt(p.state.v[k]))
    if (p.best) tensors.set(`best/${k}`, fromOrt(p.best[k]))
  }
  const { state, best, ...counters } = p
  const file = path.join(workDir, CHECKPOINT)
  return Effect.as(
    Effect.andThen(
      Effect.try({
        try: () => fs.existsSync(file) && fs.renameSync(file, path.join(workDir, PREVIOUS)),
        catch: (e) => new CheckpointError({ file, message: `cannot keep the previous checkpoint ${file}: ${messageOf(e)}` }),
      }),
      writeFile(file, tensors, { step: String(state.step), progress: JSON.stringify(counters), checksum: checksumOf(tensors) }),
    ),
    file,
  )
}

const readCheckpoint = (file: string, names: ReadonlyArray<string>, withBest: boolean): Effect.Effect<Progress, Error> =>
  Effect.gen(function* () {
    const c = yield* readFile(file)
    return yield* Effect.try({
      try: () => {
        if (c.metadata.checksum !== checksumOf(c.tensors)) throw new Error("its tensors do not match the checksum written with them")
        const pick = (prefix: string) => {
          const out: Record<string, ort.Tensor> = {}
          for (const k of names) {
            const t = c.tensors.get(`${prefix}/${k}`)
            if (t === undefined) throw new Error(`missing ${prefix}/${k}`)
            out[k] = toOrt(t)
          }
          return out
        }
        const counters = decodeCounters(c.metadata.progress ?? "")
        const step = Number(c.metadata.step)
        if (!Number.isInteger(step) || step < 0) throw new Error(`metadata "step" is ${c.metadata.step}, expected a non-negative integer`)
        return { ...counters, state: { params: pick("param"), m: pick("m"), v: pick("v"), step }, best: withBest ? pick("best") : undefined }
      },
      catch: (e) => new ArtifactError({ path: file, field: "checkpoint", message: `${file}: not a usable checkpoint of this run (${messageOf(e)})` }),
    })
  })

/**
 * The newest usable checkpoint in `workDir` (undefined when there is none): a damaged one is
 * renamed to `<name>.damaged` (kept for inspection, never read again) and the previous one tried.
 */
const resumeFrom = (workDir: string, names: ReadonlyArray<string>, withBest: boolean, log: (line: string) => void) =>
  Effect.gen(function* () {
    for (const name of [CHECKPOINT, PREVIOUS]) {
      const file = path.join(workDir, name)
      if (!fs.existsSync(file)) continue
      const read = yield* Effect.result(readCheckpoint(file, names, withBest))
      if (read._tag === "Success") return { file, progress: read.success }
      yield* Effect.try({
        try: () => fs.renameSync(file, `${file}.damaged`),
        catch: (e) => new CheckpointError({ file, message: `${read.failure.message}; cannot move it aside (${messageOf(e)}): delete ${file} to resume from the checkpoint before it` }),
      })
      log(`discarded a damaged checkpoint, moved to ${file}.damaged: ${read.failure.message}`)
    }
    return undefined
  })

// ------------------------------------------------------------------------------ micro-batches

/** Micro-batch feeds (each of one shape) stacked on a leading [microBatches] axis, what buildTrainStep's loop slices. */
export const stackMicroBatches = (parts: ReadonlyArray<Readonly<Record<string, ort.Tensor>>>): Record<string, ort.Tensor> =>
  Object.fromEntries(
    Object.keys(parts[0]).map((name) => {
      const ts = parts.map((p) => p[name])
      const n = ts[0].size
      const data = ts[0].type === "int64" ? new BigInt64Array(n * ts.length) : new Float32Array(n * ts.length)
      ts.forEach((t, i) => data.set(t.data as never, i * n))
      return [name, new ort.Tensor(ts[0].type as "int64" | "float32", data, [ts.length, ...ts[0].dims])]
    }),
  )

// ------------------------------------------------------------------------------ the loop

/** The validation with the lowest value (the earliest on ties). */
export const bestOf = (history: ReadonlyArray<Evaluation>): Evaluation => history.reduce((a, b) => (b.value < a.value ? b : a))

/** Runs (or resumes) training to the end or an early stop; see the header for what it does. */
export const trainLoop = <E>(o: TrainLoopOptions<E>): Effect.Effect<TrainLoopResult, E | TrainingError | CheckpointError | SafetensorsError | RunError> =>
  Effect.gen(function* () {
    const { ctx, validation: val } = o
    const totalSteps = o.epochs * o.stepsPerEpoch
    const schedule: Schedule = { ...o.schedule, totalSteps }
    const keepBest = val?.keepBest === true
    for (const [name, n] of [["stepsPerEpoch", o.stepsPerEpoch], ["epochs", o.epochs], ["validation.every", val?.every ?? 1]] as const)
      if (!Number.isInteger(n) || n < 1) return yield* Effect.fail(new TrainingError({ step: 0, message: `trainLoop: ${name} is ${n}, expected a positive integer` }))
    const when = (step: number) => (step % o.stepsPerEpoch === 0 ? `epoch ${step / o.stepsPerEpoch}` : `step ${step}`)

    let p: Progress
    let last: { file: string; step: number }
    const initial = yield* o.init()
    const names = Object.keys(initial)
    const resumed = yield* resumeFrom(ctx.workDir, names, keepBest, ctx.log)
    if (resumed) {
      p = resumed.progress
      last = { file: resumed.file, step: p.state.step }
      ctx.log(`resumed from ${resumed.file} at step ${p.state.step} of ${totalSteps}`)
    } else {
      const state = initTrainState(initial)
      const history: Evaluation[] = []
      if (val) {
        const start = yield* val.run(state.params)
        if (!Number.isFinite(start)) return yield* Effect.fail(new TrainingError({ step: 0, message: `${val.label} before training is ${start}: the initial parameters or the validation data are broken` }))
        ctx.metric(val.metric, start, 0)
        ctx.log(`${val.label} before training (${val.startLabel}): ${start.toFixed(4)}`)
        history.push({ step: 0, value: start, trainLoss: null })
      }
      p = { state, best: keepBest ? state.params : undefined, history, epochLosses: [], stopped: null, seconds: 0, trainedTokens: 0, epochLoss: 0, epochTokens: 0, periodLoss: 0, periodTokens: 0 }
      last = { file: yield* saveCheckpoint(ctx.workDir, p), step: 0 }
    }
    ctx.progress.total(totalSteps, "steps")
    ctx.progress.set(p.state.step)
    const intact = () => `the last good checkpoint is ${last.file} (step ${last.step})`

    while (p.state.step < totalSteps && p.stopped === null) {
      const step = p.state.step + 1
      const epoch = Math.floor((step - 1) / o.stepsPerEpoch)
      const batch = yield* o.batch(step, epoch, (step - 1) % o.stepsPerEpoch)
      const lr = learningRate(schedule, step)
      const started = performance.now()
      const result = yield* trainStep(o.session, p.state, batch.feeds, lr)
      const elapsed = (performance.now() - started) / 1000
      if (!Number.isFinite(result.loss) || !Number.isFinite(result.gradNorm))
        return yield* Effect.fail(
          new TrainingError({ step, message: `training diverged at step ${step}: loss ${result.loss}, gradient norm ${result.gradNorm} (${o.divergenceHint}); ${intact()}` }),
        )
      ctx.metric("loss", result.loss, step)
      ctx.metric("lr", lr, step)
      ctx.metric("grad_norm", result.gradNorm, step)
      ctx.metric("tokens_per_s", (batch.computedTokens ?? batch.tokens) / elapsed, step)
      const weighted = result.loss * batch.tokens
      p = {
        ...p,
        state: result.state,
        seconds: p.seconds + elapsed,
        trainedTokens: p.trainedTokens + batch.tokens,
        epochLoss: p.epochLoss + weighted,
        epochTokens: p.epochTokens + batch.tokens,
        periodLoss: p.periodLoss + weighted,
        periodTokens: p.periodTokens + batch.tokens,
      }
      let checkpoint = (o.checkpointEvery > 0 && step % o.checkpointEvery === 0) || step === totalSteps
      const early = step < totalSteps
      if (early && o.lossThreshold !== undefined && result.loss <= o.lossThreshold) p = { ...p, stopped: `training loss ${result.loss.toFixed(4)} at step ${step} reached the threshold ${o.lossThreshold}` }
      if (step % o.stepsPerEpoch === 0) {
        const mean = p.epochLoss / p.epochTokens
        p = { ...p, epochLosses: [...p.epochLosses, mean], epochLoss: 0, epochTokens: 0 }
        ctx.metric("epoch_loss", mean, epoch + 1)
        ctx.log(`epoch ${epoch + 1}/${o.epochs}: training loss ${mean.toFixed(4)}, ${p.seconds.toFixed(1)} s of training steps`)
      }
      if (val && step % val.every === 0) {
        const value = yield* val.run(p.state.params)
        const start = p.history[0].value
        if (!Number.isFinite(value) || (val.divergenceFactor > 0 && value > val.divergenceFactor * start))
          return yield* Effect.fail(
            new TrainingError({
              step,
              message:
                `training diverged: ${val.label} ${value} after ${when(step)} against ${start.toFixed(4)} for ${val.startLabel} ` +
                `(${Number.isFinite(value) ? `${(value / start).toFixed(1)}x, above divergenceFactor ${val.divergenceFactor}` : "not finite"}); ${o.divergenceHint}; ${intact()}`,
            }),
          )
        const record: Evaluation = { step, value, trainLoss: p.periodLoss / p.periodTokens }
        const improved = value < bestOf(p.history).value
        const history = [...p.history, record]
        p = { ...p, history, best: keepBest && improved ? p.state.params : p.best, periodLoss: 0, periodTokens: 0 }
        // at the optimizer step, as the per-step loss: one x axis for a training curve
        ctx.metric(val.metric, value, step)
        ctx.metric("train_loss", record.trainLoss!, step)
        ctx.log(`${when(step)}: ${val.label} ${value.toFixed(4)}${improved ? " (best)" : ""}`)
        if (early && p.stopped === null && val.patience > 0 && history.length - 1 - history.indexOf(bestOf(history)) >= val.patience)
          p = { ...p, stopped: `no better ${val.label} for ${val.patience} validations` }
        if (early && p.stopped === null && val.threshold !== undefined && value <= val.threshold) p = { ...p, stopped: `${val.label} ${value.toFixed(4)} reached the threshold ${val.threshold}` }
        checkpoint = true
      }
      if (p.stopped !== null) {
        ctx.log(`early stop after ${when(step)}: ${p.stopped}`)
        checkpoint = true
      }
      if (checkpoint) last = { file: yield* saveCheckpoint(ctx.workDir, p), step }
      ctx.progress.set(step)
      yield* Effect.yieldNow
    }

    const output = val ? (keepBest ? bestOf(p.history) : p.history[p.history.length - 1]) : undefined
    return {
      params: keepBest ? p.best! : p.state.params,
      state: p.state,
      history: p.history,
      output,
      epochLosses: p.epochLosses,
      stopped: p.stopped,
      totalSteps,
      seconds: p.seconds,
      trainedTokens: p.trainedTokens,
    }
  })
