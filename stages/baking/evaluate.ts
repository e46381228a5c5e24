// Stages `evaluate` and `evaluate-lora`: one named model variant (the model plus its interventions,
// see Variant in artifacts.ts) measured three ways. `evaluate` takes the variants without an adapter
// (base, prompted), `evaluate-lora` those with one (baked, prompted + baked); the variant's tags say
// which interventions apply, the adapter input carries the LoRA matrices. x0 is the system prompt
// the validation trajectories were sampled under (their metadata), so the evaluations of one
// experiment cannot disagree about it.
//
//   kl         mean per-token KL(reference || variant) over the validation trajectories' response
//              tokens, full vocabulary (distill.ts meanPromptedKl); the reference is a variant
//              without an adapter (usually the prompted model), each side reads the chat prompt with
//              or without x0 as its interventions say; exactly 0 when both sides are the same model
//              on the same prompts;
//   behaviour  share of fresh samples (n per held-out question, temperature as set) that pass the
//              checker (a behaviour name or a regex);
//   accuracy   share of greedy answers to the factual questions that mention one of the question's
//              reference answers as a whole word (any case) — forgetting shows up as a drop here.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Directory, type StageContext, StageError, stage, type TensorsValue, type ValueOf } from "../../src/engine/index.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { checkFinite, checkFiniteRows } from "../../src/runtime/finite.ts"
import { type Device, scopedSessions } from "../../src/runtime/session.ts"
import { hash32 } from "../../src/core/random.ts"
import type { LoraAdapter } from "../../src/models/peft.ts"
import { CheckerSpec, makeChecker } from "../../src/text/behaviours.ts"
import { mentions } from "../../src/text/synthetic/scoring.ts"
import {
  BakedAdapter,
  type BakeEvaluation,
  BakeEvaluation as BakeEvaluationArtifact,
  type Question,
  Questions,
  rateOf,
  readAdapterArtifact,
  readTrajectories,
  responseTokenCount,
  Trajectories,
  type TrajectorySet,
  Variant,
  hasIntervention,
} from "./artifacts.ts"
import { meanPromptedKl } from "./distill.ts"
import { type OpenModel, openModel, questionPromptIds } from "./model.ts"
import { samplingFields } from "./sample-trajectories.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

const EvaluateFields = {
  variant: Variant,
  /** the variant KL is measured against; it may not carry an adapter */
  reference: Variant,
  checker: CheckerSpec,
  /** fresh samples per held-out question for the behaviour rate */
  samplesPerQuestion: PositiveInt,
  ...samplingFields,
  /** length of the greedy factual answers */
  answerMaxNewTokens: PositiveInt,
  /** samples kept in the artifact for the side-by-side listing */
  keepSamples: NonNegativeInt,
}
const unkeyed = ["batchSize", "threads", "stepsPerRun"] as const

const inputs = { model: Directory, validation: Trajectories, heldout: Questions, facts: Questions }

type EvaluateParams = typeof EvaluateParams.Type
const EvaluateParams = Schema.Struct(EvaluateFields)

/** The chat prompts a variant reads: with x0 as the system turn (the trajectories' teacher prompts) or without. */
const promptsOf = (v: Variant, set: TrajectorySet) => (hasIntervention(v, "SystemPrompt") ? set.teacherPrompts : set.studentPrompts)

/** KL(reference || variant) along the validation trajectories; 0 without a run when both sides are one model on one prompt. */
const klToReference = (params: EvaluateParams, model: OpenModel, validation: TrajectorySet, adapter: LoraAdapter | undefined, ctx: StageContext, device: Device) => {
  const { variant, reference } = params
  if (!adapter && hasIntervention(variant, "SystemPrompt") === hasIntervention(reference, "SystemPrompt"))
    return Effect.succeed({ mean: 0, tokens: responseTokenCount(validation) })
  const pairs = { ...validation, studentPrompts: promptsOf(variant, validation), teacherPrompts: promptsOf(reference, validation) }
  return meanPromptedKl(model, pairs, adapter, {
    graphDir: path.join(ctx.workDir, "kl"),
    device,
    batchSize: params.batchSize,
    ...(params.threads > 0 ? { threads: params.threads } : {}),
  })
}

