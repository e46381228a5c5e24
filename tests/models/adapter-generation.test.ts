// Generation with a LoRA adapter applied in-graph (GeneratorOptions.adapter) against generation
// from the checkpoint that mergeLora writes with the same adapter: same greedy tokens and log-probs
// within float32 rounding, with the per-token step graph and with the ONNX Loop decode graph.
import { Effect, Exit } from "effect"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { tinyLlama } from "../../src/models/init.ts"
import type { LoraAdapter } from "../../src/models/peft.ts"
import { nonZeroAdapter, randomCheckpoint, tempDir } from "./forward-helpers.ts"

const requests: GenerationRequest[] = [
  { prompt: [1, 5, 9], maxNewTokens: 9, temperature: 0, stopTokenIds: [] },
  { prompt: [1, 20, 33, 7, 41, 12, 8], maxNewTokens: 9, temperature: 0, stopTokenIds: [] },
]

describe("generation with an adapter", () => {
  it("equals generation from the merged checkpoint (step graph and decode loop); a foreign module is refused", async () => {
    const ckpt = await randomCheckpoint(tinyLlama({ vocabSize: 64, maxPositions: 32 }), { std: 0.3 })
    const { adapter, config, merged } = await nonZeroAdapter(ckpt)

    const generate = (c: typeof ckpt, stepsPerRun: number, a?: LoraAdapter) =>
      Effect.runPromise(Effect.flatMap(makeGenerator(c, { graphDir: tempDir("pipe-adapter-gen-"), stepsPerRun, ...(a ? { adapter: a } : {}) }), (g) => g.generate(requests)))
    const want = await generate(merged, 1)
    const base = await generate(ckpt, 1)
    // the adapter must change the greedy continuation for the comparison to mean something
    expect(base.map((g) => g.tokens)).not.toEqual(want.map((g) => g.tokens))
    for (const stepsPerRun of [1, 4]) {
      const got = await generate(ckpt, stepsPerRun, adapter)
      expect(got.map((g) => g.tokens)).toEqual(want.map((g) => g.tokens))
      // float32 rounding of B(Ax) added to Wx vs (W + BA)x: 1e-4 on O(1) log-probs
      got.forEach((g, i) => g.logProbs.forEach((lp, t) => expect(Math.abs(lp - want[i].logProbs[t])).toBeLessThan(1e-4)))
    }

    const foreign: LoraAdapter = { config, modules: new Map([["model.layers.9.self_attn.q_proj", adapter.modules.values().next().value!]]) }
    const exit = await Effect.runPromiseExit(makeGenerator(ckpt, { graphDir: path.join(tempDir("pipe-adapter-gen-"), "g"), adapter: foreign }))
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(exit)).toMatch(/model\.layers\.9\.self_attn\.q_proj is not a linear layer of the model/)
  })
})
