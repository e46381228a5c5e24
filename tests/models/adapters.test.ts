// LoRA and soft-prompt hooks of src/models/adapters.ts on random tiny checkpoints:
// - LoRA with B = 0 is the base model; LoRA with random A, B equals the forward of the checkpoint
//   that peft.ts mergeLora writes (reference computed in float64 on the merged weights);
// (soft prompts and conditional soft prompts: variant.test.ts)
// - LoRA and full-parameter training through buildTrainStep lower the cross-entropy; a LoRA
//   student trained against the prompted base model (teacher, same graph and weights) lowers the KL.
// Tolerance 1e-4 absolute on O(1) logits, as in forward.test.ts.
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { Graph, serialize } from "../../src/graph/index.ts"
import { fullForwardKL } from "../../src/graph/losses.ts"
import { buildTrainStep } from "../../src/graph/optim.ts"
import {
  initLora,
  loraAdapter,
  loraFromParams,
  loraHook,
  loraName,
  loraParamSpecs,
} from "../../src/models/adapters.ts"
import { type Checkpoint, readWeightFloat64 } from "../../src/models/checkpoint.ts"
import { allWeightRefs, buildForwardGraph, decoder, forwardNames, paramWeights } from "../../src/models/forward.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { tinyGemma2, tinyGemma3, tinyGpt2, tinyGptNeox, tinyLlama, tinyPhi3, tinyQwen3 } from "../../src/models/init.ts"
import { loraConfigFor, loraScale, loraTargets, mergeLora } from "../../src/models/peft.ts"
import { createSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { initTrainState, trainStep } from "../../src/runtime/train.ts"
import { referenceLogits } from "../reference/reference.ts"
import { batchSpec, expectClose, ids, loraInputs, nextTokenLoss, randomCheckpoint, rowsOf, run, tempDir, trainBatch } from "./forward-helpers.ts"

const TOL = 1e-4
const seq = [1, 7, 3, 60, 12, 5]
const ones = (n: number) => tensor("int64", [1, n], Array(n).fill(1))

const loraSession = async (ckpt: Checkpoint, targetModules: string[], r: number, alpha: number) => {
  const targets = await Effect.runPromise(loraTargets(ckpt, targetModules))
  const config = await Effect.runPromise(loraConfigFor(ckpt, { r, loraAlpha: alpha, targetModules, useRslora: true }))
  const modules = { value: undefined as ReturnType<typeof loraInputs> | undefined }
  const session = await Effect.runPromise(
    Effect.gen(function* () {
      const placement = yield* placeWeights(ckpt, tempDir("pipe-lora-graph-"))
      const g = new Graph("lora")
      modules.value = loraInputs(g, targets, r)
      buildForwardGraph(g, ckpt, placement, { linearHook: loraHook(modules.value, loraScale(config)) })
      return yield* createSession(yield* writeGraph(g, placement, "lora"))
    }),
  )
  return { targets, config, session }
}

const randomValues = (n: number, seed: number) => {
  let s = seed
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31
    return (s / 2 ** 31 - 0.5) * 0.6
  })
}

