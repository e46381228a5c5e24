// Stage `soft-prompt-evaluate`: a trained soft prompt (or k = 0, the model itself) on held-out
// data: the objective's mean loss per scored token on the test split, the same loss training
// minimises (soft-prompt.ts). With pathfinding tasks in the examples it also rolls out paths on the
// test grids for each condition value asked for, greedy and sampled (rollouts.ts), and scores them:
// validity (reaches the goal without running into a wall or the edge, moves only) and the mean
// length ratio optimal / length of the valid ones. At k = 0 the condition reaches nothing, so every
// condition value gives the model's own paths.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, Directory, StageError, stage } from "../../src/engine/index.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { openModel } from "../baking/model.ts"
import { checkTokenizer, Examples, readExamples } from "./examples.ts"
import { Decoding, describeRollouts, rollOut, RolloutStats } from "./rollouts.ts"
import { kOf, lossEvaluator, promptVariant, readSoftPrompt, SoftPrompt } from "./soft-prompt.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const RolloutScore = Schema.Struct({
  /** the condition value asked for */
  condition: Schema.Number,
  ...RolloutStats.fields,
})
export type RolloutScore = typeof RolloutScore.Type

export const SoftPromptEvaluation = Artifact.json(
  "SoftPromptEvaluation",
  Schema.Struct({
    /** the model's name in reports */
    model: Schema.String,
    objective: Schema.String,
    k: Schema.Int,
    /** mean loss per scored token on the test split, nats */
    testLoss: Schema.Number,
    testTokens: Schema.Int,
    rollouts: Schema.Array(RolloutScore),
  }),
)
export type SoftPromptEvaluation = typeof SoftPromptEvaluation.schema.Type

export const softPromptEvaluate = stage({
  name: "soft-prompt-evaluate",
  version: 4,
  params: Schema.Struct({
    /** the model's name in reports ("tiny-chat", "tiny-base-s", ...) */
    model: Schema.String,
    /** condition values to roll out pathfinding tasks under (ignored without tasks) */
    conditions: Schema.Array(Schema.Finite),
    /** how pathfinding tasks are rolled out: each decoding under each condition */
    decodings: Schema.Array(Decoding),
    /** longest rollout in tokens */
    maxNewTokens: PositiveInt,
    batchSize: PositiveInt,
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { model: Directory, data: Examples, prompt: SoftPrompt },
  output: SoftPromptEvaluation,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint: ckpt, tokenizer } = yield* openModel(inputs.model.path)
      const data = yield* readExamples(inputs.data)
      yield* checkTokenizer(data, ckpt, "soft-prompt-evaluate")
      const prompt = yield* readSoftPrompt(inputs.prompt)
      if (prompt.kind === "conditional" && prompt.conditionSize !== data.conditionSize)
        return yield* Effect.fail(new StageError({ message: `${inputs.prompt.path}: a soft prompt for ${prompt.conditionSize}-number conditions, but the examples have ${data.conditionSize}` }))
      const variant = promptVariant(ckpt, prompt, false)
      const graphDir = path.join(ctx.workDir, "graph")
      const evaluator = yield* Effect.acquireRelease(
        lossEvaluator(variant, { graphDir, device: ctx.device, batchSize: params.batchSize, threads: params.threads, padId: paddingId(ckpt.config), conditionSize: data.conditionSize }),
        (e) => e.release,
      )
      const test = yield* evaluator.evaluate(data.splits.test)
      ctx.log(`${params.model}, ${data.objective}, k = ${kOf(prompt)}: test loss ${test.mean.toFixed(4)} over ${test.tokens} tokens`)

      const rollouts = []
      if (data.tasks.length > 0) {
        const generator = yield* scopedSessions(makeGenerator(variant, { graphDir: path.join(ctx.workDir, "generate"), device: ctx.device, tokenizer, ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}) }))
        for (const condition of params.conditions)
          for (const decoding of params.decodings) {
            const r = yield* rollOut(generator, data.tasks, decoding, { maxNewTokens: params.maxNewTokens, batchSize: params.batchSize, seed: 0, ...(prompt.kind === "conditional" ? { condition: [condition] } : {}) })
            ctx.log(`condition ${condition}, ${describeRollouts(r.stats)}; first rollout ${JSON.stringify(r.first.text)} (${r.first.finishReason})`)
            rollouts.push({ condition, ...r.stats })
          }
      }
      return { model: params.model, objective: data.objective, k: kOf(prompt), testLoss: test.mean, testTokens: test.tokens, rollouts }
    }).pipe(Effect.scoped),
})
