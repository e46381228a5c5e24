// held-out: the text formats it reads (told apart by content), the genre filter, chat rendering,
// the seeded split, and errors that name the file and the line or record.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { readHeldOut } from "../../stages/blend/artifacts.ts"
import { openModel } from "../../stages/baking/model.ts"
import { heldOut, type HeldOutParams, readRecords } from "../../stages/blend/held-out.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"

const dir = tempDir("pipe-held-out-")
const write = (name: string, text: string) => {
  const f = path.join(dir, name)
  fs.writeFileSync(f, text)
  return f
}
const records = (file: string, genre = "") => Effect.runPromiseExit(readRecords(file, genre))
const tinyChat = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const params: HeldOutParams = { format: "text", field: "text", genre: "", maxTokens: 12, limit: 0, validationFraction: 0.5, seed: 1 }
const run = async (file: string, p: Partial<HeldOutParams> = {}) => {
  const exit = await Effect.runPromiseExit(
    heldOut.spec.run({ params: { ...params, ...p }, inputs: { texts: { path: file, hash: "", size: 0 }, model: { path: tinyChat, hash: "", size: 0 } }, ctx: stageContext(tempDir("pipe-held-out-work-")) }) as Effect.Effect<any, any>,
  )
  if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
  return Effect.runPromise(readHeldOut(await tensorsValue(exit.value)))
}

describe("held-out texts", () => {
  it("reads JSON (array or { heldOut }), JSONL and plain text, and filters on genre", async () => {
    const docs = [{ genre: "story", text: "a" }, { genre: "bio", text: "b" }, { text: "c" }]
    const get = async (f: string, genre = "") => {
      const exit = await records(f, genre)
      return Exit.isSuccess(exit) ? exit.value.map((r) => r.text) : String(exit.cause)
    }
    expect(await get(write("a.json", JSON.stringify(docs)))).toEqual(["a", "b", "c"])
    expect(await get(write("b.json", JSON.stringify({ train: [{ text: "x" }], heldOut: docs })), "story")).toEqual(["a", "c"])
    expect(await get(write("c", docs.map((d) => JSON.stringify(d)).join("\n") + "\n"), "bio")).toEqual(["b", "c"])
    expect(await get(write("d", JSON.stringify(docs[0]) + "\n"))).toEqual(["a"])
    expect(await get(write("e.txt", "Once upon a time.\nThe end.\n\n  \nAnother tale.\n"))).toEqual(["Once upon a time.\nThe end.", "Another tale."])
  })

  it("fails naming the file and the line or record", async () => {
    const bad = write("bad.jsonl", '{"text": "ok"}\n{"text": \n')
    expect(String(await records(bad))).toContain(`held-out texts ${bad}: line 2: not JSON`)
    const scalar = write("scalar.json", "[{\"text\": \"a\"}, 3]")
    expect(String(await records(scalar))).toContain("record 1: expected an object, got 3")
    await expect(run(write("nofield.jsonl", '{"body": "x"}\n{"body": "y"}\n'))).rejects.toThrow(/record 0: field "text" should be a string, got missing/)
    await expect(run(path.join(dir, "absent.jsonl"))).rejects.toThrow(/absent.jsonl: cannot read/)
  })

  it("tokenizes with BOS first, cuts to maxTokens and splits by the seed; chats are rendered with the template", async () => {
    const texts = Array.from({ length: 10 }, (_, i) => ({ text: `What age is Kodis? Kodis is ${20 + i} years old and lives in a town by the river.` }))
    const file = write("t.jsonl", texts.map((t) => JSON.stringify(t)).join("\n"))
    const s = await run(file)
    expect(s.validation.ids).toHaveLength(5)
    expect(s.test.ids).toHaveLength(5)
    for (const seq of [...s.validation.ids, ...s.test.ids]) {
      expect(seq[0]).toBe(1)
      expect(seq.length).toBe(12)
    }
    expect(await run(file)).toEqual(s)
    expect(await run(file, { seed: 2 })).not.toEqual(s)

    const chats = fs.readFileSync(path.resolve(import.meta.dirname, "../../datasets/tiny-chat/heldout-chat.jsonl"), "utf8").split("\n").slice(0, 4).join("\n")
    const c = await run(write("chat.jsonl", chats), { format: "chat", field: "reference", maxTokens: 128 })
    // the rendered chat is longer than its answer alone, and holds the answer's tokens at its end
    const plain = await run(write("answers.jsonl", chats.split("\n").map((l) => JSON.stringify({ text: JSON.parse(l).reference })).join("\n")), { maxTokens: 128 })
    expect(Math.min(...c.test.ids.map((x) => x.length))).toBeGreaterThan(Math.max(...plain.test.ids.map((x) => x.length)))
    // a plain text is scored on every token after BOS
    for (const x of [s.validation, s.test, plain.validation, plain.test]) expect(x.scoredFrom).toEqual(x.ids.map(() => 1))
  })

  it("scores a chat's answer only: the tokens after the generation prompt, through the end-of-turn token", async () => {
    const tokenizer = (await Effect.runPromise(openModel(tinyChat))).tokenizer
    const chats = [
      { messages: [{ role: "user", content: "What age is Kodis?" }], reference: "Kodis is 26 years old." },
      { messages: [{ role: "system", content: "Answer in capital letters." }, { role: "user", content: "Where does Mira live?" }], reference: "MIRA LIVES IN BRINDLE." },
      { messages: [{ role: "user", content: "What is 12 plus 7?" }], reference: "12 plus 7 is 19." },
      { messages: [{ role: "system", content: "Sign off with a goodbye." }, { role: "user", content: "Describe Brindle." }], reference: "Brindle is a town by the river. Goodbye!" },
      // the answer lies past maxTokens: nothing to score, dropped
      { messages: [{ role: "user", content: "Tell me about Kodis ".repeat(30) }], reference: "Kodis is 26 years old." },
    ]
    const s = await run(write("answers-only.jsonl", chats.map((c) => JSON.stringify(c)).join("\n")), { format: "chat", field: "reference", maxTokens: 80 })
    // the template, written out by hand: <|bos|> then <|role|>content<|eos|> per turn, and <|assistant|> to prompt
    const handPrompt = (c: (typeof chats)[number]) => tokenizer.encode(`<|bos|>${c.messages.map((m) => `<|${m.role}|>${m.content}<|eos|>`).join("")}<|assistant|>`, { addSpecialTokens: false })
    const eos = tokenizer.tokenToId("<|eos|>")!
    const got = [s.validation, s.test].flatMap((split) => split.ids.map((ids, i) => ({ prompt: ids.slice(0, split.scoredFrom[i]), answer: ids.slice(split.scoredFrom[i]) })))
    expect(got).toHaveLength(4)
    for (const c of chats.slice(0, 4)) {
      const found = got.filter((g) => JSON.stringify(g.prompt) === JSON.stringify(handPrompt(c)))
      expect(found, c.reference).toHaveLength(1)
      expect(found[0].answer).toEqual([...tokenizer.encode(c.reference, { addSpecialTokens: false }), eos])
    }
  })
})
