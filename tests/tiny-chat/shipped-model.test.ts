// The shipped default model models/tiny-chat/: it loads as a Hugging Face checkpoint with its
// tokenizer, the tokenizer round-trips, and the model generates: it stops at eos, answers held-out
// questions correctly, and follows a system prompt. Greedy decoding is deterministic, so these are
// fixed facts about the committed weights, with margins well below the measured figures in its README.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { readFile } from "../../src/core/safetensors.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import { checkBehaviour } from "../../src/text/behaviours.ts"
import type { ChatEvalRecord } from "../../src/text/synthetic/corpus.ts"
import { isCorrectAnswer } from "../../src/text/synthetic/scoring.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const modelDir = path.join(repo, "models/tiny-chat")
const heldOut = fs
  .readFileSync(path.join(repo, "datasets/tiny-chat/heldout-chat.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l) as ChatEvalRecord)

const load = Effect.gen(function* () {
  const ckpt = yield* loadCheckpoint(modelDir)
  const tokenizer = yield* loadTokenizer(modelDir)
  const weights = yield* readFile(path.join(modelDir, "model.safetensors"))
  const generator = yield* makeGenerator(ckpt, { graphDir: fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-shipped-")), tokenizer })
  return { ckpt, tokenizer, weights, generator }
})

describe("models/tiny-chat", () => {
  it("is a standard LlamaForCausalLM directory with its tokenizer", async () => {
    const { ckpt, tokenizer, weights } = await Effect.runPromise(load)
    expect(ckpt.config.hfArchitecture).toBe("LlamaForCausalLM")
    expect([ckpt.config.padTokenId, ckpt.config.bosTokenId, ckpt.config.eosTokenIds]).toEqual([0, 1, [2]])
    expect(ckpt.generationConfig?.eosTokenIds).toEqual([2])
    expect(weights.tensors.has("model.layers.0.self_attn.q_proj.weight")).toBe(true)
    expect(tokenizer.vocabSize).toBe(ckpt.config.vocabSize)
    expect([tokenizer.pad?.id, tokenizer.bos?.id, tokenizer.eos?.id]).toEqual([0, 1, 2])
    expect(fs.statSync(path.join(modelDir, "model.safetensors")).size).toBeLessThan(20e6)
  })

  it("tokenizer round-trips text and renders the chat template", async () => {
    const { tokenizer } = await Effect.runPromise(load)
    for (const text of ["What age is Kodis?", "KODIS IS 26 YEARS OLD. Over and out!", "7 times 8 is 56. blue, blue, blue!", "naïve café ☕ — unseen words"])
      expect(tokenizer.decode(tokenizer.encode(text, { addSpecialTokens: false }))).toBe(text)
    const ids = await Effect.runPromise(chatPromptIds(tokenizer, [{ role: "user", content: "Hi" }], { addGenerationPrompt: true }))
    expect(tokenizer.decode(ids)).toBe("<|bos|><|user|>Hi<|eos|><|assistant|>")
  })

  it("answers held-out questions and follows a system prompt", async () => {
    const { tokenizer, generator } = await Effect.runPromise(load)
    const plain = heldOut.filter((r) => r.mode === "none" && r.task !== "describe").filter((_, i) => i % 9 === 0)
    const prompt = (messages: ChatEvalRecord["messages"]) => Effect.runSync(chatPromptIds(tokenizer, messages, { addGenerationPrompt: true }))
    const outs = await Effect.runPromise(generator.generate(plain.map((r) => ({ prompt: prompt(r.messages), maxNewTokens: 40, temperature: 0 })), { batchSize: 64 }))
    // every answer stopped at eos (the model's default stop id) before the limit
    for (const o of outs) expect(o.finishReason).toBe("stop_token")
    const correct = plain.filter((r, i) => isCorrectAnswer(outs[i].text!, r.answers)).length
    expect(correct / plain.length).toBeGreaterThanOrEqual(0.7)

    const question = plain[0].messages
    const [caps] = await Effect.runPromise(
      generator.generate([{ prompt: prompt([{ role: "system", content: "Answer in all capital letters." }, ...question]), maxNewTokens: 40, temperature: 0 }]),
    )
    expect(checkBehaviour("caps", caps.text!)).toBe(true)
  })
})
