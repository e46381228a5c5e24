// The training driver on a model small enough to check by hand: logits z over V = 5 classes,
// trained by cross-entropy against a target distribution q fed with each step,
// loss = -Σ_v q_v log softmax(z)_v. Its minimum over z is the entropy H(q) (at softmax(z) = q), the
// "optimal loss" a diffuse target distribution cannot go below, which the threshold test stops at.
// - resume: a run killed after step 5 (checkpoints at 0, 2, 3, 4) resumes to bit-identical
//   parameters, moments, validation history, epoch losses and per-step metrics (each step's q is
//   drawn from (seed, step), as a stage's batch order and dropout masks are);
// - a training-loss threshold H(q) x (1 + gamma) stops at the first step at or below it, and a
//   resumed stopped run trains no further;
// - patience: a validation the training can only make worse (KL from the uniform distribution, 0
//   at the start) stops after `patience` epochs and returns the start parameters;
// - a NaN in step 4's feeds fails with a TrainingError naming step 4 and the step-2 checkpoint,
//   which is left byte for byte as it was, and a rerun resumes from it; an infinite gradient norm
//   with a finite loss fails the same way.
import { Cause, Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { buildTrainStep, serialize } from "../../src/graph/index.ts"
import { createSession, type Session } from "../../src/runtime/session.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { type Params, TrainingError, type TrainLoopOptions, type TrainLoopResult, trainLoop } from "../../src/runtime/train-loop.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { type Metric, stageContext } from "../stage-harness.ts"

const V = 5
const session: Session = await Effect.runPromise(
  createSession(
    serialize(
      buildTrainStep({
        params: { z: { shape: [V] } },
        batch: { q: { dtype: "float32", shape: [V] } },
        loss: (g, p, b) => g.sub(g.scalar(0), g.reduceSum(g.mul(b.q, g.logSoftmax(p.z)))),
        adamw: { weightDecay: 0, maxGradNorm: 1 },
      }),
    ),
  ),
)

const tempDir = () => fs.mkdtempSync(path.join(tmpdir(), "pipe-train-loop-"))
const target = [0.4, 0.3, 0.15, 0.1, 0.05]
const entropy = (q: ReadonlyArray<number>) => -q.reduce((s, x) => s + x * Math.log(x), 0)
/** KL(q || softmax(z)) in float64 */
const klFrom = (q: ReadonlyArray<number>, z: ReadonlyArray<number>) => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
  return q.reduce((s, x, v) => s + x * (Math.log(x) - (z[v] - lse)), 0)
}
/** a distribution drawn from (seed, step): what a stage's shuffled batches and dropout masks are */
const noisyTarget = (step: number) => {
  const rng = makeRng(1000 + step)
  const w = target.map((x) => x * (0.5 + rng.next()))
  const s = w.reduce((a, b) => a + b, 0)
  return w.map((x) => x / s)
}

interface Run {
  readonly exit: Exit.Exit<TrainLoopResult, unknown>
  readonly logs: string[]
  readonly metrics: Metric[]
}

const run = async (workDir: string, options: Partial<TrainLoopOptions<never>> = {}, stopAt?: number): Promise<Run> => {
  const logs: string[] = []
  const metrics: Metric[] = []
  const exit = await Effect.runPromiseExit(
    trainLoop<never>({
      session,
      ctx: stageContext(workDir, { logs, metrics, stopAt }),
      init: () => Effect.succeed({ z: tensor("float32", [V], new Array(V).fill(0)) }),
      epochs: 3,
      stepsPerEpoch: 3,
      schedule: { peak: 0.1, warmupSteps: 2, decay: "cosine", minRatio: 0.1 },
      batch: (step) => Effect.succeed({ feeds: { q: tensor("float32", [V], noisyTarget(step)) }, tokens: 1 + (step % 2) }),
      validation: {
        metric: "val_kl",
        label: "validation KL",
        run: (p: Params) => Effect.succeed(klFrom(target, toNumbers(p.z))),
        every: 3,
        patience: 0,
        divergenceFactor: 0,
        startLabel: "the initialization",
        keepBest: false,
      },
      checkpointEvery: 2,
      divergenceHint: "lower lr",
      ...options,
    }),
  )
  return { exit, logs, metrics }
}

const result = (r: Run) => {
  if (!Exit.isSuccess(r.exit)) throw new Error(`training failed: ${String(r.exit.cause)}\n${r.logs.join("\n")}`)
  return r.exit.value
}
const losses = (r: Run) => r.metrics.filter((m) => m.name === "loss")

