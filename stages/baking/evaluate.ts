// Stages `evaluate` and `evaluate-baked`: one model variant measured three ways.
//   base      the model without a system prompt          (evaluate, variant "base")
//   prompted  the model with the system prompt x0        (evaluate, variant "prompted")
//   baked     the model + the trained LoRA, no prompt    (evaluate-baked)
// x0 is the one the validation trajectories were sampled under (their metadata), so the three
// evaluations of one experiment cannot disagree about it.
//
//   kl         mean per-token KL(prompted || variant) over the validation trajectories' response
//              tokens, full vocabulary (distill.ts meanPromptedKl; 0 for the prompted model itself);
//   behaviour  share of fresh samples (n per held-out question, temperature as set) that pass the
//              checker (a behaviour name or a regex);
//   accuracy   share of greedy answers to the factual questions that mention one of the question's
//              reference answers as a whole word (any case) — forgetting shows up as a drop here.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Directory, type StageContext, stage } from "../../src/engine/index.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { checkFinite, checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { hash32 } from "../../src/models/init.ts"
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
  type Variant,
} from "./artifacts.ts"
import { meanPromptedKl } from "./distill.ts"
import { type OpenModel, openModel, questionPromptIds, runtimeDevice } from "./model.ts"
import { samplingFields } from "./sample-trajectories.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

const EvaluateFields = {
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

const evaluateVariant = (
  variant: Variant,
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
    const device = runtimeDevice(ctx.device)
    const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}
    const systemPrompt = variant === "prompted" ? validation.systemPrompt : undefined
    const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`
    ctx.progress.total(3, "parts")

    const kl =
      variant === "prompted"
        ? { mean: 0, tokens: responseTokenCount(validation) }
        : yield* meanPromptedKl(model, validation, adapter, { graphDir: path.join(ctx.workDir, "kl"), device, batchSize: params.batchSize, ...(params.threads > 0 ? { threads: params.threads } : {}) })
    yield* checkFinite(ctx.node, `KL(prompted || ${variant})`, [kl.mean])
    ctx.log(`KL(prompted || ${variant}) = ${kl.mean.toFixed(4)} nats/token over ${kl.tokens} tokens (${elapsed()})`)
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

const load = (model: string, validation: Parameters<typeof readTrajectories>[0]) =>
  Effect.all({ model: openModel(model), validation: readTrajectories(validation) })

export const evaluate = stage({
  name: "evaluate",
  version: 2, // 2: no seconds in the output (a metric), so identical results hash the same
  params: Schema.Struct({ variant: Schema.Literals(["base", "prompted"]), ...EvaluateFields }),
  unkeyed: [...unkeyed],
  inputs,
  output: BakeEvaluationArtifact,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.flatMap(load(inputs.model.path, inputs.validation), ({ model, validation }) =>
      evaluateVariant(params.variant, params, model, validation, inputs.heldout.items, inputs.facts.items, undefined, ctx),
    ),
})

export const evaluateBaked = stage({
  name: "evaluate-baked",
  version: 2, // 2: no seconds in the output (a metric), so identical results hash the same
  params: EvaluateParams,
  unkeyed: [...unkeyed],
  inputs: { ...inputs, adapter: BakedAdapter },
  output: BakeEvaluationArtifact,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { model, validation } = yield* load(inputs.model.path, inputs.validation)
      const adapter = yield* readAdapterArtifact(inputs.adapter)
      return yield* evaluateVariant("baked", params, model, validation, inputs.heldout.items, inputs.facts.items, adapter, ctx)
    }),
})
