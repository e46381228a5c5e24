// The soft-prompt stages on a random tiny Llama carrying the tiny-chat tokenizer:
// - the objective's loss (skip-1 targets, a loss mask, right padding) has the gradient finite
//   differences give w.r.t. a soft prompt and w.r.t. a conditional soft prompt's MLP;
// - k = 0 is the plain model: its test loss equals the float64 reference's mean NLL of the scored
//   targets;
// - on the shipped models/tiny-chat, training lowers the validation loss, and a run killed after a
//   checkpoint and resumed ends with the prompt an uninterrupted run gives (plain and conditional);
// - the trained prompt published as a PEFT prompt-tuning directory reads back as trained;
// - examples made with another tokenizer are refused.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { TensorsOutput } from "../../src/engine/index.ts"
import { toFloat32 } from "../../src/core/safetensors.ts"
import { conditionMlpShapes } from "../../src/models/adapters.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { PROMPT_EMBEDDINGS, readPromptTuning } from "../../src/models/peft.ts"
import { prepareVariant, type Variant, variantNames } from "../../src/models/variant.ts"
import { pathfindingExamples, textExamples } from "../../stages/soft-prompts/data.ts"
import { softPromptEvaluate } from "../../stages/soft-prompts/evaluate.ts"
import { readExamples } from "../../stages/soft-prompts/examples.ts"
import { promptTuningDirectory } from "../../stages/soft-prompts/experiment.ts"
import { lossInputs, objectiveLoss } from "../../stages/soft-prompts/soft-prompt.ts"
import { type SoftPromptTrainParams, softPromptTrain } from "../../stages/soft-prompts/train.ts"
import { gradCheck } from "../graph/gradcheck.ts"
import { constantWeights, tempDir } from "../models/forward-helpers.ts"
import { logSoftmax } from "../models/sampling-reference.ts"
import { referenceForward, referenceModel } from "../reference/reference.ts"
import { inputRef, stageContext, tensorsValue } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const root = tempDir("pipe-soft-prompts-")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const dir = (name: string) => {
  fs.mkdirSync(path.join(root, name), { recursive: true })
  return path.join(root, name)
}

/** A random 2-layer Llama with the tiny-chat tokenizer's ids (pad 0, bos 1, eos 2, 1024 tokens) and its tokenizer files. */
const modelDir = (() => {
  let made: Promise<string> | undefined
  return () =>
    (made ??= (async () => {
      const d = dir("model")
      await Effect.runPromise(writeRandomCheckpoint(d, tinyLlama({ vocabSize: 1024, maxPositions: 128, bosTokenId: 1, eosTokenIds: [2], padTokenId: 0, numLayers: 2 }), { seed: 3 }))
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(repo, "models/tiny-chat", f), path.join(d, f))
      return d
    })())
})()

const texts = () => {
  const file = path.join(dir("texts"), "texts.jsonl")
  const words = ["Kodis lives in Binwick.", "Seven plus five is twelve.", "The lamp is made of brass.", "Mira likes soup and bread."]
  const lines = Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? { prompt: `Q${i}: `, completion: words[i % 4] } : { text: `${words[i % 4]} ${words[(i + 1) % 4]}` }))
  fs.writeFileSync(file, lines.map((l) => JSON.stringify(l)).join("\n") + "\n")
  return inputRef(file)
}

const shipped = path.join(repo, "models/tiny-chat")

const textData = async (model: string, params: { skip: number; bos: boolean }, name: string) => {
  const out = await Effect.runPromise(textExamples.spec.run({ params: { ...params, length: 24, train: 24, validation: 8, test: 8, seed: 0 }, inputs: { model: inputRef(model), texts: texts() }, ctx: stageContext(dir(name)) }))
  return tensorsValue(out as TensorsOutput, dir(`${name}-out`))
}
const skipData = (model: string) => textData(model, { skip: 1, bos: true }, "skip-data")

const pathData = async (model: string) => {
  const params = { size: 4, wallDensity: 0.2, minOptimal: 2, maxMoves: 8, detourFraction: 0.5, greed: 0.6, train: 24, validation: 8, test: 6, seed: 0 }
  const out = await Effect.runPromise(pathfindingExamples.spec.run({ params, inputs: { model: inputRef(model) }, ctx: stageContext(dir("path-data")) }))
  return tensorsValue(out as TensorsOutput, dir("path-data-out"))
}

const trainParams: SoftPromptTrainParams = {
  k: 4,
  init: "zero",
  hidden: 8,
  steps: 8,
  lanes: 4,
  lr: 0.05,
  warmupSteps: 2,
  schedule: "cosine",
  weightDecay: 1e-4,
  maxGradNorm: 1,
  validateEvery: 4,
  patience: 0,
  seed: 0,
  validationBatchSize: 8,
  threads: 1,
  checkpointEvery: 2,
}

const evaluateParams = { model: "random", conditions: [1, 0.5], decodings: [{ temperature: 0, samples: 1 }, { temperature: 1, samples: 3 }], maxNewTokens: 6, batchSize: 8, threads: 1 }

