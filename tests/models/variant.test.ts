// Model variants (src/models/variant.ts) on random tiny checkpoints:
// - a soft prompt, a conditional soft prompt and a text prefix on one variant: the logits at the
//   real tokens equal the float64 reference on [soft vectors, MLP(condition) vectors, prefix tokens,
//   tokens] given as input embeddings, in a left-padded batch (Llama; Gemma 2, which scales
//   inputs_embeds by sqrt(H));
// - a soft prompt (or conditional one) initialized at token embeddings equals the prefix of those
//   tokens (Llama; Gemma 3, whose token embeddings carry the sqrt(H) factor);
// - a text-prefix variant generates and scores exactly as the checkpoint on prefix + prompt;
// - a soft-prompted (and a conditionally soft-prompted) variant generates with the KV cache what a
//   full recompute and the decode loop give, with log-probs equal to the float64 reference; its
//   scoring graph likewise;
// - gradients w.r.t. the soft vectors and the condition MLP's weights match finite differences,
//   through the variant forward and through one step of the training driver (trainLoop);
// - a LoRA and a soft prompt on one variant train together in one train step; LoRA dropout reaches
//   the trainable LoRAs of a training graph.
// Tolerances: 1e-4 absolute on O(1) logits / log-probs, as in forward.test.ts (float32 graph vs
// float64 reference); finite differences: see the gradient test.
import { Effect, Exit } from "effect"
import type * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { buildTrainStep, type TrainStepSpec } from "../../src/graph/optim.ts"
import { conditionMlpShapes, initLora, loraAdapter } from "../../src/models/adapters.ts"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { type DecoderOutputs, forwardNames, logitsOf } from "../../src/models/forward.ts"
import { type GenerationRequest, makeGenerator } from "../../src/models/generate.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { tinyGemma2, tinyGemma3, tinyLlama } from "../../src/models/init.ts"
import { loraConfigFor, loraTargets } from "../../src/models/peft.ts"
import { buildScoringGraph, scoreContinuations } from "../../src/models/scoring.ts"
import { checkVariant, initConditionalSoftPrompt, initSoftPrompt, prepareVariant, type Variant, variantNames, variantParams, withTrainedValues } from "../../src/models/variant.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { initTrainState, trainStep } from "../../src/runtime/train.ts"
import { stackMicroBatches, trainLoop } from "../../src/runtime/train-loop.ts"
import { referenceForward, referenceModel } from "../reference/reference.ts"
import { stageContext } from "../stage-harness.ts"
import { gradCheck } from "../graph/gradcheck.ts"
import { randArray } from "../graph/run.ts"
import { logSoftmax } from "./sampling-reference.ts"
import { batchSpec, constantWeights, expectClose, ids, nextTokenLoss, nonZeroAdapter, randomCheckpoint, rowsOf, run, tempDir, trainBatch } from "./forward-helpers.ts"

const TOL = 1e-4

const random = (n: number, seed: number, scale = 0.5) => Float32Array.from(randArray(n, seed, scale))

/** A variant with every prompt-like intervention: soft prompt (k = 2), conditional (k = 2, C = 3), prefix. */
const promptedVariant = (ckpt: Checkpoint, parts: { soft?: boolean; conditional?: boolean; prefix?: number[] }): Variant => {
  const H = ckpt.config.hiddenSize
  const shapes = conditionMlpShapes(3, 5, 2, H)
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1)
  return {
    checkpoint: ckpt,
    ...(parts.soft ? { softPrompt: { k: 2, values: random(2 * H, 3) } } : {}),
    ...(parts.conditional
      ? {
          conditionalSoftPrompt: {
            k: 2,
            conditionSize: 3,
            hidden: 5,
            weights: { w1: random(size(shapes.w1), 4), b1: random(5, 5), w2: random(size(shapes.w2), 6), b2: random(size(shapes.b2), 7) },
          },
        }
      : {}),
    ...(parts.prefix ? { prefix: parts.prefix } : {}),
  }
}

