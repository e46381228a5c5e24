// The artifacts of contrastive decoding and the divergence search.
import { Schema } from "effect"
import { Artifact } from "../../src/engine/index.ts"

export const TopToken = Schema.Struct({ piece: Schema.String, logProb: Schema.Number })
export type TopToken = typeof TopToken.Type

const PerModel = <S extends Schema.Top>(s: S) => Schema.Struct({ start: s, compare: s })

/** One decoded text, token by token (stages/contrast/contrast.ts). */
export const ContrastText = Schema.Struct({
  prompt: Schema.String,
  /** index of the prompt in the request list, and the generation's number for that prompt */
  promptIndex: Schema.Int,
  sample: Schema.Int,
  text: Schema.String,
  tokens: Schema.Array(Schema.Int),
  /** each token's text: decode(tokens[..i+1]) minus decode(tokens[..i]) ("" for a byte-level piece that completes no character) */
  pieces: Schema.Array(Schema.String),
  /** KL(P_start || P_compare) at each token, nats */
  kl: Schema.Array(Schema.Number),
  klSum: Schema.Number,
  klMean: Schema.Number,
  logProbs: PerModel(Schema.Array(Schema.Number)),
  perplexity: PerModel(Schema.Number),
  /** per token, each model's top tokens (empty lists when topTokens is 0) */
  top: PerModel(Schema.Array(Schema.Array(TopToken))),
})
export type ContrastText = typeof ContrastText.Type

export const DivergenceSummary = Schema.Struct({
  texts: Schema.Int,
  tokens: Schema.Int,
  /** mean KL over every token of every text */
  meanKl: Schema.Number,
  /** the median text's mean per-token KL */
  medianTextKl: Schema.Number,
  /** mean of the per-text mean KL over the top 10% of texts (at least one) */
  top10TextKl: Schema.Number,
  /** top10TextKl / medianTextKl; null when the median is 0 */
  top10OverMedian: Schema.NullOr(Schema.Number),
})
export type DivergenceSummary = typeof DivergenceSummary.Type

export const ContrastTexts = Artifact.json(
  "ContrastTexts",
  Schema.Struct({
    /** sorted by klMean, largest first, when the stage was asked to sort; else in request order */
    sorted: Schema.Boolean,
    texts: Schema.Array(ContrastText),
    summary: DivergenceSummary,
    /** the texts coloured for a terminal (ANSI); `pipe show` prints it */
    display: Schema.String,
  }),
)
export type ContrastTexts = typeof ContrastTexts.schema.Type

/** A prompt in the divergence search's bank. */
export const BankEntry = Schema.Struct({
  text: Schema.String,
  /** mean over its generations of the mean per-token KL(P_start || P_compare), nats */
  divergence: Schema.Number,
  /** cosine distance of its embedding to the nearest bank entry when admitted; null: not measured (seeds, or diversity off) */
  diversity: Schema.NullOr(Schema.Number),
  /** the cycle that admitted it; 0 for the seed prompts */
  cycle: Schema.Int,
})
export type BankEntry = typeof BankEntry.Type

/** What one search cycle did (timings are metrics, not part of the artifact). */
export const CycleReport = Schema.Struct({
  cycle: Schema.Int,
  /** assistant requests made, and the replies that were not a usable answer (not a chat completion, or no candidate in it) */
  requests: Schema.Int,
  malformedReplies: Schema.Int,
  /** candidate prompts parsed out of the replies */
  parsed: Schema.Int,
  rejected: Schema.Struct({
    duplicate: Schema.Int,
    length: Schema.Int,
    /** the assistant did not answer yes to the criterion (a reply that is neither yes nor no counts here and in malformedCriterion) */
    criterion: Schema.Int,
    malformedCriterion: Schema.Int,
    /** closer than minDiversity to a bank entry */
    similar: Schema.Int,
    /** divergence below the admission threshold */
    divergence: Schema.Int,
  }),
  admitted: Schema.Int,
  /** the admission threshold: the admitQuantile of the bank's divergences before the cycle */
  threshold: Schema.Number,
  /** mean divergence of the candidates scored this cycle (0 when none) */
  candidateMean: Schema.Number,
  /** mean divergence of the bank after the cycle */
  bankMean: Schema.Number,
  bankSize: Schema.Int,
})
export type CycleReport = typeof CycleReport.Type

export const SearchBank = Artifact.json(
  "SearchBank",
  Schema.Struct({
    entries: Schema.Array(BankEntry),
    /** one per cycle so far, in order (none for the seed bank) */
    cycles: Schema.Array(CycleReport),
    /** the bank's mean divergence before the first cycle */
    seedMean: Schema.Number,
  }),
)
export type SearchBank = typeof SearchBank.schema.Type