describe("the objective's loss", () => {
  // float32 graph: h = 1e-2 and 2e-3 relative to 1 + |grad| as in tests/models/variant.test.ts (the
  // rounding of a loss of magnitude ~7 is ~1e-6 / h = 1e-4; a wrong or missing path errs by O(1))
  it("has the finite-difference gradient w.r.t. a soft prompt and a conditional soft prompt's MLP (skip-1 targets, masked padding)", async () => {
    const ckpt = await Effect.runPromise(loadCheckpoint(await modelDir()))
    const H = ckpt.config.hiddenSize
    const weights = await constantWeights(ckpt)
    const B = 2
    const T = 5
    // row 1 is right-padded after 3 tokens; targets are the token 2 ahead (skip 1), -1 -> masked
    const batch = {
      [lossInputs.ids]: { shape: [B, T], dtype: "int64" as const, values: [1, 70, 300, 12, 5, 1, 9, 44, 0, 0], trainable: false },
      [lossInputs.mask]: { shape: [B, T], dtype: "int64" as const, values: [1, 1, 1, 1, 1, 1, 1, 1, 0, 0], trainable: false },
      [lossInputs.targets]: { shape: [B, T], dtype: "int64" as const, values: [300, 12, 5, 0, 0, 44, 0, 0, 0, 0], trainable: false },
      [lossInputs.lossMask]: { shape: [B, T], dtype: "float32" as const, values: [1, 1, 1, 0, 0, 1, 0, 0, 0, 0], trainable: false },
    }
    await gradCheck({
      dtype: "float32",
      h: 1e-2,
      tol: 2e-3,
      inputs: { ...batch, [variantNames.softPrompt]: { shape: [3, H] } },
      build: (g, x) => {
        const v: Variant = { checkpoint: ckpt, softPrompt: { k: 3, values: new Float32Array(3 * H), trainable: true } }
        return objectiveLoss(g, prepareVariant(g, v, weights(g), { training: true }), ckpt, x, x).mean
      },
    })
    const shapes = conditionMlpShapes(1, 4, 2, H)
    const zeros = (s: number[]) => new Float32Array(s.reduce((a, b) => a * b, 1))
    await gradCheck({
      dtype: "float32",
      h: 1e-2,
      tol: 2e-3,
      inputs: {
        ...batch,
        [lossInputs.condition]: { shape: [B, 1], trainable: false },
        ...Object.fromEntries((["w1", "b1", "w2", "b2"] as const).map((k) => [variantNames.conditionMlp(k), { shape: shapes[k] }])),
      },
      build: (g, x) => {
        const v: Variant = {
          checkpoint: ckpt,
          conditionalSoftPrompt: { k: 2, conditionSize: 1, hidden: 4, trainable: true, weights: { w1: zeros(shapes.w1), b1: zeros(shapes.b1), w2: zeros(shapes.w2), b2: zeros(shapes.b2) } },
        }
        return objectiveLoss(g, prepareVariant(g, v, weights(g), { training: true }), ckpt, x, x).mean
      },
    })
  })
})