/** The virtual block as the reference takes it: soft vectors, then W2 tanh(W1 c + b1) + b2 in float64, then prefix ids. */
const virtualInputs = (v: Variant, condition?: number[]): Array<number | Float64Array> => {
  const H = v.checkpoint.config.hiddenSize
  const out: Array<number | Float64Array> = []
  const rows = (data: ArrayLike<number>, k: number) => Array.from({ length: k }, (_, i) => Float64Array.from(Array.prototype.slice.call(data, i * H, (i + 1) * H) as number[]))
  if (v.softPrompt) out.push(...rows(v.softPrompt.values, v.softPrompt.k))
  const cp = v.conditionalSoftPrompt
  if (cp && condition) {
    const { w1, b1, w2, b2 } = cp.weights
    const h = Array.from({ length: cp.hidden }, (_, j) => Math.tanh(b1[j] + condition.reduce((s, c, i) => s + w1[j * cp.conditionSize + i] * c, 0)))
    const y = Array.from({ length: cp.k * H }, (_, o) => b2[o] + h.reduce((s, x, j) => s + w2[o * cp.hidden + j] * x, 0))
    out.push(...rows(y, cp.k))
  }
  out.push(...(v.prefix ?? []))
  return out
}

const referenceLogProbs = (v: Variant, condition: number[] | undefined, tokens: number[]) =>
  referenceForward(referenceModel(v.checkpoint), [...virtualInputs(v, condition), ...tokens]).slice(-tokens.length).map((z) => logSoftmax(Array.from(z)))

/** A session with inputs input_ids, attention_mask (and condition) and output logits [B, T, V] at the real tokens. */
const logitsSession = (v: Variant) =>
  Effect.runPromise(
    Effect.gen(function* () {
      yield* checkVariant(v)
      const placement = yield* placeWeights(v.checkpoint, tempDir("pipe-variant-graph-"))
      const g = new Graph("variant")
      const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
      const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
      const condition = v.conditionalSoftPrompt ? g.input(variantNames.condition, "float32", ["batch", 3]) : undefined
      const out = prepareVariant(g, v, externalWeights(g, placement))(g, { ids, mask, condition })
      g.outputAs("logits", logitsOf(g, out, g.matMul(out.hidden, g.transpose(out.lmHead, [1, 0]))))
      return yield* createSession(yield* writeGraph(g, placement, "variant"))
    }),
  )

/**
 * A train-step session for the variant's trainable values: next-token cross-entropy of its forward
 * on batchSpec's inputs (plus the condition input, with a conditional soft prompt).
 */
const trainSession = (v: Variant, step: Pick<TrainStepSpec, "adamw" | "microBatches">) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const placement = yield* placeWeights(v.checkpoint, tempDir("pipe-variant-train-"))
      const g = new Graph("variant_train")
      const forward = prepareVariant(g, v, externalWeights(g, placement), { training: true })
      const loss = nextTokenLoss(v.checkpoint.config.hiddenSize)
      const cp = v.conditionalSoftPrompt
      buildTrainStep({
        graph: g,
        params: variantParams(v).specs,
        batch: cp ? { ...batchSpec, [variantNames.condition]: { dtype: "float32", shape: ["batch", cp.conditionSize] } } : batchSpec,
        ...step,
        loss: (sub, params, b) => {
          const out = forward(sub, { ids: b.input_ids, mask: b.attention_mask, condition: b[variantNames.condition] }, params)
          return loss(sub, out.hidden, out.lmHead, b.targets, b.loss_mask)
        },
      })
      return yield* createSession(yield* writeGraph(g, placement, "variant_train"))
    }),
  )

const seq = [1, 7, 3, 60, 12, 5]
const short = [9, 4, 33]
const conditions = [
  [0.3, -1, 2],
  [1, 0.5, -0.2],
]

describe("the variant forward", () => {
  for (const [name, config] of [
    ["llama", tinyLlama()],
    ["gemma 2 (inputs_embeds scaled by sqrt(H))", tinyGemma2()],
  ] as const)
    it(`${name}: soft prompt + conditional soft prompt + prefix equal the reference on those inputs, left-padded`, async () => {
      const ckpt = await randomCheckpoint(config)
      const v = promptedVariant(ckpt, { soft: true, conditional: true, prefix: [40, 41] })
      const session = await logitsSession(v)
      const pad = seq.length - short.length
      const out = await run(session, {
        [forwardNames.ids]: ids([seq, [...Array(pad).fill(0), ...short]]),
        [forwardNames.mask]: tensor("int64", [2, seq.length], [...seq.map(() => 1), ...Array(pad).fill(0), ...short.map(() => 1)]),
        [variantNames.condition]: tensor("float32", [2, 3], conditions.flat()),
      })
      const model = referenceModel(ckpt)
      expectClose(rowsOf(out.logits, 0), referenceForward(model, [...virtualInputs(v, conditions[0]), ...seq]).slice(-seq.length), TOL)
      expectClose(rowsOf(out.logits, 1, pad), referenceForward(model, [...virtualInputs(v, conditions[1]), ...short]).slice(-short.length), TOL)
    })
})

