// Batched KV-cache generation on a random tiny Llama (GQA, 3 layers) against the float64
// reference forward, against itself unbatched / uncached / in other batches, and the stop rules.
// (Generation with a non-zero LoRA adapter against the merged checkpoint: adapter-generation.test.ts.)
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { initLora, loraAdapter } from "../../src/models/adapters.ts"
import { type Checkpoint, loadCheckpoint } from "../../src/models/checkpoint.ts"
import { type Generation, type GenerationRequest, type Generator, makeGenerator } from "../../src/models/generate.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { loraConfigFor, loraTargets } from "../../src/models/peft.ts"
import { referenceLogits } from "../reference/reference.ts"

// a decoder for stop strings: token i reads "<i>", so stop strings can straddle tokens
const decode = (ids: ReadonlyArray<number>) => ids.map((i) => `<${i}>`).join("")

let dir: string
let ckpt: Checkpoint
let gen: Generator
const run = (requests: GenerationRequest[], options: { batchSize?: number; cache?: boolean } = {}) => Effect.runPromise(gen.generate(requests, options))

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-generate-"))
  const config = tinyLlama({ vocabSize: 64, hiddenSize: 32, numHeads: 4, numKvHeads: 2, intermediateSize: 48, numLayers: 3, maxPositions: 48, eosTokenIds: [2] })
  // std 0.3: peaked next-token distributions (greedy choices are not near-ties) that still vary
  await Effect.runPromise(writeRandomCheckpoint(path.join(dir, "model"), config, { seed: 5, std: 0.3 }))
  ckpt = await Effect.runPromise(loadCheckpoint(path.join(dir, "model")))
  gen = await Effect.runPromise(makeGenerator(ckpt, { graphDir: path.join(dir, "graph"), tokenizer: { decode } }))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const prompts = [[1, 5, 9], [1, 20, 33, 7, 41, 12, 8], [1, 60, 3, 3, 17, 29, 50, 11, 4, 30, 22, 13]]
const sampled = (prompt: number[], seed: number): GenerationRequest => ({ prompt, maxNewTokens: 10, temperature: 1, topP: 0.9, topK: 20, seed, stopTokenIds: [] })
const tokensOf = (gs: Generation[]) => gs.map((g) => g.tokens)
const expectClose = (a: Generation[], b: Generation[], tol: number) =>
  a.forEach((g, i) => g.logProbs.forEach((lp, t) => expect(Math.abs(lp - b[i].logProbs[t])).toBeLessThan(tol)))

