// Training on a case of known entropy: one prompt, two targets, uniform p*, so the optimal loss is
// H(p*) = ln 2 and, targets being prefix-free, no loss can go below it (Gibbs' inequality). With
// earlyStop and gamma 0.5 training must stop at the first pass whose loss is <= 1.5 ln 2.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { readAdapterFile } from "../../src/models/peft.ts"
import type { DiffusePrompts } from "../../stages/diffuse/prompts.ts"
import { diffuseTrain, TRAIN_SUMMARY, type TrainSummary } from "../../stages/diffuse/train.ts"
import type { TensorsOutput } from "../../src/engine/index.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-diffuse-early-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const prompts: DiffusePrompts = {
  source: "inline",
  prompts: [{ id: "coin", file: "coin.json", request: "Name a random town.", responses: [""], targets: ["Porby", "Menby"], weights: [0.5, 0.5] }],
}

describe("diffuse-train early stopping", () => {
  it("reports ln 2 as the optimal loss, never goes below it, and stops at loss <= optimal * (1 + gamma)", async () => {
    // the shipped model: a random checkpoint's tiny embeddings bound how peaked its distribution can
    // get (its loss on this case stalls near 13.5 nats), a trained one's do not
    const modelDir = path.join(repo, "models/tiny-chat")
    const params = {
      rank: 4, alpha: 8, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], passes: 30, batchSize: 2, lr: 2e-2,
      warmupSteps: 0, schedule: "constant" as const, minLrRatio: 1, weightDecay: 0, eps: 1e-5, maxGradNorm: 1, earlyStop: true, gamma: 0.5, seed: 0, threads: 1, checkpointEvery: 0,
    }
    const logs: string[] = []
    const out = (await Effect.runPromise(diffuseTrain.spec.run({ params, inputs: { model: { path: modelDir, hash: "", size: 0 }, prompts }, ctx: stageContext(path.join(dir, "work"), { logs }) }) as never)) as TensorsOutput
    const adapter = await tensorsValue(out)
    const summary = JSON.parse(adapter.metadata[TRAIN_SUMMARY]) as TrainSummary
    expect(summary.optimalLoss).toBeCloseTo(Math.log(2), 12)
    const threshold = 1.5 * Math.log(2)
    expect(summary.threshold).toBeCloseTo(threshold, 12)
    const losses = summary.passLosses
    expect(summary.stoppedEarly).toBe(true)
    expect(summary.passesRun).toBe(losses.length - 1)
    expect(summary.passesRun).toBeLessThan(params.passes)
    // the last pass is the first at or below the threshold
    expect(losses[losses.length - 1]).toBeLessThanOrEqual(threshold)
    for (const l of losses.slice(0, -1)) expect(l).toBeGreaterThan(threshold)
    // float32 log-probs: 1e-5 below the bound is rounding, more would be a wrong loss
    for (const l of losses) expect(l).toBeGreaterThan(Math.log(2) - 1e-5)
    expect(summary.prompts[0].targetMass).toBeGreaterThan(Math.exp(-threshold))
    expect(logs.join("\n")).toContain("stopped early")
    // the adapter is a PEFT adapter with the rank asked for
    const read = await Effect.runPromise(readAdapterFile(adapter.path))
    expect(read.config.r).toBe(4)
  }, 240_000)
})