describe("soft prompt initialization", () => {
  for (const [name, config] of [
    ["llama", tinyLlama()],
    ["gemma 3 (token embeddings carry the sqrt(H) factor)", tinyGemma3()],
  ] as const)
    it(`${name}: a soft prompt and a conditional soft prompt started at tokens equal the prefix of those tokens`, async () => {
      const ckpt = await randomCheckpoint(config)
      const tokens = [40, 41, 42]
      const soft = await Effect.runPromise(initSoftPrompt(ckpt, { tokens }))
      const cond = await Effect.runPromise(initConditionalSoftPrompt(ckpt, { conditionSize: 3, hidden: 5, seed: 1 }, { tokens }))
      const feeds = { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) }
      const want = rowsOf((await run(await logitsSession({ checkpoint: ckpt, prefix: tokens }), feeds)).logits, 0)
      expectClose(rowsOf((await run(await logitsSession({ checkpoint: ckpt, softPrompt: soft }), feeds)).logits, 0), want, TOL)
      const condFeeds = { ...feeds, [variantNames.condition]: tensor("float32", [1, 3], conditions[0]) }
      expectClose(rowsOf((await run(await logitsSession({ checkpoint: ckpt, conditionalSoftPrompt: cond }), condFeeds)).logits, 0), want, TOL)
      // drawn from the vocabulary: k rows, the same for the same seed
      const drawn = await Effect.runPromise(initSoftPrompt(ckpt, { k: 4, seed: 3 }))
      expect(drawn.values).toHaveLength(4 * ckpt.config.hiddenSize)
      expect((await Effect.runPromise(initSoftPrompt(ckpt, { k: 4, seed: 3 }))).values).toEqual(drawn.values)
    })
})

const greedyAndSampled = (prompts: number[][], extra: Partial<GenerationRequest>[] = []): GenerationRequest[] =>
  prompts.map((prompt, i) => ({ prompt, maxNewTokens: 6, temperature: i === 0 ? 0 : 1, seed: 5 + i, stopTokenIds: [], ...extra[i] }))

describe("text prefix", () => {
  it("generates and scores as the checkpoint on prefix + prompt", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const prefix = [40, 41, 42]
    const prompts = [seq, short]
    const variant = await Effect.runPromise(makeGenerator({ checkpoint: ckpt, prefix }, { graphDir: tempDir("pipe-variant-gen-") }))
    const plain = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-variant-gen-") }))
    const got = await Effect.runPromise(variant.generate(greedyAndSampled(prompts)))
    const want = await Effect.runPromise(plain.generate(greedyAndSampled(prompts.map((p) => [...prefix, ...p]))))
    got.forEach((g, i) => {
      expect(g.tokens).toEqual(want[i].tokens)
      expectClose([g.logProbs], [want[i].logProbs], TOL)
    })

    const scorer = async (model: Checkpoint | Variant) => {
      const placement = await Effect.runPromise(placeWeights(ckpt, tempDir("pipe-variant-score-")))
      const g = new Graph("scoring")
      buildScoringGraph(g, model, placement, { topK: 3 })
      return Effect.runPromise(Effect.flatMap(writeGraph(g, placement, "scoring"), (f) => createSession(f)))
    }
    const a = await Effect.runPromise(scoreContinuations(await scorer({ checkpoint: ckpt, prefix }), [{ context: [1, 7], continuation: [3, 60, 12] }]))
    const b = await Effect.runPromise(scoreContinuations(await scorer(ckpt), [{ context: [...prefix, 1, 7], continuation: [3, 60, 12] }]))
    expectClose([a[0].logProbs, a[0].entropies], [b[0].logProbs, b[0].entropies], TOL)
  })
})

