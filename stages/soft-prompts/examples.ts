// The examples a soft prompt is trained and tested on, whatever the objective: token ids, the
// target of every position (-1 where nothing is scored) and, for conditional soft prompts, a
// condition vector per example. An objective is a small module that turns its source (a text set,
// a repeated string, generated pathfinding tasks) into examples; training, validation and the test
// loss all read this one format, so the loss graph never knows which objective it serves.
//
// Objectives (the seed's tests):
//   next token     targets[t] = ids[t + 1]: plain autoregressive loss (the model's own corpus; a
//                  chat model on base-domain text for chat detuning)
//   skip s         targets[t] = ids[t + 1 + s]: predict the token s + 1 ahead instead of the next one
//   repetition     a fixed string repeated to the sample length, every next token scored
//   pathfinding    grid text as context, the moves and the closing eos scored; condition = the
//                  path's length ratio (pathfinding.ts)
//
// Artifact (tensors): per split ("train", "validation", "test") `<split>.ids` and `<split>.targets`
// I32 [n, width] (right-padded: ids with the pad id, targets with -1), `<split>.lengths` I32 [n],
// and with conditions `<split>.conditions` F32 [n, C]. Metadata: `objective` (a description),
// `condition_size`, `tokenizer` (sha256 of the tokenizer.json the ids come from, "" when the model
// had none: training and evaluation refuse a model with another tokenizer, so a base model is never
// scored on a chat model's ids in another vocabulary), and for pathfinding `tasks`: the test split's
// grids for rollouts.
import { Effect, Schema } from "effect"
import { Artifact, ArtifactError, decodeArtifact, errorMessage, StageError, type TensorsOutput, type TensorsValue } from "../../src/engine/index.ts"
import { fromNumbers, type Tensor, toFloat32, toFloat64 } from "../../src/core/safetensors.ts"
import { hashFile } from "../../src/engine/hash.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import type { PathTask } from "./pathfinding.ts"
import { paddingId } from "../../src/models/checkpoint.ts"

export const Examples = Artifact.tensors("SoftPromptExamples")

export interface Example {
  readonly ids: ReadonlyArray<number>
  /** per position: the token it must predict, or -1 */
  readonly targets: ReadonlyArray<number>
  readonly condition?: ReadonlyArray<number>
}

export const splits = ["train", "validation", "test"] as const
export type Split = (typeof splits)[number]

/** A test-split pathfinding task as rollouts need it: the grid, its optimal length, the prompt (context tokens). */
export const RolloutTask = Schema.Struct({
  size: Schema.Int,
  walls: Schema.Array(Schema.Boolean),
  start: Schema.Struct({ row: Schema.Int, col: Schema.Int }),
  goal: Schema.Struct({ row: Schema.Int, col: Schema.Int }),
  optimal: Schema.Int,
  prompt: Schema.Array(Schema.Int),
})
export type RolloutTask = typeof RolloutTask.Type

export interface ExampleSet {
  /** what the examples train, for logs and reports */
  readonly objective: string
  /** 0 without conditions */
  readonly conditionSize: number
  readonly splits: Readonly<Record<Split, ReadonlyArray<Example>>>
  readonly tasks: ReadonlyArray<RolloutTask>
}

/** Token `ids[t + 1 + skip]` at every position t where that token is scored (`scoredFrom`: the first scored index). */
export const shiftedTargets = (ids: ReadonlyArray<number>, skip: number, scoredFrom: number): number[] =>
  ids.map((_, t) => (t + 1 + skip < ids.length && t + 1 + skip >= scoredFrom ? ids[t + 1 + skip] : -1))

export const rolloutTask = (task: PathTask, prompt: ReadonlyArray<number>): RolloutTask => ({
  size: task.grid.size,
  walls: [...task.grid.walls],
  start: task.grid.start,
  goal: task.grid.goal,
  optimal: task.optimal,
  prompt: [...prompt],
})

const Metadata = Schema.Struct({
  objective: Schema.String,
  tokenizer: Schema.String,
  condition_size: Schema.NumberFromString.check(Schema.isInt(), Schema.isGreaterThanOrEqualTo(0)),
  tasks: Schema.fromJsonString(Schema.Array(RolloutTask)),
})