describe("soft-prompt-train and soft-prompt-evaluate", () => {
  it("k = 0 is the plain model: the test loss equals the float64 reference's mean NLL of the skip-1 targets", async () => {
    const model = await modelDir()
    const data = await skipData(model)
    const prompt = await tensorsValue((await Effect.runPromise(softPromptTrain.spec.run({ params: { ...trainParams, k: 0 }, inputs: { model: inputRef(model), data }, ctx: stageContext(dir("k0")) }))) as TensorsOutput)
    const result = await Effect.runPromise(softPromptEvaluate.spec.run({ params: evaluateParams, inputs: { model: inputRef(model), data, prompt }, ctx: stageContext(dir("k0-eval")) }))
    const ckpt = await Effect.runPromise(loadCheckpoint(model))
    const ref = referenceModel(ckpt)
    const { splits } = await Effect.runPromise(readExamples(data))
    // the 26 {"text"} lines start with BOS (id 1), as pretraining frames a document; the 14 prompt lines as written
    expect([...splits.train, ...splits.validation, ...splits.test].filter((x) => x.ids[0] === 1).length).toBe(26)
    let nll = 0
    let n = 0
    for (const x of splits.test) {
      const logits = referenceForward(ref, x.ids)
      x.targets.forEach((t, i) => {
        if (t < 0) return
        nll -= logSoftmax(Array.from(logits[i]))[t]
        n++
      })
    }
    expect(result.k).toBe(0)
    expect(result.testTokens).toBe(n)
    // float32 graph against float64: ~1e-6 relative per log-prob, 1e-5 on the mean leaves a margin
    expect(Math.abs(result.testLoss - nll / n)).toBeLessThan(1e-5 * (nll / n))
    expect(result.rollouts).toEqual([])
  })

  it("text-examples with bos: false: each text line without its BOS, scored from its second token (what the prompt then stands right before)", async () => {
    const model = await modelDir()
    const withBos = await Effect.runPromise(readExamples(await textData(model, { skip: 0, bos: true }, "bos-data")))
    const without = await Effect.runPromise(readExamples(await textData(model, { skip: 0, bos: false }, "no-bos-data")))
    const all = (set: typeof withBos) => [...set.splits.train, ...set.splits.validation, ...set.splits.test]
    const scored = (x: { targets: ReadonlyArray<number> }) => x.targets.filter((t) => t >= 0)
    // the same lines in the same order (the shuffle depends on the seed and the count only)
    const pairs = all(withBos).map((x, i) => [x, all(without)[i]] as const)
    const texts = pairs.filter(([x]) => x.ids[0] === 1)
    expect(texts).toHaveLength(26)
    for (const [x, y] of texts) {
      expect(y.ids).toEqual(x.ids.slice(1))
      // with BOS every text token is scored; without, all but the first
      expect(scored(y)).toEqual(scored(x).slice(1))
    }
    // prompt lines are taken as written either way
    for (const [x, y] of pairs.filter(([x]) => x.ids[0] !== 1)) expect(y).toEqual(x)
  })

  it("refuses examples tokenized with another model's tokenizer (a base model scored on a chat model's ids)", async () => {
    // models/tiny-base-s has the family tokenizer (1536 tokens), the random model tiny-chat's (1024)
    const data = await skipData(path.join(repo, "models/tiny-base-s"))
    const exit = await Effect.runPromiseExit(softPromptTrain.spec.run({ params: trainParams, inputs: { model: inputRef(await modelDir()), data }, ctx: stageContext(dir("mismatch")) }))
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(exit)).toContain("were tokenized with another tokenizer than")
  })

  for (const [name, data] of [
    ["plain (skip-1)", skipData],
    ["conditional (pathfinding)", pathData],
  ] as const)
    it(`${name}: training lowers the validation loss; a killed run resumes to the uninterrupted run's prompt`, async () => {
      // the shipped model: a random one is near-uniform, and a few steps of a soft prompt barely move it
      const model = shipped
      const examples = await data(model)
      const train = (workDir: string, logs: string[], stopAt?: number) =>
        Effect.runPromiseExit(softPromptTrain.spec.run({ params: trainParams, inputs: { model: inputRef(model), data: examples }, ctx: stageContext(workDir, { logs, stopAt }) }))
      const logs: string[] = []
      const whole = await train(dir(`${name}-whole`), logs)
      if (!Exit.isSuccess(whole)) throw new Error(String(whole))
      const summary = JSON.parse((whole.value as TensorsOutput & { metadata: Record<string, string> }).metadata.train_summary)
      expect(summary.validation.at(-1).loss).toBeLessThan(summary.validation[0].loss)

      const resumedDir = dir(`${name}-resumed`)
      expect(Exit.isFailure(await train(resumedDir, [], 5))).toBe(true)
      const resumedLogs: string[] = []
      const resumed = await train(resumedDir, resumedLogs)
      if (!Exit.isSuccess(resumed)) throw new Error(String(resumed))
      expect(resumedLogs.some((l) => l.startsWith("resumed from") && l.includes("at step 4"))).toBe(true)
      const a = (whole.value as { tensors: ReadonlyMap<string, never> }).tensors
      const b = (resumed.value as { tensors: ReadonlyMap<string, never> }).tensors
      expect([...b.keys()]).toEqual([...a.keys()])
      for (const [k, t] of a) {
        const x = toFloat32(t)
        const y = toFloat32(b.get(k)!)
        // the same float32 steps in the same order from restored parameters and moments
        let max = 0
        for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - y[i]))
        expect(max, k).toBeLessThan(1e-6)
      }

      const prompt = await tensorsValue(whole.value as TensorsOutput)
      const evaluation = await Effect.runPromise(softPromptEvaluate.spec.run({ params: evaluateParams, inputs: { model: inputRef(model), data: examples, prompt }, ctx: stageContext(dir(`${name}-eval`)) }))
      expect(evaluation.k).toBe(4)
      if (name.startsWith("conditional")) {
        // each condition greedy (one path per grid) and sampled (three per grid)
        expect(evaluation.rollouts.map((r) => [r.condition, r.temperature, r.tasks, r.rollouts])).toEqual([
          [1, 0, 6, 6],
          [1, 1, 6, 18],
          [0.5, 0, 6, 6],
          [0.5, 1, 6, 18],
        ])
        return
      }
      // the published PEFT directory holds the trained prompt
      const target = path.join(dir("peft"), "prompt")
      promptTuningDirectory({ payload: prompt.path, externals: { model } }, target)
      const peft = await Effect.runPromise(readPromptTuning(target, 128))
      expect(peft.k).toBe(4)
      expect(peft.values).toEqual(toFloat32(prompt.read(PROMPT_EMBEDDINGS)))
      expect(peft.baseModelNameOrPath).toBe(path.resolve(model))
    })
})
