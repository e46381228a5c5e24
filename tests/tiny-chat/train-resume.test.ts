// train-lm resumes from its work-dir checkpoint: a run stopped right after the checkpoint of step 6
// and started again in the same work dir ends with the same weights as an uninterrupted run (the
// batch order is a function of seed and epoch; parameters and AdamW moments are restored exactly).
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { toFloat32, type Tensor } from "../../src/core/safetensors.ts"
import { defaultCorpusOptions } from "../../src/text/synthetic/corpus.ts"
import { chatCorpus } from "../../stages/tiny-chat/corpus.ts"
import { initLlama } from "../../stages/tiny-chat/init.ts"
import { chatTokenizer } from "../../stages/tiny-chat/tokenizer.ts"
import { trainLm } from "../../stages/tiny-chat/train-lm.ts"
import { maxDifferences, stageContext, tensorsValue } from "../stage-harness.ts"

describe("train-lm", () => {
  it("resumes from its checkpoint to the same weights as an uninterrupted run", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-resume-"))
    const scratch = (name: string) => {
      fs.mkdirSync(path.join(dir, name), { recursive: true })
      return path.join(dir, name)
    }
    const ctx = (name: string) => stageContext(scratch(name))
    const corpusOut = await Effect.runPromise(chatCorpus.spec.run({ params: { ...defaultCorpusOptions, people: 2, pets: 1, gadgets: 1, towns: 1, arithmeticPerOp: 3 }, inputs: {}, ctx: ctx("corpus") }))
    const corpus = { path: (corpusOut as { path: string }).path, hash: "", size: 0 }
    const tokenizer = await Effect.runPromise(chatTokenizer.spec.run({ params: { vocabSize: 300, modelMaxLength: 256 }, inputs: { corpus }, ctx: ctx("tokenizer") }))
    const initOut = await Effect.runPromise(
      initLlama.spec.run({
        params: { hiddenSize: 16, numLayers: 1, numHeads: 2, intermediateSize: 32, maxPositions: 256, tiedEmbeddings: true, std: 0.02, seed: 0 },
        inputs: { tokenizer },
        ctx: ctx("init"),
      }),
    )
    const init = await tensorsValue(initOut, dir)
    const params = { epochs: 2, batchSize: 8, lr: 0.01, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, maxGradNorm: 1, maxLength: 256, seed: 0, checkpointEvery: 3, threads: 1 }
    const train = (workDir: string, logs: string[], stopAt?: number) =>
      Effect.runPromiseExit(trainLm.spec.run({ params, inputs: { corpus, tokenizer, init }, ctx: stageContext(workDir, { logs, stopAt }) }))

    const whole = await train(scratch("whole"), [])
    const resumedDir = scratch("resumed")
    const firstLogs: string[] = []
    const stopped = await train(resumedDir, firstLogs, 6)
    expect(Exit.isFailure(stopped)).toBe(true)
    const logs: string[] = []
    const resumed = await train(resumedDir, logs)
    expect(logs.some((l) => l.startsWith("resumed from") && l.includes("at step 6"))).toBe(true)
    if (!Exit.isSuccess(whole) || !Exit.isSuccess(resumed)) throw new Error("training failed")
    const a = (whole.value as { tensors: ReadonlyMap<string, Tensor> }).tensors
    const b = (resumed.value as { tensors: ReadonlyMap<string, Tensor> }).tensors
    expect([...b.keys()]).toEqual([...a.keys()])
    // the same float32 computations in the same order: equal up to rounding of summation order
    // inside onnxruntime kernels (1e-6 relative to O(0.1) weights)
    for (const [name, max] of Object.entries(maxDifferences(a, b))) expect(max, name).toBeLessThan(1e-6)
    // and the weights moved away from the initialization
    const e = toFloat32(init.read("model.embed_tokens.weight"))
    const f = toFloat32(a.get("model.embed_tokens.weight")!)
    expect(Math.max(...f.map((v, i) => Math.abs(v - e[i])))).toBeGreaterThan(1e-3)
  }, 120_000)
})
