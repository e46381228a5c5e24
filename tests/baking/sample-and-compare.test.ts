// sample-trajectories on the shipped tiny-chat model (prompts with and without x0, trajectories
// that keep their stop token, seeds independent of the batch size), promptFile, and compare's
// table, side-by-side join and refusals over three and four named variants, with the KL reference
// and the "KL reduced Nx" pair chosen among them.
import { Effect, Exit, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { tempDir } from "../models/forward-helpers.ts"
import { type BakeEvaluation, readTrajectories, type Variant, Variant as VariantSchema } from "../../stages/baking/artifacts.ts"
import { compareStage } from "../../stages/baking/compare.ts"
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

const variants = {
  base: { name: "base", interventions: [] },
  prompted: { name: "prompted", interventions: [{ _tag: "SystemPrompt" }] },
  baked: { name: "baked", interventions: [{ _tag: "Lora" }] },
  "prompted+baked": { name: "prompted+baked", interventions: [{ _tag: "SystemPrompt" }, { _tag: "Lora" }] },
} as const satisfies Record<string, Variant>

const evaluation = (variant: Variant, kl: number, hits: number, texts: ReadonlyArray<string>, reference: Variant = variants.prompted): BakeEvaluation => ({
  variant,
  reference,
  systemPrompt,
  kl: { mean: kl, tokens: 100 },
  behaviour: { rate: hits / 10, hits, n: 10 },
  accuracy: { rate: 0.9, hits: 9, n: 10 },
  behaviourSamples: texts.map((text, i) => ({ questionId: `q${i}`, question: `question ${i}?`, text, ok: /blue/.test(text) })),
  answerSamples: [],
})

type CompareParams = Omit<Parameters<ReturnType<typeof compareStage>["spec"]["run"]>[0]["params"], "variants">
const bakePair: CompareParams = { reference: "prompted", pair: { from: "base", to: "baked" }, samples: 2 }

/** compare over the evaluations as given, inputs named by their variants (or by `names`). */
const runCompare = (evals: ReadonlyArray<BakeEvaluation>, params: CompareParams = bakePair, names = evals.map((e) => e.variant.name)) =>
  Effect.runPromiseExit(
    compareStage(names).spec.run({
      params: { ...params, variants: names },
      inputs: Object.fromEntries(names.map((n, i) => [n, evals[i]])),
      ctx: stageContext(tempDir("pipe-compare-")),
    }),
  )

const succeeded = <A, E>(exit: Exit.Exit<A, E>): A => {
  if (!Exit.isSuccess(exit)) throw new Error(String(exit))
  return exit.value
}

describe("compare", () => {
  const run = (base: BakeEvaluation, prompted: BakeEvaluation, baked: BakeEvaluation) => runCompare([base, prompted, baked])

  it("tabulates the three models and lists their answers to the same questions side by side", async () => {
    const c = succeeded(
      await run(
        evaluation(variants.base, 1.2, 0, ["plain 0", "plain | 1", "plain 2"]),
        evaluation(variants.prompted, 0, 10, ["blue 0", "blue 1", "blue 2"]),
        // the baked evaluation lacks q0: the listing starts at the first question all three answered
        { ...evaluation(variants.baked, 0.1, 9, []), behaviourSamples: evaluation(variants.baked, 0.1, 9, ["x", "baked blue 1", "baked blue 2"]).behaviourSamples.slice(1) },
      ),
    )
    expect(c.klReduction).toBeCloseTo(12, 10)
    expect(c.behaviourGap).toBeCloseTo(10, 10)
    // the reference's answers first, then the rows' order
    const answers = (prompted: string, base: string, baked: string) => [
      { variant: "prompted", text: prompted },
      { variant: "base", text: base },
      { variant: "baked", text: baked },
    ]
    expect(c.samples).toEqual([
      { question: "question 1?", answers: answers("blue 1", "plain | 1", "baked blue 1") },
      { question: "question 2?", answers: answers("blue 2", "plain 2", "baked blue 2") },
    ])
    expect(c.rows.map((r) => r.variant)).toEqual(["base", "prompted", "baked"])
    expect(c.markdown).toContain("# Prompt baking: base vs prompted vs baked")
    expect(c.markdown).toContain("| model | KL(prompted ‖ model), nats/token | behaviour rate | accuracy |")
    expect(c.markdown).toContain("| base | 1.2000 | 0.0% (0/10) | 90.0% (9/10) |")
    expect(c.markdown).toContain("| baked | 0.1000 | 90.0% (9/10) | 90.0% (9/10) |")
    expect(c.markdown).toContain("Validation KL reduced 12.0x from the base model; baked behaviour rate is 10.0 points below the prompted model's.")
    expect(c.markdown).toContain("## Samples (held-out questions; prompted: system prompt, base: no interventions, baked: LoRA)")
    // a pipe inside a sample would break the Markdown table
    expect(c.markdown).toContain("| question 1? | blue 1 | plain \\| 1 | baked blue 1 |")
    expect(c.warnings).toEqual([])
    expect(c.markdown).not.toContain("Warning")
  })

  it("says plainly when the baked model is worse than the base model", async () => {
    const c = succeeded(await run(evaluation(variants.base, 0.2, 1, []), evaluation(variants.prompted, 0, 10, []), evaluation(variants.baked, 1.0, 0, [])))
    expect(c.warnings).toEqual([
      "The baked model is WORSE than the base model: validation KL(prompted ‖ model) rose from 0.2000 to 1.0000 nats/token (5.0x); training failed (see lora-train's validation KL per epoch; try a lower lr).",
      "The baked model shows the behaviour less often than the base model (0.0% (0/10) vs 10.0% (1/10)).",
    ])
    expect(c.markdown).toContain(`**Warning: ${c.warnings[0]}**`)
    expect(c.markdown).toContain("Validation KL ROSE 5.0x from the base model")
    expect(c.markdown).not.toContain("reduced")
  })

  it("compares four variants, with the pair and its warnings chosen among them", async () => {
    const evals = [
      evaluation(variants.base, 1.2, 0, ["plain 0", "plain 1"]),
      evaluation(variants.prompted, 0, 10, ["blue 0", "blue 1"]),
      evaluation(variants.baked, 0.1, 9, ["baked blue 0", "baked blue 1"]),
      evaluation(variants["prompted+baked"], 0.3, 8, ["both blue 0", "both blue 1"]),
    ]
    const all = succeeded(await runCompare(evals))
    expect(all.rows.map((r) => [r.variant, r.kl])).toEqual([["base", 1.2], ["prompted", 0], ["baked", 0.1], ["prompted+baked", 0.3]])
    expect(all.rows[3].interventions).toEqual([{ _tag: "SystemPrompt" }, { _tag: "Lora" }])
    expect(all.markdown).toContain("# Prompt baking: base vs prompted vs baked vs prompted+baked")
    expect(all.markdown).toContain("| prompted+baked | 0.3000 | 80.0% (8/10) | 90.0% (9/10) |")
    expect(all.markdown).toContain("| question | prompted | base | baked | prompted+baked |")
    expect(all.markdown).toContain("| question 0? | blue 0 | plain 0 | baked blue 0 | both blue 0 |")
    expect(all.markdown).toContain("prompted+baked: system prompt + LoRA")

    // baked -> prompted+baked: KL to the prompted model rises 3x and the behaviour drops, so both warnings
    const pair = succeeded(await runCompare(evals, { ...bakePair, pair: { from: "baked", to: "prompted+baked" } }))
    expect(pair.klReduction).toBeCloseTo(0.1 / 0.3, 12)
    expect(pair.behaviourGap).toBeCloseTo(20, 10)
    expect(pair.markdown).toContain("Validation KL ROSE 3.0x from the baked model; prompted+baked behaviour rate is 20.0 points below the prompted model's.")
    expect(pair.warnings).toEqual([
      "The prompted+baked model is WORSE than the baked model: validation KL(prompted ‖ model) rose from 0.1000 to 0.3000 nats/token (3.0x); training failed (see lora-train's validation KL per epoch; try a lower lr).",
      "The prompted+baked model shows the behaviour less often than the baked model (80.0% (8/10) vs 90.0% (9/10)).",
    ])
    // a worse variant without an adapter is no failed training: no hint at lora-train
    const noAdapter = succeeded(await runCompare(evals, { ...bakePair, pair: { from: "baked", to: "base" } }))
    expect(noAdapter.warnings[0]).toBe("The base model is WORSE than the baked model: validation KL(prompted ‖ model) rose from 0.1000 to 1.2000 nats/token (12.0x).")
  })

  it("measures against the reference the evaluations chose, and refuses a reference they did not measure against", async () => {
    // KL(base || model): the base row is the reference (0), the samples start with its answers
    const evals = [
      evaluation(variants.prompted, 0.9, 10, ["blue 0"], variants.base),
      evaluation(variants.base, 0, 0, ["plain 0"], variants.base),
      evaluation(variants.baked, 0.6, 9, ["baked blue 0"], variants.base),
    ]
    const c = succeeded(await runCompare(evals, { reference: "base", pair: { from: "prompted", to: "baked" }, samples: 1 }))
    expect(c.reference).toEqual(variants.base)
    expect(c.klReduction).toBeCloseTo(1.5, 12)
    expect(c.behaviourGap).toBeCloseTo(-90, 10)
    expect(c.markdown).toContain("| model | KL(base ‖ model), nats/token | behaviour rate | accuracy |")
    expect(c.markdown).toContain("Validation KL reduced 1.5x from the prompted model; baked behaviour rate is 90.0 points above the base model's.")
    expect(c.samples[0].answers.map((a) => a.variant)).toEqual(["base", "prompted", "baked"])
    expect(String(await runCompare(evals, { reference: "prompted", pair: { from: "prompted", to: "baked" }, samples: 1 }))).toContain(
      'test: params.reference is "prompted", but the evaluations measured KL against "base"',
    )
    // one evaluation measured against another reference: its numbers do not belong in this table
    const mixed = [evals[0], evals[1], evaluation(variants.baked, 0.1, 9, [])]
    expect(String(await runCompare(mixed, { reference: "base", pair: { from: "prompted", to: "baked" }, samples: 1 }))).toContain('test: evaluation "baked" measured KL against')
    // the reference must be among the rows, as the variant KL was measured against
    expect(String(await runCompare([evals[0], evals[2]], { reference: "base", pair: { from: "prompted", to: "baked" }, samples: 1 }))).toContain(
      'the reference variant "base" is none of the evaluated variants (prompted, baked): compare its own evaluation too',
    )
    const impostor = evaluation({ name: "base", interventions: [{ _tag: "SystemPrompt" }] }, 0, 0, [], variants.base)
    expect(String(await runCompare([evals[0], impostor], { reference: "base", pair: { from: "prompted", to: "base" }, samples: 1 }))).toContain(
      'the evaluated variant "base" is not the one KL was measured against',
    )
  })

  it("refuses miswired evaluations, an unknown pair and different system prompts", async () => {
    const base = evaluation(variants.base, 1, 0, [])
    const prompted = evaluation(variants.prompted, 0, 10, [])
    const baked = evaluation(variants.baked, 0.1, 9, [])
    expect(String(await runCompare([prompted, base, baked], bakePair, ["base", "prompted", "baked"]))).toContain('test: input "base" is the evaluation of variant "prompted"')
    expect(String(await runCompare([base, prompted, baked], { ...bakePair, pair: { from: "base", to: "soft" } }))).toContain(
      'params.pair names "soft", which is none of the evaluated variants (base, prompted, baked)',
    )
    expect(String(await run(base, prompted, { ...baked, systemPrompt: "other" }))).toContain("the evaluations were made for different system prompts")
  })

  it("declares one compare stage per list of variant names, inputs in that order", () => {
    const stage = compareStage(["base", "prompted"])
    expect(compareStage(["base", "prompted"])).toBe(stage)
    expect(compareStage(["prompted", "base"])).not.toBe(stage)
    expect(Object.keys(stage.spec.inputs)).toEqual(["base", "prompted"])
  })
})

describe("Variant", () => {
  const decode = (u: unknown) => Schema.decodeUnknownExit(VariantSchema)(u, { errors: "all" })
  it("takes a name usable in a table path and each intervention at most once", () => {
    expect(Exit.isSuccess(decode(variants["prompted+baked"]))).toBe(true)
    expect(String(decode({ name: "prompted baked", interventions: [] }))).toContain("a variant name of letters, digits and _ . + -")
    expect(String(decode({ name: "twice", interventions: [{ _tag: "Lora" }, { _tag: "Lora" }] }))).toContain("each intervention at most once")
    // a tag this version does not know is refused, listing the known ones
    expect(String(decode({ name: "soft", interventions: [{ _tag: "SoftPrompt" }] }))).toContain(`Expected { readonly "_tag": "SystemPrompt", ... } | { readonly "_tag": "Lora", ... }`)
  })
})
