// The shared non-finite checker (src/runtime/finite.ts): positions in a tensor's own coordinates;
// weight files scanned per dtype (F32 NaN, F16 infinity, BF16 NaN, each at its element; integer
// tensors ignored), the verdict remembered per content hash and read back instead of rescanning; loadCheckpoint refuses a checkpoint with a NaN weight, naming the file,
// the weight and the position.
import { createHash } from "node:crypto"
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { fromNumbers, readFile, type Tensor, writeFile } from "../../src/core/safetensors.ts"
import { checkFinite, checkFiniteRows, weightVerdict } from "../../src/runtime/finite.ts"
import { tempDir } from "../models/forward-helpers.ts"

const failure = (e: Effect.Effect<unknown, { message: string }>) => {
  const exit = Effect.runSync(Effect.exit(e))
  return Exit.isFailure(exit) ? String(exit.cause) : "succeeded"
}

// the verdict memo goes under $PIPE_CACHE_DIR; a fresh one per run of this file
const saved = process.env.PIPE_CACHE_DIR
beforeAll(() => {
  process.env.PIPE_CACHE_DIR = tempDir("pipe-finite-cache-")
})
afterAll(() => {
  if (saved === undefined) delete process.env.PIPE_CACHE_DIR
  else process.env.PIPE_CACHE_DIR = saved
})

describe("checkFinite", () => {
  it("names the stage, the tensor and the first bad position in the tensor's coordinates", () => {
    const data = new Float32Array(24)
    data[17] = Number.NaN // [1, 1, 1] in [2, 3, 4]
    data[20] = Infinity
    expect(failure(checkFinite("teacher-logits", "top-k log-probs", data, [2, 3, 4]))).toContain("teacher-logits: top-k log-probs is NaN at [1, 1, 1]")
    expect(failure(checkFinite("s", "t", [1, 2, -Infinity]))).toContain("s: t is -Infinity at [2]")
    expect(failure(checkFinite("s", "t", [1, 2, 3], [3]))).toBe("succeeded")
    expect(failure(checkFiniteRows("s", "log-probs", [[0], [-1, -2], [-1, Number.NaN]], 10))).toContain("s: log-probs is NaN at [12, 1]")
  })
})

const f16 = (bits: number[]): Tensor => ({ dtype: "F16", shape: [bits.length], data: new Uint8Array(Uint16Array.from(bits).buffer) })
const bf16 = (bits: number[]): Tensor => ({ dtype: "BF16", shape: [bits.length], data: new Uint8Array(Uint16Array.from(bits).buffer) })

describe("weight files", () => {
  it("finds NaN and infinity per dtype, at the right element", () => {
    const dir = tempDir("pipe-finite-weights-")
    const write = (name: string, tensors: Record<string, Tensor>) => {
      const file = path.join(dir, name)
      Effect.runSync(writeFile(file, tensors))
      return Effect.runSync(weightVerdict(file))
    }
    const ok = { a: fromNumbers([1, 2, 3, 4, 5, 6], "F32", [2, 3]), b: f16([0x3c00, 0xfbff]), c: bf16([0x3f80]), i: fromNumbers([1, 2], "I64", [2]) }
    expect(write("ok.safetensors", ok)).toEqual({ finite: true })
    const nan = Float32Array.of(1, 2, 3, 4, Number.NaN, 6)
    expect(write("f32.safetensors", { ...ok, a: fromNumbers(nan, "F32", [2, 3]) })).toEqual({ finite: false, tensor: "a", position: [1, 1], value: "NaN" })
    // 0x7c00: +infinity in half precision; 0xfbff (the largest negative half) is finite
    expect(write("f16.safetensors", { ...ok, b: f16([0x3c00, 0xfbff, 0x7c00]) })).toEqual({ finite: false, tensor: "b", position: [2], value: "Infinity" })
    // 0x7fc0: a bfloat16 NaN; 0x7f7f is the largest finite bfloat16
    expect(write("bf16.safetensors", { ...ok, c: bf16([0x7f7f, 0x3f80, 0x7fc0]) })).toEqual({ finite: false, tensor: "c", position: [2], value: "NaN" })
  })

  it("remembers the verdict per content hash and reads it back instead of scanning again", () => {
    const file = path.join(tempDir("pipe-finite-memo-"), "w.safetensors")
    Effect.runSync(writeFile(file, { w: fromNumbers([1, 2, 3], "F32", [3]) }))
    expect(Effect.runSync(weightVerdict(file))).toEqual({ finite: true })
    const hash = createHash("sha256").update(fs.readFileSync(file)).digest("hex")
    const memo = path.join(process.env.PIPE_CACHE_DIR!, "checks", "weights", "by-hash", hash)
    expect(JSON.parse(fs.readFileSync(memo, "utf8"))).toEqual({ finite: true })
    // a different remembered verdict comes back as is: the file is not read again
    const planted = { finite: false, tensor: "w", position: [0], value: "NaN" }
    fs.writeFileSync(memo, JSON.stringify(planted))
    expect(Effect.runSync(weightVerdict(file))).toEqual(planted)
  })

  it("loadCheckpoint refuses a checkpoint with a NaN weight, naming the file, the weight and the position", async () => {
    const dir = tempDir("pipe-finite-ckpt-")
    await Effect.runPromise(writeRandomCheckpoint(dir, tinyLlama(), { seed: 3 }))
    const file = path.join(dir, "model.safetensors")
    const contents = Effect.runSync(readFile(file))
    const name = "model.layers.1.mlp.down_proj.weight"
    const t = contents.tensors.get(name)!
    const values = new Float32Array(t.data.slice().buffer)
    values[t.shape[1] * 2 + 5] = Number.NaN
    Effect.runSync(writeFile(file, new Map([...contents.tensors, [name, fromNumbers(values, "F32", t.shape)]]), contents.metadata))
    const exit = await Effect.runPromiseExit(loadCheckpoint(dir))
    expect(Exit.isFailure(exit) && String(exit.cause)).toContain(`${file}: weight "${name}" is NaN at [2, 5]: the checkpoint holds NaN or infinite weights`)
  })
})
