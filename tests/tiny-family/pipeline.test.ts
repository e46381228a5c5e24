// pipelines/tiny-family-s.ts and pipelines/tiny-stories.ts end to end at a very reduced size (a
// world of a few entities, hidden 32, one layer, a few epochs): the wiring of every stage, that
// pretraining and chat SFT lower their losses, that both published directories load with the same
// tokenizer bytes and float16 weights, and that tuneDomain tunes a published directory on one
// genre (its held-out perplexity on that genre falls). train-text's resume after a kill is checked
// at the stage level (the engine's part of a resume is tested in tests/engine).
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { Tensor } from "../../src/core/safetensors.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { defaultCorpusOptions } from "../../src/text/synthetic/corpus.ts"
import { defaultPlainCorpusOptions } from "../../src/text/synthetic/plain.ts"
import { initLlama } from "../../stages/tiny-chat/init.ts"
import { chatCorpus } from "../../stages/tiny-chat/corpus.ts"
import { plainCorpus } from "../../stages/tiny-family/plain-corpus.ts"
import { familyTokenizer } from "../../stages/tiny-family/tokenizer.ts"
import { trainText } from "../../stages/tiny-family/train-text.ts"
import { epochLosses, runMetrics, runRepoPipeline } from "../pipeline-harness.ts"
import { inputRef, maxDifferences, stageContext, tensorsValue } from "../stage-harness.ts"

const world = { people: 3, pets: 2, gadgets: 2, towns: 2 }
const worldSets = (node: string) => Object.entries(world).map(([k, v]) => `${node}.${k}=${v}`)
const smallPlain = { biosPerEntity: 2, townDocsPerTown: 2, encyclopediaPerEntity: 1, storiesPerPerson: 6, arithmeticPages: 10 }