const evaluateVariant = (
  params: EvaluateParams,
  model: OpenModel,
  validation: TrajectorySet,
  heldout: ReadonlyArray<Question>,
  facts: ReadonlyArray<Question>,
  adapter: LoraAdapter | undefined,
  ctx: StageContext,
) =>
  Effect.gen(function* () {
    const started = performance.now()
    const check = yield* makeChecker(params.checker)
    const device = ctx.device
    const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}
    const { variant, reference } = params
    const systemPrompt = hasIntervention(variant, "SystemPrompt") ? validation.systemPrompt : undefined
    const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`
    ctx.progress.total(3, "parts")

    const kl = yield* klToReference(params, model, validation, adapter, ctx, device)
    const klName = `KL(${reference.name} || ${variant.name})`
    yield* checkFinite(ctx.node, klName, [kl.mean])
    ctx.log(`${klName} = ${kl.mean.toFixed(4)} nats/token over ${kl.tokens} tokens (${elapsed()})`)
    ctx.progress.advance()

    const generator = yield* scopedSessions(
      makeGenerator(model.checkpoint, {
        graphDir: path.join(ctx.workDir, "generate"),
        device,
        tokenizer: model.tokenizer,
        stepsPerRun: params.stepsPerRun,
        ...threads,
        ...(adapter ? { adapter } : {}),
      }),
    )
    const generate = (what: string, questions: ReadonlyArray<Question>, perQuestion: number, request: (q: Question, j: number) => Omit<GenerationRequest, "prompt">) =>
      Effect.gen(function* () {
        const prompts = yield* Effect.forEach(questions, (q) => questionPromptIds(model.tokenizer, q.text, systemPrompt))
        const requests = questions.flatMap((q, qi) => Array.from({ length: perQuestion }, (_, j) => ({ ...request(q, j), prompt: prompts[qi] })))
        const outs = yield* generator.generate(requests, { batchSize: params.batchSize })
        yield* checkFiniteRows(ctx.node, `${what} log-probs [sample, token]`, outs.map((o) => o.logProbs))
        return outs.map((o, i) => ({ question: questions[Math.floor(i / perQuestion)], text: o.text ?? "" }))
      })

    const sampled = yield* generate("behaviour samples'", heldout, params.samplesPerQuestion, (q, j) => ({
      maxNewTokens: params.maxNewTokens,
      temperature: params.temperature,
      topP: params.topP,
      topK: params.topK,
      seed: hash32(`${q.id}/${j}`, params.seed),
    }))
    const behaviourOk = sampled.map((s) => check(s.text))
    const behaviour = rateOf(behaviourOk)
    ctx.log(`behaviour: ${behaviour.hits}/${behaviour.n} = ${(100 * behaviour.rate).toFixed(1)}% (${elapsed()})`)
    ctx.progress.advance()

    const answered = yield* generate("greedy answers'", facts, 1, () => ({ maxNewTokens: params.answerMaxNewTokens, temperature: 0 }))
    const answerOk = answered.map((a) => a.question.answers.some((ref) => mentions(a.text, ref)))
    const accuracy = rateOf(answerOk)
    ctx.log(`accuracy: ${accuracy.hits}/${accuracy.n} = ${(100 * accuracy.rate).toFixed(1)}% (${elapsed()})`)
    ctx.progress.advance()

    ctx.metric("kl", kl.mean)
    ctx.metric("behaviour_rate", behaviour.rate)
    ctx.metric("accuracy", accuracy.rate)
    // a run-specific fact: a metric, never part of the content-hashed evaluation
    ctx.metric("eval_seconds", (performance.now() - started) / 1000)
    const keep = (xs: ReadonlyArray<{ question: Question; text: string }>, oks: ReadonlyArray<boolean>) =>
      xs.slice(0, params.keepSamples).map((x, i) => ({ questionId: x.question.id, question: x.question.text, text: x.text, ok: oks[i] }))
    return {
      variant,
      reference,
      systemPrompt: validation.systemPrompt,
      kl,
      behaviour,
      accuracy,
      // one sample per question first, so a short listing covers many questions
      behaviourSamples: keep(
        sampled.filter((_, i) => i % params.samplesPerQuestion === 0),
        behaviourOk.filter((_, i) => i % params.samplesPerQuestion === 0),
      ),
      answerSamples: keep(answered, answerOk),
    } satisfies BakeEvaluation
  }).pipe(Effect.scoped)

/**
 * The variant's tags against what the stage was given: an adapter input needs a Lora tag and a Lora
 * tag an adapter; the reference runs without one (the KL graph hooks the adapter into the student only).
 */
const checkVariant = (node: string, params: EvaluateParams, withAdapter: boolean): Effect.Effect<void, StageError> => {
  const { variant, reference } = params
  const problem =
    hasIntervention(reference, "Lora") ? `params.reference: variant "${reference.name}" has a Lora intervention; KL is measured against a model without an adapter`
    : hasIntervention(variant, "Lora") && !withAdapter ? `params.variant: variant "${variant.name}" has a Lora intervention: evaluate it with evaluate-lora, which takes the adapter`
    : !hasIntervention(variant, "Lora") && withAdapter ? `params.variant: variant "${variant.name}" has no Lora intervention, but an adapter was given: add { _tag: "Lora" } to its interventions or use evaluate`
    : undefined
  return problem === undefined ? Effect.void : Effect.fail(new StageError({ message: `${node}: ${problem}` }))
}

type Inputs = { readonly [K in keyof typeof inputs]: ValueOf<(typeof inputs)[K]> }

/** Both stages: the variant checked against the adapter given (or not), then measured. */
const run = (params: EvaluateParams, inputs: Inputs, adapterValue: TensorsValue | undefined, ctx: StageContext) =>
  Effect.gen(function* () {
    yield* checkVariant(ctx.node, params, adapterValue !== undefined)
    const model = yield* openModel(inputs.model.path)
    const validation = yield* readTrajectories(inputs.validation)
    const adapter = adapterValue === undefined ? undefined : yield* readAdapterArtifact(adapterValue)
    return yield* evaluateVariant(params, model, validation, inputs.heldout.items, inputs.facts.items, adapter, ctx)
  })

export const evaluate = stage({
  name: "evaluate",
  // 2: no seconds in the output (a metric), so identical results hash the same
  // 3: a named variant with interventions and a chosen KL reference in params and output
  version: 3,
  params: EvaluateParams,
  unkeyed: [...unkeyed],
  inputs,
  output: BakeEvaluationArtifact,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) => run(params, inputs, undefined, ctx),
})

export const evaluateLora = stage({
  name: "evaluate-lora",
  version: 1, // was evaluate-baked (version 2), the baked variant only
  params: EvaluateParams,
  unkeyed: [...unkeyed],
  inputs: { ...inputs, adapter: BakedAdapter },
  output: BakeEvaluationArtifact,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs: { adapter, ...rest }, ctx }) => run(params, rest, adapter, ctx),
})
