// Teacher-forced scoring: per-position log-probability of a given next token, entropy, top-k
// log-probabilities and the probability mass outside the top k (the teacher-logits artifact),
// computed chunk by chunk over positions in an ONNX Loop so [tokens x vocab] logits are never
// held whole (one [chunk x vocab] block at a time).
//
// API
//   positionStats(g, hidden [N, H], lmHead [V, H], targets [N] int64, { topK, chunk }, logitSoftcap?)
//     -> { targetLogProb [N], entropy [N], topLogProbs [N, k], topIds [N, k] int64, tailMass [N] }
//     Graph function; any target id in [0, V) (use 0 where a position is not scored).
//   buildScoringGraph(g, model, placement, { topK, chunk, adapter? }) : inputs input_ids,
//     attention_mask [B, T] (left padding), targets [B, T] (and condition [B, C] for a variant with
//     a conditional soft prompt); outputs scoringNames.* shaped [B, T] / [B, T, k]. `model` is a
//     checkpoint or a variant.ts Variant (its soft prompt / prefix positions are not scored);
//     `adapter` is shorthand for a checkpoint with that one frozen LoRA. An invalid variant (e.g. an
//     adapter module that is not a linear layer of the model) throws with checkVariant's message.
//   chunkedRows(g, rows, chunk, tails, body): the chunk loop positionStats runs in, for other
//     per-position statistics (e.g. over several models' hidden states: ensemble.ts).
//   scoreContinuations(session, requests, { padId, stats }) -> Effect<ContinuationScore[]>
//     log p(continuation | context) token by token, batched with left padding; a request's
//     context must be non-empty (start it with BOS where the model expects one). `stats` names
//     further [B, T] outputs of the session to read along the continuation.
//   perplexity(logProbs) = exp(-mean log p)
//
// Numerics: float32 log-softmax per row (max-subtracted by onnxruntime). tailMass =
// max(0, 1 - Σ exp(top-k log-probs)) has absolute error ~1e-7 from float32 cancellation when
// the top k hold almost all the mass.
import { Data, Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { type Graph, softcap, type Value } from "../graph/index.ts"
import { type RunError, runSession, type Session } from "../runtime/session.ts"
import { tensor } from "../runtime/tensor.ts"
import type { Checkpoint } from "./checkpoint.ts"
import { forwardNames } from "./forward.ts"
import { externalWeights, type WeightPlacement } from "./graph-weights.ts"
import type { LoraAdapter } from "./peft.ts"
import { asVariant, checkVariant, prepareVariant, type Variant, variantNames } from "./variant.ts"

/** A scoring request that cannot be scored (the message says which and why). */
export class ScoringError extends Data.TaggedError("ScoringError")<{ readonly message: string }> {}

export interface PositionStatsOptions {
  readonly topK: number
  /** positions per chunk (default 128): memory holds about chunk x vocab floats */
  readonly chunk?: number
}

export interface PositionStats {
  readonly targetLogProb: Value
  readonly entropy: Value
  readonly topLogProbs: Value
  readonly topIds: Value
  readonly tailMass: Value
}

/**
 * Runs `body` on consecutive blocks of `chunk` rows of every one of `rows` (all [N, ...], same N)
 * inside an ONNX Loop and stacks what it returns: each output [N, ...tails[i]], so only one block's
 * intermediates (e.g. [chunk x vocab] logits) exist at a time.
 */
export const chunkedRows = (g: Graph, rows: ReadonlyArray<Value>, chunk: number, tails: ReadonlyArray<ReadonlyArray<number>>, body: (sub: Graph, blocks: Value[]) => Value[]): Value[] => {
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`scoring: chunk must be a positive integer, got ${chunk}`)
  const n = g.shapeOf(rows[0], 0, 1)
  const c = g.ints([chunk])
  const numChunks = g.div(g.add(n, g.sub(c, g.ints([1]))), c)
  const padAmount = g.sub(g.mul(numChunks, c), n)
  // edge padding: the padded rows are copies of the last one, computed and then dropped
  const padded = rows.map((v) => g.pad(v, g.concat([g.ints(new Array<number>(v.rank).fill(0)), padAmount, g.ints(new Array<number>(v.rank - 1).fill(0))], 0), "edge"))
  const outs = g.loop(g.reshape(numChunks, []), null, [], (sub, iter) => {
    const start = sub.mul(sub.reshape(iter, [1]), sub.ints([chunk]))
    const end = sub.add(start, sub.ints([chunk]))
    return { carried: [], scans: body(sub, padded.map((v) => sub.slice(v, start, end, [0]))) }
  })
  // [chunks, chunk, ...] -> first N rows
  return outs.map((v, i) => g.slice(g.reshape(v, [-1, ...tails[i]]), g.ints([0]), n, [0]))
}

