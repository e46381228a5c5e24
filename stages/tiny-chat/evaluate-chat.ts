// Stage: the issue-5 evaluation of a chat model on the held-out chat prompts of the corpus.
//   accuracy          greedy answers without a system prompt that state every expected value
//                     (isCorrectAnswer), by task and overall;
//   withPrompt        per behaviour, the share of answers sampled (temperature `temperature`) with
//                     that behaviour's system prompt that pass its checker;
//   withoutPrompt     per behaviour, the share of answers sampled without a system prompt that
//                     pass its checker (should be near 0).
// Answers come from src/models/generate.ts (KV cache, sampling in-graph, stop at the model's eos)
// on the weights materialised as a checkpoint directory in the work dir. Each sampled answer has
// its own seed, hash32(record id, seed + k) for the k-th sampling pass, so it does not depend on
// the batch size or the limit. An answer is cut where prompt + answer reach max_position_embeddings.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, stage } from "../../src/engine/index.ts"
import { type BehaviourName, behaviourNames, checkBehaviour, isBehaviourName } from "../../src/text/behaviours.ts"
import type { ChatEvalRecord } from "../../src/text/synthetic/corpus.ts"
import { isCorrectAnswer } from "../../src/text/synthetic/scoring.ts"
import { renderChat } from "../../src/text/tokenizer-builder.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { hash32 } from "../../src/core/random.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { ChatCorpusFile, LlamaWeights, materializeModel, readCorpus, TokenizerJson } from "./artifacts.ts"

const Rate = Schema.Struct({ rate: Schema.Number, hits: Schema.Int, n: Schema.Int })
type Rate = typeof Rate.Type
const Example = Schema.Struct({ mode: Schema.String, question: Schema.String, answer: Schema.String, ok: Schema.Boolean })

export const ChatEvaluation = Artifact.json(
  "ChatEvaluation",
  Schema.Struct({
    accuracy: Rate,
    accuracyByTask: Schema.Record(Schema.String, Rate),
    withPrompt: Schema.Record(Schema.String, Rate),
    /** with the held-out phrasing of the system prompt only */
    withHeldOutPrompt: Schema.Record(Schema.String, Rate),
    withoutPrompt: Schema.Record(Schema.String, Rate),
    temperature: Schema.Number,
    examples: Schema.Array(Example),
  }),
)
export type ChatEvaluation = typeof ChatEvaluation.schema.Type

const rateOf = (oks: ReadonlyArray<boolean>): Rate => {
  const hits = oks.filter(Boolean).length
  return { rate: oks.length === 0 ? 0 : hits / oks.length, hits, n: oks.length }
}

