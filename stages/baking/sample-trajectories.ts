// Stage `sample-trajectories`: the prompted model's answers to each question, n per question.
// The model sees the chat prompt with the system prompt x0; generation runs with a KV cache and
// in-graph sampling (src/models/generate.ts) and stops at the model's eos tokens (kept in the
// trajectory, so the student learns where to stop) or at maxNewTokens.
//
// Defaults users of the seed repo expect, stated: temperature 1 (the seed used 2.0 for diversity
// on an 8B model; at 1 the trajectories are the prompted model's own distribution), topP 1 and
// topK 0 (no truncation), minNewTokens 0.
//
// Seeds: trajectory j of question q uses seed hash32("<question id>/<j>", seed), so its tokens do
// not depend on the batch size, the question order or the other questions in the set.
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Directory, type StageContext, StageError, stage } from "../../src/engine/index.ts"
import { type Generation, type GenerationRequest, type Generator, makeGenerator } from "../../src/models/generate.ts"
import { hash32 } from "../../src/core/random.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { Questions, Trajectories, type Trajectory, trajectoriesOutput } from "./artifacts.ts"
import { openModel, questionPromptIds } from "./model.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/** The sampling knobs, shared with the evaluate stages' fresh samples. */
export const samplingFields = {
  /** 0 = greedy */
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  /** nucleus sampling; 1 = off */
  topP: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  /** 0 = off */
  topK: NonNegativeInt,
  maxNewTokens: PositiveInt,
  seed: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** requests per generation batch (does not change results) */
  batchSize: PositiveInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: NonNegativeInt,
  /**
   * decode steps per onnxruntime run (does not change results): 1 runs the step graph per token;
   * n > 1 runs n steps in one ONNX Loop, so on CUDA the KV cache leaves the device once per n tokens
   */
  stepsPerRun: PositiveInt,
}

export const SampleParams = Schema.Struct({
  /** x0: the system prompt the trajectories are sampled under (use promptFile() for a file) */
  systemPrompt: Schema.String.check(Schema.isMinLength(1)),
  /** trajectories per question */
  n: PositiveInt,
  /** eos is banned until this many tokens were generated */
  minNewTokens: NonNegativeInt,
  ...samplingFields,
})

/**
 * Runs `requests` through the generator, `batchSize` at a time and several batches per call (so
 * progress moves while batches stay full); fails on non-finite sampled log-probs (NaN logits still
 * sample tokens, garbage text, which their log-probs show) naming the `row` ("trajectory", ...);
 * records the sampling metrics. Generations are in request order.
 */
export const generateAll = (generator: Generator, requests: ReadonlyArray<GenerationRequest>, batchSize: number, ctx: StageContext, row: string) =>
  Effect.gen(function* () {
    ctx.progress.total(requests.length, "generations")
    const started = performance.now()
    let tokens = 0
    const generations: Generation[] = []
    const perCall = batchSize * 4
    for (let i = 0; i < requests.length; i += perCall) {
      const outs = yield* generator.generate(requests.slice(i, i + perCall), { batchSize })
      yield* checkFiniteRows(ctx.node, `sampled tokens' log-probs [${row}, token]`, outs.map((o) => o.logProbs), i)
      for (const o of outs) {
        tokens += o.tokens.length
        generations.push(o)
      }
      ctx.progress.advance(outs.length)
      yield* Effect.yieldNow
    }
    const seconds = (performance.now() - started) / 1000
    ctx.metric("sampled_tokens", tokens)
    ctx.metric("sampling_tokens_per_s", tokens / seconds)
    ctx.metric("sampling_seconds", seconds)
    ctx.log(`sampled ${tokens} tokens in ${seconds.toFixed(1)} s (${(tokens / seconds).toFixed(0)} tokens/s)`)
    return { generations, tokens }
  })

export const sampleTrajectories = stage({
  name: "sample-trajectories",
  version: 2, // 2: the timing is a metric, not in the content-hashed metadata
  params: SampleParams,
  unkeyed: ["batchSize", "threads", "stepsPerRun"],
  inputs: { model: Directory, questions: Questions },
  output: Trajectories,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      if (params.minNewTokens > params.maxNewTokens) return yield* Effect.fail(new StageError({ message: `minNewTokens ${params.minNewTokens} exceeds maxNewTokens ${params.maxNewTokens}` }))
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const questions = inputs.questions.items
      const teacherPrompts = yield* Effect.forEach(questions, (q) => questionPromptIds(tokenizer, q.text, params.systemPrompt))
      const studentPrompts = yield* Effect.forEach(questions, (q) => questionPromptIds(tokenizer, q.text))
      const generator = yield* scopedSessions(
        makeGenerator(checkpoint, {
          graphDir: path.join(ctx.workDir, "graph"),
          device: ctx.device,
          tokenizer,
          stepsPerRun: params.stepsPerRun,
          ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}),
        }),
      )
      const requests: Array<GenerationRequest & { question: number }> = questions.flatMap((q, qi) =>
        Array.from({ length: params.n }, (_, j) => ({
          question: qi,
          prompt: teacherPrompts[qi],
          maxNewTokens: params.maxNewTokens,
          minNewTokens: params.minNewTokens,
          temperature: params.temperature,
          topK: params.topK,
          topP: params.topP,
          seed: hash32(`${q.id}/${j}`, params.seed),
        })),
      )
      ctx.log(`${questions.length} questions x ${params.n} = ${requests.length} trajectories on ${ctx.device.kind}, system prompt ${JSON.stringify(params.systemPrompt)}`)
      const { generations, tokens } = yield* generateAll(generator, requests, params.batchSize, ctx, "trajectory")
      const trajectories: Trajectory[] = generations.map((o, k) => ({ question: requests[k].question, tokens: o.tokens, text: o.text ?? "", finishReason: o.finishReason }))
      return trajectoriesOutput({
        systemPrompt: params.systemPrompt,
        questions,
        teacherPrompts,
        studentPrompts,
        trajectories,
        sampling: { temperature: params.temperature, topP: params.topP, topK: params.topK, minNewTokens: params.minNewTokens, maxNewTokens: params.maxNewTokens, n: params.n, seed: params.seed, tokens },
      })
    }).pipe(Effect.scoped),
})
