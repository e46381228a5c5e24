// Stage `evaluate`: test perplexity of every member and of the blend at the searched parameters.
//
//   overall        every scored test position (held-out.ts) with its full context, from the stored test rows
//                  (score-members): each member, the blend, and the top-k blend at the top-k
//                  search's own best parameters (what full-vocabulary blending gains);
//   by tokens back the same target tokens scored with 1, 2, 4, ... maxTokensBack tokens of context
//                  and with the full context, run in one ensemble graph with the blend rule
//                  (ensemble.ts: the members' own log-probs come with it): each model sees BOS and
//                  only the last c tokens, so the curve shows what each model makes of c tokens.
//                  The targets are the scored test positions with at least maxTokensBack tokens before
//                  them (evenly spaced, at most positionsPerBucket), the same in every bucket.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, StageError, stage } from "../../src/engine/index.ts"
import { blendRule, ruleLogProbs } from "../../src/models/blend.ts"
import { type EnsembleMember, scopedEnsemble } from "../../src/models/ensemble.ts"
import { type ContinuationRequest, perplexity } from "../../src/models/scoring.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import type { Device } from "../../src/runtime/session.ts"
import { BlendSearch, type HeldOutSplit, HeldOutTokens, MemberLogProbs, readHeldOut, readMemberLogProbs, type StoredMemberRows } from "./artifacts.ts"
import { blendMemberInputs, blendMembers, checkFits, openMembers } from "./members.ts"

const Perplexities = Schema.Record(Schema.String, Schema.Number)
export const Bucket = Schema.Struct({
  /** tokens of context the models saw; null for the full context */
  tokensBack: Schema.NullOr(Schema.Int),
  n: Schema.Int,
  perplexity: Perplexities,
})
export type Bucket = typeof Bucket.Type

export const BlendEvaluation = Artifact.json(
  "BlendEvaluation",
  Schema.Struct({
    kind: Schema.Literals(["blend", "proxy"]),
    params: Schema.Record(Schema.String, Schema.Number),
    /** full context, every test position: members, "blend", and "blend (top k)" when searched */
    overall: Perplexities,
    positions: Schema.Int,
    topK: Schema.NullOr(Schema.Struct({ k: Schema.Int, params: Schema.Record(Schema.String, Schema.Number) })),
    buckets: Schema.Array(Bucket),
  }),
)
export type BlendEvaluation = typeof BlendEvaluation.schema.Type

/** 1, 2, 4, ... up to maxTokensBack (itself included when it is not a power of 2). */
export const tokensBackBuckets = (maxTokensBack: number): number[] => {
  const out: number[] = []
  for (let c = 1; c < maxTokensBack; c *= 2) out.push(c)
  return [...out, maxTokensBack]
}

/** (text, index of the target token) of the scored targets with at least `minBack` text tokens before them, evenly thinned to `limit` (0: all). */
export const bucketTargets = (split: HeldOutSplit, minBack: number, limit: number) => {
  // target j has j - 1 text tokens before it (position 0 is BOS)
  const all = split.ids.flatMap((s, i) => s.map((_, j) => [i, j] as const).filter(([, j]) => j >= split.scoredFrom[i] && j - 1 >= minBack))
  if (limit === 0 || all.length <= limit) return all
  return Array.from({ length: limit }, (_, k) => all[Math.floor((k * all.length) / limit)])
}

/** Member and combined log-probs of each (text, target) with the last `back` tokens of context (undefined: all), BOS kept. */
const truncatedRequests = (seqs: ReadonlyArray<ReadonlyArray<number>>, targets: ReadonlyArray<readonly [number, number]>, back: number | undefined): ContinuationRequest[] =>
  targets.map(([i, j]) => ({ context: back === undefined ? seqs[i].slice(0, j) : [seqs[i][0], ...seqs[i].slice(j - back, j)], continuation: [seqs[i][j]] }))

const overallPerplexities = (rows: StoredMemberRows, kind: "blend" | "proxy", params: Readonly<Record<string, number>>, topK: { k: number; params: Readonly<Record<string, number>> } | null) => {
  const out: Record<string, number> = {}
  for (const m of rows.members) {
    const lp = rows.logProbs.get(m)!
    out[m] = perplexity(Array.from(rows.targets, (t, r) => lp[r * rows.vocab + t]))
  }
  out.blend = perplexity(Array.from(ruleLogProbs(blendRule(kind, params), rows)))
  if (topK) out[`blend (top ${topK.k})`] = perplexity(Array.from(ruleLogProbs(blendRule(kind, topK.params), rows, { topK: topK.k })))
  return out
}

