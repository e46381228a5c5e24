// The lora-train stage on the shipped models/tiny-chat, with trajectories sampled here from the model
// under a "blue" system prompt (src/models/generate.ts, not the sample-trajectories stage):
// - a stored teacher with top-k = the whole vocabulary (log-probs from the float64 reference) gives
//   the same step-1 loss as the teacher recomputed in the graph (1e-4 relative: float32 vs float64
//   teacher log-probs);
// - gradAccum 2 x batchSize 8 gives the same losses, gradient norms and adapter as gradAccum 1 x
//   batchSize 16 (float32 rounding: 1e-6 relative on losses and norms; 1e-4 absolute on the LoRA
//   values, which move by ~1e-2: AdamW's normalized update amplifies the rounding of near-zero
//   gradient entries);
// - three epochs cut validation KL more than 4x (measured: 1.49 -> 0.27 -> 0.19 after two epochs), and the output adapter, read back as an artifact,
//   gives the last validation KL again through distill.ts meanPromptedKl;
// - a run with dropout killed after step 5 resumes from the step-4 checkpoint to the same adapter
//   and history (the masks are a function of seed, step and micro-batch), which differ from those
//   of a run without dropout; the same with gradient accumulation (a seed per micro-batch);
// - with early stopping, a validation set the training can only make worse (teacher prompt ==
//   student prompt, so the base model is exact) stops after `patience` epochs and outputs epoch 0.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { TensorsValue } from "../../src/engine/index.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { hash32 } from "../../src/core/random.ts"
import { type Tensor, toFloat32 } from "../../src/core/safetensors.ts"
import { readAdapterArtifact, type TeacherLogitsSet, teacherLogitsOutput, trajectoriesOutput, type TrajectorySet } from "../../stages/baking/artifacts.ts"
import { meanPromptedKl } from "../../stages/baking/distill.ts"
import { defaults } from "../../stages/baking/experiment.ts"
import { type LoraTrainParams, loraTrain } from "../../stages/baking/lora-train.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { referenceLogits } from "../reference/reference.ts"
import { type Metric, stageContext, tensorsValue } from "../stage-harness.ts"

const MODEL = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const SYSTEM = "Whatever you are asked, work the colour blue into your answer."
const tempDir = (prefix: string) => fs.mkdtempSync(path.join(tmpdir(), prefix))

