// Stage `compare`: any number of named evaluations in one table, KL measured against a chosen
// reference variant (usually the prompted model), "KL reduced Nx" for a chosen pair (usually base ->
// baked), and the variants' answers to the same held-out questions side by side. The pipeline
// publishes the result into the run folder as compare.json and compare.md (the Markdown below) and
// prints the Markdown at the end.
//
// A stage's inputs are fixed when it is declared, so compareVariants declares one per list of
// variant names: each evaluation is the input of its variant's name, and the names in their order
// are a param (the rows' order is part of the result, so it is part of the cache key).
import { Effect, Schema } from "effect"
import { type CallOptions, type Node, StageError, stage } from "../../src/engine/index.ts"
import {
  BakeComparison,
  BakeEvaluation,
  type BakeEvaluation as Evaluation,
  describeInterventions,
  hasIntervention,
  type Rate,
  type Variant,
  VariantName,
} from "./artifacts.ts"

const percent = (r: Rate) => `${(100 * r.rate).toFixed(1)}% (${r.hits}/${r.n})`

/** One line of a Markdown table cell: pipes escaped, newlines as spaces. */
const cell = (text: string) => text.replace(/\|/g, "\\|").replace(/\s*\n\s*/g, " ")

/** What went wrong, in words, when the pair's `to` variant is not better than its `from` variant. */
export const pairWarnings = (reference: Variant, from: Evaluation, to: Evaluation): string[] => {
  const [f, t] = [from.variant.name, to.variant.name]
  // a worse adapter is a failed training; point at where its curve is
  const hint = hasIntervention(to.variant, "Lora") ? "; training failed (see lora-train's validation KL per epoch; try a lower lr)" : ""
  return [
    ...(to.kl.mean >= from.kl.mean
      ? [
          `The ${t} model is WORSE than the ${f} model: validation KL(${reference.name} ‖ model) rose from ${from.kl.mean.toFixed(4)} to ${to.kl.mean.toFixed(4)} nats/token` +
            `${from.kl.mean > 0 ? ` (${(to.kl.mean / from.kl.mean).toFixed(1)}x)` : ""}${hint}.`,
        ]
      : []),
    ...(to.behaviour.rate < from.behaviour.rate
      ? [`The ${t} model shows the behaviour less often than the ${f} model (${percent(to.behaviour)} vs ${percent(from.behaviour)}).`]
      : []),
  ]
}

const klSentence = (reduction: number, from: string) =>
  reduction >= 1 ? `Validation KL reduced ${reduction.toFixed(1)}x from the ${from} model` : `Validation KL ROSE ${(1 / reduction).toFixed(1)}x from the ${from} model`

export const comparisonMarkdown = (c: Omit<BakeComparison, "markdown">): string => {
  const columns = c.samples[0]?.answers.map((a) => a.variant) ?? []
  const interventions = new Map(c.rows.map((r) => [r.variant, describeInterventions(r.interventions)]))
  return [
    `# Prompt baking: ${c.rows.map((r) => r.variant).join(" vs ")}`,
    ``,
    ...c.warnings.flatMap((w) => [`**Warning: ${w}**`, ``]),
    `System prompt baked in: ${JSON.stringify(c.systemPrompt)}`,
    ``,
    `| model | KL(${c.reference.name} ‖ model), nats/token | behaviour rate | accuracy |`,
    `| --- | --- | --- | --- |`,
    ...c.rows.map((r) => `| ${r.variant} | ${r.kl.toFixed(4)} | ${percent(r.behaviour)} | ${percent(r.accuracy)} |`),
    ``,
    `${klSentence(c.klReduction, c.pair.from)}; ${c.pair.to} behaviour rate is ${Math.abs(c.behaviourGap).toFixed(1)} points ${c.behaviourGap >= 0 ? "below" : "above"} the ${c.reference.name} model's.`,
    ``,
    `## Samples (held-out questions; ${columns.map((v) => `${v}: ${interventions.get(v)}`).join(", ")})`,
    ``,
    `| question | ${columns.join(" | ")} |`,
    `| --- |${columns.map(() => " --- |").join("")}`,
    ...c.samples.map((s) => `| ${cell(s.question)} | ${s.answers.map((a) => cell(a.text)).join(" | ")} |`),
    ``,
  ].join("\n")
}

const CompareParams = Schema.Struct({
  /** the variants in row order; each is the input of the same name */
  variants: Schema.Array(VariantName),
  /** the variant every evaluation measured its KL against, one of the rows; its samples come first */
  reference: VariantName,
  /** the pair "KL reduced Nx" and the warnings compare: from (e.g. base) -> to (e.g. baked) */
  pair: Schema.Struct({ from: VariantName, to: VariantName }),
  /** rows in the side-by-side listing */
  samples: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
})
type CompareParams = typeof CompareParams.Type

// decoded variants list their fields in the schema's order, so equal variants print the same
const sameVariant = (a: Variant, b: Variant) => JSON.stringify(a) === JSON.stringify(b)

