// The models a blend combines: the three roles of seed 003 (big, small tuned, small untuned; for
// proxy tuning the small chat model and its base) and optional references, checked to share one
// tokenizer (ensemble.ts sharedVocabulary: a mismatch is refused naming both models). Every member
// is a checkpoint directory except the small tuned one, which comes as weights and tokenizer files:
// the blending pipeline tunes it itself (tuneDomain), and an engine stage cannot output a directory;
// a tuned checkpoint directory enters through importCheckpoint / checkpointTokenizer
// (tunedFromDirectory in experiment.ts).
import { Effect } from "effect"
import * as path from "node:path"
import { Directory, type FileRef, StageError, type TensorsValue } from "../../src/engine/index.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { type EnsembleMember, sharedVocabulary } from "../../src/models/ensemble.ts"
import { LlamaWeights, materializeModel, TokenizerJson } from "../tiny-chat/artifacts.ts"

/** The three members as stage inputs. */
export const blendMemberInputs = { big: Directory, tuned: LlamaWeights, tunedTokenizer: TokenizerJson, untuned: Directory } as const

/** A member: a checkpoint directory, or weights with their tokenizer files (made a directory under the stage's work dir). */
export type MemberSource = FileRef | { readonly weights: TensorsValue; readonly tokenizer: TokenizerJson }

/** The three members of a stage taking `blendMemberInputs`, by role, in blendRoles order. */
export const blendMembers = (inputs: { readonly big: FileRef; readonly tuned: TensorsValue; readonly tunedTokenizer: TokenizerJson; readonly untuned: FileRef }) => ({
  big: inputs.big,
  tuned: { weights: inputs.tuned, tokenizer: inputs.tunedTokenizer },
  untuned: inputs.untuned,
})

const openMember = (name: string, source: MemberSource, workDir: string) =>
  "weights" in source
    ? Effect.map(materializeModel(path.join(workDir, `member-${name}`), source.weights, source.tokenizer), (m) => m.checkpoint)
    : loadCheckpoint(source.path)

/** Members named by their role, in the order given; fails on a load error or a tokenizer mismatch. */
export const openMembers = (sources: Readonly<Record<string, MemberSource>>, workDir: string) =>
  Effect.gen(function* () {
    const members = yield* Effect.forEach(Object.entries(sources), ([name, source]) =>
      Effect.map(
        Effect.mapError(openMember(name, source, workDir), (e) => new StageError({ message: `model "${name}": ${e.message}` })),
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
