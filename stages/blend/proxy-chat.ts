// Stage `proxy-chat`: proxy tuning's measured bar. Greedy answers to the held-out chat questions
// (no system prompt) from the big base model alone, the directly chat-tuned big model alone
// ("reference"), the small chat model alone, and the proxy-tuned big model
// big + α(tuned − untuned) at each α asked for and at the searched α; accuracy by
// src/text/synthetic/scoring.ts isCorrectAnswer, and
//   gap closed = (acc_proxy − acc_big) / (acc_reference − acc_big)
// (Liu et al. 2024 report 88–91% on Llama 2). Behaviour rates: answers sampled under each
// behaviour's system prompts, checked by src/text/behaviours.ts. Prompts are rendered with the big
// model's chat template; every model and the proxy decode with the same seeds.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { hash32 } from "../../src/core/random.ts"
import { Artifact, Directory, File, StageError, stage } from "../../src/engine/index.ts"
import { blendRule } from "../../src/models/blend.ts"
import { scopedEnsemble } from "../../src/models/ensemble.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { checkFiniteRows } from "../../src/runtime/finite.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { type BehaviourName, behaviourNames, checkBehaviour, isBehaviourName } from "../../src/text/behaviours.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import type { ChatEvalRecord } from "../../src/text/synthetic/corpus.ts"
import { isCorrectAnswer } from "../../src/text/synthetic/scoring.ts"
import { Rate, rateOf } from "../baking/artifacts.ts"
import { openModel } from "../baking/model.ts"
import { markdown } from "../../src/engine/table.ts"
import { BlendSearch } from "./artifacts.ts"
import { blendMemberInputs, blendMembers, openMembers, sharedContext } from "./members.ts"

const Row = Schema.Struct({
  model: Schema.String,
  accuracy: Rate,
  behaviours: Schema.Record(Schema.String, Rate),
  /** proxies only: share of the big → reference accuracy gap closed (null when the gap is 0) */
  gapClosed: Schema.NullOr(Schema.Number),
})

export const ProxyChatEvaluation = Artifact.json(
  "ProxyChatEvaluation",
  Schema.Struct({
    rows: Schema.Array(Row),
    examples: Schema.Array(Schema.Struct({ question: Schema.String, answers: Schema.Record(Schema.String, Schema.String) })),
    markdown: Schema.String,
  }),
)
export type ProxyChatEvaluation = typeof ProxyChatEvaluation.schema.Type

const ChatRecord = Schema.Struct({
  id: Schema.String,
  messages: Schema.Array(Schema.Struct({ role: Schema.String, content: Schema.String })),
  mode: Schema.String,
  answers: Schema.Array(Schema.String),
})
const decodeRecord = Schema.decodeUnknownResult(Schema.fromJsonString(ChatRecord))

/** The held-out chat records of a JSONL file (datasets/tiny-chat/heldout-chat.jsonl's format). */
const readChatRecords = (file: string) =>
  Effect.gen(function* () {
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => new StageError({ message: `held-out chat questions ${file}: cannot read: ${e instanceof Error ? e.message : String(e)}` }) })
    const out: Array<Pick<ChatEvalRecord, "id" | "messages" | "mode" | "answers">> = []
    for (const [i, line] of text.split("\n").entries()) {
      if (line.trim() === "") continue
      const r = decodeRecord(line)
      if (r._tag === "Failure") return yield* Effect.fail(new StageError({ message: `held-out chat questions ${file}, line ${i + 1}: ${r.failure.message.split("\n")[0]}` }))
      out.push(r.success as (typeof out)[number])
    }
    return out
  })

