// Stages `diffuse-sample` (the model as it is) and `diffuse-sample-lora` (with a trained adapter):
// n generations per prompt of a set, with the shared KV-cache generator (src/models/generate.ts,
// in-graph sampling), batched. Sample j of a prompt continues its response prefix j mod (number
// of prefixes) and uses the seed hash32("<prompt id>/<j>", seed): its tokens do not depend on the
// batch size or on the other prompts, and the untuned and tuned models draw with the same uniforms.
// Generation stops at the chat template's end-of-turn token (contexts.ts) or the model's eos
// tokens, or at maxNewTokens; an answer counts as a target only when it ended with the end-of-turn
// token (the sequence the training scored) and carried the tail of the prefix (contexts.ts). Defaults of the seed: temperature 1, top-p 1, n 1000.
//
// The output keeps each distinct answer with its count (lossless for every metric, and small).
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Artifact, Directory, type FileRef, type StageContext, StageError, stage, type TensorsValue } from "../../src/engine/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { asVariant } from "../../src/models/variant.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { BakedAdapter, readAdapterArtifact } from "../baking/artifacts.ts"
import { openModel } from "../baking/model.ts"
import { generateAll, samplingFields } from "../baking/sample-trajectories.ts"
import { type DiffuseContext, diffuseContexts, endOfTurnId } from "./contexts.ts"
import { DiffusePrompts } from "./prompts.ts"

export const DiffuseSampleParams = Schema.Struct({
  /** how the report names this model, e.g. "untuned", "tuned" */
  label: Schema.String.check(Schema.isMinLength(1)),
  /** generations per prompt */
  n: Schema.Int.check(Schema.isGreaterThan(0)),
  ...samplingFields,
})
export type DiffuseSampleParams = typeof DiffuseSampleParams.Type

export const Answer = Schema.Struct({
  /** the generated text without the stop token (and without the response prefix's tail, contexts.ts) */
  text: Schema.String,
  /** a whole response: it carried the prefix's tail and ended with the end-of-turn token (not
   * another eos, not cut at maxNewTokens), as the target sequences the training scored */
  complete: Schema.Boolean,
  count: Schema.Int,
})
export type Answer = typeof Answer.Type

export const DiffuseSamples = Artifact.json(
  "DiffuseSamples",
  Schema.Struct({
    label: Schema.String,
    n: Schema.Int,
    /** per prompt of the set, in order: its distinct answers, most frequent first */
    prompts: Schema.Array(Schema.Struct({ id: Schema.String, answers: Schema.Array(Answer) })),
  }),
)
export type DiffuseSamples = typeof DiffuseSamples.schema.Type

/** Distinct answers with their counts, most frequent first (ties by text), as the artifact keeps them. */
export const tally = (answers: ReadonlyArray<{ readonly text: string; readonly complete: boolean }>): Answer[] => {
  const counts = new Map<string, Answer>()
  for (const a of answers) {
    const key = `${a.complete ? 1 : 0}${a.text}`
    const prev = counts.get(key)
    counts.set(key, { text: a.text, complete: a.complete, count: (prev?.count ?? 0) + 1 })
  }
  return [...counts.values()].sort((a, b) => b.count - a.count || (a.text < b.text ? -1 : a.text > b.text ? 1 : Number(a.complete) - Number(b.complete)))
}

const unkeyed = ["batchSize", "threads", "stepsPerRun"] as const

const run = (params: DiffuseSampleParams, model: FileRef, set: DiffusePrompts, adapterValue: TensorsValue | undefined, ctx: StageContext) =>
  Effect.gen(function* () {
    const { checkpoint, tokenizer } = yield* openModel(model.path)
    const adapter = adapterValue === undefined ? undefined : yield* readAdapterArtifact(adapterValue)
    const variant = yield* Effect.mapError(asVariant(checkpoint, adapter), (e) => new StageError({ message: e.message }))
    const contexts = yield* diffuseContexts(tokenizer, set.prompts)
    const longest = contexts.flatMap((c) => c.targets.map((t) => ({ c, t }))).reduce((a, b) => (b.t.ids.length > a.t.ids.length ? b : a))
    if (longest.t.ids.length > params.maxNewTokens)
      return yield* Effect.fail(
        new StageError({
          message: `${set.prompts[longest.c.prompt].file}: target ${JSON.stringify(longest.t.text)} takes ${longest.t.ids.length} tokens with the end-of-turn token, more than maxNewTokens ${params.maxNewTokens}: it could never be sampled; raise maxNewTokens`,
        }),
      )
    const eot = yield* endOfTurnId(tokenizer)
    const stops = [...new Set([eot, ...checkpoint.config.eosTokenIds])]
    const generator = yield* scopedSessions(
      makeGenerator(variant, {
        graphDir: path.join(ctx.workDir, "graph"),
        device: ctx.device,
        tokenizer,
        stepsPerRun: params.stepsPerRun,
        ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}),
      }),
    )
    const contextsOf = set.prompts.map((_, p) => contexts.filter((c) => c.prompt === p))
    // request r samples context contextOf[r] of prompt owner[r]
    const owner: number[] = []
    const contextOf: DiffuseContext[] = []
    const requests: GenerationRequest[] = set.prompts.flatMap((p, pi) =>
      Array.from({ length: params.n }, (_, j) => {
        owner.push(pi)
        const cs = contextsOf[pi]
        contextOf.push(cs[j % cs.length])
        return {
          prompt: cs[j % cs.length].ids,
          maxNewTokens: params.maxNewTokens,
          temperature: params.temperature,
          topK: params.topK,
          topP: params.topP,
          seed: hash32(`${p.id}/${j}`, params.seed),
          stopTokenIds: stops,
        }
      }),
    )
    ctx.log(`${params.label}: ${set.prompts.length} prompts x ${params.n} = ${requests.length} generations (T ${params.temperature}, top-p ${params.topP}, <= ${params.maxNewTokens} tokens) on ${ctx.device.kind}`)
    const { generations } = yield* generateAll(generator, requests, params.batchSize, ctx, "generation")
    const answers: Array<Array<{ text: string; complete: boolean }>> = set.prompts.map(() => [])
    generations.forEach((o, r) => {
      const { tail } = contextOf[r]
      const text = o.text ?? ""
      const carried = text.startsWith(tail)
      answers[owner[r]].push({ text: carried ? text.slice(tail.length) : text, complete: carried && o.tokens[o.tokens.length - 1] === eot })
    })
    return { label: params.label, n: params.n, prompts: set.prompts.map((p, pi) => ({ id: p.id, answers: tally(answers[pi]) })) } satisfies DiffuseSamples
  }).pipe(Effect.scoped)

export const diffuseSample = stage({
  name: "diffuse-sample",
  version: 1,
  params: DiffuseSampleParams,
  unkeyed: [...unkeyed],
  inputs: { model: Directory, prompts: DiffusePrompts },
  output: DiffuseSamples,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) => run(params, inputs.model, inputs.prompts, undefined, ctx),
})

export const diffuseSampleLora = stage({
  name: "diffuse-sample-lora",
  version: 1,
  params: DiffuseSampleParams,
  unkeyed: [...unkeyed],
  inputs: { model: Directory, prompts: DiffusePrompts, adapter: BakedAdapter },
  output: DiffuseSamples,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) => run(params, inputs.model, inputs.prompts, inputs.adapter, ctx),
})
