// Stage: the one tokenizer of the tiny family, a byte-level BPE (src/text/tokenizer-builder.ts)
// learned from the union of the chat corpus (rendered with the chat template, so its special
// tokens are in place) and the plain documents.
import { Effect } from "effect"
import { stage } from "../../src/engine/index.ts"
import { buildTokenizer, chatTexts } from "../../src/text/tokenizer-builder.ts"
import { ChatCorpusFile, readCorpus, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { TokenizerParams } from "../tiny-chat/tokenizer.ts"
import { PlainCorpusFile, readPlainCorpus } from "./plain-corpus.ts"

export const familyTokenizer = stage({
  name: "family-tokenizer",
  version: 1,
  params: TokenizerParams,
  inputs: { chat: ChatCorpusFile, plain: PlainCorpusFile },
  output: TokenizerJson,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const chat = yield* readCorpus(inputs.chat.path)
      const plain = yield* readPlainCorpus(inputs.plain.path)
      const files = buildTokenizer([...chatTexts(chat.train), ...plain.train.map((d) => d.text)], params)
      ctx.log(`vocabulary of ${files.vocabSize} tokens from ${chat.train.length} chats and ${plain.train.length} documents`)
      return { tokenizer: files.tokenizer, tokenizerConfig: files.tokenizerConfig }
    }),
})
