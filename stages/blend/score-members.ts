// Stage `score-members`: every member's full next-token distribution at the scored positions of one
// split of the held-out texts (every token after BOS of a plain text, a chat's answer: see held-out.ts), computed in one multi-model graph (ensemble.ts buildMemberLogProbsGraph: the
// members' forwards side by side, a checkpoint shared by two members read once) and stored as
// float16 or float32 tensors, so blend-search can try hundreds of rules without running a model.
//
// Memory: rows x vocab x 4 bytes per member (float32 rows; blend-search and evaluate-blend read them
// back as such), checked against the machine's memory before any forward pass; the output is
// streamed to its file. Storage: rows x vocab x (2 or 4) bytes per member. float16 keeps a log-prob
// x to within |x| * 2^-11 (relative rounding of its 10-bit mantissa): ~0.002 nats at log p = -4,
// which moves a perplexity by ~0.2% at most; float32 when that matters.
import { Effect, Schema } from "effect"
import * as os from "node:os"
import * as path from "node:path"
import { StageError, stage } from "../../src/engine/index.ts"
import { buildMemberLogProbsGraph, type EnsembleMember, memberLogProbsName } from "../../src/models/ensemble.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { checkFinite } from "../../src/runtime/finite.ts"
import { type Device, runSession, scopedSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { type HeldOutSplit, HeldOutTokens, MemberLogProbs, memberRowsBytes, readHeldOut, scoredCount, type StoredMemberRows, writeMemberLogProbs } from "./artifacts.ts"
import { blendMemberInputs, blendMembers, checkFits, openMembers } from "./members.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

export interface ScoreOptions {
  readonly graphDir: string
  readonly device: Device
  readonly batchSize: number
  readonly threads?: number
}

/** The members' log-probs predicting each scored target of `split` (from its scoredFrom on), in text order. */
export const scoreMemberRows = (members: ReadonlyArray<EnsembleMember>, vocab: number, split: HeldOutSplit, opts: ScoreOptions) =>
  Effect.gen(function* () {
    const seqs = split.ids
    yield* checkFits(members, seqs, "held-out sequence")
    const placement = yield* placeWeights(members.map((m) => m.checkpoint), opts.graphDir)
    const file = yield* writeGraph(buildMemberLogProbsGraph(members, placement, vocab), placement, "member-logprobs")
    const session = yield* scopedSession(file, { device: opts.device, ...(opts.threads ? { intraOpThreads: opts.threads } : {}) })
    const rows = scoredCount(split)
    const logProbs = new Map(members.map((m) => [m.name, new Float32Array(rows * vocab)]))
    const targets = new Int32Array(rows)
    const tokensBack = new Int32Array(rows)
    const first = members[0].checkpoint.config
    const pad = paddingId(first)
    let row = 0
    for (let start = 0; start < seqs.length; start += opts.batchSize) {
      const batch = seqs.slice(start, start + opts.batchSize)
      const T = Math.max(...batch.map((s) => s.length))
      const ids: number[] = []
      const mask: number[] = []
      for (const s of batch) for (let t = 0; t < T; t++) [ids[ids.length], mask[mask.length]] = t < T - s.length ? [pad, 0] : [s[t - (T - s.length)], 1]
      const B = batch.length
      const out = yield* runSession(session, { input_ids: tensor("int64", [B, T], ids), attention_mask: tensor("int64", [B, T], mask) }, members.map((m) => memberLogProbsName(m.name)))
      batch.forEach((s, b) => {
        const padding = T - s.length
        for (let j = split.scoredFrom[start + b]; j < s.length; j++, row++) {
          // position padding + j - 1 predicts token j
          const at = (b * T + padding + j - 1) * vocab
          for (const m of members) logProbs.get(m.name)!.set((out[memberLogProbsName(m.name)].data as Float32Array).subarray(at, at + vocab), row * vocab)
          targets[row] = s[j]
          tokensBack[row] = j - 1
        }
      })
      yield* Effect.yieldNow
    }
    return { members: members.map((m) => m.name), rows, vocab, logProbs, targets, tokensBack } satisfies StoredMemberRows
  }).pipe(Effect.scoped)

const GiB = (bytes: number) => (bytes / 2 ** 30).toFixed(1)

/** Why scoring `rows` positions would not fit in `totalMemory` bytes (more than 80% of it), or undefined. */
export const scoringMemoryProblem = (split: string, rows: number, vocab: number, members: number, dtype: "float16" | "float32", totalMemory: number): string | undefined => {
  const bytes = memberRowsBytes(rows, vocab, members)
  if (bytes <= 0.8 * totalMemory) return undefined
  const stored = rows * vocab * members * (dtype === "float16" ? 2 : 4)
  return `${split}: ${rows} scored positions x ${vocab} tokens x ${members} members need ${GiB(bytes)} GiB of memory (here, then in blend-search and evaluate-blend; ${GiB(stored)} GiB in the cache as ${dtype}), more than 80% of this machine's ${GiB(totalMemory)} GiB: score fewer positions with held-out.limit (texts) or held-out.maxTokens (tokens per text)`
}

export const scoreMembers = stage({
  name: "score-members",
  version: 2,
  params: Schema.Struct({
    split: Schema.Literals(["validation", "test"]),
    dtype: Schema.Literals(["float16", "float32"]),
    /** sequences per forward run (does not change results) */
    batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
    /** onnxruntime intra-op threads, 0 for its default (does not change results) */
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { ...blendMemberInputs, heldOut: HeldOutTokens },
  output: MemberLogProbs,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { members, vocab } = yield* openMembers(blendMembers(inputs), ctx.workDir)
      const split = (yield* readHeldOut(inputs.heldOut))[params.split]
      // before any forward pass: a held-out set too large for a 128k vocabulary fails here, not out of memory
      const problem = scoringMemoryProblem(params.split, scoredCount(split), vocab, members.length, params.dtype, os.totalmem())
      if (problem !== undefined) return yield* Effect.fail(new StageError({ message: problem }))
      const started = performance.now()
      const rows = yield* scoreMemberRows(members, vocab, split, {
        graphDir: path.join(ctx.workDir, "graph"),
        device: ctx.device,
        batchSize: params.batchSize,
        ...(params.threads > 0 ? { threads: params.threads } : {}),
      })
      for (const m of rows.members) yield* checkFinite(ctx.node, `${m} log-probs [row, token]`, rows.logProbs.get(m)!, [rows.rows, vocab])
      const seconds = (performance.now() - started) / 1000
      ctx.metric("score_tokens_per_s", rows.rows / seconds)
      ctx.log(`${params.split}: ${rows.rows} positions x ${members.length} members x ${vocab} tokens as ${params.dtype} in ${seconds.toFixed(1)} s`)
      return yield* Effect.mapError(writeMemberLogProbs(path.join(ctx.workDir, "member-logprobs.safetensors"), rows, params.dtype === "float16" ? "F16" : "F32"), (e) => new StageError({ message: e.message }))
    }),
})