describe("soft-prompted generation and scoring", () => {
  for (const [name, parts] of [
    ["soft prompt", { soft: true }],
    ["conditional soft prompt (a condition per request)", { conditional: true }],
  ] as const)
    it(`${name}: KV cache = full recompute = decode loop; log-probs and scores equal the float64 reference`, async () => {
      const ckpt = await randomCheckpoint(tinyLlama())
      const v = promptedVariant(ckpt, parts)
      // rows 2 and 3 repeat row 0's prompt: they share its prefill when their conditions match (row 2; row 3 too
      // without a condition), and a row with another condition must not (row 3 of the conditional case)
      const cond = v.conditionalSoftPrompt ? [...conditions, ...conditions] : [undefined, undefined, undefined, undefined]
      const requests = greedyAndSampled([seq, short, seq, seq], cond.map((c) => (c ? { condition: c } : {})))
      const step = await Effect.runPromise(makeGenerator(v, { graphDir: tempDir("pipe-variant-gen-") }))
      const loop = await Effect.runPromise(makeGenerator(v, { graphDir: tempDir("pipe-variant-gen-"), stepsPerRun: 4 }))
      const cached = await Effect.runPromise(step.generate(requests))
      const recomputed = await Effect.runPromise(step.generate(requests, { cache: false }))
      const looped = await Effect.runPromise(loop.generate(requests))
      cached.forEach((g, i) => {
        expect(recomputed[i].tokens).toEqual(g.tokens)
        expect(looped[i].tokens).toEqual(g.tokens)
        const all = [...requests[i].prompt, ...g.tokens]
        const ref = referenceLogProbs(v, cond[i], all.slice(0, -1)).slice(requests[i].prompt.length - 1)
        expectClose([g.logProbs], [g.tokens.map((t, j) => ref[j][t])], TOL)
        // greedy: the reference's argmax (the margin is far above the tolerance on random weights)
        if (i === 0) g.tokens.forEach((t, j) => expect(Math.max(...ref[j]) - ref[j][t]).toBeLessThan(TOL))
      })

      const placement = await Effect.runPromise(placeWeights(ckpt, tempDir("pipe-variant-score-")))
      const g = new Graph("scoring")
      buildScoringGraph(g, v, placement, { topK: 3 })
      const session = await Effect.runPromise(Effect.flatMap(writeGraph(g, placement, "scoring"), (f) => createSession(f)))
      const scoreRequests = [seq, short].map((s, i) => ({ context: s.slice(0, 2), continuation: s.slice(2), ...(cond[i] ? { condition: cond[i] } : {}) }))
      const scores = await Effect.runPromise(scoreContinuations(session, scoreRequests))
      scores.forEach((s, i) => {
        const r = scoreRequests[i]
        const ref = referenceLogProbs(v, cond[i], [...r.context, ...r.continuation].slice(0, -1)).slice(r.context.length - 1)
        expectClose([s.logProbs], [r.continuation.map((t, j) => ref[j][t])], TOL)
      })
    })

  it("refuses a request without the condition, and a malformed variant, with messages naming the problem", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const v = promptedVariant(ckpt, { conditional: true })
    const gen = await Effect.runPromise(makeGenerator(v, { graphDir: tempDir("pipe-variant-gen-") }))
    const exit = await Effect.runPromiseExit(gen.generate([{ prompt: seq, maxNewTokens: 2 }]))
    expect(Exit.isFailure(exit) && String(exit)).toMatch(/generation request 0: the model's conditional soft prompt needs a condition of 3 finite numbers, got none/)
    const bad = await Effect.runPromiseExit(checkVariant({ checkpoint: ckpt, softPrompt: { k: 2, values: new Float32Array(5) }, prefix: [70] }))
    expect(String(bad)).toMatch(/soft prompt has 5 values, expected k x hidden size = 2 x 16/)
    expect(String(await Effect.runPromiseExit(checkVariant({ checkpoint: ckpt, prefix: [70] })))).toMatch(/prefix token 70 is outside the vocabulary \[0, 64\)/)
  })
})

