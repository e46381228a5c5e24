// Stages that bring a Hugging Face checkpoint directory from outside the cache (an external input,
// e.g. models/tiny-base-s or a local Llama) into the artifacts the training and evaluation stages
// take: its weights as float32 LlamaWeights (config.json in the metadata) and its tokenizer files.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { storageError } from "../../src/engine/errors.ts"
import { loadCheckpoint, readWeight } from "../../src/models/checkpoint.ts"
import { allWeightRefs } from "../../src/models/forward.ts"
import { fromNumbers, type Tensor, toFloat32 } from "../../src/core/safetensors.ts"
import { LlamaWeights, TokenizerJson } from "../tiny-chat/artifacts.ts"

export const importCheckpoint = stage({
  name: "import-checkpoint",
  version: 1,
  params: Schema.Struct({}),
  inputs: { model: Directory },
  output: LlamaWeights,
  run: ({ inputs, ctx }) =>
    Effect.gen(function* () {
      const checkpoint = yield* loadCheckpoint(inputs.model.path)
      const tensors = new Map<string, Tensor>()
      // float32 whatever the stored dtype: training keeps float32 parameters and moments
      for (const ref of allWeightRefs(checkpoint.weights)) tensors.set(ref.name, fromNumbers(toFloat32(yield* readWeight(ref)), "F32", ref.shape))
      ctx.log(`${tensors.size} tensors from ${checkpoint.dir}`)
      return { tensors, metadata: { config: JSON.stringify(checkpoint.rawConfig) } }
    }),
})

const readJson = (file: string) =>
  Effect.try({ try: () => JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>, catch: (e) => storageError("reading", file, e) })

export const checkpointTokenizer = stage({
  name: "checkpoint-tokenizer",
  version: 1,
  params: Schema.Struct({}),
  inputs: { model: Directory },
  output: TokenizerJson,
  run: ({ inputs }) =>
    Effect.gen(function* () {
      const checkpoint = yield* loadCheckpoint(inputs.model.path)
      if (checkpoint.tokenizerFile === undefined || checkpoint.tokenizerConfigFile === undefined)
        return yield* Effect.fail(new StageError({ message: `${checkpoint.dir}: no tokenizer.json and tokenizer_config.json (the stages that train or score need both)` }))
      return { tokenizer: yield* readJson(checkpoint.tokenizerFile), tokenizerConfig: yield* readJson(checkpoint.tokenizerConfigFile) }
    }),
})
