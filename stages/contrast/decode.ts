// Stage `contrastive-decode` (seed 004's ContrastiveDecoder.decode): n generations per prompt from
// the weighted combination of a starting and a comparison model (stages/contrast/contrast.ts), each
// text with its per-token KL(P_start || P_compare), their sum and mean, its perplexity under each
// model and each model's top tokens per token; sorted by divergence when asked. The output carries
// the texts coloured for a terminal (`display`, printed by `pipe show`); the pipeline publishes the
// HTML view (colours.ts htmlTexts).
//
// Prompts come from the `prompts` input: the stock `questions` stage (JSON / JSONL / SQuAD with a
// dotted field) or `prompt-lines` below (a text file, one prompt a line, or prompts given inline).
//
// Seeds: generation j of prompt i samples with hash32("<i>/<j>", seed), so a text does not depend on
// the batch size or on the other prompts.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Directory, errorMessage, ExternalInputError, File, stage, StageError } from "../../src/engine/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { Questions } from "../baking/artifacts.ts"
import { ContrastTexts, type ContrastTexts as ContrastTextsValue } from "./artifacts.ts"
import { ansiTexts } from "./colours.ts"
import { byDivergence, type DecodeRequest, openContrast, summarize } from "./contrast.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/** How the two models are combined; shared with the divergence search. */
export const combinationFields = {
  /** text only the starting model sees, after BOS (e.g. a chat system turn) */
  startPrefix: Schema.String,
  /** text only the comparison model sees */
  comparePrefix: Schema.String,
  /** w_s and w_c: (1, -1) decodes what the starting model says and the comparison model does not */
  startWeight: Schema.Finite,
  compareWeight: Schema.Finite,
  /** "logits": log_softmax(w_s log p_s + w_c log p_c); "probs": max(w_s p_s + w_c p_c, 0) + eps, renormalised (the seed's rule) */
  space: Schema.Literals(["logits", "probs"]),
  /** the probability-space rule's floor (> 0 unless w_s + w_c > 0) */
  eps: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  /** "text": prompts as raw text; "chat": a user turn in the starting model's chat template */
  format: Schema.Literals(["text", "chat"]),
  /** 0 = greedy */
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  /** nucleus sampling; 1 = off */
  topP: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  /** 0 = off */
  topK: NonNegativeInt,
  /** generation length in tokens */
  maxNewTokens: PositiveInt,
  /** generations per prompt */
  generationsPerPrompt: PositiveInt,
  seed: NonNegativeInt,
  /** requests per batch (does not change results) */
  batchSize: PositiveInt,
  /** onnxruntime intra-op threads, 0 for its default (does not change results) */
  threads: NonNegativeInt,
}

export const ContrastiveDecodeParams = Schema.Struct({
  ...combinationFields,
  /** each model's top tokens kept per generated token, for the HTML hover (0: none) */
  topTokens: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20 })),
  /** sort the texts by mean per-token divergence, largest first */
  sortByDivergence: Schema.Boolean,
  /** texts shown in the terminal view (`pipe show`); the HTML view shows all */
  displayTexts: NonNegativeInt,
})
export type ContrastiveDecodeParams = typeof ContrastiveDecodeParams.Type

export const contrastDefaults = {
  startPrefix: "",
  comparePrefix: "",
  startWeight: 1,
  compareWeight: -1,
  space: "logits",
  eps: 1e-6,
  format: "text",
  temperature: 1,
  topP: 0.95,
  topK: 0,
  maxNewTokens: 32,
  generationsPerPrompt: 4,
  seed: 0,
  batchSize: 16,
  threads: 0,
} as const satisfies Record<keyof typeof combinationFields, unknown>

/** The decode requests of prompts x generations (see the file header for the seeds). */
export const decodeRequests = (prompts: ReadonlyArray<string>, n: number, seed: number): DecodeRequest[] =>
  prompts.flatMap((prompt, i) => Array.from({ length: n }, (_, j) => ({ prompt, promptIndex: i, sample: j, seed: hash32(`${i}/${j}`, seed) })))