/** The comparison of evaluations already in row order, or what is wrong with them, naming the variant. */
const compareEvaluations = (node: string, params: CompareParams, evals: ReadonlyArray<Evaluation>): Effect.Effect<Omit<BakeComparison, "markdown">, StageError> =>
  Effect.gen(function* () {
    const fail = (message: string) => Effect.fail(new StageError({ message: `${node}: ${message}` }))
    const first = evals[0]
    if (first === undefined) return yield* fail("no evaluations to compare")
    const names = evals.map((e) => e.variant.name)
    const byName = new Map(evals.map((e) => [e.variant.name, e]))
    if (byName.size !== evals.length) return yield* fail(`two evaluations of one variant name: ${names.join(", ")}`)
    for (const name of [params.pair.from, params.pair.to])
      if (!byName.has(name)) return yield* fail(`params.pair names "${name}", which is none of the evaluated variants (${names.join(", ")})`)
    const reference = first.reference
    if (reference.name !== params.reference)
      return yield* fail(`params.reference is "${params.reference}", but the evaluations measured KL against "${reference.name}"`)
    const other = evals.find((e) => !sameVariant(e.reference, reference))
    if (other) return yield* fail(`evaluation "${other.variant.name}" measured KL against ${JSON.stringify(other.reference)}, evaluation "${first.variant.name}" against ${JSON.stringify(reference)}`)
    const refRow = byName.get(reference.name)
    if (!refRow) return yield* fail(`the reference variant "${reference.name}" is none of the evaluated variants (${names.join(", ")}): compare its own evaluation too`)
    if (!sameVariant(refRow.variant, reference))
      return yield* fail(`the evaluated variant "${reference.name}" is not the one KL was measured against (${JSON.stringify(refRow.variant)} vs ${JSON.stringify(reference)})`)
    if (new Set(evals.map((e) => e.systemPrompt)).size !== 1) return yield* fail(`the evaluations were made for different system prompts (${names.join(", ")})`)

    // the reference's answers first, then the others in row order, for the questions all of them answered
    const columns = [refRow, ...evals.filter((e) => e !== refRow)]
    const answers = columns.map((e) => new Map(e.behaviourSamples.map((s) => [s.questionId, s])))
    const samples = columns[0].behaviourSamples
      .filter((s) => answers.every((a) => a.has(s.questionId)))
      .slice(0, params.samples)
      .map((s) => ({ question: s.question, answers: columns.map((e, i) => ({ variant: e.variant.name, text: answers[i].get(s.questionId)!.text })) }))
    const [from, to] = [byName.get(params.pair.from)!, byName.get(params.pair.to)!]
    return {
      systemPrompt: first.systemPrompt,
      reference,
      rows: evals.map((e) => ({ variant: e.variant.name, interventions: e.variant.interventions, kl: e.kl.mean, behaviour: e.behaviour, accuracy: e.accuracy })),
      pair: params.pair,
      // a finite ratio even for a perfect student, so the JSON stays valid
      klReduction: from.kl.mean / Math.max(to.kl.mean, 1e-12),
      behaviourGap: 100 * (refRow.behaviour.rate - to.behaviour.rate),
      warnings: pairWarnings(reference, from, to),
      samples,
    }
  })

const declared = new Map<string, ReturnType<typeof declareCompare>>()

const declareCompare = (variants: ReadonlyArray<string>) =>
  stage({
    name: "compare",
    // 2: warnings when the baked model is worse than the base model
    // 3: any number of named variants, a chosen reference and pair
    version: 3,
    params: CompareParams,
    inputs: Object.fromEntries(variants.map((v) => [v, BakeEvaluation])) as Readonly<Record<string, typeof BakeEvaluation>>,
    output: BakeComparison,
    run: ({ params, inputs, ctx }) =>
      Effect.gen(function* () {
        const wired = Object.keys(inputs)
        if (wired.length !== params.variants.length || params.variants.some((v) => !(v in inputs)))
          return yield* Effect.fail(new StageError({ message: `${ctx.node}: params.variants is ${JSON.stringify(params.variants)}, but the inputs are ${JSON.stringify(wired)}` }))
        const evals = params.variants.map((v) => inputs[v])
        const misnamed = evals.find((e, i) => e.variant.name !== params.variants[i])
        if (misnamed)
          return yield* Effect.fail(new StageError({ message: `${ctx.node}: input "${params.variants[evals.indexOf(misnamed)]}" is the evaluation of variant "${misnamed.variant.name}"` }))
        const c = yield* compareEvaluations(ctx.node, params, evals)
        for (const w of c.warnings) ctx.log(`warning: ${w}`)
        return { ...c, markdown: comparisonMarkdown(c) }
      }),
  })

/** The compare stage whose inputs are these variant names (one declaration per list, so a pipeline's nodes share it). */
export const compareStage = (variants: ReadonlyArray<string>) => {
  const key = JSON.stringify(variants)
  const known = declared.get(key)
  if (known) return known
  const s = declareCompare(variants)
  declared.set(key, s)
  return s
}

/**
 * Wires a comparison of `evaluations` (variant name -> its evaluation node; rows in this order):
 * `compareVariants({ base, prompted, baked }, { reference: "prompted", pair: { from: "base", to: "baked" }, samples: 8 })`.
 */
export const compareVariants = (
  evaluations: Readonly<Record<string, Node<typeof BakeEvaluation>>>,
  params: Omit<CompareParams, "variants">,
  options?: CallOptions,
): Node<typeof BakeComparison> => {
  const variants = Object.keys(evaluations)
  return compareStage(variants)({ ...params, variants }, evaluations, options)
}
