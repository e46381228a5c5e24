// The models a blend combines, opened from their directories: the three roles of seed 003 (big,
// small tuned, small untuned; for proxy tuning the small chat model and its base) and optional
// references, checked to share one tokenizer (ensemble.ts sharedVocabulary: a mismatch is refused
// naming both models).
import { Effect } from "effect"
import type { FileRef } from "../../src/engine/index.ts"
import { StageError } from "../../src/engine/index.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { type EnsembleMember, sharedVocabulary } from "../../src/models/ensemble.ts"

/** Members named by their role, in the order given; fails on a load error or a tokenizer mismatch. */
export const openMembers = (dirs: Readonly<Record<string, FileRef>>) =>
  Effect.gen(function* () {
    const members = yield* Effect.forEach(Object.entries(dirs), ([name, dir]) =>
      Effect.map(
        Effect.mapError(loadCheckpoint(dir.path), (e) => new StageError({ message: `model "${name}": ${e.message}` })),
        (checkpoint): EnsembleMember => ({ name, checkpoint }),
      ),
    )
    const vocab = yield* Effect.mapError(sharedVocabulary(members), (e) => new StageError({ message: e.message }))
    return { members, vocab }
  })

/** The longest sequence every member can read (the smallest max_position_embeddings). */
export const sharedContext = (members: ReadonlyArray<EnsembleMember>) => Math.min(...members.map((m) => m.checkpoint.config.maxPositions))

/** Fails naming the text and the model when a sequence is longer than a member can read. */
export const checkFits = (members: ReadonlyArray<EnsembleMember>, seqs: ReadonlyArray<ReadonlyArray<number>>, what: string) => {
  const limit = sharedContext(members)
  const i = seqs.findIndex((s) => s.length > limit)
  if (i < 0) return Effect.void
  const m = members.find((x) => x.checkpoint.config.maxPositions === limit)!
  return Effect.fail(new StageError({ message: `${what} ${i} has ${seqs[i].length} tokens, more than the ${limit} positions of model "${m.name}" (${m.checkpoint.dir}); lower held-out.maxTokens` }))
}