describe("LoRA", () => {
  for (const [name, config, targetModules] of [
    ["llama", tinyLlama(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
    ["gpt2 (Conv1D, W^T stored)", tinyGpt2(), ["c_attn", "c_proj", "c_fc"]],
    ["gpt_neox", tinyGptNeox(), ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]],
    ["gemma 2", tinyGemma2(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
    ["gemma 3 (q/k norms after the adapted projections)", tinyGemma3(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
  ] as const)
    it(`${name}: B = 0 is the base model; random A, B equal the mergeLora checkpoint`, async () => {
      const ckpt = await randomCheckpoint(config)
      const r = 2
      const { targets, config: lc, session } = await loraSession(ckpt, [...targetModules], r, 4)
      const init = initLora(targets, r, 5)
      const feeds = (values: Record<string, { shape: number[]; data: Float32Array }>) => {
        const f: Record<string, ort.Tensor> = { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: ones(seq.length) }
        for (const [k, v] of Object.entries(values)) f[k] = tensor("float32", v.shape, v.data)
        return f
      }
      const base = referenceLogits(ckpt.dir, seq)
      expectClose(rowsOf((await run(session, feeds(init))).logits, 0), base, TOL)

      const trained: Record<string, { shape: number[]; data: Float32Array }> = {}
      Object.entries(init).forEach(([k, v], i) => (trained[k] = { shape: v.shape, data: randomValues(v.data.length, 17 + i) }))
      const adapted = rowsOf((await run(session, feeds(trained))).logits, 0)
      const merged = tempDir("pipe-lora-merged-")
      const values = Object.fromEntries(Object.entries(trained).map(([k, v]) => [k, v.data]))
      await Effect.runPromise(mergeLora(ckpt.dir, loraAdapter(lc, targets, values), merged))
      const want = referenceLogits(merged, seq)
      expectClose(adapted, want, TOL)
      // the adapter must actually change the output for this comparison to mean something
      expect(Math.max(...want.flatMap((w, i) => Array.from(w, (x, j) => Math.abs(x - base[i][j]))))).toBeGreaterThan(1e-2)
    })
})

describe("LoRA dropout", () => {
  it("drops about rate of the adapter's inputs, scales the rest by 1/(1-rate); masks follow the fed seed and differ by layer", async () => {
    // linear layers with a LoRA of identity A, B: out = scale * B A dropout(x) isolates the mask
    const g = new Graph("dropout")
    const x = g.input("x", "float32", [2000, 4])
    const seed = g.input("seed", "int64", [])
    const site = (module: string) => ({ layer: 0, module, inFeatures: 4, outFeatures: 4, weight: undefined as never })
    const eye = (n: number) => g.constant("float32", [n, n], Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0)))
    const hook = loraHook(
      new Map([
        ["m", { a: eye(4), b: eye(4) }],
        ["m2", { a: eye(4), b: eye(4) }],
      ]),
      1,
      { dropout: 0.25, seed },
    )
    g.outputAs("y", hook(g, site("m"), x, g.zerosLike(x)))
    g.outputAs("y2", hook(g, site("m2"), x, g.zerosLike(x)))
    const session = await Effect.runPromise(createSession(serialize(g)))
    const masks = async (s: number) => {
      const out = await run(session, { x: tensor("float32", [2000, 4], Array(8000).fill(1)), seed: tensor("int64", [], [s]) })
      return [Array.from(out.y.data as Float32Array), Array.from(out.y2.data as Float32Array)]
    }
    const [a, a2] = await masks(7)
    const zeros = a.filter((v) => v === 0).length
    expect(a.every((v) => v === 0 || Math.abs(v - 1 / 0.75) < 1e-6)).toBe(true)
    expect(Math.abs(zeros / 8000 - 0.25)).toBeLessThan(0.03) // binomial sd ~0.005
    expect(a2).not.toEqual(a)
    expect((await masks(7))[0]).toEqual(a)
    expect((await masks(8))[0]).not.toEqual(a)
    expect(() => loraHook(new Map(), 1, { dropout: 0.1 })).toThrow(/dropout needs a seed input/)
  })
})

const dropoutBatchSpec = { ...batchSpec, dropout_seed: { dtype: "int64", shape: [] } } as const

describe("training through buildTrainStep", () => {
  for (const [name, config, targetModules] of [
    ["llama", tinyLlama(), ["q_proj", "v_proj", "down_proj"]],
    ["qwen3 (q/k norms)", tinyQwen3(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
    ["phi3 (fused qkv_proj, gate_up_proj)", tinyPhi3(), ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]],
  ] as const)
    it(`${name}: LoRA (with dropout) lowers the cross-entropy; the base weights stay external and frozen`, async () => {
      const ckpt = await randomCheckpoint(config)
      const targets = await Effect.runPromise(loraTargets(ckpt, [...targetModules]))
      const r = 4
      const loss = nextTokenLoss(ckpt.config.hiddenSize)
      const session = await Effect.runPromise(
        Effect.gen(function* () {
          const placement = yield* placeWeights(ckpt, tempDir("pipe-lora-train-"))
          const g = new Graph("lora_train")
          const source = externalWeights(g, placement)
          buildTrainStep({
            graph: g,
            params: loraParamSpecs(targets, r),
            batch: dropoutBatchSpec,
            adamw: { weightDecay: 0 },
            loss: (sub, params, b) => {
              const hook = loraHook(loraFromParams(targets, params), 2, { dropout: 0.1, seed: b.dropout_seed })
              const out = decoder(sub, ckpt.config, ckpt.weights, source, { ids: b.input_ids, mask: b.attention_mask }, { linearHook: hook })
              return loss(sub, out.hidden, out.lmHead, b.targets, b.loss_mask)
            },
          })
          return yield* createSession(yield* writeGraph(g, placement, "lora_train"))
        }),
      )
      const init = initLora(targets, r, 3)
      let state = initTrainState(Object.fromEntries(Object.entries(init).map(([k, v]) => [k, tensor("float32", v.shape, v.data)])))
      const losses: number[] = []
      for (let i = 0; i < 30; i++) {
        const res = await Effect.runPromise(trainStep(session, state, { ...trainBatch(), dropout_seed: tensor("int64", [], [i]) }, 0.02))
        state = res.state
        losses.push(res.loss)
      }
      expect(losses[0]).toBeGreaterThan(Math.log(64) * 0.8) // near-uniform random model
      expect(losses.at(-1)!).toBeLessThan(losses[0] * 0.7)
      expect(Object.keys(state.params)).toContain(loraName(targets[0].module, "A"))
    })

  it("full-parameter training: every weight a trainable input, named by its checkpoint tensor name", async () => {
    const ckpt = await randomCheckpoint(tinyLlama({ tiedEmbeddings: true }))
    const refs = allWeightRefs(ckpt.weights)
    const loss = nextTokenLoss(ckpt.config.hiddenSize)
    const g = buildTrainStep({
      params: Object.fromEntries(refs.map((w) => [w.name, { shape: [...w.shape], decay: w.shape.length > 1 }])),
      batch: batchSpec,
      loss: (sub, params, b) => {
        const out = decoder(sub, ckpt.config, ckpt.weights, paramWeights(params), { ids: b.input_ids, mask: b.attention_mask })
        return loss(sub, out.hidden, out.lmHead, b.targets, b.loss_mask)
      },
    })
    const session = await Effect.runPromise(Effect.flatMap(placeWeights(ckpt, tempDir("pipe-full-train-")), (p) => Effect.flatMap(writeGraph(g, p, "full"), (f) => createSession(f))))
    const params: Record<string, ort.Tensor> = {}
    for (const w of refs) {
      const { shape, values } = await Effect.runPromise(readWeightFloat64(w))
      params[w.name] = tensor("float32", [...shape], Float32Array.from(values))
    }
    let state = initTrainState(params)
    const first = await Effect.runPromise(trainStep(session, state, trainBatch(), 0.01))
    // the loss of step 1 is the forward on the checkpoint's own weights: check it against the reference
    const b = trainBatch()
    const rows = [Array.from(b.input_ids.data as BigInt64Array, Number).slice(0, 6), Array.from(b.input_ids.data as BigInt64Array, Number).slice(6)]
    const tg = Array.from(b.targets.data as BigInt64Array, Number)
    let nll = 0
    rows.forEach((row, i) =>
      referenceLogits(ckpt.dir, row).forEach((z, t) => {
        const m = Math.max(...z)
        nll += Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0)) + m - z[tg[i * 6 + t]]
      }),
    )
    expect(Math.abs(first.loss - nll / 12)).toBeLessThan(1e-4)
    state = first.state
    let last = first.loss
    for (let i = 0; i < 20; i++) {
      const res = await Effect.runPromise(trainStep(session, state, trainBatch(), 0.01))
      state = res.state
      last = res.loss
    }
    expect(last).toBeLessThan(first.loss * 0.7)
  })
})

describe("teacher and student in one graph (prompt baking)", () => {
  it("LoRA on the unprompted model learns to match the prompted base model: forward KL falls", async () => {
    const ckpt = await randomCheckpoint(tinyLlama())
    const H = ckpt.config.hiddenSize
    const targets = await Effect.runPromise(loraTargets(ckpt, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    const r = 4
    const prefix = [40, 41, 42, 43]
    // the teacher's length is its own symbolic dim (onnxruntime equates equal dim names)
    const teacherSpec = { dtype: "int64", shape: ["batch", "teacher_seq"] } as const
    const session = await Effect.runPromise(
      Effect.gen(function* () {
        const placement = yield* placeWeights(ckpt, tempDir("pipe-bake-"))
        const g = new Graph("bake")
        const source = externalWeights(g, placement)
        buildTrainStep({
          graph: g,
          params: loraParamSpecs(targets, r),
          batch: { student_ids: batchSpec.input_ids, student_mask: batchSpec.attention_mask, teacher_ids: teacherSpec, teacher_mask: teacherSpec },
          adamw: { weightDecay: 0 },
          loss: (sub, params, b) => {
            const student = decoder(sub, ckpt.config, ckpt.weights, source, { ids: b.student_ids, mask: b.student_mask }, { linearHook: loraHook(loraFromParams(targets, params), 2) })
            const teacher = decoder(sub, ckpt.config, ckpt.weights, source, { ids: b.teacher_ids, mask: b.teacher_mask })
            // the teacher saw the prefix: its last T positions align with the student's
            const teacherHidden = sub.slice(teacher.hidden, [prefix.length], [2 ** 31], [1])
            return fullForwardKL(sub, { hidden: sub.reshape(student.hidden, [-1, H]), weight: student.lmHead }, { hidden: sub.reshape(teacherHidden, [-1, H]), weight: teacher.lmHead }).mean
          },
        })
        return yield* createSession(yield* writeGraph(g, placement, "bake"))
      }),
    )
    const rows = [
      [1, 5, 9, 13, 17, 21],
      [2, 6, 10, 14, 18, 22],
    ]
    const batch = {
      student_ids: ids(rows),
      student_mask: tensor("int64", [2, 6], Array(12).fill(1)),
      teacher_ids: ids(rows.map((x) => [...prefix, ...x])),
      teacher_mask: tensor("int64", [2, 10], Array(20).fill(1)),
    }
    let state = initTrainState(Object.fromEntries(Object.entries(initLora(targets, r, 3)).map(([k, v]) => [k, tensor("float32", v.shape, v.data)])))
    const losses: number[] = []
    for (let i = 0; i < 40; i++) {
      const res = await Effect.runPromise(trainStep(session, state, batch, 0.01))
      state = res.state
      losses.push(res.loss)
    }
    expect(losses[0]).toBeGreaterThan(0.01) // the prefix changes the distribution
    expect(losses.at(-1)!).toBeLessThan(losses[0] * 0.5)
  })
})
