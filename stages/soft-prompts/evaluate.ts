// Stage `soft-prompt-evaluate`: a trained soft prompt (or k = 0, the model itself) on held-out
// data: the objective's mean loss per scored token on the test split, the same loss training
// minimises (soft-prompt.ts). With pathfinding tasks in the examples it also rolls out greedy paths
// on the test grids for each condition value asked for and scores them (pathfinding.ts scorePath):
// validity (reaches the goal without running into a wall or the edge, moves only) and the mean
// length ratio optimal / length of the valid ones. At k = 0 the condition reaches nothing, so every
// condition value gives the model's own paths.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, Directory, StageError, stage } from "../../src/engine/index.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { padIdOf } from "../baking/distill.ts"
import { openModel } from "../baking/model.ts"
import { checkTokenizer, Examples, readExamples } from "./examples.ts"
import { parseMoves, scorePath } from "./pathfinding.ts"
import { kOf, lossEvaluator, promptVariant, readSoftPrompt, SoftPrompt } from "./soft-prompt.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const RolloutScore = Schema.Struct({
  condition: Schema.Number,
  tasks: Schema.Int,
  /** share of rollouts that are valid paths */
  validity: Schema.Number,
  /** share of rollouts with at least one move and every move on a free cell, the goal reached or not */
  legal: Schema.Number,
  /** mean optimal / length over the valid rollouts (0 when none is valid) */
  lengthRatio: Schema.Number,
  /** mean moves per rollout */
  meanMoves: Schema.Number,
  /** mean optimal (BFS) length of the tasks: meanMoves / meanOptimal is the length asked for's effect even where no rollout is valid */
  meanOptimal: Schema.Number,
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
  version: 3,
  params: Schema.Struct({
    /** the model's name in reports ("tiny-chat", "tiny-base-s", ...) */
    model: Schema.String,
    /** condition values to roll out pathfinding tasks under (ignored without tasks) */
    conditions: Schema.Array(Schema.Finite),
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
        lossEvaluator(variant, { graphDir, device: ctx.device, batchSize: params.batchSize, threads: params.threads, padId: padIdOf(ckpt), conditionSize: data.conditionSize }),
        (e) => e.release,
      )
      const test = yield* evaluator.evaluate(data.splits.test)
      ctx.log(`${params.model}, ${data.objective}, k = ${kOf(prompt)}: test loss ${test.mean.toFixed(4)} over ${test.tokens} tokens`)

      const rollouts = []
      if (data.tasks.length > 0) {
        const generator = yield* scopedSessions(makeGenerator(variant, { graphDir: path.join(ctx.workDir, "generate"), device: ctx.device, tokenizer, ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}) }))
        for (const condition of params.conditions) {
          const outs = yield* generator.generate(
            data.tasks.map((t) => ({ prompt: t.prompt, maxNewTokens: params.maxNewTokens, temperature: 0, ...(prompt.kind === "conditional" ? { condition: [condition] } : {}) })),
            { batchSize: params.batchSize },
          )
          const scores = outs.map((o, i) => {
            const { path: moves, rest } = parseMoves(o.text ?? "")
            const s = scorePath(data.tasks[i], data.tasks[i].optimal, moves)
            return { ...s, valid: s.valid && rest === "" && o.finishReason === "stop_token" }
          })
          const valid = scores.filter((s) => s.valid)
          const score: RolloutScore = {
            condition,
            tasks: scores.length,
            validity: valid.length / scores.length,
            // an empty rollout stays on free cells trivially: only paths with moves count
            legal: scores.filter((s) => s.legal && s.length > 0).length / scores.length,
            lengthRatio: valid.length === 0 ? 0 : valid.reduce((a, s) => a + s.ratio, 0) / valid.length,
            meanMoves: scores.reduce((a, s) => a + s.length, 0) / scores.length,
            meanOptimal: data.tasks.reduce((a, t) => a + t.optimal, 0) / data.tasks.length,
          }
          ctx.log(
            `condition ${condition}: ${(100 * score.validity).toFixed(1)}% valid paths, ${(100 * score.legal).toFixed(1)}% legal, mean length ratio ${score.lengthRatio.toFixed(3)}, ${score.meanMoves.toFixed(1)} moves (optimal ${score.meanOptimal.toFixed(1)}); ` +
              `first rollout ${JSON.stringify(outs[0]?.text)} (${outs[0]?.finishReason})`,
          )
          rollouts.push(score)
        }
      }
      return { model: params.model, objective: data.objective, k: kOf(prompt), testLoss: test.mean, testTokens: test.tokens, rollouts }
    }).pipe(Effect.scoped),
})
