// Stage `generate-blend`: samples from the blend at the searched parameters (one ensemble graph,
// in-graph combination and sampling, one KV cache per member) beside samples from the big model
// alone, from the same prompts and seeds. Prompts are plain text (after BOS), or chat questions
// rendered with the big model's chat template (`chat: true`, for proxy tuning).
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { hash32 } from "../../src/core/random.ts"
import { Artifact, stage } from "../../src/engine/index.ts"
import { blendRule } from "../../src/models/blend.ts"
import { scopedEnsemble } from "../../src/models/ensemble.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { openModel, questionPromptIds } from "../baking/model.ts"
import { BlendSearch } from "./artifacts.ts"
import { blendMemberInputs, blendMembers, openMembers, sharedContext } from "./members.ts"

export const BlendSamples = Artifact.json(
  "BlendSamples",
  Schema.Array(Schema.Struct({ prompt: Schema.String, seed: Schema.Int, blend: Schema.String, big: Schema.String })),
)
export type BlendSamples = typeof BlendSamples.schema.Type

export const GenerateBlendParams = Schema.Struct({
  prompts: Schema.Array(Schema.String).check(Schema.isMinLength(1)),
  chat: Schema.Boolean,
  samplesPerPrompt: Schema.Int.check(Schema.isGreaterThan(0)),
  maxNewTokens: Schema.Int.check(Schema.isGreaterThan(0)),
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  topP: Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)),
  seed: Schema.Int,
  threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
})

export const generateBlend = stage({
  name: "generate-blend",
  version: 1,
  params: GenerateBlendParams,
  unkeyed: ["threads"],
  inputs: { ...blendMemberInputs, search: BlendSearch },
  output: BlendSamples,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { members } = yield* openMembers(blendMembers(inputs), ctx.workDir)
      const { tokenizer } = yield* openModel(inputs.big.path)
      const bos = members[0].checkpoint.config.bosTokenId
      const limit = sharedContext(members)
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}
      const prompts = yield* Effect.forEach(params.prompts, (text) =>
        params.chat ? questionPromptIds(tokenizer, text) : Effect.succeed([...(bos === undefined ? [] : [bos]), ...tokenizer.encode(text, { addSpecialTokens: false })]),
      )
      const requests = params.prompts.flatMap((text, p) => {
        const prompt = prompts[p]
        return Array.from({ length: params.samplesPerPrompt }, (_, k): GenerationRequest & { text: string } => ({
          text,
          prompt,
          maxNewTokens: Math.max(1, Math.min(params.maxNewTokens, limit - prompt.length)),
          temperature: params.temperature,
          topP: params.topP,
          seed: hash32(text, params.seed + k),
        }))
      })
      const timed = <A, E, R>(what: string, run: Effect.Effect<ReadonlyArray<A & { tokens: number[]; logProbs: number[] }>, E, R>) =>
        Effect.gen(function* () {
          const started = performance.now()
          const outs = yield* run
          const tokens = outs.reduce((n, o) => n + o.tokens.length, 0)
          ctx.metric(`${what}_tokens_per_s`, tokens / ((performance.now() - started) / 1000))
          yield* checkFiniteRows(ctx.node, `${what} log-probs [sample, token]`, outs.map((o) => o.logProbs))
          return outs
        })
      const blended = yield* Effect.scoped(
        Effect.flatMap(scopedEnsemble({ members, rule: blendRule(inputs.search.kind, inputs.search.best.params), graphDir: path.join(ctx.workDir, "blend"), device: ctx.device, tokenizer, stepsPerRun: 8, ...threads }), (e) =>
          timed("blend", e.generate(requests)),
        ),
      )
      const alone = yield* Effect.scoped(
        Effect.flatMap(scopedSessions(makeGenerator(members[0].checkpoint, { graphDir: path.join(ctx.workDir, "big"), device: ctx.device, tokenizer, stepsPerRun: 8, ...threads })), (g) =>
          timed("big", g.generate(requests)),
        ),
      )
      return requests.map((r, i) => ({ prompt: r.text, seed: r.seed!, blend: blended[i].text ?? "", big: alone[i].text ?? "" }))
    }),
})
