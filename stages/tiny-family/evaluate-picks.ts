// Stage: the answer distribution of a model to "random pick" requests (src/text/synthetic/picks.ts):
// for each kind (a number from 1 to 10, a town, a colour, a name), `samples` answers sampled at
// `temperature` to the kind's held-out request phrasings (taken in turn), without a system prompt.
// An answer in the trained form "I pick X." with X one of the kind's options counts for X; any
// other answer counts as invalid. Reported per kind: counts, the top answer's share, the entropy
// (bits) of the valid answers' empirical distribution, and for reference the entropy of the
// trained distribution and of the uniform one (log2 of the number of options).
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, stage } from "../../src/engine/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { CorpusOptions } from "../../src/text/synthetic/corpus.ts"
import { parsePick, pickDistribution, pickKinds, pickOptions, pickRequests } from "../../src/text/synthetic/picks.ts"
import { deriveRng } from "../../src/text/synthetic/random.ts"
import { generateWorld } from "../../src/text/synthetic/world.ts"
import { renderChat } from "../../src/text/tokenizer-builder.ts"
import { LlamaWeights, materializeModel, TokenizerJson } from "../tiny-chat/artifacts.ts"

const KindResult = Schema.Struct({
  counts: Schema.Record(Schema.String, Schema.Int),
  valid: Schema.Int,
  invalid: Schema.Int,
  top: Schema.String,
  topShare: Schema.Number,
  entropyBits: Schema.Number,
  trainedEntropyBits: Schema.Number,
  uniformEntropyBits: Schema.Number,
  examples: Schema.Array(Schema.String),
})
export type KindResult = typeof KindResult.Type

export const PickEvaluation = Artifact.json("PickEvaluation", Schema.Struct({ temperature: Schema.Number, samples: Schema.Int, kinds: Schema.Record(Schema.String, KindResult) }))
export type PickEvaluation = typeof PickEvaluation.schema.Type

/** Entropy in bits of a distribution given by counts (zero counts ignored). */
export const entropyBits = (counts: ReadonlyArray<number>): number => {
  const n = counts.reduce((a, b) => a + b, 0)
  return counts.reduce((h, c) => (c === 0 ? h : h - (c / n) * Math.log2(c / n)), 0)
}

export const evaluatePicks = stage({
  name: "evaluate-picks",
  version: 1,
  params: Schema.Struct({
    /** the chat corpus's options: the world whose towns and people are the options */
    corpus: CorpusOptions,
    samples: Schema.Int.check(Schema.isGreaterThan(0)),
    temperature: Schema.Finite.check(Schema.isGreaterThan(0)),
    maxNewTokens: Schema.Int.check(Schema.isGreaterThan(0)),
    seed: Schema.Int,
    batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson },
  output: PickEvaluation,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* materializeModel(path.join(ctx.workDir, "model"), inputs.model, inputs.tokenizer)
      const generator = yield* scopedSessions(
        makeGenerator(checkpoint, { graphDir: ctx.workDir, tokenizer, stepsPerRun: 8, ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}) }),
      )
      const world = generateWorld(deriveRng(params.corpus.seed, "world"), params.corpus)
      const kinds: Record<string, KindResult> = {}
      for (const kind of pickKinds) {
        const phrasings = pickRequests[kind].heldOut
        const outs = yield* generator.generate(
          Array.from({ length: params.samples }, (_, i) => ({
            prompt: tokenizer.encode(renderChat([{ role: "user", content: phrasings[i % phrasings.length] }], true), { addSpecialTokens: false }),
            maxNewTokens: params.maxNewTokens,
            temperature: params.temperature,
            seed: hash32(`${kind}-${i}`, params.seed),
          })),
          { batchSize: params.batchSize },
        )
        yield* checkFiniteRows(ctx.node, "generated tokens' log-probs [answer, token]", outs.map((o) => o.logProbs))
        const options = pickOptions(kind, world)
        const counts = Object.fromEntries(options.map((o) => [o, 0]))
        let invalid = 0
        for (const o of outs) {
          const value = parsePick(o.text ?? "")
          if (value !== null && value in counts) counts[value]++
          else invalid++
        }
        const valid = params.samples - invalid
        const top = options.reduce((a, b) => (counts[b] > counts[a] ? b : a))
        kinds[kind] = {
          counts,
          valid,
          invalid,
          top,
          topShare: counts[top] / params.samples,
          entropyBits: valid === 0 ? 0 : entropyBits(Object.values(counts)),
          trainedEntropyBits: -pickDistribution(options).reduce((h, p) => h + p * Math.log2(p), 0),
          uniformEntropyBits: Math.log2(options.length),
          examples: outs.slice(0, 4).map((o) => o.text ?? ""),
        }
        ctx.log(`${kind}: top ${top} ${(100 * kinds[kind].topShare).toFixed(1)}%, entropy ${kinds[kind].entropyBits.toFixed(2)} bits (uniform ${kinds[kind].uniformEntropyBits.toFixed(2)}), ${invalid} invalid`)
        ctx.metric(`picks.${kind}.top_share`, kinds[kind].topShare)
        ctx.metric(`picks.${kind}.entropy_bits`, kinds[kind].entropyBits)
      }
      return { temperature: params.temperature, samples: params.samples, kinds }
    }).pipe(Effect.scoped),
})
