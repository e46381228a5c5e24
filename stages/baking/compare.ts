// Stage `compare`: base vs prompted vs baked in one table, and the three models' answers to the
// same held-out questions side by side. The pipeline publishes the result into the run folder as
// compare.json and compare.md (the Markdown below) and prints the Markdown at the end.
import { Effect, Schema } from "effect"
import { StageError, stage } from "../../src/engine/index.ts"
import { BakeComparison, BakeEvaluation, type BakeEvaluation as Evaluation, type Rate } from "./artifacts.ts"

const percent = (r: Rate) => `${(100 * r.rate).toFixed(1)}% (${r.hits}/${r.n})`

/** One line of a Markdown table cell: pipes escaped, newlines as spaces. */
const cell = (text: string) => text.replace(/\|/g, "\\|").replace(/\s*\n\s*/g, " ")

/** What went wrong, in words, when the baked model is not better than the base one. */
export const bakingWarnings = (base: Evaluation, baked: Evaluation): string[] => [
  ...(baked.kl.mean >= base.kl.mean
    ? [
        `The baked model is WORSE than the base model: validation KL(prompted ‖ model) rose from ${base.kl.mean.toFixed(4)} to ${baked.kl.mean.toFixed(4)} nats/token` +
          `${base.kl.mean > 0 ? ` (${(baked.kl.mean / base.kl.mean).toFixed(1)}x)` : ""}; training failed (see lora-train's validation KL per epoch; try a lower lr).`,
      ]
    : []),
  ...(baked.behaviour.rate < base.behaviour.rate
    ? [`The baked model shows the behaviour less often than the base model (${percent(baked.behaviour)} vs ${percent(base.behaviour)}).`]
    : []),
]

const klSentence = (reduction: number) =>
  reduction >= 1 ? `Validation KL reduced ${reduction.toFixed(1)}x from the base model` : `Validation KL ROSE ${(1 / reduction).toFixed(1)}x from the base model`

export const comparisonMarkdown = (c: Omit<BakeComparison, "markdown">): string =>
  [
    `# Prompt baking: base vs prompted vs baked`,
    ``,
    ...c.warnings.flatMap((w) => [`**Warning: ${w}**`, ``]),
    `System prompt baked in: ${JSON.stringify(c.systemPrompt)}`,
    ``,
    `| model | KL(prompted ‖ model), nats/token | behaviour rate | accuracy |`,
    `| --- | --- | --- | --- |`,
    ...c.rows.map((r) => `| ${r.variant} | ${r.kl.toFixed(4)} | ${percent(r.behaviour)} | ${percent(r.accuracy)} |`),
    ``,
    `${klSentence(c.klReduction)}; baked behaviour rate is ${Math.abs(c.behaviourGap).toFixed(1)} points ${c.behaviourGap >= 0 ? "below" : "above"} the prompted model's.`,
    ``,
    `## Samples (held-out questions; prompted with the system prompt, baked and base without)`,
    ``,
    `| question | prompted | baked | base |`,
    `| --- | --- | --- | --- |`,
    ...c.samples.map((s) => `| ${cell(s.question)} | ${cell(s.prompted)} | ${cell(s.baked)} | ${cell(s.base)} |`),
    ``,
  ].join("\n")

export const compare = stage({
  name: "compare",
  version: 2, // 2: warnings when the baked model is worse than the base model
  params: Schema.Struct({
    /** rows in the side-by-side listing */
    samples: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  inputs: { base: BakeEvaluation, prompted: BakeEvaluation, baked: BakeEvaluation },
  output: BakeComparison,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const evals: ReadonlyArray<Evaluation> = [inputs.base, inputs.prompted, inputs.baked]
      const wrong = evals.find((e, i) => e.variant !== ["base", "prompted", "baked"][i])
      if (wrong) return yield* Effect.fail(new StageError({ message: `compare: inputs must be the base, prompted and baked evaluations in that order; got ${evals.map((e) => e.variant).join(", ")}` }))
      if (new Set(evals.map((e) => e.systemPrompt)).size !== 1) return yield* Effect.fail(new StageError({ message: "compare: the three evaluations were made for different system prompts" }))
      const { base, prompted, baked } = inputs
      const byQuestion = (e: Evaluation) => new Map(e.behaviourSamples.map((s) => [s.questionId, s]))
      const [bakedBy, baseBy] = [byQuestion(baked), byQuestion(base)]
      const samples = prompted.behaviourSamples
        .filter((s) => bakedBy.has(s.questionId) && baseBy.has(s.questionId))
        .slice(0, params.samples)
        .map((s) => ({ question: s.question, prompted: s.text, baked: bakedBy.get(s.questionId)!.text, base: baseBy.get(s.questionId)!.text }))
      const c = {
        systemPrompt: prompted.systemPrompt,
        rows: evals.map((e) => ({ variant: e.variant, kl: e.kl.mean, behaviour: e.behaviour, accuracy: e.accuracy })),
        // a finite ratio even for a perfect student, so the JSON stays valid
        klReduction: base.kl.mean / Math.max(baked.kl.mean, 1e-12),
        behaviourGap: 100 * (prompted.behaviour.rate - baked.behaviour.rate),
        warnings: bakingWarnings(base, baked),
        samples,
      }
      for (const w of c.warnings) ctx.log(`warning: ${w}`)
      return { ...c, markdown: comparisonMarkdown(c) }
    }),
})