describe("pipelines/tiny-family-s.ts and tiny-stories.ts at reduced size", () => {
  it("pretrains, fine-tunes, evaluates and publishes both models; tunes the base on stories", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-family-"))
    const out = (name: string) => path.join(dir, name)
    const summary = await runRepoPipeline(dir, "pipelines/tiny-family-s.ts", [
      ...worldSets("chat-corpus"),
      "chat-corpus.arithmeticPerOp=4",
      "chat-corpus.randomPicks=10",
      ...worldSets("plain-corpus"),
      ...Object.entries(smallPlain).map(([k, v]) => `plain-corpus.${k}=${v}`),
      "family-tokenizer.vocabSize=400",
      "init-s.hiddenSize=32",
      "init-s.numLayers=1",
      "init-s.numHeads=2",
      "init-s.intermediateSize=64",
      // a 400-token vocabulary makes documents longer than the family's 128
      "init-s.maxPositions=256",
      "pretrain-s.maxLength=256",
      "sft-s.maxLength=256",
      "pretrain-s.epochs=3",
      "pretrain-s.lr=0.01",
      "pretrain-s.warmupSteps=2",
      "sft-s.epochs=3",
      "sft-s.lr=0.01",
      "sft-s.warmupSteps=2",
      ...["base-s", "chat-s"].flatMap((m) => [`${m}-chat.limit=4`, `${m}-chat.maxNewTokens=12`, `${m}-chat.samplesPerPrompt=1`, `${m}-picks.samples=6`, ...worldSets(`${m}-picks.corpus`)]),
      `write-base-s.outDir=${out("tiny-base-s")}`,
      `write-chat-s.outDir=${out("tiny-chat-s")}`,
    ])
    expect(summary.nodes.filter((n) => n.status === "failed")).toEqual([])
    expect(summary.status).toBe("succeeded")

    const metrics = runMetrics(dir, summary.runId)
    for (const node of ["pretrain-s", "sft-s"]) {
      const epochLoss = epochLosses(metrics, (n) => n.startsWith(node))
      expect(epochLoss, node).toHaveLength(3)
      expect(epochLoss[2], node).toBeLessThan(epochLoss[0])
    }
    expect(metrics.filter((m) => m.name === "heldout_perplexity")).toHaveLength(2)

    const bytes = (name: string, file: string) => fs.readFileSync(path.join(out(name), file))
    expect(bytes("tiny-base-s", "tokenizer.json").equals(bytes("tiny-chat-s", "tokenizer.json"))).toBe(true)
    for (const name of ["tiny-base-s", "tiny-chat-s"]) {
      const ckpt = await Effect.runPromise(loadCheckpoint(out(name)))
      expect(ckpt.config.hiddenSize).toBe(32)
      expect(ckpt.weights.embedTokens.dtype).toBe("F16")
      const readme = fs.readFileSync(path.join(out(name), "README.md"), "utf8")
      expect(readme).toContain("Held-out perplexity of the plain corpus")
      expect(readme).toContain('"Random pick" requests')
    }

    // tuneDomain on the published base: stories only, a few epochs at a high rate
    const stories = await runRepoPipeline(dir, "pipelines/tiny-stories.ts", [
      `model.path=${out("tiny-base-s")}`,
      ...worldSets("plain-corpus"),
      ...Object.entries(smallPlain).map(([k, v]) => `plain-corpus.${k}=${v}`),
      "tune-domain.epochs=4",
      "tune-domain.lr=0.01",
      "tune-domain.maxLength=256",
    ])
    expect(stories.status).toBe("succeeded")
    const perplexity = runMetrics(dir, stories.runId).filter((m) => m.name === "heldout_perplexity")
    expect(perplexity).toHaveLength(2)
    const table = fs.readFileSync(path.join(dir, "runs", stories.runId, "perplexity.md"), "utf8")
    const storyRow = table.split("\n").find((l) => l.startsWith("| story |"))!
    const [before, after] = storyRow.split("|").slice(2, 4).map(Number)
    expect(after).toBeLessThan(before)
  }, 400_000)

  it("train-text on packed rows (the family's pretraining) resumes from its checkpoint to the same weights as an uninterrupted run", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "train-text-resume-"))
    const scratch = (name: string) => {
      fs.mkdirSync(path.join(dir, name), { recursive: true })
      return path.join(dir, name)
    }
    const ctx = (name: string) => stageContext(scratch(name))
    const fileOf = (o: unknown) => inputRef((o as { path: string }).path)
    const plain = fileOf(await Effect.runPromise(plainCorpus.spec.run({ params: { ...defaultPlainCorpusOptions, ...world, ...smallPlain }, inputs: {}, ctx: ctx("plain") })))
    const chat = fileOf(await Effect.runPromise(chatCorpus.spec.run({ params: { ...defaultCorpusOptions, ...world, arithmeticPerOp: 3 }, inputs: {}, ctx: ctx("chat") })))
    const tokenizer = await Effect.runPromise(familyTokenizer.spec.run({ params: { vocabSize: 300, modelMaxLength: 128 }, inputs: { chat, plain }, ctx: ctx("tokenizer") }))
    const init = await tensorsValue(
      await Effect.runPromise(
        initLlama.spec.run({ params: { hiddenSize: 16, numLayers: 1, numHeads: 2, intermediateSize: 32, maxPositions: 256, tiedEmbeddings: true, std: 0.02, seed: 0 }, inputs: { tokenizer }, ctx: ctx("init") }),
      ),
      dir,
    )
    const params = { epochs: 2, batchSize: 8, lr: 0.01, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, maxGradNorm: 1, maxLength: 256, seed: 0, checkpointEvery: 3, threads: 1, genres: ["story", "bio"] as const, pack: true }
    const train = (workDir: string, logs: string[], stopAt?: number) =>
      Effect.runPromiseExit(trainText.spec.run({ params: { ...params, genres: [...params.genres] }, inputs: { texts: plain, tokenizer, init }, ctx: stageContext(workDir, { logs, stopAt }) }))
    const wholeLogs: string[] = []
    const whole = await train(scratch("whole"), wholeLogs)
    expect(wholeLogs.some((l) => / rows of packed documents, /.test(l))).toBe(true)
    const resumedDir = scratch("resumed")
    expect(Exit.isFailure(await train(resumedDir, [], 6))).toBe(true)
    const logs: string[] = []
    const resumed = await train(resumedDir, logs)
    expect(logs.some((l) => l.startsWith("resumed from") && l.includes("at step 6"))).toBe(true)
    if (!Exit.isSuccess(whole) || !Exit.isSuccess(resumed)) throw new Error("training failed")
    const a = (whole.value as { tensors: ReadonlyMap<string, Tensor> }).tensors
    const b = (resumed.value as { tensors: ReadonlyMap<string, Tensor> }).tensors
    // the same float32 computations in the same order (as train-lm's resume test): 1e-6
    for (const [name, max] of Object.entries(maxDifferences(a, b))) expect(max, name).toBeLessThan(1e-6)
  }, 120_000)
})