export const evaluateBlend = stage({
  name: "evaluate-blend",
  version: 2,
  params: Schema.Struct({
    maxTokensBack: Schema.Int.check(Schema.isGreaterThan(0)),
    /** targets per context bucket (0: every eligible test position) */
    positionsPerBucket: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
    /** scoring requests per session run (does not change results) */
    batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { ...blendMemberInputs, heldOut: HeldOutTokens, test: MemberLogProbs, search: BlendSearch, searchTopK: BlendSearch },
  output: BlendEvaluation,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { search, searchTopK } = inputs
      if (search.topK !== null || searchTopK.topK === null || search.kind !== searchTopK.kind)
        return yield* Effect.fail(new StageError({ message: `evaluate-blend: "search" must be a full-vocabulary search and "searchTopK" a top-k one of the same kind (got ${search.kind} top ${search.topK}, ${searchTopK.kind} top ${searchTopK.topK})` }))
      const { members } = yield* openMembers(blendMembers(inputs), ctx.workDir)
      const test = (yield* readHeldOut(inputs.heldOut)).test
      yield* checkFits(members, test.ids, "test sequence")
      const rows = yield* readMemberLogProbs(inputs.test)
      const topK = { k: searchTopK.topK, params: searchTopK.best.params }
      const overall = overallPerplexities(rows, search.kind, search.best.params, topK)
      ctx.log(`overall test perplexity over ${rows.rows} positions: ${Object.entries(overall).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")}`)

      const targets = bucketTargets(test, params.maxTokensBack, params.positionsPerBucket)
      if (targets.length === 0)
        return yield* Effect.fail(new StageError({ message: `evaluate-blend: no scored test position has ${params.maxTokensBack} tokens before it; lower maxTokensBack or raise held-out.maxTokens` }))
      const buckets = yield* scoreBuckets(members, search.kind, search.best.params, test.ids, targets, tokensBackBuckets(params.maxTokensBack), {
        graphDir: path.join(ctx.workDir, "graph"),
        batchSize: params.batchSize,
        threads: params.threads,
        device: ctx.device,
        node: ctx.node,
      })
      for (const b of buckets) ctx.log(`${b.tokensBack ?? "full"} tokens back (${b.n} targets): ${Object.entries(b.perplexity).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")}`)
      return { kind: search.kind, params: search.best.params, overall, positions: rows.rows, topK, buckets }
    }),
})

/** Perplexity of each member and the blend on `targets` with each context length of `backs`, then the full context. */
export const scoreBuckets = (
  members: ReadonlyArray<EnsembleMember>,
  kind: "blend" | "proxy",
  blendParams: Readonly<Record<string, number>>,
  seqs: ReadonlyArray<ReadonlyArray<number>>,
  targets: ReadonlyArray<readonly [number, number]>,
  backs: ReadonlyArray<number>,
  o: { readonly graphDir: string; readonly batchSize: number; readonly threads: number; readonly device: Device; readonly node: string },
) =>
  Effect.gen(function* () {
    const ensemble = yield* scopedEnsemble({ members, rule: blendRule(kind, blendParams), graphDir: o.graphDir, device: o.device, ...(o.threads > 0 ? { intraOpThreads: o.threads } : {}) })
    const buckets: Bucket[] = []
    for (const back of [...backs, undefined]) {
      const requests = truncatedRequests(seqs, targets, back)
      const logProbs: Record<string, number[]> = Object.fromEntries([...members.map((m) => [m.name, []]), ["blend", []]])
      for (let start = 0; start < requests.length; start += o.batchSize) {
        const scores = yield* ensemble.score(requests.slice(start, start + o.batchSize))
        yield* checkFiniteRows(o.node, `blend log-probs at ${back ?? "full"} tokens back [request, token]`, scores.map((s) => s.logProbs))
        for (const s of scores) {
          logProbs.blend.push(s.logProbs[0])
          for (const m of members) logProbs[m.name].push(s.members[m.name].logProbs[0])
        }
      }
      buckets.push({ tokensBack: back ?? null, n: requests.length, perplexity: Object.fromEntries(Object.entries(logProbs).map(([k, v]) => [k, perplexity(v)])) })
    }
    return buckets
  }).pipe(Effect.scoped)
