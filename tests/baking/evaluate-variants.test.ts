// evaluate / evaluate-lora over named variants on the shipped tiny-chat model: the KL to a chosen
// reference reads each side's chat prompt as its interventions say, checked against the float64
// reference of kl-reference.ts (1e-4 relative, as in distill.test.ts: float32 logits carry ~1e-6
// absolute error and these KLs are O(0.1-1) nats); a variant against itself is exactly 0; and a
// variant whose tags do not fit the stage is refused, naming the node and the variant.
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { adapterOutput, type BakeEvaluation, trajectoriesOutput, type Variant } from "../../stages/baking/artifacts.ts"
import { evaluate, evaluateLora } from "../../stages/baking/evaluate.ts"
import { variants } from "../../stages/baking/experiment.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"
import { makeSet, MODEL, randomAdapter, referenceKl, SYSTEM, tempDir } from "./kl-reference.ts"

const set = await makeSet(SYSTEM)
const validation = await tensorsValue(trajectoriesOutput(set))
const { adapter, merged } = await randomAdapter()
const adapterValue = await tensorsValue(await Effect.runPromise(adapterOutput(adapter)))
const questions = { source: "test", items: [{ id: "q0", text: "What age is Kodis?", answers: ["26"] }] }
const inputs = { model: { path: MODEL, hash: "", size: 0 }, validation, heldout: questions, facts: questions }

const params = (variant: Variant, reference: Variant) => ({
  variant,
  reference,
  checker: { behaviour: "blue" } as const,
  samplesPerQuestion: 1,
  temperature: 1,
  topP: 1,
  topK: 0,
  maxNewTokens: 4,
  seed: 0,
  batchSize: 4,
  threads: 0,
  stepsPerRun: 1,
  answerMaxNewTokens: 4,
  keepSamples: 1,
})

const promptedBaked: Variant = { name: "prompted+baked", interventions: [{ _tag: "SystemPrompt" }, { _tag: "Lora" }] }

const runPlain = (variant: Variant, reference: Variant) =>
  Effect.runPromiseExit(evaluate.spec.run({ params: params(variant, reference), inputs, ctx: stageContext(tempDir("pipe-evaluate-")) }))
const runLora = (variant: Variant, reference: Variant) =>
  Effect.runPromiseExit(evaluateLora.spec.run({ params: params(variant, reference), inputs: { ...inputs, adapter: adapterValue }, ctx: stageContext(tempDir("pipe-evaluate-")) }))

const value = (exit: Awaited<ReturnType<typeof runPlain>>): BakeEvaluation => {
  if (exit._tag !== "Success") throw new Error(String(exit))
  return exit.value
}

describe("evaluate over named variants", () => {
  it("measures KL against the chosen reference, each side on the prompt its interventions say", async () => {
    // the prompted model against the base one: the roles of the two prompts swap
    const promptedVsBase = value(await runPlain(variants.prompted, variants.base))
    expect(promptedVsBase.variant).toEqual(variants.prompted)
    expect(promptedVsBase.reference).toEqual(variants.base)
    const swapped = { ...set, teacherPrompts: set.studentPrompts, studentPrompts: set.teacherPrompts }
    const want = referenceKl(swapped, MODEL)
    expect(want).toBeGreaterThan(0.05)
    expect(Math.abs(promptedVsBase.kl.mean - want) / want).toBeLessThan(1e-4)

    // x0 and the adapter together against the prompted model: the merged checkpoint on the teacher prompt
    const both = value(await runLora(promptedBaked, variants.prompted))
    const wantBoth = referenceKl({ ...set, studentPrompts: set.teacherPrompts }, merged)
    expect(wantBoth).toBeGreaterThan(1e-3)
    expect(Math.abs(both.kl.mean - wantBoth) / wantBoth).toBeLessThan(1e-4)
    expect(both.behaviour.n).toBe(1)
    expect(both.accuracy.n).toBe(1)
  }, 120_000)

  it("is exactly 0 for a variant without an adapter against the same model on the same prompt", async () => {
    const same = value(await runPlain(variants.base, variants.base))
    expect(same.kl).toEqual({ mean: 0, tokens: set.trajectories.reduce((n, t) => n + t.tokens.length, 0) })
  }, 60_000)

  it("refuses a variant whose interventions do not fit the stage or a reference with an adapter", async () => {
    expect(String(await runPlain(variants.baked, variants.prompted))).toContain(
      'test: params.variant: variant "baked" has a Lora intervention: evaluate it with evaluate-lora, which takes the adapter',
    )
    expect(String(await runLora(variants.base, variants.prompted))).toContain('test: params.variant: variant "base" has no Lora intervention, but an adapter was given')
    expect(String(await runLora(variants.baked, variants.baked))).toContain('test: params.reference: variant "baked" has a Lora intervention; KL is measured against a model without an adapter')
  })
})