describe("generate", () => {
  it("greedy follows the float64 reference argmax on the growing sequence, with its log-probs", async () => {
    const out = await run(prompts.map((prompt) => ({ prompt, maxNewTokens: 8, temperature: 0, stopTokenIds: [] })))
    out.forEach((g, i) => {
      expect(g.tokens).toHaveLength(8)
      expect(g.finishReason).toBe("length")
      const seq = [...prompts[i]]
      g.tokens.forEach((tok, t) => {
        const logits = referenceLogits(ckpt.dir, seq).at(-1)!
        const max = Math.max(...logits)
        // the chosen token is the reference argmax up to float32 rounding (1e-4 on O(1) logits)
        expect(max - logits[tok]).toBeLessThan(1e-4)
        const lse = max + Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0))
        expect(Math.abs(g.logProbs[t] - (logits[tok] - lse))).toBeLessThan(1e-4)
        seq.push(tok)
      })
    })
  })

  it("batched left-padded results equal unbatched ones (greedy and sampled)", async () => {
    const requests = [...prompts.map((prompt) => ({ prompt, maxNewTokens: 10, temperature: 0, stopTokenIds: [] })), ...prompts.map((p, i) => sampled(p, 100 + i))]
    const batched = await run(requests, { batchSize: 6 })
    const alone = await run(requests, { batchSize: 1 })
    expect(tokensOf(batched)).toEqual(tokensOf(alone))
    // padding changes float32 reduction sizes only: 1e-4 on log-probs
    expectClose(batched, alone, 1e-4)
  })

  it("a request's output depends on its seed, not on the batch it is in", async () => {
    const a = sampled(prompts[1], 7)
    const [inPair] = await run([a, sampled(prompts[0], 8)])
    const [, inTriple] = await run([sampled(prompts[2], 9), a, sampled(prompts[0], 10)])
    const [again] = await run([a])
    expect(inPair.tokens).toEqual(inTriple.tokens)
    expect(inPair.tokens).toEqual(again.tokens)
    const others = await run([1, 2, 3, 4].map((s) => sampled(prompts[1], s)))
    // other seeds give other continuations (10 tokens at temperature 1 from a 20-token nucleus)
    expect(others.some((g) => g.tokens.join() !== inPair.tokens.join())).toBe(true)
    expect(new Set(others.map((g) => g.tokens.join())).size).toBeGreaterThan(1)
  })

  it("the KV-cache path equals recomputing the whole sequence every step", async () => {
    const requests = [...prompts.map((p, i) => sampled(p, 30 + i)), { prompt: prompts[2], maxNewTokens: 10, temperature: 0, stopTokenIds: [] }]
    const cached = await run(requests)
    const recomputed = await run(requests, { cache: false })
    expect(tokensOf(cached)).toEqual(tokensOf(recomputed))
    expectClose(cached, recomputed, 1e-4)
  })

  it("the decode loop in-graph (ONNX Loop, 4 steps per run) gives the per-step results", async () => {
    const looped = await Effect.runPromise(makeGenerator(ckpt, { graphDir: path.join(dir, "graph-loop"), tokenizer: { decode }, stepsPerRun: 4 }))
    const requests: GenerationRequest[] = [
      ...prompts.map((p, i) => sampled(p, 50 + i)),
      { prompt: prompts[2], maxNewTokens: 11, temperature: 0, stopTokenIds: [] },
      { prompt: prompts[1], maxNewTokens: 9, minNewTokens: 6, temperature: 1.5, seed: 3 },
      { prompt: prompts[0], maxNewTokens: 10, temperature: 0.8, seed: 4, stopTokenIds: [], stopStrings: ["><"] },
    ]
    const perStep = await run(requests)
    const inLoop = await Effect.runPromise(looped.generate(requests))
    expect(tokensOf(inLoop)).toEqual(tokensOf(perStep))
    expect(inLoop.map((g) => g.finishReason)).toEqual(perStep.map((g) => g.finishReason))
    expect(inLoop.map((g) => g.text)).toEqual(perStep.map((g) => g.text))
    expectClose(inLoop, perStep, 1e-4)
  })

  it("rows repeating a prompt share its prefill and still sample as if alone (step and decode-loop paths)", async () => {
    // three distinct prompts, each asked several times with its own seed (greedy once): a batch of 8 prefills 3 rows
    const requests = [0, 1, 2, 0, 1, 0, 2, 1].map((p, i) => (i === 0 ? { prompt: prompts[p], maxNewTokens: 10, temperature: 0, stopTokenIds: [] } : sampled(prompts[p], 60 + i)))
    const alone = await run(requests, { batchSize: 1 })
    const looped = await Effect.runPromise(makeGenerator(ckpt, { graphDir: path.join(dir, "graph-loop-shared"), tokenizer: { decode }, stepsPerRun: 4 }))
    for (const shared of [await run(requests, { batchSize: 8 }), await Effect.runPromise(looped.generate(requests, { batchSize: 8 }))]) {
      expect(tokensOf(shared)).toEqual(tokensOf(alone))
      // the prompt's last token goes through a decode step instead of the prefill: float32 rounding only
      expectClose(shared, alone, 1e-4)
    }
    // the seeds still decide: the sampled rows of one prompt differ from each other
    expect(new Set([1, 4, 7].map((i) => alone[i].tokens.join())).size).toBeGreaterThan(1)
  })

  it("a LoRA adapter with B = 0 (PEFT's initialization) generates what the base model does", async () => {
    const modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    const targets = await Effect.runPromise(loraTargets(ckpt, modules))
    const config = await Effect.runPromise(loraConfigFor(ckpt, { r: 2, loraAlpha: 4, targetModules: modules }))
    const adapter = loraAdapter(config, targets, Object.fromEntries(Object.entries(initLora(targets, 2, 1)).map(([k, v]) => [k, v.data])))
    const adapted = await Effect.runPromise(makeGenerator(ckpt, { graphDir: path.join(dir, "graph-lora"), stepsPerRun: 4, adapter }))
    const requests = [...prompts.map((p, i) => sampled(p, 60 + i)), { prompt: prompts[1], maxNewTokens: 10, temperature: 0, stopTokenIds: [] }]
    const got = await Effect.runPromise(adapted.generate(requests))
    const want = await run(requests)
    expect(tokensOf(got)).toEqual(tokensOf(want))
    // the adapter adds exact zeros; what remains is the step vs decode-loop graph (1e-4 above)
    expectClose(got, want, 1e-4)
  })

  it("stops at a stop token (kept in tokens, not in text) and bans it before minNewTokens", async () => {
    const [free] = await run([{ prompt: prompts[1], maxNewTokens: 12, temperature: 0, stopTokenIds: [] }])
    const stopAt = 3
    const stop = free.tokens[stopAt]
    const first = free.tokens.indexOf(stop)
    const [stopped] = await run([{ prompt: prompts[1], maxNewTokens: 12, temperature: 0, stopTokenIds: [stop] }])
    expect(stopped.finishReason).toBe("stop_token")
    expect(stopped.tokens).toEqual(free.tokens.slice(0, first + 1))
    expect(stopped.text).toBe(decode(free.tokens.slice(0, first)))
    const [held] = await run([{ prompt: prompts[1], maxNewTokens: 12, minNewTokens: first + 2, temperature: 0, stopTokenIds: [stop] }])
    expect(held.tokens.slice(0, first + 2)).not.toContain(stop)
    expect(held.tokens.length).toBeGreaterThanOrEqual(first + 2)
    // the banned step's reported log-prob is still under the unconstrained model
    expect(held.tokens.slice(0, first)).toEqual(free.tokens.slice(0, first))
  })

  it("stops at the default eos ids of the model", async () => {
    const out = await run([0, 1, 2, 3, 4, 5, 6, 7].map((seed) => ({ prompt: [1, 4 + seed], maxNewTokens: 30, temperature: 1.5, seed })))
    expect(out.some((g) => g.finishReason === "stop_token")).toBe(true)
    for (const g of out) {
      const eos = g.tokens.indexOf(2)
      if (g.finishReason === "stop_token") expect(eos).toBe(g.tokens.length - 1)
      else expect(eos).toBe(-1)
    }
  })

  it("stops on stop strings, also when they straddle tokens", async () => {
    const [free] = await run([{ prompt: prompts[0], maxNewTokens: 10, temperature: 0, stopTokenIds: [] }])
    const [one] = await run([{ prompt: prompts[0], maxNewTokens: 10, temperature: 0, stopTokenIds: [], stopStrings: [`<${free.tokens[2]}>`] }])
    const first = free.tokens.indexOf(free.tokens[2])
    expect(one.finishReason).toBe("stop_string")
    expect(one.tokens).toEqual(free.tokens.slice(0, first + 1))
    expect(one.text).toBe(decode(free.tokens.slice(0, first)))
    const straddle = `${free.tokens[4]}><${free.tokens[5]}`
    const [two] = await run([{ prompt: prompts[0], maxNewTokens: 10, temperature: 0, stopTokenIds: [], stopStrings: ["never", straddle] }])
    const text = decode(free.tokens)
    expect(two.finishReason).toBe("stop_string")
    expect(two.text).toBe(text.slice(0, text.indexOf(straddle)))
    expect(two.tokens.length).toBeLessThanOrEqual(6)
  })

  it("rejects requests that do not fit the model with a message naming the request", async () => {
    const exit = await Effect.runPromiseExit(gen.generate([{ prompt: [1], maxNewTokens: 2 }, { prompt: [1, 2, 3], maxNewTokens: 46 }]))
    expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/request 1: prompt \(3\) \+ maxNewTokens \(46\) exceeds .*48/)
    const bad = await Effect.runPromiseExit(gen.generate([{ prompt: [64], maxNewTokens: 2 }]))
    expect(Exit.isFailure(bad) && String(bad.cause)).toMatch(/request 0: prompt token 64 is outside the vocabulary/)
  })
})
