// Three random Llama checkpoints sharing the tiny-chat tokenizer (1024 tokens) — a "big" one and two
// "small" ones — with their float64 reference models (tests/reference/reference.ts), and held-out
// token sequences; what the blending tests run on.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type Checkpoint, loadCheckpoint, type ModelConfig } from "../../src/models/checkpoint.ts"
import type { EnsembleMember } from "../../src/models/ensemble.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { referenceForward, referenceModel, type ReferenceModel } from "../reference/reference.ts"
import { logSoftmax } from "../models/sampling-reference.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"
import { checkpointTokenizer, importCheckpoint } from "../../stages/tiny-family/import-checkpoint.ts"

export const V = 1024
export const tokenizerDir = path.resolve(import.meta.dirname, "../../models/tiny-chat")

/** A random checkpoint with the tiny-chat tokenizer files (or `tokenizerJson` instead of its tokenizer.json). */
export const randomCheckpoint = (dir: string, config: ModelConfig, seed: number, tokenizerJson?: string): Promise<Checkpoint> =>
  Effect.runPromise(
    Effect.gen(function* () {
      yield* writeRandomCheckpoint(dir, config, { seed, std: 0.3 })
      fs.copyFileSync(path.join(tokenizerDir, "tokenizer_config.json"), path.join(dir, "tokenizer_config.json"))
      if (tokenizerJson === undefined) fs.copyFileSync(path.join(tokenizerDir, "tokenizer.json"), path.join(dir, "tokenizer.json"))
      else fs.writeFileSync(path.join(dir, "tokenizer.json"), tokenizerJson)
      return yield* loadCheckpoint(dir)
    }),
  )

const shape = (hiddenSize: number, numLayers: number) =>
  tinyLlama({ hiddenSize, numHeads: 4, numKvHeads: 2, numLayers, intermediateSize: 2 * hiddenSize, maxPositions: 64, vocabSize: V, bosTokenId: 1, eosTokenIds: [2] })

export interface BlendFixture {
  readonly root: string
  readonly dirs: Readonly<Record<"big" | "tuned" | "untuned", string>>
  readonly members: EnsembleMember[]
  readonly refs: ReadonlyMap<string, ReferenceModel>
  readonly cleanup: () => void
}

export const blendFixture = async (): Promise<BlendFixture> => {
  const root = tempDir("pipe-blend-")
  const specs = { big: [shape(32, 2), 5], tuned: [shape(16, 1), 6], untuned: [shape(16, 1), 7] } as const
  const members: EnsembleMember[] = []
  const dirs: Record<string, string> = {}
  for (const [name, [config, seed]] of Object.entries(specs)) {
    dirs[name] = path.join(root, name)
    fs.mkdirSync(dirs[name])
    members.push({ name, checkpoint: await randomCheckpoint(dirs[name], config, seed) })
  }
  return {
    root,
    dirs: dirs as BlendFixture["dirs"],
    members,
    refs: new Map(members.map((m) => [m.name, referenceModel(m.checkpoint)])),
    cleanup: () => fs.rmSync(root, { recursive: true, force: true }),
  }
}

/** Seeded token sequences starting with BOS (1), of the given lengths. */
export const sequences = (lengths: ReadonlyArray<number>, seed: number): number[][] =>
  lengths.map((n, i) => [1, ...Array.from({ length: n - 1 }, (_, t) => 3 + ((seed * 7919 + i * 104729 + t * 1299709) % (V - 3)))])

/** The float64 reference log-softmax (first V logits) at every position of `seq`. */
export const referenceLogProbs = (model: ReferenceModel, seq: ReadonlyArray<number>): number[][] => referenceForward(model, seq).map((row) => logSoftmax(Array.from(row.subarray(0, V))))

/** The small tuned member as the blend stages take it (weights and tokenizer files), imported from `dir` by the pipeline's own stages. */
export const tunedInputs = async (dir: string) => {
  const run = <S extends typeof importCheckpoint | typeof checkpointTokenizer>(s: S) =>
    Effect.runPromise(s.spec.run({ params: {}, inputs: { model: { path: dir, hash: "", size: 0 } }, ctx: stageContext(tempDir("pipe-blend-import-")) }) as Effect.Effect<any, any>)
  return { tuned: await tensorsValue(await run(importCheckpoint)), tunedTokenizer: await run(checkpointTokenizer) }
}
