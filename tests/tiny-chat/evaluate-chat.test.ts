// The evaluate-chat stage on the shipped model's weights (models/tiny-chat/, given as the tensors
// artifact train-lm produces: safetensors + config.json text in metadata "config") and the shipped
// held-out chat prompts, with a small limit: the greedy accuracy and the behaviour rates are near
// the figures the model's README reports for the whole set, and the answers stop at eos.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { TensorsValue } from "../../src/engine/index.ts"
import { readHeader } from "../../src/core/safetensors.ts"
import { behaviourNames } from "../../src/text/behaviours.ts"
import { evaluateChat } from "../../stages/tiny-chat/evaluate-chat.ts"
import { stageContext } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const modelDir = path.join(repo, "models/tiny-chat")
const readJson = (file: string) => JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>

describe("evaluate-chat", () => {
  it("on the shipped model: plausible accuracy and behaviour rates, answers end at eos", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-evaluate-"))
    const weightsFile = path.join(modelDir, "model.safetensors")
    const model: TensorsValue = {
      path: weightsFile,
      hash: "",
      size: fs.statSync(weightsFile).size,
      header: Effect.runSync(readHeader(weightsFile)),
      metadata: { config: fs.readFileSync(path.join(modelDir, "config.json"), "utf8") },
      read: () => {
        throw new Error("evaluate-chat reads the weights through the checkpoint directory")
      },
    }
    const heldOutChat = fs.readFileSync(path.join(repo, "datasets/tiny-chat/heldout-chat.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as unknown)
    const corpusFile = path.join(dir, "corpus.json")
    fs.writeFileSync(corpusFile, JSON.stringify({ train: [], heldOutChat }))
    const workDir = path.join(dir, "work")
    fs.mkdirSync(workDir)
    const limit = 48 // the first 48 plain questions and 48 prompted ones (about 12 per behaviour)
    const e = await Effect.runPromise(
      evaluateChat.spec.run({
        params: { temperature: 1, maxNewTokens: 72, limit, seed: 0, samplesPerPrompt: 2, batchSize: 48, threads: 0 },
        inputs: {
          model,
          tokenizer: { tokenizer: readJson(path.join(modelDir, "tokenizer.json")), tokenizerConfig: readJson(path.join(modelDir, "tokenizer_config.json")) },
          corpus: { path: corpusFile, hash: "", size: 0 },
        },
        ctx: stageContext(workDir),
      }),
    )
    // the weights were linked, not copied, into the checkpoint directory the generator reads
    // (a copy only where the temporary directory is on another filesystem)
    const [linked, original] = [fs.statSync(path.join(workDir, "model", "model.safetensors")), fs.statSync(weightsFile)]
    if (fs.statSync(workDir).dev === original.dev) expect(linked.ino).toBe(original.ino)
    // README (all 408 questions, 4 samples per prompt): accuracy 93.9%, behaviour rates with prompt 90-100%, without <= 0.1%
    expect(e.accuracy.n).toBe(limit)
    expect(e.accuracy.rate).toBeGreaterThanOrEqual(0.8)
    for (const b of behaviourNames) {
      // two samples per prompt: an even count, twice the prompts of that behaviour
      expect(e.withPrompt[b].n % 2).toBe(0)
      expect(e.withPrompt[b].n).toBeGreaterThan(10)
      expect(e.withPrompt[b].rate).toBeGreaterThanOrEqual(0.6)
      expect(e.withoutPrompt[b].rate).toBeLessThanOrEqual(0.1)
      expect(e.withoutPrompt[b].n).toBe(2 * limit)
    }
    // greedy answers stop at eos: a sentence, not the 72-token limit's run-on text
    for (const x of e.examples.filter((x) => x.mode.startsWith("none"))) expect(x.answer.length).toBeLessThan(120)
  }, 60_000)
})
