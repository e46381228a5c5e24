// Stage: the plain-text corpus of the synthetic world (src/text/synthetic/plain.ts), and how the
// stages that train or measure on it read it back.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, ArtifactError, decodeArtifact, errorMessage, stage } from "../../src/engine/index.ts"
import { generatePlainCorpus, type PlainCorpus, PlainCorpusOptions, plainGenres } from "../../src/text/synthetic/plain.ts"

/** `{ train, heldOut }` documents as one JSON file. */
export const PlainCorpusFile = Artifact.file("PlainCorpus")

/** The genres a corpus file may hold: the world's, and "pathfinding" (grids and paths written as
 *  text, the corpus that teaches tiny-base-s to navigate: stages/soft-prompts/navigator.ts). */
const corpusGenres = [...plainGenres, "pathfinding"] as const
const Genre = Schema.Literals(corpusGenres)
const Document = Schema.Struct({ id: Schema.String, genre: Genre, text: Schema.String })
type CorpusDocument = Omit<PlainCorpus["train"][number], "genre"> & { readonly genre: (typeof corpusGenres)[number] }
export interface PlainTexts {
  readonly train: ReadonlyArray<CorpusDocument>
  readonly heldOut: ReadonlyArray<CorpusDocument & Pick<PlainCorpus["heldOut"][number], "heldout_kind">>
}
// Typed as the generator's records (with the wider genre), so a field added there and not here does not compile.
const PlainTexts: Schema.Codec<PlainTexts, any> = Schema.Struct({
  train: Schema.Array(Document),
  heldOut: Schema.Array(Schema.Struct({ ...Document.fields, heldout_kind: Schema.Literals(["new_document", "new_combination"]) })),
})

export const readPlainCorpus = (file: string): Effect.Effect<PlainTexts, ArtifactError> =>
  Effect.flatMap(
    Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: (e) => new ArtifactError({ path: file, field: "", message: `${file}: cannot read the plain corpus: ${errorMessage(e)}` }),
    }),
    (text) => decodeArtifact(Schema.fromJsonString(PlainTexts), file, "a plain-text corpus ({ train, heldOut } documents)", text),
  )

/** Which genres a stage trains on: all of them when the list is empty. */
export const GenreFilter = Schema.Array(Genre)
export const ofGenres = <D extends { readonly genre: string }>(docs: ReadonlyArray<D>, genres: ReadonlyArray<string>): ReadonlyArray<D> =>
  genres.length === 0 ? docs : docs.filter((d) => genres.includes(d.genre))

export const plainCorpus = stage({
  name: "plain-corpus",
  version: 1,
  params: PlainCorpusOptions,
  inputs: {},
  output: PlainCorpusFile,
  run: ({ params, ctx }) =>
    Effect.sync(() => {
      const { train, heldOut } = generatePlainCorpus(params)
      ctx.log(`${train.length} training documents, ${heldOut.length} held-out documents`)
      const file = path.join(ctx.workDir, "plain.json")
      fs.writeFileSync(file, JSON.stringify({ train, heldOut } satisfies PlainTexts))
      return { path: file }
    }),
})
