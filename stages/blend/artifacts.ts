// Artifacts of the blending experiments (seed 003): held-out token sequences, the members' stored
// distributions along them, search trials, evaluations, samples.
import { Effect, Schema } from "effect"
import { float32ToFloat16, fromNumbers, type SafetensorsError, type Tensor, toFloat32, toFloat64, writeFileStreamed } from "../../src/core/safetensors.ts"
import { Artifact, type ArtifactError, decodeArtifact, type TensorsOutput, type TensorsValue } from "../../src/engine/index.ts"
import type { MemberRows } from "../../src/models/blend.ts"
import { Count, packRagged, readTensors, unpackRagged } from "../baking/artifacts.ts"

// ------------------------------------------------------------------------------ held-out texts

/** Token ids (BOS first) of the validation and test texts, and where each one's scored targets start. */
export const HeldOutTokens = Artifact.tensors("HeldOutTokens")
export interface HeldOutSplit {
  readonly ids: number[][]
  /** per sequence, the index of the first target token scored: 1 for a plain text (every token
   *  after BOS), the first token of the assistant's answer for a rendered chat */
  readonly scoredFrom: number[]
}
export interface HeldOutSplits {
  readonly validation: HeldOutSplit
  readonly test: HeldOutSplit
}
export type Split = keyof HeldOutSplits

const packSplit = (name: Split, s: HeldOutSplit): Array<[string, Tensor]> => [...packRagged(name, s.ids), [`${name}_scored_from`, fromNumbers(s.scoredFrom, "I32", [s.scoredFrom.length])]]
const unpackSplit = (value: TensorsValue, name: Split): HeldOutSplit => {
  const ids = unpackRagged(value, name)
  const scoredFrom = Array.from(toFloat64(value.read(`${name}_scored_from`)))
  if (scoredFrom.length !== ids.length) throw new Error(`${name}_scored_from has ${scoredFrom.length} entries for ${ids.length} sequences`)
  return { ids, scoredFrom }
}

export const heldOutOutput = (s: HeldOutSplits): TensorsOutput => ({ tensors: new Map([...packSplit("validation", s.validation), ...packSplit("test", s.test)]) })

export const readHeldOut = (value: TensorsValue): Effect.Effect<HeldOutSplits, ArtifactError> =>
  readTensors(value, "a HeldOutTokens artifact", () => ({ validation: unpackSplit(value, "validation"), test: unpackSplit(value, "test") }))

/** Target positions scored in a split: sum over sequences of length − scoredFrom. */
export const scoredCount = (s: HeldOutSplit) => s.ids.reduce((n, x, i) => n + x.length - s.scoredFrom[i], 0)

// ------------------------------------------------------------------------------ member distributions

/**
 * Every member's log-softmax over the vocabulary at every scored position of one split (see
 * HeldOutSplit.scoredFrom), as
 * "<member>.logprobs" [rows, vocab] (float16 or float32), with "targets" and "tokens_back" (text
 * tokens before the target, BOS not counted) [rows] int32.
 */
export const MemberLogProbs = Artifact.tensors("MemberLogProbs")

export interface StoredMemberRows extends MemberRows {
  readonly members: ReadonlyArray<string>
  readonly tokensBack: Int32Array
}

/**
 * Writes `r` as a MemberLogProbs file `file` (what score-members returns): streamed a slice of rows
 * at a time, so the float16 or float32 copy of rows x vocab x members is never held beside the rows
 * themselves (the same bytes as encoding the tensors in memory).
 */
export const writeMemberLogProbs = (file: string, r: StoredMemberRows, dtype: "F16" | "F32"): Effect.Effect<TensorsOutput, SafetensorsError> => {
  const rowsPerChunk = Math.max(1, Math.floor(2 ** 22 / Math.max(1, r.vocab)))
  function* slices(values: Float32Array) {
    for (let row = 0; row < r.rows; row += rowsPerChunk) {
      const slice = values.subarray(row * r.vocab, Math.min(r.rows, row + rowsPerChunk) * r.vocab)
      yield dtype === "F32" ? new Uint8Array(slice.buffer, slice.byteOffset, slice.byteLength) : new Uint8Array(float32ToFloat16(slice).buffer)
    }
  }
  const ints = (values: Int32Array) => () => [new Uint8Array(values.buffer, values.byteOffset, values.byteLength)]
  return Effect.as(
    writeFileStreamed(
      file,
      [
        ...r.members.map((m) => ({ name: `${m}.logprobs`, dtype, shape: [r.rows, r.vocab], chunks: () => slices(r.logProbs.get(m)!) })),
        { name: "targets", dtype: "I32" as const, shape: [r.rows], chunks: ints(r.targets) },
        { name: "tokens_back", dtype: "I32" as const, shape: [r.rows], chunks: ints(r.tokensBack) },
      ],
      { members: r.members.join(","), rows: String(r.rows), vocab: String(r.vocab) },
    ),
    { path: file },
  )
}

/** Bytes that score-members, blend-search and evaluate-blend each hold for `rows` rows of every member's log-probs. */
export const memberRowsBytes = (rows: number, vocab: number, members: number): number => rows * vocab * members * Float32Array.BYTES_PER_ELEMENT

const MemberRowsMetadata = Schema.Struct({ members: Schema.String, rows: Count, vocab: Count })

export const readMemberLogProbs = (value: TensorsValue) =>
  Effect.gen(function* () {
    const what = "a MemberLogProbs artifact"
    const meta = yield* decodeArtifact(MemberRowsMetadata, value.path, what, value.metadata)
    const members = meta.members.split(",")
    return yield* readTensors(
      value,
      what,
      (): StoredMemberRows => ({
        members,
        rows: meta.rows,
        vocab: meta.vocab,
        logProbs: new Map(members.map((m) => [m, toFloat32(value.read(`${m}.logprobs`))])),
        targets: Int32Array.from(toFloat64(value.read("targets"))),
        tokensBack: Int32Array.from(toFloat64(value.read("tokens_back"))),
      }),
    )
  })

// ------------------------------------------------------------------------------ search

const Params = Schema.Record(Schema.String, Schema.Number)
export const SearchTrial = Schema.Struct({ params: Params, perplexity: Schema.Number })
export type SearchTrial = typeof SearchTrial.Type

export const BlendSearch = Artifact.json(
  "BlendSearch",
  Schema.Struct({
    kind: Schema.Literals(["blend", "proxy"]),
    /** top-k log-probs per member (seed 003's API), or null for the full vocabulary */
    topK: Schema.NullOr(Schema.Int),
    trials: Schema.Array(SearchTrial),
    best: SearchTrial,
    /** validation perplexity of each member alone */
    members: Schema.Record(Schema.String, Schema.Number),
  }),
)
export type BlendSearch = typeof BlendSearch.schema.Type
