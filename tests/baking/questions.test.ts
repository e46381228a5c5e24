// The questions stage: JSONL, JSON array and SQuAD's nested JSON read into the same questions;
// dotted fields and the answer shapes; the train/validation split disjoint, exhaustive and the
// same whatever n and seed; n a prefix of a larger n; errors naming the file, line and field.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { Questions } from "../../stages/baking/artifacts.ts"
import { questions, type QuestionsParams } from "../../stages/baking/questions.ts"
import { stageContext } from "../stage-harness.ts"

const dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-questions-"))
const write = (name: string, text: string) => {
  const file = path.join(dir, name)
  fs.writeFileSync(file, text)
  return file
}

const base: QuestionsParams = { field: "question", answersField: "answers", idField: "id", split: "all", validationFraction: 0, seed: 0, n: 0 }

const ctx = stageContext(dir)

const run = (file: string, p: Partial<QuestionsParams> = {}) =>
  Effect.runPromiseExit(questions.spec.run({ params: { ...base, ...p }, inputs: { file: { path: file, hash: "", size: 0 } }, ctx }) as Effect.Effect<Questions, Error>)

const ok = async (file: string, p: Partial<QuestionsParams> = {}) => {
  const exit = await run(file, p)
  if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
  return exit.value
}

const failure = async (file: string, p: Partial<QuestionsParams> = {}) => {
  const exit = await run(file, p)
  expect(Exit.isFailure(exit)).toBe(true)
  return String(exit)
}

const byId = (q: Questions) => [...q.items].sort((a, b) => (a.id < b.id ? -1 : 1))

const rows = [
  { id: "a", question: "Where does Kodis live?", answers: { text: ["Binwick"], answer_start: [48] } },
  { id: "b", question: "What is 3 plus 4?", answers: { text: ["7", "seven"], answer_start: [0, 0] } },
  { id: "c", question: "Tell me about Kodis.", answers: { text: [], answer_start: [] } },
]
const expected = [
  { id: "a", text: "Where does Kodis live?", answers: ["Binwick"] },
  { id: "b", text: "What is 3 plus 4?", answers: ["7", "seven"] },
  { id: "c", text: "Tell me about Kodis.", answers: [] },
]

const squad = {
  version: "v2.0",
  data: [
    {
      title: "Kodis",
      paragraphs: [
        { context: "Kodis lives in Binwick.", qas: [{ id: "a", question: rows[0].question, answers: [{ text: "Binwick", answer_start: 15 }] }] },
        { context: "Kodis is a painter.", qas: [{ id: "c", question: rows[2].question, answers: [], is_impossible: true }] },
      ],
    },
    { title: "arithmetic", paragraphs: [{ context: "3 plus 4 is 7.", qas: [{ id: "b", question: rows[1].question, answers: [{ text: "7", answer_start: 12 }, { text: "seven", answer_start: 0 }] }] }] },
  ],
}

// 200 records, to see the split's proportions
const many = write("many.jsonl", Array.from({ length: 200 }, (_, i) => JSON.stringify({ id: `q${i}`, question: `question ${i}?`, answers: [] }) + "\n").join(""))

describe("questions: formats", () => {
  it("JSONL, a JSON array and SQuAD's nested JSON give the same questions", async () => {
    const jsonl = write("q.jsonl", rows.map((r) => JSON.stringify(r)).join("\n") + "\n\n")
    const array = write("q.json", JSON.stringify(rows, null, 2))
    const nested = write("squad.json", JSON.stringify(squad))
    for (const file of [jsonl, array, nested]) {
      const out = await ok(file)
      expect(out.source).toBe(file)
      expect(byId(out)).toEqual(expected)
    }
  })

  it("dotted fields, plain string[] answers, no answers field, line numbers as ids", async () => {
    const file = write("dotted.jsonl", ['{"q": {"text": "One?"}, "gold": ["1"]}', "", '{"q": {"text": "Two?"}, "gold": ["2", "two"]}'].join("\n"))
    expect(byId(await ok(file, { field: "q.text", answersField: "gold", idField: "" }))).toEqual([
      { id: "1", text: "One?", answers: ["1"] },
      { id: "3", text: "Two?", answers: ["2", "two"] },
    ])
    expect(byId(await ok(file, { field: "q.text", answersField: "", idField: "" })).map((q) => q.answers)).toEqual([[], []])
  })

  it("the shipped train-squad.jsonl reads with the SQuAD fields", async () => {
    const out = await ok(path.resolve(import.meta.dirname, "../../datasets/tiny-chat/train-squad.jsonl"))
    expect(out.items.length).toBe(1224)
    expect(out.items.find((q) => q.id === "Kodis.home.t1")).toEqual({ id: "Kodis.home.t1", text: "In which town does Kodis live?", answers: ["Binwick"] })
  })
})

