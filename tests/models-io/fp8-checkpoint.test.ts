// FP8 checkpoints as DeepSeek-V3 / Qwen3-FP8 (E4M3 weights, `weight_scale_inv` per block of
// quantization_config.weight_block_size) and compressed-tensors / FBGEMM (`weight_scale` per tensor or
// per row) store them: the weights are dequantized on load, in the float64 reader and in the graph,
// and the graph's logits match the float64 reference reading the same FP8 codes and scales.
// Checkpoints without a usable scale are refused with the tensor, the dtype and what is missing.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { type CheckpointError, loadCheckpoint, readWeightFloat64 } from "../../src/models/checkpoint.ts"
import { forwardNames } from "../../src/models/forward.ts"
import { tinyLlama } from "../../src/models/init.ts"
import { mergeLora } from "../../src/models/peft.ts"
import { float8E4M3Values, float8E5M2Values, fromNumbers, readFile, type Tensor, toFloat64, writeFile } from "../../src/core/safetensors.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { expectClose, forwardSession, ids, randomCheckpoint, rowsOf, run, tempDir } from "../models/forward-helpers.ts"
import { referenceLogits } from "../reference/reference.ts"
import type { TensorsOutput } from "../../src/engine/index.ts"
import { importCheckpoint } from "../../stages/tiny-family/import-checkpoint.ts"
import { inputRef, stageContext, tensorsValue } from "../stage-harness.ts"

type Scheme = { kind: "blocks"; block: [number, number] } | { kind: "row" } | { kind: "tensor" }

/** The nearest code of an FP8 table (finite values only; ties to the first found, any is fine here). */
const nearestCode = (table: Float32Array, x: number): number => {
  let best = 0
  for (let c = 0; c < 256; c++) if (Number.isFinite(table[c]) && Math.abs(table[c] - x) < Math.abs(table[best] - x)) best = c
  return best
}

/** Quantizes the projections of a random float32 checkpoint to FP8 in place; returns the codes and scales used. */
const quantizeCheckpoint = (dir: string, scheme: Scheme, dtype: "F8_E4M3" | "F8_E5M2" = "F8_E4M3") => {
  const table = dtype === "F8_E4M3" ? float8E4M3Values : float8E5M2Values
  const max = dtype === "F8_E4M3" ? 448 : 57344
  const file = path.join(dir, "model.safetensors")
  const contents = Effect.runSync(readFile(file))
  const out = new Map<string, Tensor>(contents.tensors)
  const expected = new Map<string, Float64Array>()
  for (const [name, t] of contents.tensors) {
    if (!/_proj\.weight$/.test(name)) continue
    const [rows, cols] = t.shape
    const block = scheme.kind === "blocks" ? scheme.block : scheme.kind === "row" ? [1, cols] : [rows, cols]
    const grid = [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])]
    const w = toFloat64(t)
    const scales = new Float32Array(grid[0] * grid[1])
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const s = Math.floor(r / block[0]) * grid[1] + Math.floor(c / block[1])
        scales[s] = Math.max(scales[s], Math.abs(w[r * cols + c]) / max)
      }
    const codes = new Uint8Array(rows * cols)
    const dequantized = new Float64Array(rows * cols)
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const s = scales[Math.floor(r / block[0]) * grid[1] + Math.floor(c / block[1])]
        codes[r * cols + c] = nearestCode(table, w[r * cols + c] / s)
        dequantized[r * cols + c] = table[codes[r * cols + c]] * s
      }
    out.set(name, { dtype, shape: t.shape, data: codes })
    const scaleShape = scheme.kind === "blocks" ? grid : scheme.kind === "row" ? [rows, 1] : []
    out.set(name.replace(/\.weight$/, scheme.kind === "blocks" ? ".weight_scale_inv" : ".weight_scale"), { dtype: "F32", shape: scaleShape, data: new Uint8Array(scales.buffer) })
    expected.set(name, dequantized)
  }
  Effect.runSync(writeFile(file, out))
  const configFile = path.join(dir, "config.json")
  const config = JSON.parse(fs.readFileSync(configFile, "utf8"))
  config.quantization_config = scheme.kind === "blocks"
    ? { quant_method: "fp8", fmt: "e4m3", activation_scheme: "dynamic", weight_block_size: scheme.block }
    : { quant_method: "fbgemm_fp8" }
  fs.writeFileSync(configFile, JSON.stringify(config))
  return expected
}

const seq = [1, 7, 3, 60, 12, 5, 9, 33]
// float32 graph vs float64 reference on the same dequantized weights: as tests/models/forward.test.ts
const TOL = 1e-4

const cases: Array<[string, Scheme, "F8_E4M3" | "F8_E5M2"]> = [
  ["E4M3, weight_scale_inv per [3, 5] block (partial blocks at the edges)", { kind: "blocks", block: [3, 5] }, "F8_E4M3"],
  ["E4M3, weight_scale per row", { kind: "row" }, "F8_E4M3"],
  ["E5M2, weight_scale per tensor", { kind: "tensor" }, "F8_E5M2"],
]