/** Entropy of each row of log-probabilities logp [N, V]: [N]. */
export const entropyOf = (g: Graph, logp: Value): Value => g.neg(g.reduceSum(g.mul(g.exp(logp), logp), [1]))

/** Each row's log-probability of its target: logp [N, V], targets int64 [N] -> [N]. */
export const targetLogProbOf = (g: Graph, logp: Value, targets: Value): Value => g.squeeze(g.gatherElements(logp, g.unsqueeze(targets, [1]), 1), [1])

/** `logitSoftcap`: the model's final logit soft-capping (DecoderOutputs.logitSoftcap). */
export const positionStats = (g: Graph, hidden: Value, lmHead: Value, targets: Value, opts: PositionStatsOptions, logitSoftcap?: number): PositionStats => {
  const k = opts.topK
  const V = lmHead.shape[0]
  if (!Number.isInteger(k) || k < 1 || (typeof V === "number" && k > V)) throw new Error(`scoring: topK must be an integer in [1, ${V}], got ${k}`)
  const [targetLogProb, entropy, topLogProbs, topIds, tailMass] = chunkedRows(g, [hidden, targets], opts.chunk ?? 128, [[], [], [k], [k], []], (sub, [h, t]) => {
    const z = sub.gemm(h, lmHead, null, { transB: true })
    const logp = sub.logSoftmax(logitSoftcap === undefined ? z : softcap(sub, z, logitSoftcap), -1) // [C, V]
    const [top, ids] = sub.topK(logp, k, -1)
    const tail = sub.max(sub.sub(sub.scalar(1), sub.reduceSum(sub.exp(top), [1])), sub.scalar(0))
    return [targetLogProbOf(sub, logp, t), entropyOf(sub, logp), top, ids, tail]
  })
  return { targetLogProb, entropy, topLogProbs, topIds, tailMass }
}

export const scoringNames = {
  targets: "targets",
  targetLogProb: "target_logprob",
  entropy: "entropy",
  topLogProbs: "top_logprobs",
  topIds: "top_ids",
  tailMass: "tail_mass",
} as const

export interface ScoringGraphOptions extends PositionStatsOptions {
  /** A trained LoRA adapter applied on top of the checkpoint's weights. */
  readonly adapter?: LoraAdapter
}

/** A scoring graph over external weights; see the file header for its inputs and outputs. */
export const buildScoringGraph = (g: Graph, model: Checkpoint | Variant, placement: WeightPlacement, opts: ScoringGraphOptions): void => {
  const checked = Effect.runSync(Effect.result(Effect.tap(asVariant(model, opts.adapter), checkVariant)))
  if (checked._tag === "Failure") throw new Error(checked.failure.message)
  const variant = checked.success
  const c = variant.checkpoint.config
  const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
  const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
  const targets = g.input(scoringNames.targets, "int64", ["batch", "seq"])
  const cp = variant.conditionalSoftPrompt
  const condition = cp ? g.input(variantNames.condition, "float32", ["batch", cp.conditionSize]) : undefined
  const out = prepareVariant(g, variant, externalWeights(g, placement))(g, { ids, mask, condition })
  const s = positionStats(g, g.reshape(out.hidden, [-1, c.hiddenSize]), out.lmHead, g.reshape(targets, [-1]), opts, out.logitSoftcap)
  const bt = g.shapeOf(targets)
  const btk = g.concat([bt, g.ints([opts.topK])], 0)
  g.outputAs(scoringNames.targetLogProb, g.reshapeLike(s.targetLogProb, targets))
  g.outputAs(scoringNames.entropy, g.reshapeLike(s.entropy, targets))
  g.outputAs(scoringNames.tailMass, g.reshapeLike(s.tailMass, targets))
  g.outputAs(scoringNames.topLogProbs, g.reshape(s.topLogProbs, btk))
  g.outputAs(scoringNames.topIds, g.reshape(s.topIds, btk))
}

