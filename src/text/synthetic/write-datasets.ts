// Writes the shipped files of the synthetic corpus (the held-out sets and the distinct training
// questions; on request the whole training corpus) and prints corpus and token statistics.
//
//   npx tsx src/text/synthetic/write-datasets.ts --out datasets/tiny-chat [--train train.jsonl] [--seed N] [--vocab 1024]
//     [--plain datasets/tiny-world]   also the plain-text corpus of the tiny family (its default options)
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { Tokenizer } from "@huggingface/tokenizers"
import { buildTokenizer, chatTexts, renderChat } from "../tokenizer-builder.ts"
import { type CorpusOptions, defaultCorpusOptions, generateCorpus, toJsonl } from "./corpus.ts"
import { datasetFiles, plainDatasetFiles } from "./dataset-files.ts"
import { defaultPlainCorpusOptions } from "./plain.ts"

class WriteError extends Data.TaggedError("WriteError")<{ readonly message: string }> {}

const writeFile = (file: string, contents: string) =>
  Effect.try({
    try: () => {
      fs.mkdirSync(path.dirname(file), { recursive: true })
      fs.writeFileSync(file, contents)
    },
    catch: (e) => new WriteError({ message: `cannot write ${file}: ${e instanceof Error ? e.message : String(e)}` }),
  })

const parseIntArg = (name: string, value: string | undefined, fallback: number) =>
  value === undefined
    ? Effect.succeed(fallback)
    : /^-?\d+$/.test(value)
      ? Effect.succeed(Number(value))
      : Effect.fail(new WriteError({ message: `--${name} must be an integer, got "${value}"` }))

const summarize = (xs: ReadonlyArray<number>) => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length
  return `mean ${mean.toFixed(1)}, median ${sorted[sorted.length >> 1]}, p95 ${sorted[Math.floor(sorted.length * 0.95)]}, max ${sorted[sorted.length - 1]}, total ${xs.reduce((a, b) => a + b, 0)}`
}

const main = Effect.gen(function* () {
  const { values } = yield* Effect.try({
    try: () => parseArgs({ options: { out: { type: "string" }, train: { type: "string" }, seed: { type: "string" }, vocab: { type: "string" }, plain: { type: "string" } } }),
    catch: (e) => new WriteError({ message: e instanceof Error ? e.message : String(e) }),
  })
  const options: CorpusOptions = { ...defaultCorpusOptions, seed: yield* parseIntArg("seed", values.seed, defaultCorpusOptions.seed) }
  const vocabSize = yield* parseIntArg("vocab", values.vocab, 1024)
  const corpus = generateCorpus(options)
  const out = values.out ?? "datasets/tiny-chat"
  for (const [name, contents] of Object.entries(datasetFiles(options, corpus))) yield* writeFile(path.join(out, name), contents)
  if (values.train !== undefined) yield* writeFile(values.train, toJsonl(corpus.train))
  if (values.plain !== undefined)
    for (const [name, contents] of Object.entries(plainDatasetFiles(defaultPlainCorpusOptions))) yield* writeFile(path.join(values.plain, name), contents)

  const files = buildTokenizer(chatTexts(corpus.train), { vocabSize, modelMaxLength: 256 })
  const tokenizer = new Tokenizer(files.tokenizer, files.tokenizerConfig)
  const count = (text: string) => tokenizer.encode(text).ids.length
  const byMode = new Map<string, number>()
  for (const e of corpus.train) byMode.set(e.mode, (byMode.get(e.mode) ?? 0) + 1)
  console.log(`seed ${options.seed}: ${corpus.train.length} training examples (${[...byMode].map(([m, n]) => `${m} ${n}`).join(", ")})`)
  console.log(`training questions: ${corpus.trainQuestions.length} distinct, SQuAD-style (${corpus.trainQuestions.filter((q) => q.task === "describe").length} "tell me about X" without answers)`)
  console.log(`held-out: ${corpus.heldOutQuestions.length} SQuAD-style questions, ${corpus.heldOutChat.length} chat prompts`)
  console.log(`tokenizer: vocab ${files.vocabSize} (requested ${vocabSize})`)
  console.log(`tokens per training conversation: ${summarize(corpus.train.map((e) => count(renderChat(e.messages, false))))}`)
  console.log(`tokens per training answer (before its eos): ${summarize(corpus.train.map((e) => count(e.messages[e.messages.length - 1].content)))}`)
  console.log(`tokens per held-out chat prompt: ${summarize(corpus.heldOutChat.map((e) => count(renderChat(e.messages, true))))}`)
  console.log(`wrote ${out}${values.train !== undefined ? ` and ${values.train}` : ""}`)
})

Effect.runPromise(main).catch((e: unknown) => {
  console.error(e instanceof Error || (typeof e === "object" && e !== null && "message" in e) ? (e as { message: string }).message : String(e))
  process.exit(1)
})