export const contrastiveDecode = stage({
  name: "contrastive-decode",
  version: 1,
  params: ContrastiveDecodeParams,
  unkeyed: ["batchSize", "threads", "displayTexts"],
  inputs: { start: Directory, compare: Directory, prompts: Questions },
  output: ContrastTexts,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const prompts = inputs.prompts.items.map((q) => q.text)
      if (prompts.length === 0) return yield* Effect.fail(new StageError({ message: `no prompts in ${inputs.prompts.source}` }))
      const contrast = yield* openContrast({
        start: { dir: inputs.start.path, prefix: params.startPrefix, weight: params.startWeight },
        compare: { dir: inputs.compare.path, prefix: params.comparePrefix, weight: params.compareWeight },
        space: params.space,
        eps: params.eps,
        topTokens: params.topTokens,
        graphDir: path.join(ctx.workDir, "graphs"),
        device: ctx.device,
        threads: params.threads,
      })
      const requests = decodeRequests(prompts, params.generationsPerPrompt, params.seed)
      ctx.log(`${prompts.length} prompts x ${params.generationsPerPrompt} generations, ${params.space} space, w_s ${params.startWeight}, w_c ${params.compareWeight}, on ${ctx.device.kind}`)
      ctx.progress.total(requests.length, "texts")
      const started = performance.now()
      const texts = []
      const perCall = params.batchSize * 2
      for (let i = 0; i < requests.length; i += perCall) {
        const part = yield* contrast.decode(requests.slice(i, i + perCall), { ...params, batchSize: params.batchSize })
        yield* checkFiniteRows(ctx.node, "per-token KL [text, token]", part.map((t) => t.kl), i)
        texts.push(...part)
        ctx.progress.advance(part.length)
        yield* Effect.yieldNow
      }
      const seconds = (performance.now() - started) / 1000
      const tokens = texts.reduce((n, t) => n + t.tokens.length, 0)
      ctx.metric("tokens_per_s", tokens / seconds)
      const sorted = params.sortByDivergence ? byDivergence(texts) : texts
      const summary = summarize(sorted)
      for (const [k, v] of Object.entries(summary)) if (typeof v === "number") ctx.metric(k, v)
      ctx.log(`${texts.length} texts, ${tokens} tokens in ${seconds.toFixed(1)} s; mean KL ${summary.meanKl.toFixed(4)}, median text ${summary.medianTextKl.toFixed(4)}, top 10% ${summary.top10TextKl.toFixed(4)}`)
      return { sorted: params.sortByDivergence, texts: sorted, summary, display: ansiTexts(sorted, { limit: params.displayTexts }) }
    }).pipe(Effect.scoped),
})

const promptItems = (texts: ReadonlyArray<string>) => texts.map((text, i) => ({ id: String(i + 1), text, answers: [] }))

/** Stage `prompt-lines`: the non-empty lines of a text file as prompts (a `questions` artifact). */
export const promptLines = stage({
  name: "prompt-lines",
  version: 1,
  params: Schema.Struct({}),
  inputs: { file: File },
  output: Questions,
  run: ({ inputs }) =>
    Effect.try({
      try: () => fs.readFileSync(inputs.file.path, "utf8"),
      catch: (e) => new ExternalInputError({ path: inputs.file.path, message: `${inputs.file.path}: ${errorMessage(e)}` }),
    }).pipe(
      Effect.flatMap((text) => {
        const lines = text.split("\n").map((l) => l.trim()).filter((l) => l.length > 0)
        return lines.length === 0
          ? Effect.fail(new ExternalInputError({ path: inputs.file.path, message: `${inputs.file.path}: no prompts (every line is empty)` }))
          : Effect.succeed({ source: inputs.file.path, items: promptItems(lines) })
      }),
    ),
})

/** Stage `prompt-text`: prompts given inline (the seed's single_prefix, or a few). */
export const promptText = stage({
  name: "prompt-text",
  version: 1,
  params: Schema.Struct({ texts: Schema.Array(Schema.String.check(Schema.isMinLength(1))).check(Schema.isMinLength(1)) }),
  inputs: {},
  output: Questions,
  run: ({ params }) => Effect.succeed({ source: "inline", items: promptItems(params.texts) }),
})


const cell = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ")

/** contrast.md: the divergence summary and the first `rows` texts (in the artifact's order: ranked when sorted). */
export const contrastReport = (v: ContrastTextsValue, rows = 20): string => {
  const s = v.summary
  return [
    "# Contrastive decoding",
    "",
    `${s.texts} texts, ${s.tokens} tokens. Mean KL(start || compare) ${s.meanKl.toFixed(4)} nats/token; the median text ${s.medianTextKl.toFixed(4)}, the top 10% of texts ${s.top10TextKl.toFixed(4)}${s.top10OverMedian === null ? "" : ` (${s.top10OverMedian.toFixed(2)}x the median)`}.`,
    "",
    "| rank | KL mean | KL sum | ppl start | ppl compare | prompt | text |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...v.texts.slice(0, rows).map((t, i) => `| ${i + 1} | ${t.klMean.toFixed(4)} | ${t.klSum.toFixed(3)} | ${t.perplexity.start.toFixed(2)} | ${t.perplexity.compare.toFixed(2)} | ${cell(t.prompt)} | ${cell(t.text)} |`),
    ...(v.texts.length > rows ? ["", `${v.texts.length - rows} more texts in texts.json and contrast.html.`] : []),
    "",
  ].join("\n")
}
