// Stage `diffuse-metrics`: how close each model's samples come to the desired distribution, per
// prompt of a set, the untuned and the tuned model side by side.
//
// An answer is valid when it is exactly one of the prompt's targets and ended with the end-of-turn
// token (sample.ts): exact match of the generated answer, as the seed compares, and the sequence the
// training scored. Over N samples with c_y the count of target y and `other` the invalid ones:
//   valid share   Σ_y c_y / N
//   coverage      |{y : c_y > 0}| / K (K targets)
//   entropy       H of the valid answers' distribution c_y / Σ c (nats; 0 without valid answers),
//                 and that divided by H(p*) (null when H(p*) = 0)
//   KL            KL(p* ‖ q) = Σ_y p*(y) ln(p*(y) / q(y)), q over the K targets and one "other"
//                 bucket, add-½ smoothed (Krichevsky–Trofimov): q(y) = (c_y + ½) / (N + ½ (K + 1)),
//                 so a target never sampled costs a finite amount and invalid answers lower q
//   TV            ½ (Σ_y |p*(y) − c_y / N| + other / N), unsmoothed
//   top share     the most frequent answer's count / N (valid or not), with the answer
// The set's overall row is the mean of each figure over its prompts.
import { Effect, Schema } from "effect"
import { Artifact, StageError, stage } from "../../src/engine/index.ts"
import { DiffusePrompts, targetEntropy } from "./prompts.ts"
import { type Answer, DiffuseSamples } from "./sample.ts"

/** The add-½ (Krichevsky–Trofimov) pseudo-count of the KL estimate. */
export const KL_SMOOTHING = 0.5

export const VariantMetrics = Schema.Struct({
  label: Schema.String,
  n: Schema.Int,
  /** per target, in the prompt's order */
  counts: Schema.Array(Schema.Int),
  /** answers that are not a target (or are not complete responses, sample.ts) */
  other: Schema.Int,
  validShare: Schema.Number,
  covered: Schema.Int,
  coverage: Schema.Number,
  entropy: Schema.Number,
  entropyRatio: Schema.NullOr(Schema.Number),
  kl: Schema.Number,
  tv: Schema.Number,
  topAnswer: Schema.String,
  topShare: Schema.Number,
})
export type VariantMetrics = typeof VariantMetrics.Type

export const PromptMetrics = Schema.Struct({
  id: Schema.String,
  request: Schema.String,
  targets: Schema.Array(Schema.String),
  weights: Schema.Array(Schema.Number),
  targetEntropy: Schema.Number,
  variants: Schema.Array(VariantMetrics),
})
export type PromptMetrics = typeof PromptMetrics.Type

const Means = Schema.Struct({
  label: Schema.String,
  validShare: Schema.Number,
  coverage: Schema.Number,
  entropy: Schema.Number,
  kl: Schema.Number,
  tv: Schema.Number,
  topShare: Schema.Number,
})

export const DiffuseMetrics = Artifact.json(
  "DiffuseMetrics",
  Schema.Struct({
    /** what the set is, e.g. "train", "held-out" */
    set: Schema.String,
    prompts: Schema.Array(PromptMetrics),
    /** per variant, the mean of each figure over the prompts */
    overall: Schema.Array(Means),
  }),
)
export type DiffuseMetrics = typeof DiffuseMetrics.schema.Type

/** Σ p ln p over positive p, negated: nats. */
const entropyOfCounts = (counts: ReadonlyArray<number>): number => {
  const total = counts.reduce((a, b) => a + b, 0)
  return total === 0 ? 0 : counts.reduce((h, c) => (c > 0 ? h - (c / total) * Math.log(c / total) : h), 0)
}

/** The figures of one model's answers to one prompt (see the file header). */
export const variantMetrics = (label: string, targets: ReadonlyArray<string>, weights: ReadonlyArray<number>, answers: ReadonlyArray<Answer>): VariantMetrics => {
  const index = new Map(targets.map((t, i) => [t, i]))
  const counts = targets.map(() => 0)
  let n = 0
  let other = 0
  for (const a of answers) {
    n += a.count
    const i = a.complete ? index.get(a.text) : undefined
    if (i === undefined) other += a.count
    else counts[i] += a.count
  }
  const K = targets.length
  const valid = n - other
  const h = targetEntropy(weights)
  const entropy = entropyOfCounts(counts)
  const denominator = n + KL_SMOOTHING * (K + 1)
  const kl = weights.reduce((s, p, i) => (p > 0 ? s + p * Math.log(p / ((counts[i] + KL_SMOOTHING) / denominator)) : s), 0)
  const tv = 0.5 * (weights.reduce((s, p, i) => s + Math.abs(p - (n === 0 ? 0 : counts[i] / n)), 0) + (n === 0 ? 0 : other / n))
  const top = answers.reduce<Answer | undefined>((best, a) => (best === undefined || a.count > best.count ? a : best), undefined)
  const covered = counts.filter((c) => c > 0).length
  return {
    label,
    n,
    counts,
    other,
    validShare: n === 0 ? 0 : valid / n,
    covered,
    coverage: covered / K,
    entropy,
    entropyRatio: h > 0 ? entropy / h : null,
    kl,
    tv,
    topAnswer: top?.text ?? "",
    topShare: n === 0 || top === undefined ? 0 : top.count / n,
  }
}

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1)

/** Every prompt's metrics for each sample set (in the given order), and the means over prompts. */
export const setMetrics = (set: string, prompts: DiffusePrompts, samples: ReadonlyArray<DiffuseSamples>): Effect.Effect<DiffuseMetrics, StageError> =>
  Effect.gen(function* () {
    for (const s of samples) {
      const ids = s.prompts.map((p) => p.id).join(", ")
      if (ids !== prompts.prompts.map((p) => p.id).join(", "))
        return yield* Effect.fail(new StageError({ message: `diffuse-metrics: the "${s.label}" samples are of the prompts [${ids}], not of the set ${prompts.source} [${prompts.prompts.map((p) => p.id).join(", ")}]` }))
    }
    const rows = prompts.prompts.map((p, i) => ({
      id: p.id,
      request: p.request,
      targets: p.targets,
      weights: p.weights,
      targetEntropy: targetEntropy(p.weights),
      variants: samples.map((s) => variantMetrics(s.label, p.targets, p.weights, s.prompts[i].answers)),
    }))
    const overall = samples.map((s, v) => {
      const of = (f: (m: VariantMetrics) => number) => mean(rows.map((r) => f(r.variants[v])))
      return { label: s.label, validShare: of((m) => m.validShare), coverage: of((m) => m.coverage), entropy: of((m) => m.entropy), kl: of((m) => m.kl), tv: of((m) => m.tv), topShare: of((m) => m.topShare) }
    })
    return { set, prompts: rows, overall }
  })

export const diffuseMetrics = stage({
  name: "diffuse-metrics",
  version: 1,
  params: Schema.Struct({ set: Schema.String.check(Schema.isMinLength(1)) }),
  inputs: { prompts: DiffusePrompts, untuned: DiffuseSamples, tuned: DiffuseSamples },
  output: DiffuseMetrics,
  run: ({ params, inputs }) => setMetrics(params.set, inputs.prompts, [inputs.untuned, inputs.tuned]),
})
