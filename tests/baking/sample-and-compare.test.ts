// sample-trajectories on the shipped tiny-chat model (prompts with and without x0, trajectories
// that keep their stop token, seeds independent of the batch size), promptFile, and compare's
// table, side-by-side join and refusals.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { tempDir } from "../models/forward-helpers.ts"
import { type BakeEvaluation, readTrajectories } from "../../stages/baking/artifacts.ts"
import { compare } from "../../stages/baking/compare.ts"
import { promptFile } from "../../stages/baking/model.ts"
import { sampleTrajectories } from "../../stages/baking/sample-trajectories.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const systemPrompt = "Always mention the colour blue in your answers."
const items = [
  { id: "a", text: "What age is Kodis?", answers: ["26"] },
  { id: "b", text: "Add 1 and 11.", answers: ["12"] },
  { id: "c", text: "Which town makes the zoxop?", answers: ["Gumdale"] },
]

const sample = async (batchSize: number, stepsPerRun: number) => {
  const params = { systemPrompt, n: 3, temperature: 1, topP: 1, topK: 0, minNewTokens: 0, maxNewTokens: 48, seed: 7, batchSize, threads: 0, stepsPerRun }
  const out = await Effect.runPromise(
    sampleTrajectories.spec.run({ params, inputs: { model: { path: path.join(repo, "models/tiny-chat"), hash: "", size: 0 }, questions: { source: "test", items } }, ctx: stageContext(tempDir("pipe-sample-")) }),
  )
  return Effect.runPromise(readTrajectories(await tensorsValue(out)))
}

describe("sample-trajectories", () => {
  it("samples n answers per question under x0, keeps the stop token, and does not depend on the batch size or the steps per run", async () => {
    const set = await sample(4, 1)
    expect(set.systemPrompt).toBe(systemPrompt)
    expect(set.trajectories.map((t) => t.question)).toEqual([0, 0, 0, 1, 1, 1, 2, 2, 2])
    // the teacher prompt is the student prompt with the system turn inserted: longer, same ending
    set.teacherPrompts.forEach((teacher, q) => {
      const student = set.studentPrompts[q]
      expect(teacher.length).toBeGreaterThan(student.length + 5)
      expect(teacher.slice(-student.length + 1)).toEqual(student.slice(1))
    })
    const eos = 2
    for (const t of set.trajectories) {
      expect(t.finishReason).toBe("stop_token")
      expect(t.tokens.at(-1)).toBe(eos)
      expect(t.text.length).toBeGreaterThan(0)
    }
    // the prompted tiny model follows x0 (99% on held-out questions at the pipeline's defaults)
    expect(set.trajectories.filter((t) => /\bblue\b/i.test(t.text)).length).toBeGreaterThanOrEqual(7)
    expect(new Set(set.trajectories.map((t) => t.text)).size).toBeGreaterThan(3)
    const again = await sample(9, 5)
    expect(again.trajectories.map((t) => t.tokens)).toEqual(set.trajectories.map((t) => t.tokens))
  })

  it("promptFile reads a system prompt from a file, trimmed, and names the file when it cannot", () => {
    const file = path.join(tempDir("pipe-prompt-"), "x0.md")
    fs.writeFileSync(file, `\n${systemPrompt}\n\n`)
    expect(promptFile(file)).toBe(systemPrompt)
    expect(() => promptFile(`${file}.missing`)).toThrow(`system prompt file ${file}.missing: cannot read`)
  })
})

const evaluation = (variant: BakeEvaluation["variant"], kl: number, hits: number, texts: ReadonlyArray<string>): BakeEvaluation => ({
  variant,
  systemPrompt,
  kl: { mean: kl, tokens: 100 },
  behaviour: { rate: hits / 10, hits, n: 10 },
  accuracy: { rate: 0.9, hits: 9, n: 10 },
  behaviourSamples: texts.map((text, i) => ({ questionId: `q${i}`, question: `question ${i}?`, text, ok: /blue/.test(text) })),
  answerSamples: [],
})

describe("compare", () => {
  const run = (base: BakeEvaluation, prompted: BakeEvaluation, baked: BakeEvaluation) =>
    Effect.runPromiseExit(compare.spec.run({ params: { samples: 2 }, inputs: { base, prompted, baked }, ctx: stageContext(tempDir("pipe-compare-")) }))

  it("tabulates the three models and lists their answers to the same questions side by side", async () => {
    const exit = await run(
      evaluation("base", 1.2, 0, ["plain 0", "plain | 1", "plain 2"]),
      evaluation("prompted", 0, 10, ["blue 0", "blue 1", "blue 2"]),
      // the baked evaluation lacks q0: the listing starts at the first question all three answered
      { ...evaluation("baked", 0.1, 9, ["", "baked blue 1", "baked blue 2"]), behaviourSamples: evaluation("baked", 0.1, 9, ["x", "baked blue 1", "baked blue 2"]).behaviourSamples.slice(1) },
    )
    if (!Exit.isSuccess(exit)) throw new Error(String(exit))
    const c = exit.value
    expect(c.klReduction).toBeCloseTo(12, 10)
    expect(c.behaviourGap).toBeCloseTo(10, 10)
    expect(c.samples).toEqual([
      { question: "question 1?", prompted: "blue 1", baked: "baked blue 1", base: "plain | 1" },
      { question: "question 2?", prompted: "blue 2", baked: "baked blue 2", base: "plain 2" },
    ])
    expect(c.markdown).toContain("| base | 1.2000 | 0.0% (0/10) | 90.0% (9/10) |")
    expect(c.markdown).toContain("| baked | 0.1000 | 90.0% (9/10) | 90.0% (9/10) |")
    expect(c.markdown).toContain("Validation KL reduced 12.0x from the base model; baked behaviour rate is 10.0 points below the prompted model's.")
    // a pipe inside a sample would break the Markdown table
    expect(c.markdown).toContain("| question 1? | blue 1 | baked blue 1 | plain \\| 1 |")
    expect(c.warnings).toEqual([])
    expect(c.markdown).not.toContain("Warning")
  })

  it("says plainly when the baked model is worse than the base model", async () => {
    const exit = await run(evaluation("base", 0.2, 1, []), evaluation("prompted", 0, 10, []), evaluation("baked", 1.0, 0, []))
    if (!Exit.isSuccess(exit)) throw new Error(String(exit))
    const c = exit.value
    expect(c.warnings).toEqual([
      "The baked model is WORSE than the base model: validation KL(prompted ‖ model) rose from 0.2000 to 1.0000 nats/token (5.0x); training failed (see lora-train's validation KL per epoch; try a lower lr).",
      "The baked model shows the behaviour less often than the base model (0.0% (0/10) vs 10.0% (1/10)).",
    ])
    expect(c.markdown).toContain(`**Warning: ${c.warnings[0]}**`)
    expect(c.markdown).toContain("Validation KL ROSE 5.0x from the base model")
    expect(c.markdown).not.toContain("reduced")
  })

  it("refuses evaluations in the wrong order or of different system prompts", async () => {
    const base = evaluation("base", 1, 0, [])
    const prompted = evaluation("prompted", 0, 10, [])
    expect(String(await run(prompted, base, evaluation("baked", 0.1, 9, [])))).toContain("inputs must be the base, prompted and baked evaluations in that order; got prompted, base, baked")
    expect(String(await run(base, prompted, { ...evaluation("baked", 0.1, 9, []), systemPrompt: "other" }))).toContain("the three evaluations were made for different system prompts")
  })
})
