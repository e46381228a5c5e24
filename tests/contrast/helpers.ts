// Small random checkpoints sharing the shipped tiny-chat tokenizer, for the contrastive-decoding tests.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type Checkpoint, loadCheckpoint } from "../../src/models/checkpoint.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { tempDir } from "../models/forward-helpers.ts"

export const tinyChatDir = path.resolve(import.meta.dirname, "../../models/tiny-chat")

/** A random 2-layer Llama with the tiny-chat tokenizer (1024 tokens) in a fresh temporary directory. */
export const randomChatCheckpoint = (seed: number, std = 0.3): Promise<Checkpoint> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const d = tempDir("pipe-contrast-ckpt-")
      yield* writeRandomCheckpoint(d, tinyLlama({ vocabSize: 1024, hiddenSize: 32, numHeads: 4, numKvHeads: 2, intermediateSize: 48, numLayers: 2, maxPositions: 96, bosTokenId: 1, eosTokenIds: [2] }), { seed, std })
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(tinyChatDir, f), path.join(d, f))
      return yield* loadCheckpoint(d)
    }),
  )
