// pipelines/tiny-chat.ts end to end at a very reduced size (a world of a few entities, hidden 32,
// one layer, a few epochs): checks the wiring of every stage, that training lowers the loss, and
// that the published directory is a loadable Hugging Face checkpoint with its tokenizer.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { epochLosses, runMetrics, runRepoPipeline } from "../pipeline-harness.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"


const small = [
  "chat-corpus.people=3",
  "chat-corpus.pets=2",
  "chat-corpus.gadgets=2",
  "chat-corpus.towns=2",
  "chat-corpus.arithmeticPerOp=4",
  "chat-tokenizer.vocabSize=400",
  "init-llama.maxPositions=256",
  "train-lm.maxLength=256",
  "init-llama.hiddenSize=32",
  "init-llama.numLayers=1",
  "init-llama.numHeads=2",
  "init-llama.intermediateSize=64",
  "train-lm.epochs=4",
  "train-lm.batchSize=16",
  "train-lm.warmupSteps=5",
  "train-lm.lr=0.01",
  "evaluate-chat.limit=8",
  "evaluate-chat.maxNewTokens=12",
]

describe("pipelines/tiny-chat.ts at reduced size", () => {
  it("trains (loss goes down), evaluates and writes a loadable HF directory", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-"))
    const outDir = path.join(dir, "model")
    const summary = await runRepoPipeline(dir, "pipelines/tiny-chat.ts", [...small, `write-model.outDir=${outDir}`])
    expect(summary.nodes.filter((n) => n.status === "failed")).toEqual([])
    expect(summary.status).toBe("succeeded")

    const metrics = runMetrics(dir, summary.runId)
    const epochLoss = epochLosses(metrics, () => true)
    expect(epochLoss).toHaveLength(4)
    // from ~ln(400) = 6 at random init; a few epochs on a tiny corpus must cut it well down
    expect(epochLoss[3]).toBeLessThan(0.75 * epochLoss[0])
    for (const name of ["loss", "lr", "grad_norm", "tokens_per_s"]) expect(metrics.some((m) => m.name === name)).toBe(true)
    expect(metrics.some((m) => m.name === "accuracy")).toBe(true)

    const ckpt = await Effect.runPromise(loadCheckpoint(outDir))
    expect(ckpt.config.hiddenSize).toBe(32)
    expect(ckpt.config.tiedEmbeddings).toBe(true)
    expect([ckpt.config.padTokenId, ckpt.config.bosTokenId, ckpt.config.eosTokenIds]).toEqual([0, 1, [2]])
    expect(ckpt.generationConfig?.eosTokenIds).toEqual([2])
    const tokenizer = await Effect.runPromise(loadTokenizer(outDir))
    expect(tokenizer.vocabSize).toBe(ckpt.config.vocabSize)
    expect(tokenizer.chatTemplate).toContain("<|assistant|>")
    const readme = fs.readFileSync(path.join(outDir, "README.md"), "utf8")
    expect(readme).toContain("accuracy, greedy, no system prompt")
    expect(readme).toContain("Training loss (mean per epoch): 1:")
  }, 180_000)
})