describe("gradients through the variant forward match finite differences", () => {
  // float32 graph (the decoder computes in float32): h = 1e-2 puts the float32 rounding of a loss
  // of magnitude ~10 at ~1e-6 / 1e-2 = 1e-4 relative and the O(h^2) truncation on these smooth
  // (tanh, softmax, RMSNorm) maps at ~1e-4; 2e-3 relative to 1 + |grad| (gradCheck's float32
  // default) still catches a wrong or missing gradient path, which errs by O(1).
  it("w.r.t. the soft prompt, and w.r.t. the conditional soft prompt's MLP weights", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const H = ckpt.config.hiddenSize
    const weights = await constantWeights(ckpt)
    const shapes = conditionMlpShapes(3, 4, 2, H)
    const v = promptedVariant(ckpt, {})
    const B = 2
    const T = 4
    const batch = { ids: { shape: [B, T], dtype: "int64" as const, values: [1, 7, 3, 60, 12, 5, 9, 4], trainable: false }, mask: { shape: [B, T], dtype: "int64" as const, values: Array(8).fill(1), trainable: false } }
    const logits = (g: Graph, out: DecoderOutputs) => g.reshape(logitsOf(g, out, g.matMul(out.hidden, g.transpose(out.lmHead, [1, 0]))), [B * T * ckpt.config.vocabSize])
    await gradCheck({
      dtype: "float32",
      inputs: { ...batch, [variantNames.softPrompt]: { shape: [2, H] } },
      build: (g, x) => {
        const soft: Variant = { ...v, softPrompt: { k: 2, values: new Float32Array(2 * H), trainable: true } }
        return logits(g, prepareVariant(g, soft, weights(g), { training: true })(g, { ids: x.ids, mask: x.mask }, x))
      },
    })
    const mlpNames = { w1: variantNames.conditionMlp("w1"), b1: variantNames.conditionMlp("b1"), w2: variantNames.conditionMlp("w2"), b2: variantNames.conditionMlp("b2") }
    await gradCheck({
      dtype: "float32",
      inputs: {
        ...batch,
        condition: { shape: [B, 3], trainable: false },
        [mlpNames.w1]: { shape: shapes.w1 },
        [mlpNames.b1]: { shape: shapes.b1 },
        [mlpNames.w2]: { shape: shapes.w2 },
        [mlpNames.b2]: { shape: shapes.b2 },
      },
      build: (g, x) => {
        const zeros = (s: number[]) => new Float32Array(s.reduce((a, b) => a * b, 1))
        const cond: Variant = {
          ...v,
          conditionalSoftPrompt: { k: 2, conditionSize: 3, hidden: 4, weights: { w1: zeros(shapes.w1), b1: zeros(shapes.b1), w2: zeros(shapes.w2), b2: zeros(shapes.b2) }, trainable: true },
        }
        return logits(g, prepareVariant(g, cond, weights(g), { training: true })(g, { ids: x.ids, mask: x.mask, condition: x.condition }, x))
      },
    })
  })
})

