// Stage: held-out perplexity of a model on the plain corpus's held-out documents (whole documents
// never trained on, and bios stating known facts in phrasings never used for them in training).
// Each document is scored as it is trained (documentIds: bos + text + eos, text + eos for a
// tokenizer without bos), every token after the first, teacher-forced (src/models/scoring.ts).
// Perplexity = exp(total negative log-likelihood / total tokens), overall, per held-out kind and
// per genre.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, errorMessage, StageError, stage } from "../../src/engine/index.ts"
import { Graph } from "../../src/graph/index.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { buildScoringGraph, scoreContinuations } from "../../src/models/scoring.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSession } from "../../src/runtime/session.ts"
import { LlamaWeights, materializeModel, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { documentIds } from "../tiny-chat/chat-batches.ts"
import { PlainCorpusFile, readPlainCorpus } from "./plain-corpus.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const Perplexity = Schema.Struct({ perplexity: Schema.Number, nll: Schema.Number, tokens: Schema.Int, documents: Schema.Int })
type Perplexity = typeof Perplexity.Type

export const TextEvaluation = Artifact.json(
  "TextEvaluation",
  Schema.Struct({ overall: Perplexity, byKind: Schema.Record(Schema.String, Perplexity), byGenre: Schema.Record(Schema.String, Perplexity) }),
)
export type TextEvaluation = typeof TextEvaluation.schema.Type

const summed = (rows: ReadonlyArray<{ nll: number; tokens: number }>): Perplexity => {
  const nll = rows.reduce((a, r) => a + r.nll, 0)
  const tokens = rows.reduce((a, r) => a + r.tokens, 0)
  return { perplexity: Math.exp(nll / tokens), nll, tokens, documents: rows.length }
}

export const evaluateText = stage({
  name: "evaluate-text",
  version: 1,
  params: Schema.Struct({ batchSize: Schema.Int.check(Schema.isGreaterThan(0)), threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)) }),
  unkeyed: ["batchSize", "threads"],
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson, texts: PlainCorpusFile },
  output: TextEvaluation,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* materializeModel(path.join(ctx.workDir, "model"), inputs.model, inputs.tokenizer)
      const { heldOut } = yield* readPlainCorpus(inputs.texts.path)
      // every document framed first, so a tokenizer without eos fails before any graph is built
      const framed = yield* Effect.try({
        try: () => heldOut.map((d) => documentIds(tokenizer, d.text)),
        catch: (e) => new StageError({ message: errorMessage(e) }),
      })
      const padId = paddingId(checkpoint.config)
      const placement = yield* placeWeights(checkpoint, path.join(ctx.workDir, "graph"))
      const g = new Graph("heldout_perplexity")
      buildScoringGraph(g, checkpoint, placement, { topK: 1, chunk: 256 })
      const session = yield* scopedSession(yield* writeGraph(g, placement, "scoring"), params.threads > 0 ? { intraOpThreads: params.threads } : {})
      const rows: Array<{ nll: number; tokens: number; kind: string; genre: string }> = []
      for (let i = 0; i < heldOut.length; i += params.batchSize) {
        const docs = heldOut.slice(i, i + params.batchSize)
        const scores = yield* scoreContinuations(
          session,
          framed.slice(i, i + params.batchSize).map((ids) => ({ context: ids.slice(0, 1), continuation: ids.slice(1) })),
          { padId },
        )
        yield* checkFiniteRows(ctx.node, "held-out log-probs [document, token]", scores.map((s) => s.logProbs))
        scores.forEach((s, j) => rows.push({ nll: -s.sum, tokens: s.logProbs.length, kind: docs[j].heldout_kind, genre: docs[j].genre }))
      }
      const groups = (key: "kind" | "genre") => Object.fromEntries([...new Set(rows.map((r) => r[key]))].sort().map((k) => [k, summed(rows.filter((r) => r[key] === k))]))
      const overall = summed(rows)
      ctx.metric("heldout_perplexity", overall.perplexity)
      ctx.log(`held-out perplexity ${overall.perplexity.toFixed(3)} over ${overall.tokens} tokens of ${overall.documents} documents`)
      return { overall, byKind: groups("kind"), byGenre: groups("genre") }
    }).pipe(Effect.scoped),
})

/** Perplexity before and after a tuning, overall and per genre, as a Markdown table. */
export const comparePerplexity = stage({
  name: "compare-perplexity",
  version: 1,
  params: Schema.Struct({ before: Schema.String, after: Schema.String }),
  inputs: { before: TextEvaluation, after: TextEvaluation },
  output: Artifact.json("PerplexityComparison", Schema.Struct({ markdown: Schema.String })),
  run: ({ params, inputs }) =>
    Effect.sync(() => {
      const row = (label: string, b: Perplexity, a: Perplexity) => `| ${label} | ${b.perplexity.toFixed(3)} | ${a.perplexity.toFixed(3)} | ${(100 * (a.perplexity / b.perplexity - 1)).toFixed(1)}% |`
      const genres = Object.keys(inputs.before.byGenre).filter((g) => g in inputs.after.byGenre)
      return {
        markdown: `| held-out documents | ${params.before} | ${params.after} | change |
| --- | --- | --- | --- |
${[row("all", inputs.before.overall, inputs.after.overall), ...genres.map((g) => row(g, inputs.before.byGenre[g], inputs.after.byGenre[g]))].join("\n")}
`,
      }
    }),
})
