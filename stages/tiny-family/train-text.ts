// Stages: causal-LM training on plain documents, the loss on every token (bos + text + eos, one
// document per row, right-padded; rows of similar length are batched together, see
// chat-batches.ts). The trainer is train-lm's (checkpoints, resume, schedule, clipping, NaN check).
//   train-text   from weights made in the pipeline (init-llama, or another training stage): the
//                pretraining of tiny-base-s / tiny-base-l;
//   tune-domain  from any Hugging Face checkpoint directory (an external input, e.g.
//                models/tiny-base-s or a local Llama), on the documents of some genres only: the
//                small "tuned" model of proxy tuning and logit blending. The weights it returns are
//                float32 under the checkpoint's tensor names with its config.json in the metadata;
//                the tokenizer is the checkpoint's (see checkpointDir in ../tiny-chat/artifacts.ts).
import { Effect, Schema } from "effect"
import * as path from "node:path"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { loadCheckpoint, weightsInFile } from "../../src/models/checkpoint.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { configOf, LlamaWeights, materializeTokenizer, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { encodeDocument } from "../tiny-chat/chat-batches.ts"
import { encodeAll, trainCausalLm, trainedMetadata, TrainLmParams } from "../tiny-chat/train-lm.ts"
import { GenreFilter, ofGenres, PlainCorpusFile, readPlainCorpus } from "./plain-corpus.ts"

export const TrainTextParams = Schema.Struct({
  ...TrainLmParams.fields,
  /** genres of the corpus to train on; empty: all */
  genres: GenreFilter,
})

const documents = (file: string, genres: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const docs = ofGenres((yield* readPlainCorpus(file)).train, genres)
    if (docs.length === 0) return yield* Effect.fail(new StageError({ message: `${file}: no training document of genre ${genres.join(", ")}` }))
    return docs
  })

export const trainText = stage({
  name: "train-text",
  version: 1,
  params: TrainTextParams,
  unkeyed: ["checkpointEvery", "threads"],
  inputs: { texts: PlainCorpusFile, tokenizer: TokenizerJson, init: LlamaWeights },
  output: LlamaWeights,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const config = yield* configOf(inputs.init)
      const tokenizer = yield* materializeTokenizer(path.join(ctx.workDir, "tokenizer"), inputs.tokenizer)
      const docs = yield* documents(inputs.texts.path, params.genres)
      const seqs = yield* encodeAll(inputs.texts.path, docs, (d) => encodeDocument(tokenizer, d.text, params.maxLength))
      const weights = yield* weightsInFile(config, inputs.init.path, inputs.init.header)
      const { tensors, result } = yield* trainCausalLm(params, ctx, { config, weights, source: inputs.init.path }, seqs, "documents")
      return { tensors, metadata: trainedMetadata(inputs.init.metadata.config!, params, result) }
    }).pipe(Effect.scoped),
})

export const tuneDomain = stage({
  name: "tune-domain",
  version: 1,
  params: TrainTextParams,
  unkeyed: ["checkpointEvery", "threads"],
  inputs: { model: Directory, texts: PlainCorpusFile },
  output: LlamaWeights,
  resources: { isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const checkpoint = yield* loadCheckpoint(inputs.model.path)
      const tokenizer = yield* loadTokenizer(checkpoint.dir)
      const docs = yield* documents(inputs.texts.path, params.genres)
      const seqs = yield* encodeAll(inputs.texts.path, docs, (d) => encodeDocument(tokenizer, d.text, params.maxLength))
      const { tensors, result } = yield* trainCausalLm(params, ctx, { config: checkpoint.config, weights: checkpoint.weights, source: checkpoint.dir }, seqs, `documents (${params.genres.join(", ") || "all genres"})`)
      return { tensors, metadata: trainedMetadata(JSON.stringify(checkpoint.rawConfig), params, result) }
    }).pipe(Effect.scoped),
})
