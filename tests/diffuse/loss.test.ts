// The diffuse loss Σ_y p*(y)·(−log p(y | context)) of the evaluator and of the train step against a
// float64 reference forward (tests/reference) on a random tiny Llama carrying the tiny-chat
// tokenizer and chat template; the targets scored through the end-of-turn token.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { openModel } from "../../stages/baking/model.ts"
import { diffuseContexts, endOfTurnId } from "../../stages/diffuse/contexts.ts"
import type { DiffusePrompts } from "../../stages/diffuse/prompts.ts"
import { diffuseTrain, lossEvaluator, setRows } from "../../stages/diffuse/train.ts"
import { referenceForward, referenceModel } from "../reference/reference.ts"
import { type Metric, stageContext } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-diffuse-loss-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const modelDir = path.join(dir, "model")
const tinyChatIds = { vocabSize: 1024, maxPositions: 128, bosTokenId: 1, eosTokenIds: [2], padTokenId: 0 }

// two prompts, one with two response prefixes (its loss is the mean over them), weights not uniform
const prompts: DiffusePrompts = {
  source: "inline",
  prompts: [
    { id: "numbers", file: "numbers.json", request: "Pick a random number between 1 and 10.", responses: ["", "My pick: "], targets: ["7", "10", "{3}"], weights: [0.5, 0.3, 0.2] },
    { id: "towns", file: "towns.json", request: "Name a random town.", responses: [""], targets: ["Porby", "Menby"], weights: [0.9, 0.1] },
  ],
}

const logSoftmax = (z: Float64Array): Float64Array => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
  return z.map((x) => x - lse)
}

describe("diffuse loss", () => {
  it("matches a float64 reference in the evaluator and in a micro-batched train step", async () => {
    await Effect.runPromise(writeRandomCheckpoint(modelDir, tinyLlama(tinyChatIds), { seed: 5, std: 0.2 }))
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(repo, "models/tiny-chat", f), path.join(modelDir, f))
    const { checkpoint, tokenizer } = await Effect.runPromise(openModel(modelDir))
    // the tiny-chat template ends an assistant turn with <|eos|> (id 2)
    expect(await Effect.runPromise(endOfTurnId(tokenizer))).toBe(2)
    const contexts = await Effect.runPromise(diffuseContexts(tokenizer, prompts.prompts))
    expect(contexts.map((c) => [c.prompt, c.prefix])).toEqual([[0, 0], [0, 1], [1, 0]])
    // "{3}<|eos|>": the target's tokens with the end-of-turn token last, decoding to the target
    const t = contexts[0].targets[2]
    expect(t.ids[t.ids.length - 1]).toBe(2)
    expect(tokenizer.decode(t.ids.slice(0, -1))).toBe("{3}")
    expect(contexts[0].tail).toBe("")
    // "My pick: " + "7" encodes " 7" as one token: the context stops before the space, which every
    // target of that prefix carries
    expect(contexts[1].tail).toBe(" ")
    expect(contexts[1].targets.map((x) => tokenizer.decode(x.ids.slice(0, -1)))).toEqual([" 7", " 10", " {3}"])

    // float64 reference: per context Σ_y p*(y)·(−Σ_t log p(token_t | prefix)), averaged over the prompt's prefixes
    const ref = referenceModel(checkpoint)
    const contextLoss = contexts.map((c) =>
      c.targets.reduce((s, target) => {
        const seq = [...c.ids, ...target.ids]
        const logits = referenceForward(ref, seq.slice(0, -1))
        const ll = target.ids.reduce((a, id, k) => a + logSoftmax(logits[c.ids.length - 1 + k])[id], 0)
        return s - target.weight * ll
      }, 0),
    )
    const perPrompt = [(contextLoss[0] + contextLoss[1]) / 2, contextLoss[2]]

    const rows = setRows(contexts, prompts)
    // 3 rows per evaluator run: the set's 8 rows take three runs, the last one padded
    const evaluator = await Effect.runPromise(lossEvaluator({ checkpoint }, rows, (c) => contexts[c].prompt, 2, { graphDir: path.join(dir, "eval"), device: { kind: "cpu" }, batchSize: 3 }))
    const got = await Effect.runPromise(evaluator.evaluate())
    await Effect.runPromise(evaluator.release)
    // float32 forward vs float64: log-probs agree to ~1e-5 relative; these losses are ~10-30 nats
    for (const [i, p] of got.prompts.entries()) expect(Math.abs(p.loss - perPrompt[i])).toBeLessThan(2e-4 * perPrompt[i])
    expect(Math.abs(got.loss - (perPrompt[0] + perPrompt[1]))).toBeLessThan(2e-4 * got.loss)
    // the mass on the targets, averaged over prefixes: Σ_y exp(ll_y) ≤ 1 (prefix-free targets)
    for (const p of got.prompts) expect(p.targetMass).toBeLessThanOrEqual(1)

    // the train step's loss at each step of the first pass is its context's loss before the update
    // (LoRA B starts at 0); batchSize 2 makes every step two micro-batches (3 targets -> 2 + 1)
    const metrics: Metric[] = []
    const params = {
      rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj", "down_proj"], passes: 1, batchSize: 2, lr: 1e-9, warmupSteps: 0, schedule: "constant" as const,
      minLrRatio: 1, weightDecay: 0, eps: 1e-5, maxGradNorm: 1, earlyStop: false, gamma: 0, seed: 0, threads: 1, checkpointEvery: 0,
    }
    const ckptDir = fs.mkdtempSync(path.join(dir, "train-"))
    await Effect.runPromise(diffuseTrain.spec.run({ params, inputs: { model: { path: modelDir, hash: "", size: 0 }, prompts }, ctx: stageContext(ckptDir, { metrics }) }) as never)
    const stepLosses = metrics.filter((m) => m.name === "loss").map((m) => m.value)
    expect(stepLosses).toHaveLength(3)
    // each step's context weighs 1/(its prompt's prefixes); the steps visit the contexts in some order
    const weighted = contextLoss.map((l, c) => l / prompts.prompts[contexts[c].prompt].responses.length).sort((a, b) => a - b)
    stepLosses.sort((a, b) => a - b).forEach((l, i) => expect(Math.abs(l - weighted[i])).toBeLessThan(2e-4 * weighted[i]))
    // the set's loss before training is the evaluator's
    expect(metrics.find((m) => m.name === "set_loss" && m.step === 0)!.value).toBeCloseTo(got.loss, 3)
  }, 120_000)
})
