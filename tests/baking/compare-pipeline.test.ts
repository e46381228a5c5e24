// compareVariants through the engine: four named evaluations (given as params of a one-line JSON
// stage, so the run takes milliseconds) wired into one compare node, the rows in the order wired,
// a rerun fully cached, and another row order a different compare node over the same evaluations.
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { runApi, sandbox, writePipeline } from "../engine/helpers.ts"

const stages = path.resolve(import.meta.dirname, "../../stages/baking")

/** A pipeline comparing the four variants with the rows in `order` (variable names of the evaluation nodes). */
const body = (order: string) => `
import { Effect, Schema } from "effect"
import { pipeline, stage } from "@engine"
import { BakeEvaluation } from "${stages}/artifacts.ts"
import { compareVariants } from "${stages}/compare.ts"

const given = stage({
  name: "given-evaluation",
  version: 1,
  params: Schema.Struct({ value: BakeEvaluation.schema }),
  inputs: {},
  output: BakeEvaluation,
  run: ({ params }) => Effect.succeed(params.value),
})
const prompted = { name: "prompted", interventions: [{ _tag: "SystemPrompt" }] }
const evaluation = (variant, kl, hits) =>
  given(
    {
      value: {
        variant,
        reference: prompted,
        systemPrompt: "Always mention the colour blue in your answers.",
        kl: { mean: kl, tokens: 50 },
        behaviour: { rate: hits / 4, hits, n: 4 },
        accuracy: { rate: 1, hits: 2, n: 2 },
        behaviourSamples: [{ questionId: "q0", question: "Add 1 and 11.", text: variant.name + " says 12", ok: hits > 0 }],
        answerSamples: [],
      },
    },
    {},
    { name: "evaluate_" + variant.name },
  )
const base = evaluation({ name: "base", interventions: [] }, 1.5, 0)
const promptedEval = evaluation(prompted, 0, 4)
const baked = evaluation({ name: "baked", interventions: [{ _tag: "Lora" }] }, 0.25, 3)
const both = evaluation({ name: "prompted+baked", interventions: [{ _tag: "SystemPrompt" }, { _tag: "Lora" }] }, 0.5, 4)
const comparison = compareVariants({ ${order} }, { reference: "prompted", pair: { from: "base", to: "baked" }, samples: 1 })
export default pipeline("four-variants", { comparison }, { publish: { "compare.json": comparison } })
`

describe("compareVariants in a pipeline", () => {
  it("compares four variants in the order wired, caches the comparison and keys it by that order", async () => {
    const sb = sandbox()
    const wired = writePipeline(sb, "four.ts", body(`base, prompted: promptedEval, baked, "prompted+baked": both`))
    const first = await runApi(sb, wired)
    expect(first.nodes.filter((n) => n.status === "succeeded")).toHaveLength(5)
    const c = JSON.parse(fs.readFileSync(path.join(first.runDir, "compare.json"), "utf8")) as BakeComparison
    expect(c.rows.map((r) => [r.variant, r.kl])).toEqual([["base", 1.5], ["prompted", 0], ["baked", 0.25], ["prompted+baked", 0.5]])
    expect(c.klReduction).toBeCloseTo(6, 12)
    expect(c.behaviourGap).toBeCloseTo(25, 12)
    expect(c.samples).toEqual([
      {
        question: "Add 1 and 11.",
        answers: ["prompted", "base", "baked", "prompted+baked"].map((v) => ({ variant: v, text: `${v} says 12` })),
      },
    ])
    expect(c.markdown).toContain("| prompted+baked | 0.5000 | 100.0% (4/4) | 100.0% (2/2) |")

    const again = await runApi(sb, wired)
    expect(again.nodes.filter((n) => n.status === "succeeded")).toEqual([])

    const reordered = await runApi(sb, writePipeline(sb, "reordered.ts", body(`"prompted+baked": both, baked, prompted: promptedEval, base`)))
    expect(reordered.nodes.filter((n) => n.status === "succeeded").map((n) => n.name)).toEqual(["compare"])
    const r = JSON.parse(fs.readFileSync(path.join(reordered.runDir, "compare.json"), "utf8")) as BakeComparison
    expect(r.rows.map((row) => row.variant)).toEqual(["prompted+baked", "baked", "prompted", "base"])
    expect(r.samples[0].answers.map((a) => a.variant)).toEqual(["prompted", "prompted+baked", "baked", "base"])
  })
})
