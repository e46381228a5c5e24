// Chunked scoring (src/models/scoring.ts) against float64 statistics of the reference logits:
// target log-probs, entropy, top-k log-probs and ids, tail mass; chunk 3 with a position count
// that is not a multiple of it (the padded last chunk), and left-padded continuation batches.
// With a LoRA adapter (ScoringGraphOptions.adapter): equal to scoring the checkpoint mergeLora
// writes (Llama, and GPT-2 whose Conv1D stores W^T); B = 0 equals the base model.
// Tolerance 1e-4 absolute (float32 log-softmax of O(1) logits, as in forward.test.ts).
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { initLora, loraAdapter } from "../../src/models/adapters.ts"
import { type Checkpoint, loadCheckpoint } from "../../src/models/checkpoint.ts"
import { tinyGpt2, tinyGptNeox, tinyLlama } from "../../src/models/init.ts"
import { type LoraAdapter, loraConfigFor, loraTargets, mergeLora } from "../../src/models/peft.ts"
import { forwardNames } from "../../src/models/forward.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { buildScoringGraph, perplexity, scoreContinuations, scoringNames } from "../../src/models/scoring.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { referenceLogits } from "../reference/reference.ts"
import { ids, randomCheckpoint, run, tempDir } from "./forward-helpers.ts"

const TOL = 1e-4
const K = 5

const logSoftmax = (z: Float64Array) => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
  return Array.from(z, (x) => x - lse)
}

const sessionFor = (ckpt: Checkpoint, adapter?: LoraAdapter) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const placement = yield* placeWeights(ckpt, tempDir("pipe-scoring-graph-"))
      const g = new Graph("scoring")
      buildScoringGraph(g, ckpt, placement, { topK: K, chunk: 3, ...(adapter ? { adapter } : {}) })
      return yield* createSession(yield* writeGraph(g, placement, "scoring"))
    }),
  )

const scoringSession = async (config = tinyLlama()) => {
  const ckpt = await randomCheckpoint(config)
  return { ckpt, session: await sessionFor(ckpt) }
}

describe("scoring", () => {
  it("per-position stats equal float64 statistics of the reference logits", async () => {
    const { ckpt, session } = await scoringSession()
    const seq = [1, 7, 3, 60, 12, 5, 9, 33] // 7 scored positions: chunks of 3, 3, 1 (+2 padded)
    const T = seq.length - 1
    const out = await run(session, {
      [forwardNames.ids]: ids([seq.slice(0, -1)]),
      [forwardNames.mask]: tensor("int64", [1, T], Array(T).fill(1)),
      [scoringNames.targets]: ids([seq.slice(1)]),
    })
    expect(out[scoringNames.topLogProbs].dims).toEqual([1, T, K])
    const ref = referenceLogits(ckpt.dir, seq.slice(0, -1)).map(logSoftmax)
    const lp = out[scoringNames.targetLogProb].data as Float32Array
    const ent = out[scoringNames.entropy].data as Float32Array
    const top = out[scoringNames.topLogProbs].data as Float32Array
    const topIds = out[scoringNames.topIds].data as BigInt64Array
    const tail = out[scoringNames.tailMass].data as Float32Array
    ref.forEach((l, t) => {
      expect(Math.abs(lp[t] - l[seq[t + 1]])).toBeLessThan(TOL)
      expect(Math.abs(ent[t] - -l.reduce((s, x) => s + Math.exp(x) * x, 0))).toBeLessThan(TOL)
      const order = l.map((x, i) => [x, i] as const).sort((a, b) => b[0] - a[0])
      for (let j = 0; j < K; j++) {
        expect(Math.abs(top[t * K + j] - order[j][0])).toBeLessThan(TOL)
        expect(Number(topIds[t * K + j])).toBe(order[j][1])
      }
      const rest = order.slice(K).reduce((s, [x]) => s + Math.exp(x), 0)
      expect(Math.abs(tail[t] - rest)).toBeLessThan(TOL)
    })
  })

  it("continuations scored in a left-padded batch equal the reference, and perplexity follows", async () => {
    const { ckpt, session } = await scoringSession(tinyGptNeox())
    const requests = [
      { context: [1, 4, 9], continuation: [16, 25, 36] },
      { context: [1], continuation: [2] },
      { context: [1, 3, 5, 7, 9], continuation: [11, 13] },
    ]
    const scores = await Effect.runPromise(scoreContinuations(session, requests))
    requests.forEach((r, i) => {
      const seq = [...r.context, ...r.continuation]
      const ref = referenceLogits(ckpt.dir, seq.slice(0, -1)).map(logSoftmax)
      const want = r.continuation.map((tok, j) => ref[r.context.length - 1 + j][tok])
      expect(scores[i].logProbs.length).toBe(want.length)
      scores[i].logProbs.forEach((x, j) => expect(Math.abs(x - want[j])).toBeLessThan(TOL))
      expect(Math.abs(perplexity(scores[i].logProbs) - Math.exp(-want.reduce((a, b) => a + b, 0) / want.length))).toBeLessThan(1e-3)
    })
  })
})

