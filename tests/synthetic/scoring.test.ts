import { describe, expect, it } from "vitest"
import { defaultCorpusOptions, generateCorpus } from "../../src/text/synthetic/corpus.ts"
import { isCorrectAnswer, mentions } from "../../src/text/synthetic/scoring.ts"

describe("answer scoring", () => {
  it("matches whole words in any case, not parts of words or numbers", () => {
    expect(mentions("Kodis lives in Binwick.", "Binwick")).toBe(true)
    expect(mentions("KODIS LIVES IN BINWICK. OVER AND OUT!", "Binwick")).toBe(true)
    expect(mentions("7 plus 5 is 12. 12, 12, 12!", "12")).toBe(true)
    expect(mentions("7 times 5 is 120.", "12")).toBe(false)
    expect(mentions("It is 312.", "12")).toBe(false)
    expect(mentions("Kodis likes red.", "red")).toBe(true)
    expect(mentions("Kodis likes bread.", "red")).toBe(false)
    expect(mentions("Kodis likes reddish.", "red")).toBe(false)
    expect(mentions("a+b", "a+b")).toBe(true)
  })

  it("needs every expected value, and at least one", () => {
    expect(isCorrectAnswer("Sam is a grey cat from Porby.", ["grey", "cat", "Porby"])).toBe(true)
    expect(isCorrectAnswer("Sam is a grey cat.", ["grey", "cat", "Porby"])).toBe(false)
    expect(isCorrectAnswer("anything", [])).toBe(false)
  })

  it("every reference answer of the held-out chat set is correct for its own question and wrong for a different value", () => {
    const corpus = generateCorpus(defaultCorpusOptions)
    for (const r of corpus.heldOutChat) expect(isCorrectAnswer(r.reference, r.answers), r.reference).toBe(true)
    // The plain answer about another attribute of the same entity is wrong ("Kodis lives in
    // Binwick." for "How old is Kodis?").
    const lookups = corpus.heldOutChat.filter((r) => r.mode === "none" && r.task === "lookup")
    let pairs = 0
    for (const r of lookups)
      for (const other of lookups)
        if (other.about.split(".")[0] === r.about.split(".")[0] && other.answers[0] !== r.answers[0]) {
          pairs++
          expect(isCorrectAnswer(other.reference, r.answers), `${other.reference} for ${r.about}`).toBe(false)
        }
    expect(pairs).toBeGreaterThan(500)
  })
})