describe("questions: split, shuffle, n", () => {
  it("train and validation are disjoint, cover the file, and do not depend on n or seed", async () => {
    const ids = async (p: Partial<QuestionsParams>) => new Set((await ok(many, { validationFraction: 0.25, ...p })).items.map((q) => q.id))
    const train = await ids({ split: "train" })
    const validation = await ids({ split: "validation" })
    expect(validation.size).toBe(50)
    expect(train.size).toBe(150)
    for (const id of validation) expect(train.has(id)).toBe(false)
    for (const [n, seed] of [[10, 1], [40, 7], [50, 123]]) {
      for (const id of await ids({ split: "validation", n, seed })) expect(validation.has(id)).toBe(true)
      for (const id of await ids({ split: "train", n, seed })) expect(train.has(id)).toBe(true)
    }
    // the split ignores the file order
    const reversed = write("reversed.jsonl", fs.readFileSync(many, "utf8").trim().split("\n").reverse().join("\n"))
    expect(new Set((await ok(reversed, { validationFraction: 0.25, split: "validation" })).items.map((q) => q.id))).toEqual(validation)
  })

  it("the seed shuffles; a smaller n is a prefix of a larger one", async () => {
    const a = (await ok(many, { n: 30, seed: 1 })).items.map((q) => q.id)
    const b = (await ok(many, { n: 60, seed: 1 })).items.map((q) => q.id)
    const c = (await ok(many, { n: 30, seed: 2 })).items.map((q) => q.id)
    expect(b.slice(0, 30)).toEqual(a)
    expect(c).not.toEqual(a)
    expect(a).not.toEqual(Array.from({ length: 30 }, (_, i) => `q${i}`))
    expect(await ok(many, { n: 30, seed: 1 })).toEqual(await ok(many, { n: 30, seed: 1 }))
  })
})

describe("questions: errors", () => {
  it("a malformed line names the file and line number", async () => {
    const file = write("bad.jsonl", [JSON.stringify(rows[0]), JSON.stringify(rows[1]), '{"id": "c", "question": "Tell me', JSON.stringify(rows[2])].join("\n"))
    const message = await failure(file)
    expect(message).toContain(file)
    expect(message).toMatch(/line 3: not valid JSON/)
  })

  it("a missing or non-string field names the line and the field", async () => {
    const file = write("missing.jsonl", [JSON.stringify(rows[0]), JSON.stringify({ id: "x", answers: [] })].join("\n"))
    expect(await failure(file)).toMatch(/line 2: field "question" is missing/)
    const wrong = write("wrong.jsonl", [JSON.stringify({ id: "x", question: 42, answers: [] })].join("\n"))
    expect(await failure(wrong)).toMatch(/line 1: field "question" is number, expected a string/)
    expect(await failure(wrong, { field: "id", answersField: "nope" })).toMatch(/line 1: answers field "nope" is missing/)
    const squadMissing = write("squad-missing.json", JSON.stringify({ data: [{ paragraphs: [{ context: "", qas: [{ id: "a" }] }] }] }))
    expect(await failure(squadMissing)).toMatch(/data\[0\]\.paragraphs\[0\]\.qas\[0\]: field "question" is missing/)
  })

  it("duplicate ids are an error naming both places", async () => {
    const file = write("dup.json", JSON.stringify([rows[0], rows[1], { ...rows[2], id: "a" }]))
    expect(await failure(file)).toMatch(/item 3: duplicate id "a" \(first at item 1\)/)
  })

  it("too few questions says how many there are", async () => {
    expect(await failure(many, { n: 201 })).toMatch(/asked for n = 201 questions, but split "all" has only 200/)
    expect(await failure(many, { n: 51, split: "validation", validationFraction: 0.25 })).toMatch(/split "validation" has only 50 \(of 200/)
  })
})
