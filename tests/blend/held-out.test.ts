// held-out: the text formats it reads (told apart by content), the genre filter, chat rendering,
// the seeded split, and errors that name the file and the line or record.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { readHeldOut } from "../../stages/blend/artifacts.ts"
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
    expect(s.validation).toHaveLength(5)
    expect(s.test).toHaveLength(5)
    for (const seq of [...s.validation, ...s.test]) {
      expect(seq[0]).toBe(1)
      expect(seq.length).toBe(12)
    }
    expect(await run(file)).toEqual(s)
    expect(await run(file, { seed: 2 })).not.toEqual(s)

    const chats = fs.readFileSync(path.resolve(import.meta.dirname, "../../datasets/tiny-chat/heldout-chat.jsonl"), "utf8").split("\n").slice(0, 4).join("\n")
    const c = await run(write("chat.jsonl", chats), { format: "chat", field: "reference", maxTokens: 128 })
    // the rendered chat is longer than its answer alone, and holds the answer's tokens at its end
    const plain = await run(write("answers.jsonl", chats.split("\n").map((l) => JSON.stringify({ text: JSON.parse(l).reference })).join("\n")), { maxTokens: 128 })
    expect(Math.min(...c.test.map((x) => x.length))).toBeGreaterThan(Math.max(...plain.test.map((x) => x.length)))
  })
})