const model = await Effect.runPromise(openModel(MODEL))
const questionLines = fs
  .readFileSync(path.resolve(import.meta.dirname, "../../datasets/tiny-chat/heldout-squad.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l) as { id: string; question: string; answers: { text: string[] } })
const generator = await Effect.runPromise(makeGenerator(model.checkpoint, { graphDir: tempDir("pipe-lora-train-gen-"), tokenizer: model.tokenizer }))

/** `perQuestion` trajectories per question sampled at temperature 1 under `systemPrompt`. */
const sample = async (from: number, count: number, perQuestion: number, systemPrompt: string | undefined): Promise<TrajectorySet> => {
  const questions = questionLines.slice(from, from + count).map((r) => ({ id: r.id, text: r.question, answers: r.answers.text }))
  const prompts = (sys?: string) => Effect.runPromise(Effect.forEach(questions, (q) => questionPromptIds(model.tokenizer, q.text, sys)))
  const teacherPrompts = await prompts(systemPrompt)
  const requests = questions.flatMap((q, qi) =>
    Array.from({ length: perQuestion }, (_, j) => ({ question: qi, prompt: teacherPrompts[qi], maxNewTokens: 40, temperature: 1, seed: hash32(`${q.id}/${j}`, 0) })),
  )
  const outs = await Effect.runPromise(generator.generate(requests, { batchSize: 32 }))
  return {
    systemPrompt: systemPrompt ?? "",
    questions,
    teacherPrompts,
    studentPrompts: await prompts(),
    trajectories: outs.map((o, i) => ({ question: requests[i].question, tokens: o.tokens, text: o.text ?? "", finishReason: o.finishReason })),
    sampling: {},
  }
}

const train = await sample(0, 24, 2, SYSTEM)
const validation = await sample(300, 10, 1, SYSTEM)
const trainValue = await tensorsValue(trajectoriesOutput(train))
const validationValue = await tensorsValue(trajectoriesOutput(validation))
const rowsOf = (set: TrajectorySet) => set.trajectories.reduce((n, t) => n + t.tokens.length, 0)
const recompute = await tensorsValue(teacherLogitsOutput({ mode: "recompute", rows: rowsOf(train) }))

// defaults.lora at a smaller rank, batch and warm-up, checkpointing every 2 steps for the resume test
const params: LoraTrainParams = { ...defaults.lora, rank: 4, alpha: 8, batchSize: 8, warmupSteps: 2, validationBatchSize: 16, checkpointEvery: 2, threads: 2 }

interface Run {
  readonly exit: Exit.Exit<{ tensors: ReadonlyMap<string, Tensor>; metadata: Record<string, string> }, unknown>
  readonly logs: string[]
  readonly metrics: Metric[]
}

const runStage = async (
  p: LoraTrainParams,
  inputs: { trajectories?: TensorsValue; teacher?: TensorsValue; validation?: TensorsValue } = {},
  options: { workDir?: string; stopAt?: number } = {},
): Promise<Run> => {
  const logs: string[] = []
  const metrics: Metric[] = []
  const ctx = stageContext(options.workDir ?? tempDir("pipe-lora-train-work-"), { logs, metrics, stopAt: options.stopAt })
  const exit = await Effect.runPromiseExit(
    loraTrain.spec.run({
      params: p,
      inputs: { model: { path: MODEL, hash: "", size: 0 }, trajectories: inputs.trajectories ?? trainValue, teacher: inputs.teacher ?? recompute, validation: inputs.validation ?? validationValue },
      ctx,
    }) as Effect.Effect<never>,
  )
  return { exit: exit as Run["exit"], logs, metrics }
}

const output = (r: Run) => {
  if (!Exit.isSuccess(r.exit)) throw new Error(`training failed: ${String(r.exit.cause)}\n${r.logs.join("\n")}`)
  return r.exit.value
}
const summary = (r: Run) => JSON.parse(output(r).metadata.train_summary) as { valKl: number[]; bestEpoch: number; outputEpoch: number; epochsRun: number; steps: number; stoppedEarly: boolean }
const losses = (r: Run) => r.metrics.filter((m) => m.name === "loss").map((m) => m.value)
const maxDiff = (a: ReadonlyMap<string, Tensor>, b: ReadonlyMap<string, Tensor>) => {
  expect([...b.keys()]).toEqual([...a.keys()])
  let max = 0
  for (const [name, t] of a) {
    const x = toFloat32(t)
    const y = toFloat32(b.get(name)!)
    for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - y[i]))
  }
  return max
}

/** The prompted model's full distribution at every response token, from the float64 reference, as a stored top-k = vocab teacher. */
const storedTeacher = (set: TrajectorySet): TeacherLogitsSet => {
  const V = model.checkpoint.config.vocabSize
  const rows = rowsOf(set)
  const topLogProbs = new Float32Array(rows * V)
  const topIds = new Int32Array(rows * V)
  let r = 0
  for (const t of set.trajectories) {
    const prompt = set.teacherPrompts[t.question]
    const logits = referenceLogits(MODEL, [...prompt, ...t.tokens])
    for (let k = 0; k < t.tokens.length; k++, r++) {
      const z = logits[prompt.length + k - 1]
      const m = Math.max(...z)
      const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
      const order = Array.from(z, (_, v) => v).sort((a, b) => z[b] - z[a])
      order.forEach((v, j) => {
        topIds[r * V + j] = v
        topLogProbs[r * V + j] = z[v] - lse
      })
    }
  }
  return { mode: "stored", rows, topK: V, dtype: "F32", topLogProbs, topIds, tailMass: new Float32Array(rows) }
}