describe("gradients the training driver steps by match finite differences", () => {
  // One trainLoop step (the driver every trainer runs) of a variant whose soft prompt and
  // conditional soft prompt are both trainable, over two micro-batches (the Loop that accumulates
  // gradients). AdamW with beta1 = 0 moves each element at step 1 by -lr g / (|g| + eps) (optim.ts),
  // so d = (p0 - p1) / lr gives back g = d eps / (1 - |d|) exactly; it is compared with central
  // differences of the step's loss (the same session at lr 0). h = 1e-2 on a float32 loss of
  // about log(64) = 4.2: rounding contributes about 4.2 x 6e-8 / 2e-2 = 1e-5 and the O(h^2)
  // truncation up to 1e-4 (measured: largest difference 1.0e-4, on W1); the bound 3e-4 + 1e-2 |g|
  // is a decade under each tensor's largest gradient (asserted; they reach 0.1), so a dropped
  // micro-batch or a missing path, errors of O(|g|), fails.
  it("w.r.t. a soft prompt and a conditional soft prompt's MLP, over two micro-batches", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const start = promptedVariant(ckpt, { soft: true, conditional: true })
    const variant: Variant = { ...start, softPrompt: { ...start.softPrompt!, trainable: true }, conditionalSoftPrompt: { ...start.conditionalSoftPrompt!, trainable: true } }
    const { specs, initial } = variantParams(variant)
    const lr = 1
    const eps = 1
    const session = await trainSession(variant, { microBatches: 2, adamw: { beta1: 0, eps, weightDecay: 0 } })
    const feeds = stackMicroBatches([
      { ...trainBatch(), [variantNames.condition]: tensor("float32", [2, 3], conditions.flat()) },
      { ...trainBatch(), input_ids: ids([[3, 8, 30, 41, 2, 60], [7, 7, 12, 50, 33, 1]]), [variantNames.condition]: tensor("float32", [2, 3], [-0.4, 1.2, 0.1, 0.9, -1.5, 0.6]) },
    ])
    const params0 = () => Object.fromEntries(Object.entries(initial).map(([k, x]) => [k, tensor("float32", x.shape, x.data)]))
    const r = await Effect.runPromise(
      trainLoop({
        session,
        ctx: stageContext(tempDir("pipe-variant-fd-work-")),
        init: () => Effect.succeed(params0()),
        epochs: 1,
        stepsPerEpoch: 1,
        schedule: { peak: lr, warmupSteps: 0, decay: "constant" },
        batch: () => Effect.succeed({ feeds, tokens: 24 }),
        checkpointEvery: 0,
        divergenceHint: "",
      }),
    )
    const lossAt = async (name: string, i: number, delta: number) => {
      const p = params0()
      const data = Float32Array.from(initial[name].data)
      data[i] += delta
      p[name] = tensor("float32", initial[name].shape, data)
      return (await Effect.runPromise(trainStep(session, initTrainState(p), feeds, 0))).loss
    }
    const h = 1e-2
    for (const name of Object.keys(specs)) {
      let largest = 0
      const n = initial[name].data.length
      // every element of the small tensors, 16 spread over the larger ones
      const picks = n <= 16 ? Array.from({ length: n }, (_, i) => i) : Array.from({ length: 16 }, (_, j) => Math.floor((j * n) / 16 + 3) % n)
      const trained = r.params[name].data as Float32Array
      for (const i of picks) {
        const d = (initial[name].data[i] - trained[i]) / lr
        const grad = (d * eps) / (1 - Math.abs(d))
        const fd = ((await lossAt(name, i, h)) - (await lossAt(name, i, -h))) / (2 * h)
        largest = Math.max(largest, Math.abs(fd))
        if (Math.abs(grad - fd) > 3e-4 + 1e-2 * Math.abs(fd)) expect.fail(`${name}[${i}]: the driver's step implies gradient ${grad}, finite differences give ${fd}`)
      }
      expect(largest, name).toBeGreaterThan(3e-3)
    }
  })
})

