// Stage: a byte-level BPE tokenizer learned from the training chats (src/text/tokenizer-builder.ts).
import { Effect, Schema } from "effect"
import { stage } from "../../src/engine/index.ts"
import { buildTokenizer, chatTexts } from "../../src/text/tokenizer-builder.ts"
import { ChatCorpusFile, readCorpus, TokenizerJson } from "./artifacts.ts"

export const TokenizerParams = Schema.Struct({
  vocabSize: Schema.Int.check(Schema.isGreaterThanOrEqualTo(262)),
  modelMaxLength: Schema.Int.check(Schema.isGreaterThan(0)),
  /** encoding a text starts it with bos (buildTokenizer's option); absent: it adds nothing */
  addBosToken: Schema.optionalKey(Schema.Boolean),
})

export const chatTokenizer = stage({
  name: "chat-tokenizer",
  version: 1,
  params: TokenizerParams,
  inputs: { corpus: ChatCorpusFile },
  output: TokenizerJson,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const corpus = yield* readCorpus(inputs.corpus.path)
      const files = buildTokenizer(chatTexts(corpus.train), params)
      ctx.log(`vocabulary of ${files.vocabSize} tokens`)
      return { tokenizer: files.tokenizer, tokenizerConfig: files.tokenizerConfig }
    }),
})