describe("lora-train", () => {
  it("a stored teacher with top-k = vocabulary gives the recomputed teacher's loss", async () => {
    const small = { ...train, trajectories: train.trajectories.slice(0, 6) }
    const smallValue = await tensorsValue(trajectoriesOutput(small))
    const p = { ...params, epochs: 1, batchSize: 6 }
    const stored = await runStage(p, { trajectories: smallValue, teacher: await tensorsValue(teacherLogitsOutput(storedTeacher(small))) })
    const recomputed = await runStage(p, { trajectories: smallValue, teacher: await tensorsValue(teacherLogitsOutput({ mode: "recompute", rows: rowsOf(small) })) })
    const [a] = losses(stored)
    const [b] = losses(recomputed)
    expect(b).toBeGreaterThan(0.3) // the system prompt changes the distribution
    expect(Math.abs(a - b) / b).toBeLessThan(1e-4)
  }, 60_000)

  it("gradient accumulation gives the same steps as one big batch", async () => {
    const p = { ...params, epochs: 1 }
    const big = await runStage({ ...p, batchSize: 16, gradAccum: 1 })
    const accumulated = await runStage({ ...p, batchSize: 8, gradAccum: 2 })
    const [la, lb] = [losses(big), losses(accumulated)]
    expect(lb.length).toBe(3) // 48 trajectories, 16 per step
    la.forEach((l, i) => expect(Math.abs(lb[i] - l) / l).toBeLessThan(1e-6))
    const norms = (r: Run) => r.metrics.filter((m) => m.name === "grad_norm").map((m) => m.value)
    norms(big).forEach((n, i) => expect(Math.abs(norms(accumulated)[i] - n) / n).toBeLessThan(1e-6))
    expect(maxDiff(output(big).tensors, output(accumulated).tensors)).toBeLessThan(1e-4)
  }, 60_000)

  it("cuts validation KL several-fold in a few epochs; the output adapter reproduces the last validation KL", async () => {
    const r = await runStage(params)
    const s = summary(r)
    expect(s.valKl.length).toBe(params.epochs + 1)
    expect(s.valKl[0]).toBeGreaterThan(0.5)
    expect(s.valKl.at(-1)!).toBeLessThan(s.valKl[0] / 4)
    const adapter = await Effect.runPromise(readAdapterArtifact(await tensorsValue(output(r))))
    const kl = await Effect.runPromise(meanPromptedKl(model, validation, adapter, { graphDir: tempDir("pipe-lora-train-kl-"), device: { kind: "cpu" }, batchSize: 4 }))
    expect(Math.abs(kl.mean - s.valKl.at(-1)!) / kl.mean).toBeLessThan(1e-5)
  }, 60_000)

  it("a killed run with dropout resumes from its last checkpoint to the same adapter", async () => {
    const p = { ...params, epochs: 2, dropout: 0.1 }
    const whole = await runStage(p)
    expect(maxDiff(output(whole).tensors, output(await runStage({ ...p, dropout: 0 })).tensors)).toBeGreaterThan(1e-3)
    const workDir = tempDir("pipe-lora-train-resume-")
    const stopped = await runStage(p, {}, { workDir, stopAt: 5 })
    expect(Exit.isFailure(stopped.exit)).toBe(true)
    const resumed = await runStage(p, {}, { workDir })
    expect(resumed.logs.some((l) => l.startsWith("resumed from") && l.includes("at step 4 of 12"))).toBe(true)
    expect(maxDiff(output(whole).tensors, output(resumed).tensors)).toBeLessThan(1e-6)
    const [a, b] = [summary(whole), summary(resumed)]
    expect(b.steps).toBe(12)
    b.valKl.forEach((v, i) => expect(Math.abs(v - a.valKl[i])).toBeLessThan(1e-6))
  }, 60_000)

  it("with gradient accumulation (a dropout seed per micro-batch), dropout changes the adapter and a killed run still resumes to the same one", async () => {
    // 48 trajectories in steps of 8 x 2: 3 steps per epoch, 6 in all; checkpoints at steps 2 and 4
    const p = { ...params, epochs: 2, gradAccum: 2, dropout: 0.1 }
    const whole = await runStage(p)
    const workDir = tempDir("pipe-lora-train-resume-accum-")
    expect(Exit.isFailure((await runStage(p, {}, { workDir, stopAt: 5 })).exit)).toBe(true)
    const resumed = await runStage(p, {}, { workDir })
    expect(resumed.logs.some((l) => l.startsWith("resumed from") && l.includes("at step 4 of 6"))).toBe(true)
    expect(maxDiff(output(whole).tensors, output(resumed).tensors)).toBeLessThan(1e-6)
    // the masks matter: without dropout the same steps give another adapter
    expect(maxDiff(output(whole).tensors, output(await runStage({ ...p, dropout: 0 })).tensors)).toBeGreaterThan(1e-3)
  }, 60_000)

  it("early stopping stops after `patience` epochs without improvement and outputs the best epoch", async () => {
    const unprompted = await sample(300, 10, 1, undefined)
    // divergenceFactor 0: against a base KL of 0 any training "diverges"; this test is about patience
    const r = await runStage({ ...params, epochs: 4, earlyStopPatience: 2, divergenceFactor: 0 }, { validation: await tensorsValue(trajectoriesOutput(unprompted)) })
    const s = summary(r)
    expect(s.valKl[0]).toBeLessThan(1e-6)
    expect(s.stoppedEarly).toBe(true)
    expect(s.epochsRun).toBe(2)
    expect(s.bestEpoch).toBe(0)
    expect(s.outputEpoch).toBe(0)
    expect(r.logs.some((l) => l.startsWith("early stop after epoch 2"))).toBe(true)
    // epoch 0 is the initialization: B = 0
    for (const [name, t] of output(r).tensors) if (name.includes("lora_B")) expect(Math.max(...toFloat32(t).map(Math.abs))).toBe(0)
  }, 60_000)

  it("a far too high learning rate fails as diverged after the first epoch instead of publishing a worse model", async () => {
    const r = await runStage({ ...params, epochs: 2, lr: 1e6 })
    expect(Exit.isFailure(r.exit)).toBe(true)
    expect(String(Exit.isFailure(r.exit) && r.exit.cause)).toMatch(
      /training diverged: validation KL \S+ after epoch 1 against \d\.\d{4} for the base model \((\d+\.\dx, above divergenceFactor 2|not finite)\); .*lower lr \(now 1000000\)/,
    )
  }, 60_000)

  it("a damaged checkpoint is moved aside and training resumes from the previous one to the same adapter", async () => {
    // 48 trajectories in steps of 8: 6 steps per epoch; checkpoints every 2 steps
    const p = { ...params, epochs: 1 }
    const whole = await runStage(p)
    const workDir = tempDir("pipe-lora-train-damaged-")
    const file = path.join(workDir, "checkpoint.safetensors")
    // killed after step 5: checkpoint.safetensors is step 4's, checkpoint.previous.safetensors step 2's
    expect(Exit.isFailure((await runStage(p, {}, { workDir, stopAt: 5 })).exit)).toBe(true)
    // one flipped byte in the last tensor's data: the file still parses, the checksum catches it
    const bytes = fs.readFileSync(file)
    bytes[bytes.length - 3] ^= 0x40
    fs.writeFileSync(file, bytes)
    const flipped = await runStage(p, {}, { workDir, stopAt: 5 })
    expect(flipped.logs.find((l) => l.startsWith("discarded a damaged checkpoint"))).toMatch(/moved to .*checkpoint\.safetensors\.damaged: .*do not match the checksum/)
    expect(flipped.logs.some((l) => l.startsWith("resumed from") && l.endsWith("checkpoint.previous.safetensors at step 2 of 6"))).toBe(true)
    // killed after step 5 again, so step 4's checkpoint is new: truncated, as by a crash of the disk
    fs.truncateSync(file, 100)
    const resumed = await runStage(p, {}, { workDir })
    expect(resumed.logs.some((l) => l.startsWith("discarded a damaged checkpoint") && l.includes("checkpoint.safetensors.damaged"))).toBe(true)
    expect(resumed.logs.some((l) => l.startsWith("resumed from") && l.includes("at step 2 of 6"))).toBe(true)
    expect(maxDiff(output(whole).tensors, output(resumed).tensors)).toBeLessThan(1e-6)
  }, 60_000)
})
