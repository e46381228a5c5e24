// The ONNX decoder (src/models/forward.ts) against the independent float64 reference
// (tests/reference/reference.ts) on random tiny checkpoints of each architecture, plus the
// properties generation and batching rely on: left-padded batches equal unbatched rows, and an
// incremental KV-cache decode equals the full recompute.
//
// Tolerance: logits are O(1) (std-0.2 weights, 16-32 wide layers); float32 with reassociated sums
// differs from float64 by ~1e-6 relative per op, so 1e-4 absolute is a few hundred ulps of
// headroom while a wrong rotation, mask or head split moves logits by >1e-2. Half-precision
// checkpoints compare to the reference reading the same rounded weights, so the same bound holds.
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { type ModelConfig, readWeight } from "../../src/models/checkpoint.ts"
import { toFloat64 } from "../../src/core/safetensors.ts"
import { allWeightRefs, decoder, forwardNames } from "../../src/models/forward.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { createSession } from "../../src/runtime/session.ts"
import { type WeightDType, tinyGpt2, tinyGptNeox, tinyLlama } from "../../src/models/init.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { referenceLogits } from "../reference/reference.ts"
import { expectClose, expectForwardMatchesReference, forwardSession, ids, randomCheckpoint, rowsOf, run, tempDir } from "./forward-helpers.ts"

const TOL = 1e-4
const seq = [1, 7, 3, 60, 12, 5, 9, 33]

const cases: Array<[string, ModelConfig, WeightDType]> = [
  ["llama (GQA 4:2, separate head)", tinyLlama(), "F32"],
  ["llama (tied embeddings, MHA)", tinyLlama({ numKvHeads: 4, tiedEmbeddings: true }), "F32"],
  ["llama (qkv bias, llama3 rope scaling, bf16)", tinyLlama({ bias: { qkv: true, o: false, mlp: false, norm: false }, hfArchitecture: "Qwen2ForCausalLM", positions: { kind: "rope", theta: 500000, rotaryDim: 4, scaling: { kind: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8 } } }), "BF16"],
  ["gpt2", tinyGpt2(), "F32"],
  ["gpt2 (fp16)", tinyGpt2(), "F16"],
  ["gpt_neox (partial rotary, parallel residual)", tinyGptNeox(), "F32"],
]

describe("forward graph vs float64 reference", () => {
  for (const [name, config, dtype] of cases)
    it(name, () => expectForwardMatchesReference(config, dtype, seq, TOL))
})

describe("batching and KV cache", () => {
  for (const [name, config] of [
    ["llama", tinyLlama()],
    ["gpt2", tinyGpt2()],
    ["gpt_neox", tinyGptNeox()],
  ] as const)
    it(`${name}: left-padded batch rows equal unbatched rows; cached decode equals full recompute`, async () => {
      const ckpt = await randomCheckpoint(config)
      const s = await forwardSession(ckpt, { cache: true })
      const c = ckpt.config
      const emptyPast = (B: number) => {
        const feeds: Record<string, ReturnType<typeof tensor>> = {}
        for (let l = 0; l < c.numLayers; l++) {
          feeds[forwardNames.pastKey(l)] = tensor("float32", [B, c.numKvHeads, 0, c.headDim], [])
          feeds[forwardNames.pastValue(l)] = tensor("float32", [B, c.numKvHeads, 0, c.headDim], [])
        }
        return feeds
      }
      // row 0: full sequence; row 1: a shorter sequence left-padded with 3 pad tokens (id 0)
      const short = seq.slice(0, 5)
      const batch = await run(s, {
        [forwardNames.ids]: ids([seq, [0, 0, 0, ...short]]),
        [forwardNames.mask]: tensor("int64", [2, 8], [...seq.map(() => 1), 0, 0, 0, 1, 1, 1, 1, 1]),
        ...emptyPast(2),
      })
      expectClose(rowsOf(batch.logits, 0), referenceLogits(ckpt.dir, seq), TOL)
      expectClose(rowsOf(batch.logits, 1, 3), referenceLogits(ckpt.dir, short), TOL)

      // incremental decode of the padded batch: prefill 8 columns, then two steps of one token
      const next = [[21, 22], [31, 32]]
      let past: Record<string, ReturnType<typeof tensor>> = {}
      for (let l = 0; l < c.numLayers; l++) {
        past[forwardNames.pastKey(l)] = batch[forwardNames.presentKey(l)]
        past[forwardNames.pastValue(l)] = batch[forwardNames.presentValue(l)]
      }
      const maskRows = [[...seq.map(() => 1)], [0, 0, 0, 1, 1, 1, 1, 1]]
      for (let step = 0; step < 2; step++) {
        maskRows.forEach((r) => r.push(1))
        const out = await run(s, {
          [forwardNames.ids]: ids([[next[0][step]], [next[1][step]]]),
          [forwardNames.mask]: tensor("int64", [2, maskRows[0].length], maskRows.flat()),
          ...past,
        })
        expect(out[forwardNames.presentKey(0)].dims[2]).toBe(9 + step)
        expectClose(rowsOf(out.logits, 0), referenceLogits(ckpt.dir, [...seq, ...next[0].slice(0, step + 1)]).slice(-1), TOL)
        expectClose(rowsOf(out.logits, 1), referenceLogits(ckpt.dir, [...short, ...next[1].slice(0, step + 1)]).slice(-1), TOL)
        past = {}
        for (let l = 0; l < c.numLayers; l++) {
          past[forwardNames.pastKey(l)] = out[forwardNames.presentKey(l)]
          past[forwardNames.pastValue(l)] = out[forwardNames.presentValue(l)]
        }
      }
    })
})

