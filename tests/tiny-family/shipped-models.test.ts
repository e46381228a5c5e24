// The shipped tiny family (models/tiny-base-s, tiny-base-l, tiny-chat-s, tiny-chat-l): standard
// Hugging Face directories with float16 weights and one tokenizer (the same tokenizer.json bytes);
// -l has at least 4x the parameters of -s; the chat models answer held-out questions and follow a
// system prompt; all four continue plain text about the world (the chat models kept it). Greedy decoding is
// deterministic, so these are fixed facts about the committed weights, with margins well below the
// figures measured in their READMEs (chat accuracy over 90% there, 70% here).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { readHeader } from "../../src/core/safetensors.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import { checkBehaviour } from "../../src/text/behaviours.ts"
import type { ChatEvalRecord } from "../../src/text/synthetic/corpus.ts"
import { isCorrectAnswer } from "../../src/text/synthetic/scoring.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { defaultPlainCorpusOptions, generatePlainCorpus } from "../../src/text/synthetic/plain.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const dirOf = (name: string) => path.join(repo, "models", name)
const family = ["tiny-base-s", "tiny-base-l", "tiny-chat-s", "tiny-chat-l"] as const
const heldOut = fs
  .readFileSync(path.join(repo, "datasets/tiny-chat/heldout-chat.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l) as ChatEvalRecord)

const load = (name: string) =>
  Effect.gen(function* () {
    const ckpt = yield* loadCheckpoint(dirOf(name))
    const tokenizer = yield* loadTokenizer(dirOf(name))
    const generator = yield* makeGenerator(ckpt, { graphDir: fs.mkdtempSync(path.join(tmpdir(), `${name}-`)), tokenizer })
    return { ckpt, tokenizer, generator }
  })

const parameters = (name: string) =>
  Effect.map(readHeader(path.join(dirOf(name), "model.safetensors")), (h) => [...h.tensors.values()].reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0))

describe("the shipped tiny family", () => {
  it("four HF directories, float16, one tokenizer (same bytes, bos on encode), -l at least 4x -s, under 60 MB with models/tiny-chat", async () => {
    const tokenizerBytes = family.map((n) => fs.readFileSync(path.join(dirOf(n), "tokenizer.json")))
    for (const b of tokenizerBytes) expect(b.equals(tokenizerBytes[0])).toBe(true)
    for (const name of family) {
      const { ckpt, tokenizer } = await Effect.runPromise(load(name))
      expect(ckpt.config.hfArchitecture).toBe("LlamaForCausalLM")
      expect(ckpt.weights.embedTokens.dtype).toBe("F16")
      expect([tokenizer.pad?.id, tokenizer.bos?.id, tokenizer.eos?.id]).toEqual([0, 1, 2])
      // pretraining framed every document with bos: encoding a text adds it, as Llama's tokenizers do
      expect(tokenizer.addsBos).toBe(true)
      expect(tokenizer.encode("Kodis")[0]).toBe(1)
      expect(tokenizer.vocabSize).toBe(ckpt.config.vocabSize)
    }
    for (const size of ["s", "l"]) expect(await Effect.runPromise(parameters(`tiny-chat-${size}`))).toBe(await Effect.runPromise(parameters(`tiny-base-${size}`)))
    expect(await Effect.runPromise(parameters("tiny-base-l"))).toBeGreaterThanOrEqual(4 * (await Effect.runPromise(parameters("tiny-base-s"))))
    const bytes = (dir: string): number => fs.readdirSync(dir, { withFileTypes: true }).reduce((a, e) => a + (e.isDirectory() ? bytes(path.join(dir, e.name)) : fs.statSync(path.join(dir, e.name)).size), 0)
    expect(bytes(path.join(repo, "models"))).toBeLessThan(60e6)
  }, 60_000)

  for (const name of ["tiny-chat-s", "tiny-chat-l"])
    it(`${name} answers held-out questions and follows a system prompt`, async () => {
      const { tokenizer, generator } = await Effect.runPromise(load(name))
      const plain = heldOut.filter((r) => r.mode === "none" && r.task !== "describe").filter((_, i) => i % 9 === 0)
      const prompt = (messages: ChatEvalRecord["messages"]) => Effect.runSync(chatPromptIds(tokenizer, messages, { addGenerationPrompt: true }))
      const outs = await Effect.runPromise(generator.generate(plain.map((r) => ({ prompt: prompt(r.messages), maxNewTokens: 40, temperature: 0 })), { batchSize: 64 }))
      for (const o of outs) expect(o.finishReason).toBe("stop_token")
      expect(plain.filter((r, i) => isCorrectAnswer(outs[i].text!, r.answers)).length / plain.length).toBeGreaterThanOrEqual(0.7)
      const [caps] = await Effect.runPromise(
        generator.generate([{ prompt: prompt([{ role: "system", content: "Answer in all capital letters." }, ...plain[0].messages]), maxNewTokens: 40, temperature: 0 }]),
      )
      expect(checkBehaviour("caps", caps.text!)).toBe(true)
    }, 120_000)

  // the chat models too: their SFT mixed in plain documents so that they keep their base's plain text
  for (const name of family)
    // a bio's opening, then a fact sentence to complete (without the opening, "X lives in" is as
    // likely a town document's "... lives in the north"): every continuation names a town of the
    // world, and the right one far more often than chance (1 in 8 towns)
    it(`${name} continues plain text with the world's facts`, async () => {
      const { tokenizer, generator } = await Effect.runPromise(load(name))
      const world = generatePlainCorpus(defaultPlainCorpusOptions).world
      const towns = world.towns.map((t) => t.name)
      const outs = await Effect.runPromise(
        generator.generate(
          world.people.map((p) => ({ prompt: [tokenizer.bos!.id, ...tokenizer.encode(`This is ${p.name}. ${p.name} lives in`, { addSpecialTokens: false })], maxNewTokens: 4, temperature: 0 })),
        ),
      )
      const named = outs.map((o) => towns.find((t) => o.text!.trimStart().startsWith(t)))
      expect(named.every((t) => t !== undefined)).toBe(true)
      expect(world.people.filter((p, i) => named[i] === p.attributes.home).length / world.people.length).toBeGreaterThanOrEqual(0.3)
    }, 120_000)
})
