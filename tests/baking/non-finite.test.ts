// Model stages refuse non-finite outputs: a copy of the shipped model whose final norm scale is
// 1e38 has finite weights (loadCheckpoint's check passes) but logits that overflow to infinity,
// so log-softmax gives NaN. teacher-logits and sample-trajectories fail with the node, the tensor
// and the first bad position instead of returning (and the engine caching) NaN log-probs and
// garbage text.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { fromNumbers, readFile, writeFile } from "../../src/core/safetensors.ts"
import { trajectoriesOutput, type TrajectorySet } from "../../stages/baking/artifacts.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { sampleTrajectories } from "../../stages/baking/sample-trajectories.ts"
import { teacherLogits } from "../../stages/baking/teacher-logits.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"

const shipped = path.resolve(import.meta.dirname, "../../models/tiny-chat")

/** The shipped model with model.norm.weight set to 1e38 everywhere (finite, but the logits overflow). */
const overflowing = () => {
  const dir = tempDir("pipe-overflow-model-")
  for (const f of fs.readdirSync(shipped)) fs.copyFileSync(path.join(shipped, f), path.join(dir, f))
  const file = path.join(dir, "model.safetensors")
  const c = Effect.runSync(readFile(file))
  const norm = c.tensors.get("model.norm.weight")!
  Effect.runSync(writeFile(file, new Map([...c.tensors, ["model.norm.weight", fromNumbers(new Float32Array(norm.shape[0]).fill(1e38), "F32", norm.shape)]]), c.metadata))
  return dir
}

const failureOf = (exit: Exit.Exit<unknown, unknown>) => (Exit.isFailure(exit) ? String(exit.cause) : "succeeded")

describe("non-finite model outputs", () => {
  const dir = overflowing()
  const questions = [{ id: "q", text: "Where does Kodis live?", answers: ["Binwick"] }]
  const model = { path: dir, hash: "", size: 0 }

  it("teacher-logits fails naming the node, the tensor and the first bad position", async () => {
    const m = await Effect.runPromise(openModel(dir))
    const prompt = await Effect.runPromise(questionPromptIds(m.tokenizer, questions[0].text, "Be blue."))
    const set: TrajectorySet = {
      systemPrompt: "Be blue.",
      questions,
      teacherPrompts: [prompt],
      studentPrompts: [prompt],
      trajectories: [{ question: 0, tokens: [5, 6, 7], text: "", finishReason: "length" }],
      sampling: {},
    }
    const exit = await Effect.runPromiseExit(
      teacherLogits.spec.run({
        params: { mode: "stored", topK: 4, dtype: "float32", batchSize: 4, threads: 1 },
        inputs: { model, trajectories: await tensorsValue(trajectoriesOutput(set)) },
        ctx: stageContext(tempDir("pipe-overflow-teacher-")),
      }) as Effect.Effect<unknown, unknown>,
    )
    expect(failureOf(exit)).toMatch(/test: top-k log-probs \[response token, k\] is NaN at \[0, 0\]: the model produced non-finite values/)
  }, 60_000)

  it("sample-trajectories fails instead of returning garbage text", async () => {
    const exit = await Effect.runPromiseExit(
      sampleTrajectories.spec.run({
        params: { systemPrompt: "Be blue.", n: 1, temperature: 1, topP: 1, topK: 0, minNewTokens: 0, maxNewTokens: 4, seed: 0, batchSize: 2, threads: 1, stepsPerRun: 1 },
        inputs: { model, questions: { source: "test", items: questions } },
        ctx: stageContext(tempDir("pipe-overflow-sample-")),
      }) as Effect.Effect<unknown, unknown>,
    )
    expect(failureOf(exit)).toMatch(/test: sampled tokens' log-probs \[trajectory, token\] is NaN at \[0, 0\]/)
  }, 60_000)
})