describe("inside a Loop body", () => {
  it("the decoder built in a subgraph reads the root's external weights (greedy decode of 3 tokens in-graph)", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const c = ckpt.config
    const session = await Effect.runPromise(
      Effect.gen(function* () {
        const placement = yield* placeWeights(ckpt, tempDir("pipe-loop-graph-"))
        const g = new Graph("loop")
        const source = externalWeights(g, placement)
        const prompt = g.input("input_ids", "int64", [1, "seq"])
        // carried: the whole sequence so far (recomputed each step: this checks wiring, not speed)
        const [final] = g.loop(g.constant("int64", [], [3]), null, [prompt], (sub, _iter, [seqSoFar]) => {
          const mask = sub.add(sub.mul(seqSoFar, sub.constant("int64", [], [0])), sub.constant("int64", [], [1]))
          const out = decoder(sub, c, ckpt.weights, source, { ids: seqSoFar, mask })
          const last = sub.slice(out.hidden, [-1], [2 ** 31], [1]) // [1, 1, H]
          const next = sub.argMax(sub.matMul(last, sub.transpose(out.lmHead, [1, 0])), -1, false) // [1, 1]
          return { carried: [sub.concat([seqSoFar, next], 1)] }
        })
        g.outputAs("sequence", final)
        return yield* createSession(yield* writeGraph(g, placement, "loop"))
      }),
    )
    const prompt = [1, 7, 3]
    const out = await run(session, { input_ids: ids([prompt]) })
    const want = [...prompt]
    for (let i = 0; i < 3; i++) {
      const z = referenceLogits(ckpt.dir, want).at(-1)!
      want.push(z.indexOf(Math.max(...z)))
    }
    expect(Array.from(out.sequence.data as BigInt64Array, Number)).toEqual(want)
  })
})

describe("weights as graph inputs", () => {
  it("weightsAsInputs: one input per distinct tensor name (tied once), fed the checkpoint's values, equals the reference", async () => {
    const ckpt = await randomCheckpoint(tinyGpt2())
    const s = await forwardSession(ckpt, { weightsAsInputs: true })
    const refs = allWeightRefs(ckpt.weights)
    expect([...s.ort.inputNames].sort()).toEqual([forwardNames.ids, forwardNames.mask, ...refs.map((r) => r.name)].sort())
    const feeds: Record<string, ReturnType<typeof tensor>> = { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) }
    for (const r of refs) {
      // stored layout (GPT-2 Conv1D weights stay [in, out]), so trained values write back as they are
      feeds[r.name] = tensor("float32", [...r.shape], Float32Array.from(toFloat64(await Effect.runPromise(readWeight(r)))))
    }
    expectClose(rowsOf((await run(s, feeds)).logits, 0), referenceLogits(ckpt.dir, seq), TOL)
  })
})
