// Stage train-chat: the family's chat SFT. Chats as train-lm trains them (the loss on the final
// answer) plus a fixed, seeded share of the plain corpus's documents (the loss on every token), so
// that the chat model keeps most of its base's plain-text ability, as released chat models do: a
// chat model whose plain-text perplexity has exploded makes contrastive decoding and chat->base
// detuning measure that collapse and nothing else. The trainer is train-lm's.
import { Effect, Schema } from "effect"
import { stage } from "../../src/engine/index.ts"
import { deriveRng } from "../../src/text/synthetic/random.ts"
import { ChatCorpusFile, LlamaWeights, readCorpus, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { encodeChat, encodeDocument } from "../tiny-chat/chat-batches.ts"
import { encodeAll, trainingStage, TrainLmParams } from "../tiny-chat/train-lm.ts"
import { PlainCorpusFile } from "./plain-corpus.ts"
import { documents } from "./train-text.ts"

export const TrainChatParams = Schema.Struct({
  ...TrainLmParams.fields,
  /** plain documents mixed in, as a fraction of the number of training chats (at most all of them) */
  plainShare: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
})

export const trainChat = stage({
  name: "train-chat",
  version: 1,
  params: TrainChatParams,
  inputs: { corpus: ChatCorpusFile, texts: PlainCorpusFile, tokenizer: TokenizerJson, init: LlamaWeights },
  ...trainingStage,
  run: trainingStage.run("chats and documents", (params, inputs, tokenizer) =>
    Effect.gen(function* () {
      const chats = (yield* readCorpus(inputs.corpus.path)).train
      const docs = yield* documents(inputs.texts.path, [])
      const mixed = deriveRng(params.seed, "train-chat-plain").sample(docs, Math.round(params.plainShare * chats.length))
      return [
        ...(yield* encodeAll(inputs.corpus.path, chats, (c) => encodeChat(tokenizer, c.messages, params.maxLength))),
        ...(yield* encodeAll(inputs.texts.path, mixed, (d) => encodeDocument(tokenizer, d.text, params.maxLength))),
      ]
    }),
  ),
})
