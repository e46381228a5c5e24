// Stage `blend-search`: the blend's parameters that minimise validation perplexity, found with the
// TPE sampler (src/core/tpe.ts; Optuna's default, which seed 003 used for its 100 trials) on the
// members' stored distributions (score-members), so a trial costs one pass over the stored rows
// and no model run.
//
//   kind "blend"  T_b, T_t, T_u on a log scale in [temperatureLow, temperatureHigh]
//   kind "proxy"  alpha in [alphaLow, alphaHigh]
//   topK > 0      each member reveals only its top-k log-probs (seed 003's API gave 5), see
//                 src/models/blend.ts; 0 for the full vocabulary.
//
// Every trial is appended to trials.jsonl in the work dir as it finishes; after a kill the search
// reads them back and goes on. TPE's suggestion is a function of (space, history, seed), so the
// resumed search tries exactly what the uninterrupted one would have (a recorded trial whose params
// are not that suggestion, e.g. from a changed stage, ends the replay there and is dropped).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type Dimension, spaceProblem, suggestTpe, type Trial } from "../../src/core/tpe.ts"
import { StageError, stage } from "../../src/engine/index.ts"
import { type BlendKind, blendRule, ruleLogProbs } from "../../src/models/blend.ts"
import { perplexity } from "../../src/models/scoring.ts"
import { BlendSearch, MemberLogProbs, readMemberLogProbs, SearchTrial, type StoredMemberRows } from "./artifacts.ts"

export const BlendSearchParams = Schema.Struct({
  kind: Schema.Literals(["blend", "proxy"]),
  topK: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  trials: Schema.Int.check(Schema.isGreaterThan(0)),
  /** uniform trials before TPE's model is used */
  startup: Schema.Int.check(Schema.isGreaterThan(0)),
  seed: Schema.Int,
  temperatureLow: Schema.Finite.check(Schema.isGreaterThan(0)),
  temperatureHigh: Schema.Finite,
  alphaLow: Schema.Finite,
  alphaHigh: Schema.Finite,
})
export type BlendSearchParams = typeof BlendSearchParams.Type

export const searchSpace = (p: Pick<BlendSearchParams, "kind" | "temperatureLow" | "temperatureHigh" | "alphaLow" | "alphaHigh">): Dimension[] =>
  p.kind === "blend"
    ? ["T_b", "T_t", "T_u"].map((name) => ({ name, low: p.temperatureLow, high: p.temperatureHigh, log: true }))
    : [{ name: "alpha", low: p.alphaLow, high: p.alphaHigh }]

/** Validation perplexity of the rule `kind` at `params` on the stored rows. */
export const rulePerplexity = (rows: StoredMemberRows, kind: BlendKind, params: Readonly<Record<string, number>>, topK: number) =>
  perplexity(Array.from(ruleLogProbs(blendRule(kind, params), rows, topK > 0 ? { topK } : {})))

const decodeTrial = Schema.decodeUnknownOption(Schema.fromJsonString(SearchTrial))

/** The recorded trials that the search would have made, in order (see the file header). */
const replay = (file: string, space: ReadonlyArray<Dimension>, seed: number, startup: number): SearchTrial[] => {
  if (!fs.existsSync(file)) return []
  const kept: SearchTrial[] = []
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const t = decodeTrial(line)
    if (t._tag === "None") break
    const want = suggestTpe(space, kept.map(toTrial), { seed, startup })
    if (!space.every((d) => want[d.name] === t.value.params[d.name])) break
    kept.push(t.value)
  }
  return kept
}
const toTrial = (t: SearchTrial): Trial => ({ params: t.params, value: t.perplexity })

export const blendSearch = stage({
  name: "blend-search",
  version: 1,
  params: BlendSearchParams,
  inputs: { validation: MemberLogProbs },
  output: BlendSearch,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const space = searchSpace(params)
      const problem = spaceProblem(space)
      if (problem) return yield* Effect.fail(new StageError({ message: `blend-search: ${problem} (set temperatureLow/High or alphaLow/High)` }))
      const rows = yield* readMemberLogProbs(inputs.validation)
      if (params.topK >= rows.vocab) return yield* Effect.fail(new StageError({ message: `blend-search: topK ${params.topK} must be below the vocabulary size ${rows.vocab} (0 for the full vocabulary)` }))
      const file = path.join(ctx.workDir, "trials.jsonl")
      const trials = replay(file, space, params.seed, params.startup)
      // rewrite what was kept, so a dropped tail does not stay behind the next appends
      fs.writeFileSync(file, trials.map((t) => JSON.stringify(t) + "\n").join(""))
      if (trials.length > 0) ctx.log(`resuming after ${trials.length} recorded trials`)
      ctx.progress.total(params.trials, "trials")
      ctx.progress.set(trials.length)
      while (trials.length < params.trials) {
        const suggested = suggestTpe(space, trials.map(toTrial), { seed: params.seed, startup: params.startup })
        const trial = { params: suggested, perplexity: rulePerplexity(rows, params.kind, suggested, params.topK) }
        fs.appendFileSync(file, JSON.stringify(trial) + "\n")
        trials.push(trial)
        ctx.metric("validation_perplexity", trial.perplexity, trials.length)
        ctx.progress.set(trials.length)
        yield* Effect.yieldNow
      }
      const finite = trials.filter((t) => Number.isFinite(t.perplexity))
      if (finite.length === 0) return yield* Effect.fail(new StageError({ message: `blend-search: all ${trials.length} trials gave a non-finite validation perplexity` }))
      const best = finite.reduce((a, b) => (b.perplexity < a.perplexity ? b : a))
      const members = Object.fromEntries(
        rows.members.map((m) => {
          const lp = rows.logProbs.get(m)!
          return [m, perplexity(Array.from(rows.targets, (t, r) => lp[r * rows.vocab + t]))]
        }),
      )
      ctx.log(
        `${params.kind}${params.topK > 0 ? ` (top ${params.topK})` : ""}: best validation perplexity ${best.perplexity.toFixed(3)} at ${JSON.stringify(best.params)}; members ${Object.entries(members).map(([m, p]) => `${m} ${p.toFixed(3)}`).join(", ")}`,
      )
      return { kind: params.kind, topK: params.topK > 0 ? params.topK : null, trials, best, members }
    }),
})
