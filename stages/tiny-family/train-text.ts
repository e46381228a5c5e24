// Stage train-text: causal-LM training on plain documents, the loss on every token (bos + text +
// eos, one document per row, right-padded, rows of similar length batched together; or with `pack`
// several whole documents to a row, see chat-batches.ts). The trainer is train-lm's (checkpoints,
// resume, schedule, clipping, NaN check).
// It pretrains tiny-base-s / tiny-base-l from init-llama, and through `tuneDomain` fine-tunes any
// Hugging Face checkpoint directory on the documents of some genres.
import { Effect, Schema } from "effect"
import { type Directory, type Source, StageError, stage } from "../../src/engine/index.ts"
import { LlamaWeights, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { encodeDocument, packDocuments } from "../tiny-chat/chat-batches.ts"
import { encodeAll, trainingStage, TrainLmParams } from "../tiny-chat/train-lm.ts"
import { checkpointTokenizer, importCheckpoint } from "./import-checkpoint.ts"
import { GenreFilter, ofGenres, PlainCorpusFile, readPlainCorpus } from "./plain-corpus.ts"

export const TrainTextParams = Schema.Struct({
  ...TrainLmParams.fields,
  /** genres of the corpus to train on; empty: all */
  genres: GenreFilter,
  /** documents packed several to a row (packDocuments) instead of one per row; absent: one per row */
  pack: Schema.optionalKey(Schema.Boolean),
})

/** The training documents of `genres` (all when empty); none is an error naming the file. */
export const documents = (file: string, genres: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const docs = ofGenres((yield* readPlainCorpus(file)).train, genres)
    if (docs.length === 0) return yield* Effect.fail(new StageError({ message: `${file}: no training document of genre ${genres.join(", ")}` }))
    return docs
  })

export const trainText = stage({
  name: "train-text",
  version: 1,
  params: TrainTextParams,
  inputs: { texts: PlainCorpusFile, tokenizer: TokenizerJson, init: LlamaWeights },
  ...trainingStage,
  run: trainingStage.run((params) => (params.pack === true ? "rows of packed documents" : "documents"), (params, inputs, tokenizer) =>
    Effect.gen(function* () {
      const docs = yield* documents(inputs.texts.path, params.genres)
      const seqs = yield* encodeAll(inputs.texts.path, docs, (d) => encodeDocument(tokenizer, d.text, params.maxLength))
      return params.pack === true ? packDocuments(seqs, params.maxLength, params.seed) : seqs
    }),
  ),
})

/**
 * Tunes the checkpoint directory `model` (an external input) on the documents of `params.genres`:
 * the small "tuned" model of proxy tuning and logit blending. Returns the tuned weights, the
 * untuned ones and the checkpoint's tokenizer, as the evaluation and writing stages take them
 * (materializeModel in ../tiny-chat/artifacts.ts makes a checkpoint directory of them).
 */
export const tuneDomain = (params: typeof TrainTextParams.Type, inputs: { readonly model: Source<typeof Directory>; readonly texts: Source<typeof PlainCorpusFile> }, name = "tune-domain") => {
  const base = importCheckpoint({}, { model: inputs.model }, { name: `${name}-import` })
  const tokenizer = checkpointTokenizer({}, { model: inputs.model }, { name: `${name}-tokenizer` })
  const tuned = trainText(params, { texts: inputs.texts, tokenizer, init: base }, { name })
  return { base, tokenizer, tuned }
}