describe("FP8 checkpoints", () => {
  for (const [name, scheme, dtype] of cases)
    it(`${name}: dequantized on load, forward matches the float64 reference`, async () => {
      const random = await randomCheckpoint(tinyLlama())
      const expected = quantizeCheckpoint(random.dir, scheme, dtype)
      const ckpt = Effect.runSync(loadCheckpoint(random.dir))
      const q = ckpt.weights.layers[1].attention
      if (q.layout !== "separate") throw new Error("llama has separate projections")
      expect(q.k.weight.dtype).toBe(dtype)
      expect(Array.from(Effect.runSync(readWeightFloat64(q.k.weight)).values)).toEqual(Array.from(expected.get(q.k.weight.name)!))
      const s = await forwardSession(ckpt)
      const out = await run(s, { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) })
      expectClose(rowsOf(out.logits, 0), referenceLogits(ckpt.dir, seq), TOL)
    }, 30_000)

  it("import-checkpoint (the blend's tuned member, tune-domain's start) dequantizes FP8 weights: the same logits from float32", async () => {
    const random = await randomCheckpoint(tinyLlama())
    const expected = quantizeCheckpoint(random.dir, { kind: "blocks", block: [3, 5] })
    const out = await Effect.runPromise(importCheckpoint.spec.run({ params: {}, inputs: { model: inputRef(random.dir) }, ctx: stageContext(tempDir("pipe-fp8-import-")) }) as Effect.Effect<TensorsOutput, unknown>)
    const weights = await tensorsValue(out)
    // every weight float32, the FP8 ones their dequantized values (exact in float32: FP8 code x float32 scale)
    for (const [name, loc] of weights.header.tensors) {
      expect(loc.dtype, name).toBe("F32")
      if (expected.has(name)) expect(Array.from(toFloat64(weights.read(name))), name).toEqual(Array.from(expected.get(name)!, Math.fround))
    }
    expect([...weights.header.tensors.keys()].some((n) => n.endsWith("_scale_inv"))).toBe(false)
    expect(JSON.parse(weights.metadata.config!).quantization_config).toBeUndefined()
    // the imported weights as a checkpoint directory give the FP8 checkpoint's logits
    const dir = tempDir("pipe-fp8-imported-")
    fs.writeFileSync(path.join(dir, "config.json"), weights.metadata.config!)
    fs.copyFileSync(weights.path, path.join(dir, "model.safetensors"))
    const logits = async (d: string) => rowsOf((await run(await forwardSession(Effect.runSync(loadCheckpoint(d))), { [forwardNames.ids]: ids([seq]), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) })).logits, 0)
    // the same float32 values reach the graph (FP8 dequantized in-graph against on import): float32 rounding
    expectClose(await logits(dir), await logits(random.dir), 1e-5)
  }, 30_000)

  const failure = (dir: string): CheckpointError => {
    const exit = Effect.runSyncExit(Effect.flip(loadCheckpoint(dir)))
    if (Exit.isFailure(exit)) throw new Error("expected an error value")
    return exit.value as CheckpointError
  }

  it("refuses an FP8 weight without a scale, and a scale that fits no layout, naming the tensor and dtype", async () => {
    const random = await randomCheckpoint(tinyLlama())
    quantizeCheckpoint(random.dir, { kind: "row" })
    const file = path.join(random.dir, "model.safetensors")
    const tensors = new Map(Effect.runSync(readFile(file)).tensors)
    tensors.delete("model.layers.0.self_attn.q_proj.weight_scale")
    Effect.runSync(writeFile(file, tensors))
    const e = failure(random.dir)
    expect(e.message).toContain("model.layers.0.self_attn.q_proj.weight")
    expect(e.message).toContain("F8_E4M3")
    expect(e.message).toContain("without a scale tensor (looked for model.layers.0.self_attn.q_proj.weight_scale_inv, model.layers.0.self_attn.q_proj.weight_scale)")

    tensors.set("model.layers.0.self_attn.q_proj.weight_scale", { dtype: "F32", shape: [3], data: new Uint8Array(12) })
    Effect.runSync(writeFile(file, tensors))
    expect(failure(random.dir).message).toMatch(/q_proj\.weight_scale: shape \[3\] is neither one scale nor one per row of \[16, 16\]$/)
  })

  it("refuses to merge a LoRA into FP8 weights, naming the weight and its dtype", async () => {
    const random = await randomCheckpoint(tinyLlama())
    quantizeCheckpoint(random.dir, { kind: "tensor" })
    const module = "model.layers.0.self_attn.q_proj"
    const adapter = {
      config: { r: 1, loraAlpha: 1, loraDropout: 0, targetModules: ["q_proj"], baseModelNameOrPath: null, useRslora: false, fanInFanOut: false },
      modules: new Map([[module, { a: fromNumbers(new Array(16).fill(0), "F32", [1, 16]), b: fromNumbers(new Array(16).fill(0), "F32", [16, 1]) }]]),
    }
    const exit = Effect.runSyncExit(Effect.flip(mergeLora(random.dir, adapter, tempDir("pipe-fp8-merge-"))))
    if (Exit.isFailure(exit)) throw new Error("expected an error value")
    expect(exit.value.message).toContain(`${module}.weight: a F8_E4M3 weight: merging into FP8 weights would need requantizing them`)
  })
})