export const proxyChat = stage({
  name: "proxy-chat",
  version: 1,
  params: Schema.Struct({
    /** α values besides the searched one (the paper's default is 1) */
    alphas: Schema.Array(Schema.Finite),
    /** first n plain questions and first n prompted ones (0: all) */
    limit: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
    maxNewTokens: Schema.Int.check(Schema.isGreaterThan(0)),
    /** sampling temperature of the behaviour-rate answers */
    temperature: Schema.Finite.check(Schema.isGreaterThan(0)),
    seed: Schema.Int,
    batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { ...blendMemberInputs, reference: Directory, questions: File, search: BlendSearch },
  output: ProxyChatEvaluation,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      if (inputs.search.kind !== "proxy") return yield* Effect.fail(new StageError({ message: `proxy-chat: the search input is a "${inputs.search.kind}" search, not a proxy-tuning one` }))
      const { members } = yield* openMembers({ ...blendMembers(inputs), reference: inputs.reference }, ctx.workDir)
      const [big, tuned, , reference] = members
      const { tokenizer } = yield* openModel(inputs.big.path)
      const records = yield* readChatRecords(inputs.questions.path)
      const cut = <T>(xs: T[]) => (params.limit > 0 ? xs.slice(0, params.limit) : xs)
      const plain = cut(records.filter((r) => r.mode === "none"))
      const prompted = cut(records.filter((r) => isBehaviourName(r.mode)))
      const limit = sharedContext(members)
      const requests = (rs: typeof records, temperature: number) =>
        Effect.forEach(rs, (r) =>
          Effect.map(
            Effect.mapError(chatPromptIds(tokenizer, r.messages, { addGenerationPrompt: true }), (e) => new StageError({ message: `question ${r.id}: ${e.message}` })),
            (prompt): GenerationRequest => ({ prompt, maxNewTokens: Math.max(1, Math.min(params.maxNewTokens, limit - prompt.length)), temperature, seed: hash32(r.id, params.seed) }),
          ),
        )
      const greedyRequests = yield* requests(plain, 0)
      const sampledRequests = yield* requests(prompted, params.temperature)
      const threads = params.threads > 0 ? { intraOpThreads: params.threads } : {}
      type Gen = { generate: (rs: ReadonlyArray<GenerationRequest>, o: { batchSize: number }) => Effect.Effect<ReadonlyArray<{ text: string | undefined; logProbs: number[] }>, unknown> }
      const answer = (name: string, g: Gen) =>
        Effect.gen(function* () {
          const greedy = yield* g.generate(greedyRequests, { batchSize: params.batchSize })
          const sampled = yield* g.generate(sampledRequests, { batchSize: params.batchSize })
          yield* checkFiniteRows(ctx.node, `${name} answers' log-probs [answer, token]`, [...greedy, ...sampled].map((o) => o.logProbs))
          ctx.log(`${name}: ${greedy.length} greedy and ${sampled.length} sampled answers`)
          return { greedy: greedy.map((o) => o.text ?? ""), sampled: sampled.map((o) => o.text ?? "") }
        })
      const alone = (m: (typeof members)[number]) =>
        Effect.scoped(Effect.flatMap(scopedSessions(makeGenerator(m.checkpoint, { graphDir: path.join(ctx.workDir, m.name), device: ctx.device, tokenizer, stepsPerRun: 8, ...threads })), (g) => answer(m.name, g)))
      const alphas = [...new Set([...params.alphas, inputs.search.best.params.alpha])]
      const proxy = (alpha: number) =>
        Effect.scoped(
          Effect.flatMap(scopedEnsemble({ members: members.slice(0, 3), rule: blendRule("proxy", { alpha }), graphDir: path.join(ctx.workDir, "proxy"), device: ctx.device, tokenizer, stepsPerRun: 8, ...threads }), (e) =>
            answer(`proxy α=${alpha}`, e),
          ),
        )
      type Answers = { greedy: string[]; sampled: string[] }
      const outputs: Array<[string, Answers]> = [
        ["big", yield* alone(big)],
        ["reference", yield* alone(reference)],
        ["tuned", yield* alone(tuned)],
      ]
      for (const a of alphas) outputs.push([`proxy α=${+a.toFixed(3)}${a === inputs.search.best.params.alpha ? " (searched)" : ""}`, yield* proxy(a)])
      const accuracy = (o: { greedy: string[] }) => rateOf(o.greedy.map((t, i) => isCorrectAnswer(t, plain[i].answers)))
      const accBig = accuracy(outputs[0][1]).rate
      const gap = accuracy(outputs[1][1]).rate - accBig
      const rows = outputs.map(([model, o]) => ({
        model,
        accuracy: accuracy(o),
        behaviours: Object.fromEntries(
          behaviourNames.flatMap((b: BehaviourName) => {
            const idx = prompted.flatMap((r, i) => (r.mode === b ? [i] : []))
            return idx.length === 0 ? [] : [[b, rateOf(idx.map((i) => checkBehaviour(b, o.sampled[i])))]]
          }),
        ),
        gapClosed: model.startsWith("proxy") && gap !== 0 ? (accuracy(o).rate - accBig) / gap : null,
      }))
      for (const r of rows) ctx.metric(`accuracy.${r.model}`, r.accuracy.rate)
      const examples = plain.slice(0, 6).map((r, i) => ({ question: r.messages.map((m) => m.content).join(" | "), answers: Object.fromEntries(outputs.map(([m, o]) => [m, o.greedy[i]])) }))
      const table = markdown({
        columns: [{ name: "model" }, { name: "accuracy", percent: true }, { name: "gap closed", percent: true }, ...behaviourNames.map((b) => ({ name: `${b} rate`, percent: true }))],
        rows: rows.map((r) => ({ model: r.model, accuracy: r.accuracy.rate, "gap closed": r.gapClosed, ...Object.fromEntries(Object.entries(r.behaviours).map(([b, x]) => [`${b} rate`, x.rate])) })),
      })
      const md = [
        "# Proxy tuning on held-out chat questions",
        "",
        `Greedy answers to ${plain.length} questions without a system prompt (accuracy); answers sampled at T=${params.temperature} under ${prompted.length} behaviour system prompts (rates). big = base model, reference = the same size tuned directly, tuned/untuned = the small chat model and its base; gap closed = (acc_proxy − acc_big) / (acc_reference − acc_big).`,
        "",
        table.trimEnd(),
        "",
        ...examples.flatMap((e) => [`**${e.question}**`, "", ...Object.entries(e.answers).map(([m, a]) => `- ${m}: ${a.replace(/\s+/g, " ")}`), ""]),
      ].join("\n")
      return { rows, examples, markdown: md }
    }),
})
