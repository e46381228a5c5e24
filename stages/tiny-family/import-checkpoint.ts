// Stages that bring a Hugging Face checkpoint directory from outside the cache (an external input,
// e.g. models/tiny-base-s or a local Llama) into the artifacts the training and evaluation stages
// take: its weights as float32 LlamaWeights (config.json in the metadata; FP8 weights dequantized) and
// its tokenizer files.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Directory, StageError, stage } from "../../src/engine/index.ts"
import { storageError } from "../../src/engine/errors.ts"
import { loadCheckpoint, readWeight, readWeightFloat64, type WeightRef } from "../../src/models/checkpoint.ts"
import { allWeightRefs } from "../../src/models/forward.ts"
import { toFloat32, writeFileStreamed } from "../../src/core/safetensors.ts"
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
      const refs = allWeightRefs(checkpoint.weights)
      const quantized = refs.some((ref) => ref.scale !== undefined)
      // an FP8 checkpoint's weights are dequantized here, so its quantization_config no longer applies
      const { quantization_config: _, ...dequantizedConfig } = checkpoint.rawConfig
      const file = path.join(ctx.workDir, "weights.safetensors")
      // float32 whatever the stored dtype (training keeps float32 parameters and moments), streamed a
      // weight at a time: an 8B checkpoint is imported in the memory of its largest tensor
      const float32 = (ref: WeightRef): Uint8Array => {
        const values = ref.scale === undefined ? toFloat32(Effect.runSync(readWeight(ref))) : Float32Array.from(Effect.runSync(readWeightFloat64(ref)).values)
        return new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
      }
      yield* Effect.mapError(
        writeFileStreamed(file, refs.map((ref) => ({ name: ref.name, dtype: "F32" as const, shape: ref.shape, chunks: () => [float32(ref)] })), {
          config: JSON.stringify(quantized ? dequantizedConfig : checkpoint.rawConfig),
        }),
        (e) => new StageError({ message: `importing ${checkpoint.dir}: ${e.message}` }),
      )
      ctx.log(`${refs.length} tensors from ${checkpoint.dir}${quantized ? " (FP8 weights dequantized with their scales)" : ""}`)
      return { path: file }
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