describe("scoring errors", () => {
  it("an empty context is a ScoringError naming the request", async () => {
    const { session } = await scoringSession()
    const exit = await Effect.runPromiseExit(scoreContinuations(session, [{ context: [1], continuation: [2] }, { context: [], continuation: [3] }]))
    expect(String(exit)).toMatch(/request 1 has an empty context/)
  })
})

describe("scoring with a LoRA adapter", () => {
  const requests = [
    { context: [1, 4, 9], continuation: [16, 25, 36, 49] },
    { context: [1, 3, 5, 7, 9, 11], continuation: [13, 2] },
  ]
  const logProbs = async (ckpt: Checkpoint, adapter?: LoraAdapter) =>
    (await Effect.runPromise(scoreContinuations(await sessionFor(ckpt, adapter), requests))).flatMap((s) => s.logProbs)
  const worst = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i])))

  for (const [name, config, modules] of [
    ["llama", tinyLlama(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
    ["gpt2 (Conv1D, W^T stored)", tinyGpt2(), ["c_attn", "c_proj", "c_fc"]],
  ] as const)
    it(`${name}: equals the mergeLora checkpoint; B = 0 equals the base model`, async () => {
      const ckpt = await randomCheckpoint(config)
      const targets = await Effect.runPromise(loraTargets(ckpt, modules))
      const lc = await Effect.runPromise(loraConfigFor(ckpt, { r: 2, loraAlpha: 4, targetModules: modules }))
      const init = initLora(targets, 2, 3)
      const zeroB = loraAdapter(lc, targets, Object.fromEntries(Object.entries(init).map(([k, v]) => [k, v.data])))
      // non-zero B (initLora leaves it 0), so the adapter changes the model
      const adapter = loraAdapter(lc, targets, Object.fromEntries(Object.entries(init).map(([k, v]) => [k, k.endsWith(".B") ? v.data.map((_, i) => 0.4 * Math.sin(3 * i + 1)) : v.data])))
      const mergedDir = tempDir("pipe-scoring-merged-")
      await Effect.runPromise(mergeLora(ckpt.dir, adapter, mergedDir))

      const base = await logProbs(ckpt)
      const want = await logProbs(await Effect.runPromise(loadCheckpoint(mergedDir)))
      expect(worst(want, base)).toBeGreaterThan(1e-2)
      // W x + s B (A x) in float32 vs (W + s B A) x with the merged W rounded to float32
      expect(worst(await logProbs(ckpt, adapter), want)).toBeLessThan(TOL)
      // B = 0 adds exact zeros
      expect(worst(await logProbs(ckpt, zeroB), base)).toBeLessThan(1e-6)
    })

  it("an adapter module that is not a linear layer of the model is refused, naming it", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const modules = ["q_proj"]
    const targets = await Effect.runPromise(loraTargets(ckpt, modules))
    const lc = await Effect.runPromise(loraConfigFor(ckpt, { r: 2, loraAlpha: 4, targetModules: modules }))
    const a = loraAdapter(lc, targets, Object.fromEntries(Object.entries(initLora(targets, 2, 3)).map(([k, v]) => [k, v.data])))
    const foreign: LoraAdapter = { config: lc, modules: new Map([["model.layers.7.self_attn.q_proj", a.modules.values().next().value!]]) }
    await expect(sessionFor(ckpt, foreign)).rejects.toThrow(/model\.layers\.7\.self_attn\.q_proj is not a linear layer/)
  })
})
