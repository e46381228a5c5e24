// The files of `datasets/tiny-chat/` and `datasets/tiny-world/`, as a pure function of the corpus options, so a test can check
// that the shipped files are exactly what the generator produces today.
import { type Corpus, type CorpusOptions, generateCorpus, toJsonl } from "./corpus.ts"
import { generatePlainCorpus, type PlainCorpus, type PlainCorpusOptions, plainGenres } from "./plain.ts"

/** File name -> contents. */
export type DatasetFiles = Readonly<Record<string, string>>

/** How the shipped files were made (written to generator.json next to them). */
export const generatorInvocation = "npx tsx src/text/synthetic/write-datasets.ts --out datasets/tiny-chat"

export const datasetFiles = (options: CorpusOptions, corpus: Corpus = generateCorpus(options)): DatasetFiles => ({
  "train-squad.jsonl": toJsonl(corpus.trainQuestions),
  "heldout-squad.jsonl": toJsonl(corpus.heldOutQuestions),
  "heldout-chat.jsonl": toJsonl(corpus.heldOutChat),
  "world.json": JSON.stringify(corpus.world, null, 1) + "\n",
  "generator.json":
    JSON.stringify(
      {
        generator: "generateCorpus in src/text/synthetic/corpus.ts",
        command: generatorInvocation,
        options,
        counts: {
          train_examples: corpus.train.length,
          train_questions: corpus.trainQuestions.length,
          heldout_questions: corpus.heldOutQuestions.length,
          heldout_chat: corpus.heldOutChat.length,
        },
      },
      null,
      2,
    ) + "\n",
})

/** How the shipped plain corpus was made (generator.json of `datasets/tiny-world/`). */
export const plainGeneratorInvocation = "npx tsx src/text/synthetic/write-datasets.ts --out datasets/tiny-chat --plain datasets/tiny-world"

/** The files of `datasets/tiny-world/`: the whole plain corpus (it is small), a pure function of its options. */
export const plainDatasetFiles = (options: PlainCorpusOptions, corpus: PlainCorpus = generatePlainCorpus(options)): DatasetFiles => ({
  "train.jsonl": toJsonl(corpus.train),
  "heldout.jsonl": toJsonl(corpus.heldOut),
  "generator.json":
    JSON.stringify(
      {
        generator: "generatePlainCorpus in src/text/synthetic/plain.ts",
        command: plainGeneratorInvocation,
        options,
        counts: Object.fromEntries([
          ...plainGenres.map((g) => [`train_${g}`, corpus.train.filter((d) => d.genre === g).length]),
          ...["new_document", "new_combination"].map((k) => [`heldout_${k}`, corpus.heldOut.filter((d) => d.heldout_kind === k).length]),
        ]),
      },
      null,
      2,
    ) + "\n",
})