export interface ContinuationRequest {
  readonly context: ReadonlyArray<number>
  readonly continuation: ReadonlyArray<number>
  /** For a variant with a conditional soft prompt: its condition vector (every request gives one). */
  readonly condition?: ReadonlyArray<number>
}

export interface ContinuationScore {
  /** log p(continuation[i] | context, continuation[:i]) */
  readonly logProbs: number[]
  /** entropy of the model's distribution at each continuation position */
  readonly entropies: number[]
  readonly sum: number
  /** each of the `stats` outputs asked for ([B, T] like target_logprob), at each continuation position */
  readonly stats: Readonly<Record<string, number[]>>
}

/** Scores requests in one batch (left-padded to the longest); see the file header. */
export const scoreContinuations = (
  session: Session,
  requests: ReadonlyArray<ContinuationRequest>,
  options: { readonly padId?: number; readonly stats?: ReadonlyArray<string> } = {},
): Effect.Effect<ContinuationScore[], RunError | ScoringError> =>
  Effect.suspend((): Effect.Effect<ContinuationScore[], RunError | ScoringError> => {
    if (requests.length === 0) return Effect.succeed([])
    const C = requests[0].condition?.length
    for (const [i, r] of requests.entries()) {
      if (r.context.length === 0) return Effect.fail(new ScoringError({ message: `scoring request ${i} has an empty context (start it with the BOS token)` }))
      if (r.condition?.length !== C)
        return Effect.fail(new ScoringError({ message: `scoring request ${i}: conditions must be given for all requests or none, all of one length (request 0 has ${C ?? "none"})` }))
    }
    const seqs = requests.map((r) => [...r.context, ...r.continuation])
    const T = seqs.reduce((m, s) => Math.max(m, s.length), 0) - 1
    const pad = options.padId ?? 0
    const ids: number[] = []
    const mask: number[] = []
    const targets: number[] = []
    for (const s of seqs) {
      const padding = T - (s.length - 1)
      for (let t = 0; t < T; t++) {
        ids.push(t < padding ? pad : s[t - padding])
        mask.push(t < padding ? 0 : 1)
        targets.push(t < padding ? 0 : s[t - padding + 1])
      }
    }
    const B = requests.length
    const feeds: Record<string, ort.Tensor> = {
      [forwardNames.ids]: tensor("int64", [B, T], ids),
      [forwardNames.mask]: tensor("int64", [B, T], mask),
      [scoringNames.targets]: tensor("int64", [B, T], targets),
      ...(C === undefined ? {} : { [variantNames.condition]: tensor("float32", [B, C], requests.flatMap((r) => r.condition ?? [])) }),
    }
    const stats = options.stats ?? []
    return Effect.map(runSession(session, feeds, [scoringNames.targetLogProb, scoringNames.entropy, ...stats]), (out) =>
      requests.map((r, b) => {
        const along = (name: string) => Array.from((out[name].data as Float32Array).subarray(b * T + T - r.continuation.length, (b + 1) * T))
        const logProbs = along(scoringNames.targetLogProb)
        return {
          logProbs,
          entropies: along(scoringNames.entropy),
          sum: logProbs.reduce((x, y) => x + y, 0),
          stats: Object.fromEntries(stats.map((name) => [name, along(name)])),
        }
      }),
    )
  })

/** exp(-mean log p); NaN for no tokens. */
export const perplexity = (logProbs: ReadonlyArray<number>): number => Math.exp(-logProbs.reduce((a, b) => a + b, 0) / logProbs.length)