describe("trainLoop", () => {
  it("a killed run resumes to bit-identical parameters, moments, history and metrics", async () => {
    const whole = await run(tempDir())
    const a = result(whole)
    expect(a.state.step).toBe(9)
    expect(a.history.map((h) => h.step)).toEqual([0, 3, 6, 9])
    // training on targets near `target` brings the model closer to it
    expect(a.history[3].value).toBeLessThan(a.history[0].value / 2)
    // step 1 from z = 0: the cross-entropy of the uniform distribution, log V (float32: 1e-6)
    expect(Math.abs(losses(whole)[0].value - Math.log(V))).toBeLessThan(1e-6)

    const workDir = tempDir()
    expect(Exit.isFailure((await run(workDir, {}, 5)).exit)).toBe(true)
    const resumed = await run(workDir)
    expect(resumed.logs).toContain(`resumed from ${path.join(workDir, "checkpoint.safetensors")} at step 4 of 9`)
    const b = result(resumed)
    for (const k of ["params", "m", "v"] as const) expect(Array.from(b.state[k].z.data as Float32Array)).toEqual(Array.from(a.state[k].z.data as Float32Array))
    expect(b.history).toEqual(a.history)
    expect(b.epochLosses).toEqual(a.epochLosses)
    expect(b.trainedTokens).toBe(a.trainedTokens)
    expect(losses(resumed)).toEqual(losses(whole).slice(4))
    // the epoch means weight each step's loss by its tokens, the first epoch spanning the kill
    const l = losses(whole).map((m) => m.value)
    expect(b.epochLosses[1]).toBeCloseTo((l[3] * 1 + l[4] * 2 + l[5] * 1) / 4, 12)
  })

  it("stops at a training-loss threshold optimal x (1 + gamma), and a resumed stopped run trains no further", async () => {
    const optimal = entropy(target)
    const threshold = optimal * (1 + 0.01)
    const options = {
      epochs: 100,
      stepsPerEpoch: 4,
      schedule: { peak: 0.1, warmupSteps: 0, decay: "constant" as const },
      batch: () => Effect.succeed({ feeds: { q: tensor("float32", [V], target) }, tokens: 1 }),
      lossThreshold: threshold,
    }
    const workDir = tempDir()
    const r = await run(workDir, options)
    const out = result(r)
    const l = losses(r).map((m) => m.value)
    expect(out.state.step).toBeLessThan(400)
    expect(out.state.step).toBe(l.length)
    expect(l.at(-1)!).toBeLessThanOrEqual(threshold)
    expect(l.slice(0, -1).every((x) => x > threshold)).toBe(true)
    // no step goes below the entropy (float32 rounding of a sum of 5 terms of O(1): 1e-6)
    expect(Math.min(...l)).toBeGreaterThan(optimal - 1e-6)
    expect(out.stopped).toMatch(/training loss \S+ at step \d+ reached the threshold/)
    expect(r.logs.some((x) => x.startsWith(`early stop after step ${out.state.step}`) || x.startsWith(`early stop after epoch ${out.state.step / 4}`))).toBe(true)

    const again = await run(workDir, options)
    expect(result(again).state.step).toBe(out.state.step)
    expect(losses(again)).toEqual([])
  })

  it("stops after `patience` validations without improvement and returns the best (start) parameters", async () => {
    const uniform = new Array(V).fill(1 / V)
    const r = await run(tempDir(), {
      epochs: 5,
      validation: {
        metric: "val_kl",
        label: "validation KL",
        run: (p: Params) => Effect.succeed(klFrom(uniform, toNumbers(p.z))),
        every: 3,
        patience: 2,
        divergenceFactor: 0,
        startLabel: "the initialization",
        keepBest: true,
      },
    })
    const out = result(r)
    expect(out.history.map((h) => h.step)).toEqual([0, 3, 6])
    expect(out.history[0].value).toBeLessThan(1e-12)
    expect(out.state.step).toBe(6)
    expect(out.output).toEqual(out.history[0])
    expect(toNumbers(out.params.z)).toEqual(new Array(V).fill(0))
    expect(toNumbers(out.state.params.z)).not.toEqual(new Array(V).fill(0))
    expect(r.logs.some((l) => l.startsWith("early stop after epoch 2: no better validation KL for 2 validations"))).toBe(true)
  })

  it("a NaN loss fails naming the step, and the last good checkpoint is left intact", async () => {
    const workDir = tempDir()
    const file = path.join(workDir, "checkpoint.safetensors")
    let atStep2: Buffer | undefined
    const broken = await run(workDir, {
      batch: (step) =>
        Effect.sync(() => {
          // step 3 starts right after step 2's checkpoint
          if (step === 3) atStep2 = fs.readFileSync(file)
          const q = noisyTarget(step)
          if (step === 4) q[2] = Number.NaN
          return { feeds: { q: tensor("float32", [V], q) }, tokens: 1 }
        }),
      validation: undefined,
    })
    expect(Exit.isFailure(broken.exit)).toBe(true)
    const error = Exit.isFailure(broken.exit) ? Cause.squash(broken.exit.cause) : undefined
    expect(error).toBeInstanceOf(TrainingError)
    expect((error as TrainingError).step).toBe(4)
    expect((error as TrainingError).message).toBe(`training diverged at step 4: loss NaN, gradient norm NaN (lower lr); the last good checkpoint is ${file} (step 2)`)
    expect(losses(broken).map((m) => m.step)).toEqual([1, 2, 3])
    expect(fs.readFileSync(file).equals(atStep2!)).toBe(true)

    const rerun = await run(workDir, { validation: undefined })
    expect(rerun.logs).toContain(`resumed from ${file} at step 2 of 9`)
    expect(rerun.logs.some((l) => l.startsWith("discarded"))).toBe(false)
    expect(result(rerun).state.step).toBe(9)
  })

  it("an infinite gradient norm fails even when the loss is finite", async () => {
    // q = (1e38, -1e38, 0, 0, 0) at z = 0: loss = log V x (1e38 - 1e38) = 0, but the gradient is
    // softmax(z) Σq - q = -q, whose squared norm 2e76 overflows float32
    const r = await run(tempDir(), {
      batch: (step) => Effect.succeed({ feeds: { q: tensor("float32", [V], step === 2 ? [1e38, -1e38, 0, 0, 0] : noisyTarget(step)) }, tokens: 1 }),
    })
    const error = Exit.isFailure(r.exit) ? Cause.squash(r.exit.cause) : undefined
    expect(error).toBeInstanceOf(TrainingError)
    expect((error as TrainingError).message).toMatch(/^training diverged at step 2: loss \S+, gradient norm Infinity \(lower lr\); the last good checkpoint is .*checkpoint\.safetensors \(step 0\)$/)
    expect(Number.isFinite(Number((error as TrainingError).message.match(/loss (\S+),/)![1]))).toBe(true)
  })
})