const tokenizerIdentity = (ckpt: Checkpoint): string => (ckpt.tokenizerFile === undefined ? "" : hashFile(ckpt.tokenizerFile))

/** The examples of `set`, tokenized with `ckpt`'s tokenizer (padded with its pad id). */
export const examplesOutput = (set: ExampleSet, ckpt: Checkpoint): TensorsOutput => {
  const padId = paddingId(ckpt.config)
  const tensors = new Map<string, Tensor>()
  for (const split of splits) {
    const xs = set.splits[split]
    const width = xs.reduce((m, x) => Math.max(m, x.ids.length), 0)
    const ids = new Array<number>(xs.length * width).fill(padId)
    const targets = new Array<number>(xs.length * width).fill(-1)
    xs.forEach((x, i) => {
      x.ids.forEach((id, t) => (ids[i * width + t] = id))
      x.targets.forEach((id, t) => (targets[i * width + t] = id))
    })
    tensors.set(`${split}.ids`, fromNumbers(ids, "I32", [xs.length, width]))
    tensors.set(`${split}.targets`, fromNumbers(targets, "I32", [xs.length, width]))
    tensors.set(`${split}.lengths`, fromNumbers(xs.map((x) => x.ids.length), "I32", [xs.length]))
    if (set.conditionSize > 0) tensors.set(`${split}.conditions`, fromNumbers(xs.flatMap((x) => x.condition ?? []), "F32", [xs.length, set.conditionSize]))
  }
  return { tensors, metadata: { objective: set.objective, condition_size: String(set.conditionSize), tokenizer: tokenizerIdentity(ckpt), tasks: JSON.stringify(set.tasks) } }
}

/** Fails unless `ckpt` has the tokenizer the examples were made with (unknown on either side passes). */
export const checkTokenizer = (data: ExampleSet & { readonly tokenizer: string }, ckpt: Checkpoint, stage: string): Effect.Effect<void, StageError> => {
  const own = tokenizerIdentity(ckpt)
  return data.tokenizer === "" || own === "" || own === data.tokenizer
    ? Effect.void
    : Effect.fail(
        new StageError({
          message: `${stage}: the examples (${data.objective}) were tokenized with another tokenizer than ${ckpt.dir}'s (tokenizer.json sha256 ${data.tokenizer.slice(0, 12)}… vs ${own.slice(0, 12)}…); make them with this model`,
        }),
      )
}

export const readExamples = (value: TensorsValue): Effect.Effect<ExampleSet & { readonly tokenizer: string }, ArtifactError> =>
  Effect.gen(function* () {
    const meta = yield* decodeArtifact(Metadata, value.path, "a SoftPromptExamples artifact", value.metadata)
    const C = meta.condition_size
    return yield* Effect.try({
      try: (): ExampleSet & { readonly tokenizer: string } => {
        const read = (split: Split): Example[] => {
          const ids = value.read(`${split}.ids`)
          const [n, width] = ids.shape
          const idv = toFloat64(ids)
          const tv = toFloat64(value.read(`${split}.targets`))
          const lengths = toFloat64(value.read(`${split}.lengths`))
          const conditions = C > 0 ? toFloat32(value.read(`${split}.conditions`)) : undefined
          return Array.from({ length: n }, (_, i) => ({
            ids: Array.from(idv.subarray(i * width, i * width + lengths[i])),
            targets: Array.from(tv.subarray(i * width, i * width + lengths[i])),
            ...(conditions ? { condition: Array.from(conditions.subarray(i * C, (i + 1) * C)) } : {}),
          }))
        }
        return { objective: meta.objective, tokenizer: meta.tokenizer, conditionSize: C, splits: { train: read("train"), validation: read("validation"), test: read("test") }, tasks: meta.tasks }
      },
      catch: (e) => new ArtifactError({ path: value.path, field: "tensors", message: `${value.path}: not a SoftPromptExamples artifact: ${errorMessage(e)}` }),
    })
  })
