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
