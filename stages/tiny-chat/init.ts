// Stage: a randomly initialized LlamaForCausalLM sized for the tokenizer (src/models/init.ts).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { StageError, stage } from "../../src/engine/index.ts"
import { modelConfigJson } from "../../src/models/checkpoint.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { readFile } from "../../src/core/safetensors.ts"
import { LlamaWeights, materializeTokenizer, TokenizerJson } from "./artifacts.ts"

const Positive = Schema.Int.check(Schema.isGreaterThan(0))

export const LlamaShape = Schema.Struct({
  hiddenSize: Positive,
  numLayers: Positive,
  numHeads: Positive,
  intermediateSize: Positive,
  maxPositions: Positive,
  tiedEmbeddings: Schema.Boolean,
})

export const initLlama = stage({
  name: "init-llama",
  version: 1,
  params: Schema.Struct({
    ...LlamaShape.fields,
    /** Standard deviation of the weights (uniform of that variance, HF's initializer_range). */
    std: Schema.Finite.check(Schema.isGreaterThan(0)),
    seed: Schema.Int,
  }),
  inputs: { tokenizer: TokenizerJson },
  output: LlamaWeights,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const tokenizer = yield* materializeTokenizer(path.join(ctx.workDir, "tokenizer"), inputs.tokenizer)
      const id = (t: { id: number } | undefined, what: string) => (t === undefined ? Effect.fail(new StageError({ message: `the tokenizer has no ${what} token` })) : Effect.succeed(t.id))
      if (params.hiddenSize % params.numHeads !== 0) return yield* Effect.fail(new StageError({ message: `hiddenSize ${params.hiddenSize} is not a multiple of numHeads ${params.numHeads}` }))
      const config = tinyLlama({
        vocabSize: tokenizer.vocabSize,
        hiddenSize: params.hiddenSize,
        numLayers: params.numLayers,
        numHeads: params.numHeads,
        numKvHeads: params.numHeads,
        headDim: params.hiddenSize / params.numHeads,
        intermediateSize: params.intermediateSize,
        maxPositions: params.maxPositions,
        tiedEmbeddings: params.tiedEmbeddings,
        bosTokenId: yield* id(tokenizer.bos, "bos"),
        eosTokenIds: [yield* id(tokenizer.eos, "eos")],
        padTokenId: yield* id(tokenizer.pad, "pad"),
      })
      const dir = path.join(ctx.workDir, "model")
      yield* writeRandomCheckpoint(dir, config, { seed: params.seed, std: params.std })
      const contents = yield* readFile(path.join(dir, "model.safetensors"))
      fs.rmSync(dir, { recursive: true, force: true })
      const configJson = JSON.stringify(yield* modelConfigJson(config))
      return { tensors: contents.tensors, metadata: { config: configJson } }
    }),
})