export const evaluateChat = stage({
  name: "evaluate-chat",
  version: 4, // 4: the evaluation time is a metric, not part of the content-hashed output
  params: Schema.Struct({
    temperature: Schema.Finite.check(Schema.isGreaterThan(0)),
    maxNewTokens: Schema.Int.check(Schema.isGreaterThan(0)),
    /** evaluate only the first n held-out questions (each without and with a system prompt); 0 for all */
    limit: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
    seed: Schema.Int,
    /** sampled answers per held-out prompt for the behaviour rates (more: a tighter estimate) */
    samplesPerPrompt: Schema.Int.check(Schema.isGreaterThan(0)),
    batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson, corpus: ChatCorpusFile },
  output: ChatEvaluation,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const started = performance.now()
      // a checkpoint directory over the artifact's weights (a symlink: graphs read them in place)
      const { checkpoint, tokenizer } = yield* materializeModel(path.join(ctx.workDir, "model"), inputs.model, inputs.tokenizer)
      const corpus = yield* readCorpus(inputs.corpus.path)
      const generator = yield* scopedSessions(
        makeGenerator(checkpoint, { graphDir: ctx.workDir, tokenizer, stepsPerRun: 8, ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}) }),
      )
      const maxPositions = checkpoint.config.maxPositions
      const records = params.limit > 0 ? corpus.heldOutChat.slice(0, 2 * params.limit) : corpus.heldOutChat
      const plain = records.filter((r) => r.mode === "none")
      const prompted = records.filter((r): r is ChatEvalRecord & { mode: BehaviourName } => isBehaviourName(r.mode))
      const promptIds = (r: ChatEvalRecord) => tokenizer.encode(renderChat(r.messages, true), { addSpecialTokens: false })
      const run = (rs: ReadonlyArray<ChatEvalRecord>, temperature: number, seed: number) =>
        Effect.gen(function* () {
          const outs = yield* generator.generate(
            rs.map((r) => {
              const prompt = promptIds(r)
              return { prompt, maxNewTokens: Math.max(1, Math.min(params.maxNewTokens, maxPositions - prompt.length)), temperature, seed: hash32(r.id, seed) }
            }),
            { batchSize: params.batchSize },
          )
          yield* checkFiniteRows(ctx.node, "generated tokens' log-probs [answer, token]", outs.map((o) => o.logProbs))
          return outs.map((o) => o.text ?? "")
        })
      const logDone = (what: string) => ctx.log(`${what} (${((performance.now() - started) / 1000).toFixed(0)} s)`)

      const greedy = yield* run(plain, 0, params.seed)
      logDone(`greedy answers to ${plain.length} questions`)
      const correct = plain.map((r, i) => isCorrectAnswer(greedy[i], r.answers))
      const tasks = [...new Set(plain.map((r) => r.task))]
      const accuracyByTask = Object.fromEntries(tasks.map((t) => [t, rateOf(correct.filter((_, i) => plain[i].task === t))]))

      // pass j samples every prompt once more with its own seeds; pass 0 gives the examples below
      const passes = Array.from({ length: params.samplesPerPrompt }, (_, j) => j)
      const sampledPlainPasses = yield* Effect.forEach(passes, (j) => run(plain, params.temperature, params.seed + 1 + 2 * j))
      const sampledPromptedPasses = yield* Effect.forEach(passes, (j) => run(prompted, params.temperature, params.seed + 2 + 2 * j))
      const [sampledPrompted] = sampledPromptedPasses
      logDone(`sampled ${params.samplesPerPrompt} x (${plain.length} + ${prompted.length}) answers`)
      const withPrompt: Record<string, Rate> = {}
      const withHeldOutPrompt: Record<string, Rate> = {}
      const withoutPrompt: Record<string, Rate> = {}
      for (const b of behaviourNames) {
        const idx = prompted.map((r, i) => (r.mode === b ? i : -1)).filter((i) => i >= 0)
        const checks = (rows: ReadonlyArray<number>) => sampledPromptedPasses.flatMap((pass) => rows.map((i) => checkBehaviour(b, pass[i])))
        withPrompt[b] = rateOf(checks(idx))
        withHeldOutPrompt[b] = rateOf(checks(idx.filter((i) => prompted[i].system_prompt_seen === false)))
        withoutPrompt[b] = rateOf(sampledPlainPasses.flat().map((t) => checkBehaviour(b, t)))
      }
      const question = (r: ChatEvalRecord) => r.messages.map((m) => m.content).join(" | ")
      const examples = [
        ...plain.slice(0, 6).map((r, i) => ({ mode: "none (greedy)", question: question(r), answer: greedy[i], ok: correct[i] })),
        ...behaviourNames.flatMap((b) => {
          const i = prompted.findIndex((r) => r.mode === b)
          return i < 0 ? [] : [{ mode: `${b} (T=${params.temperature})`, question: question(prompted[i]), answer: sampledPrompted[i], ok: checkBehaviour(b, sampledPrompted[i]) }]
        }),
      ]
      const accuracy = rateOf(correct)
      ctx.metric("accuracy", accuracy.rate)
      for (const b of behaviourNames) {
        ctx.metric(`with_prompt.${b}`, withPrompt[b].rate)
        ctx.metric(`without_prompt.${b}`, withoutPrompt[b].rate)
      }
      ctx.metric("eval_seconds", (performance.now() - started) / 1000)
      ctx.log(`accuracy ${accuracy.rate.toFixed(3)}; with prompt ${behaviourNames.map((b) => `${b} ${withPrompt[b].rate.toFixed(2)}`).join(", ")}; without ${behaviourNames.map((b) => `${b} ${withoutPrompt[b].rate.toFixed(2)}`).join(", ")}`)
      return { accuracy, accuracyByTask, withPrompt, withHeldOutPrompt, withoutPrompt, temperature: params.temperature, examples }
    }).pipe(Effect.scoped),
})
