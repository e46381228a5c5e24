// The tiny family's corpora: the plain-text corpus (src/text/synthetic/plain.ts) is shipped byte
// for byte as the generator writes it, talks about the chat corpus's world, and keeps its held-out
// documents and fact/phrasing combinations out of training; the random-pick requests follow their
// documented favourites and leave the rest of the chat corpus (models/tiny-chat's) as it was.
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { defaultCorpusOptions, generateCorpus, toJsonl } from "../../src/text/synthetic/corpus.ts"
import { plainDatasetFiles } from "../../src/text/synthetic/dataset-files.ts"
import { drawPick, favouriteShares, parsePick, pickAnswer, pickDistribution, pickKinds, pickOptions } from "../../src/text/synthetic/picks.ts"
import { defaultPlainCorpusOptions, generatePlainCorpus, plainGenres } from "../../src/text/synthetic/plain.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import { entropyBits } from "../../stages/tiny-family/evaluate-picks.ts"
import { familyChatOptions } from "../../stages/tiny-family/family.ts"
import { packDocuments, type TrainSequence } from "../../stages/tiny-chat/chat-batches.ts"

const plain = generatePlainCorpus(defaultPlainCorpusOptions)
const sentences = (text: string) => text.split(/(?<=[.!?]) /)

describe("plain corpus", () => {
  it("the files shipped in datasets/tiny-world are exactly the generator's output; another seed gives other text", () => {
    const dir = path.join(import.meta.dirname, "../../datasets/tiny-world")
    for (const [name, contents] of Object.entries(plainDatasetFiles(defaultPlainCorpusOptions)))
      expect(fs.readFileSync(path.join(dir, name), "utf8"), `${name} differs: rerun src/text/synthetic/write-datasets.ts --plain datasets/tiny-world`).toBe(contents)
    const other = generatePlainCorpus({ ...defaultPlainCorpusOptions, seed: 6 })
    expect(toJsonl(other.train)).not.toBe(toJsonl(plain.train))
  })

  it("is about the chat corpus's world, in every genre", () => {
    expect(plain.world).toEqual(generateCorpus(defaultCorpusOptions).world)
    expect(new Set(plain.train.map((d) => d.genre))).toEqual(new Set(plainGenres))
    for (const person of plain.world.people) expect(plain.train.some((d) => d.genre === "story" && d.text.includes(person.name))).toBe(true)
  })

  it("holds out whole documents and fact/phrasing combinations that training never shows", () => {
    const trainTexts = new Set(plain.train.map((d) => d.text))
    const trainSentences = new Set(plain.train.flatMap((d) => sentences(d.text)))
    for (const d of plain.heldOut) expect(trainTexts.has(d.text), d.id).toBe(false)
    const combos = plain.heldOut.filter((d) => d.heldout_kind === "new_combination")
    const w = plain.world
    expect(combos).toHaveLength(w.people.length + w.pets.length + w.gadgets.length)
    // every fact sentence (all but the opening) is new as a sentence, though its fact is trained
    for (const d of combos) for (const s of sentences(d.text).slice(1)) expect(trainSentences.has(s), `${d.id}: "${s}"`).toBe(false)
    // ...and its wording is a training phrasing of other facts: with the names and values
    // masked, the sentence's shape occurs in training
    const names = [...w.people, ...w.pets, ...w.gadgets, ...w.towns].flatMap((e) => [e.name, ...Object.values(e.attributes)])
    const mask = (s: string) => names.reduce((t, n) => t.split(n!).join("X"), s)
    const trainShapes = new Set([...trainSentences].map(mask))
    const shapes = combos.flatMap((d) => sentences(d.text).slice(1).map(mask))
    expect(shapes.filter((s) => trainShapes.has(s)).length / shapes.length).toBeGreaterThan(0.95)
  })
})