describe("training a variant", () => {
  it("LoRA dropout reaches the trainable LoRAs of a training graph: seeded masks, none at rate 0", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const { adapter } = await nonZeroAdapter(ckpt)
    const variant: Variant = { checkpoint: ckpt, loras: [{ name: "a", adapter, trainable: true }, { name: "b", adapter, trainable: true }] }
    const { specs, initial } = variantParams(variant)
    const session = (rate: number) =>
      Effect.runPromise(
        Effect.gen(function* () {
          const placement = yield* placeWeights(ckpt, tempDir("pipe-variant-dropout-"))
          const g = new Graph("dropout")
          const params = Object.fromEntries(Object.entries(specs).map(([k, spec]) => [k, g.input(k, "float32", spec.shape)]))
          const seed = g.input("seed", "int64", [])
          const out = prepareVariant(g, variant, externalWeights(g, placement), { training: true })(
            g,
            { ids: g.input(forwardNames.ids, "int64", ["batch", "seq"]), mask: g.input(forwardNames.mask, "int64", ["batch", "seq"]), loraDropout: { rate, seed } },
            params,
          )
          g.outputAs("logits", logitsOf(g, out, g.matMul(out.hidden, g.transpose(out.lmHead, [1, 0]))))
          return yield* createSession(yield* writeGraph(g, placement, "dropout"))
        }),
      )
    const feeds = (s: number) => ({
      ...Object.fromEntries(Object.entries(initial).map(([k, x]) => [k, tensor("float32", x.shape, x.data)])),
      seed: tensor("int64", [], [s]),
      [forwardNames.ids]: ids([seq]),
      [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)),
    })
    const logits = async (rate: number, s: number) => rowsOf((await run(await session(rate), feeds(s))).logits, 0)
    const distance = (x: Float32Array[], y: Float32Array[]) => Math.max(...x.flatMap((r, i) => Array.from(r, (z, j) => Math.abs(z - y[i][j]))))
    const plain = { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) }
    const inference = rowsOf((await run(await logitsSession(variant), plain)).logits, 0)
    // rate 0: the inference forward of the same variant (where its LoRAs are frozen at these values)
    expectClose(await logits(0, 1), inference, TOL)
    const dropped = await logits(0.5, 1)
    expect(await logits(0.5, 1)).toEqual(dropped)
    expect(distance(dropped, inference)).toBeGreaterThan(1e-2)
    expect(distance(await logits(0.5, 2), dropped)).toBeGreaterThan(1e-2)
  })

  it("a LoRA and a soft prompt on one variant train together: both change, the loss drops; the trained variant scores as trained", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const H = ckpt.config.hiddenSize
    const modules = ["q_proj", "v_proj", "down_proj"]
    const targets = await Effect.runPromise(loraTargets(ckpt, modules))
    const config = await Effect.runPromise(loraConfigFor(ckpt, { r: 4, loraAlpha: 8, targetModules: modules }))
    const start = Object.fromEntries(Object.entries(initLora(targets, 4, 3)).map(([k, x]) => [k, x.data]))
    const variant: Variant = {
      checkpoint: ckpt,
      loras: [{ name: "tune", adapter: loraAdapter(config, targets, start), trainable: true }],
      softPrompt: { k: 3, values: random(3 * H, 9, 0.2), trainable: true },
    }
    const { specs, initial } = variantParams(variant)
    expect(Object.keys(specs)).toContain(variantNames.softPrompt)
    expect(Object.keys(specs)).toContain(variantNames.lora("tune", targets[0].module, "B"))
    const session = await trainSession(variant, { adamw: { weightDecay: 0 } })
    let state = initTrainState(Object.fromEntries(Object.entries(initial).map(([k, x]) => [k, tensor("float32", x.shape, x.data)])))
    const losses: number[] = []
    for (let i = 0; i < 30; i++) {
      const res = await Effect.runPromise(trainStep(session, state, trainBatch(), 0.02))
      state = res.state
      losses.push(res.loss)
    }
    expect(losses.at(-1)!).toBeLessThan(losses[0] * 0.7)
    const trained = Object.fromEntries(Object.entries(state.params).map(([k, t]: [string, ort.Tensor]) => [k, t.data as Float32Array]))
    const moved = (name: string) => Math.max(...Array.from(trained[name], (x, i) => Math.abs(x - initial[name].data[i])))
    expect(moved(variantNames.softPrompt)).toBeGreaterThan(1e-3)
    expect(moved(variantNames.lora("tune", targets[0].module, "B"))).toBeGreaterThan(1e-3)

    // the trained variant, frozen, gives the training loss's log-probs on the batch's first row
    const frozen = withTrainedValues(variant, trained)
    const logitsOut = await run(await logitsSession(frozen), { [forwardNames.ids]: ids([[1, 5, 9, 13, 17, 21]]), [forwardNames.mask]: tensor("int64", [1, 6], Array(6).fill(1)) })
    const trainedLoss = (await Effect.runPromise(trainStep(session, state, trainBatch(), 0))).loss
    const nll = (rows: Float32Array[], targetRows: number[][]) =>
      targetRows.flatMap((tg, b) => tg.map((t, j) => -logSoftmax(Array.from(rows[b * 6 + j]))[t])).reduce((a, c) => a + c, 0) / 12
    const second = await run(await logitsSession(frozen), { [forwardNames.ids]: ids([[2, 6, 10, 14, 18, 22]]), [forwardNames.mask]: tensor("int64", [1, 6], Array(6).fill(1)) })
    const rows = [...rowsOf(logitsOut.logits, 0), ...rowsOf(second.logits, 0)]
    expect(Math.abs(nll(rows, [[5, 9, 13, 17, 21, 25], [6, 10, 14, 18, 22, 26]]) - trainedLoss)).toBeLessThan(1e-4)
  })
})