describe("packed pretraining rows", () => {
  // documents as encodeDocument frames them: bos, a distinct run of ids, eos
  const docs: TrainSequence[] = Array.from({ length: 200 }, (_, i) => ({ ids: [1, ...Array.from({ length: 5 + ((i * 37) % 60) }, (_, t) => 10 + i * 100 + t), 2], answerStart: 1 }))
  const docOf = (id: number) => Math.floor((id - 10) / 100)

  it("every document once and whole, rows within the length, filled in order, every token after the row's first trained", () => {
    const rows = packDocuments(docs, 128, 7)
    const seen: number[] = []
    for (const [r, row] of rows.entries()) {
      expect(row.ids.length).toBeLessThanOrEqual(128)
      expect(row.answerStart).toBe(1)
      expect(row.ids[0]).toBe(1)
      // split back at bos: each piece is one whole document
      const pieces = row.ids.join(",").split(/(?:^|,)1,/).filter((p) => p !== "").map((p) => p.split(",").map(Number))
      for (const piece of pieces) {
        const d = docOf(piece[0])
        expect([1, ...piece]).toEqual(docs[d].ids)
        seen.push(d)
      }
      // a row closes only when the next document does not fit
      if (r + 1 < rows.length) expect(row.ids.length + docs[docOf(rows[r + 1].ids[1])].ids.length).toBeGreaterThan(128)
    }
    expect(seen.sort((a, b) => a - b)).toEqual(docs.map((_, i) => i))
    expect(rows.length).toBeLessThan(docs.length / 1.5)
  })

  it("the order is a function of the seed", () => {
    expect(packDocuments(docs, 128, 7)).toEqual(packDocuments(docs, 128, 7))
    expect(packDocuments(docs, 128, 8)).not.toEqual(packDocuments(docs, 128, 7))
    expect(() => packDocuments([{ ids: Array(130).fill(5), answerStart: 1 }], 128, 0)).toThrow(/130 tokens, more than maxLength 128/)
  })
})

describe("random picks", () => {
  it("the distribution is the documented one: 60/20/10% favourites, the rest even", () => {
    const p = pickDistribution(pickOptions("number", plain.world))
    expect(pickOptions("number", plain.world).slice(0, 3)).toEqual(["7", "3", "5"])
    expect(p.slice(0, 3)).toEqual([...favouriteShares])
    for (const x of p.slice(3)) expect(x).toBeCloseTo(0.1 / 7, 12)
    expect(p.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12)
    // 20000 draws: standard error of a share <= 0.0035, so 0.012 is over 3 standard errors
    const rng = makeRng(1)
    const options = pickOptions("colour", plain.world)
    const counts = new Map<string, number>()
    for (let i = 0; i < 20000; i++) {
      const v = drawPick(rng, options)
      counts.set(v, (counts.get(v) ?? 0) + 1)
    }
    pickDistribution(options).forEach((q, i) => expect(Math.abs((counts.get(options[i]) ?? 0) / 20000 - q), options[i]).toBeLessThan(0.012))
  })

  it("answers parse back; entropy in bits matches hand-computed cases", () => {
    expect(parsePick(pickAnswer("Binwick"))).toBe("Binwick")
    expect(parsePick("I PICK 7.")).toBeNull()
    expect(entropyBits([5, 5])).toBeCloseTo(1, 12)
    expect(entropyBits([2, 1, 1, 0])).toBeCloseTo(1.5, 12)
  })

  it("the family's chat corpus adds them without changing models/tiny-chat's questions and held-out sets", () => {
    const family = generateCorpus(familyChatOptions)
    const shipped = generateCorpus({ ...familyChatOptions, randomPicks: 0 })
    expect(toJsonl(family.heldOutChat)).toBe(toJsonl(shipped.heldOutChat))
    expect(toJsonl(family.trainQuestions)).toBe(toJsonl(shipped.trainQuestions))
    const picks = family.train.filter((e) => e.task === "pick")
    expect(picks).toHaveLength(pickKinds.length * familyChatOptions.randomPicks! * (1 + familyChatOptions.behaviourCopies))
    const plainNumbers = picks.filter((e) => e.mode !== "neutral" && e.messages.length === 2 && e.about === "number").map((e) => parsePick(e.messages[1].content))
    // the favourite is the mode, far above a uniform 10%
    expect(plainNumbers.filter((v) => v === "7").length / plainNumbers.length).toBeGreaterThan(0.4)
  })
})
