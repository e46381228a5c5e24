import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { externalSource, Graph, serialize, ShapeError } from "../../src/graph/index.ts"
import { createSession, runSession } from "../../src/runtime/session.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"
import { randArray, runGraph } from "./run.ts"

// Forward values are compared with plain TypeScript float64 computations; float32 graphs
// are compared at 1e-5 relative (a few ulps of float32 accumulated over <= 8 terms).
const close = (got: number[], want: number[], tol = 1e-5) => {
  expect(got.length).toBe(want.length)
  got.forEach((g, i) => expect(Math.abs(g - want[i])).toBeLessThanOrEqual(tol * (1 + Math.abs(want[i]))))
}

describe("shape inference", () => {
  it("broadcasts, keeps symbolic dims and infers MatMul/Reshape/Transpose shapes", () => {
    const g = new Graph()
    const x = g.input("x", "float32", ["B", "T", 8])
    const w = g.input("w", "float32", [8, 6])
    const h = g.matMul(x, w)
    expect(h.shape).toEqual(["B", "T", 6])
    const r = g.reshape(h, [0, 0, 2, 3])
    expect(r.shape).toEqual(["B", "T", 2, 3])
    expect(g.transpose(r, [0, 2, 1, 3]).shape).toEqual(["B", 2, "T", 3])
    expect(g.reshape(r, [0, 0, -1]).shape).toEqual(["B", "T", 6])
    expect(g.add(h, g.input("b", "float32", [6])).shape).toEqual(["B", "T", 6])
    expect(g.reduceSum(h, [-1], true).shape).toEqual(["B", "T", 1])
    expect(g.concat([h, h], 2).shape).toEqual(["B", "T", 12])
    expect(g.slice(h, [1], [100], [2]).shape).toEqual(["B", "T", 5])
    expect(g.gather(g.input("emb", "float32", [10, 4]), g.input("ids", "int64", ["B", "T"])).shape).toEqual(["B", "T", 4])
    expect(g.unsqueeze(g.input("m", "float32", ["T"]), [0, 2]).shape).toEqual([1, "T", 1])
    expect(g.linear(x, g.input("lw", "float32", [5, 8])).shape).toEqual(["B", "T", 5])
  })

  it("names the op and the shapes when they do not fit", () => {
    const g = new Graph()
    const a = g.input("a", "float32", [2, 3])
    const b = g.input("b", "float32", [4, 5])
    expect(() => g.matMul(a, b)).toThrow(ShapeError)
    expect(() => g.matMul(a, b)).toThrow("MatMul: inner dims 3 and 4 differ (input shapes [2, 3], [4, 5])")
    expect(() => g.add(a, b)).toThrow("Add: cannot broadcast 2 with 4")
    expect(() => g.reshape(a, [4, 2])).toThrow("Reshape: cannot reshape 6 elements")
    expect(() => g.squeeze(a, [0])).toThrow("Squeeze: axis 0 has size 2, not 1")
    expect(() => g.add(a, g.input("i", "int64", [2, 3]))).toThrow("Add: dtypes differ: float32 vs int64")
  })
})

describe("built graphs run in onnxruntime-node", () => {
  it("computes softmax(x W + b) like plain TypeScript", async () => {
    const g = new Graph()
    const x = g.input("x", "float32", ["B", 3])
    const w = g.initializer("w", "float32", [3, 2], { kind: "inline", data: Float32Array.from([1, -1, 0.5, 2, -0.5, 0]) })
    const b = g.initializer("b", "float32", [2], { kind: "inline", data: Float32Array.from([0.1, -0.2]) })
    g.outputAs("y", g.softmax(g.add(g.matMul(x, w), b)))
    const xs = [0.2, -0.4, 1.0, 1.5, 0.3, -0.7]
    const out = await runGraph(g, { x: tensor("float32", [2, 3], xs) })
    const W = [
      [1, -1],
      [0.5, 2],
      [-0.5, 0],
    ]
    const want = [0, 1].flatMap((r) => {
      const z = [0, 1].map((c) => [0, 1, 2].reduce((s, k) => s + xs[r * 3 + k] * W[k][c], 0) + [0.1, -0.2][c])
      const e = z.map(Math.exp)
      return e.map((v) => v / (e[0] + e[1]))
    })
    expect(out.y.dims).toEqual([2, 2])
    close(toNumbers(out.y), want)
  })

  it("runs RMSNormalization (opset 23) and LayerNormalization like plain TypeScript", async () => {
    const g = new Graph()
    const x = g.input("x", "float32", [2, 4])
    const s = g.constant("float32", [4], [1, 2, 3, 4])
    const bias = g.constant("float32", [4], [0.5, 0, 0, -0.5])
    g.outputAs("rms", g.rmsNorm(x, s, { epsilon: 1e-6 }))
    g.outputAs("ln", g.layerNorm(x, s, bias, { epsilon: 1e-6 }))
    const xs = randArray(8, 1)
    const out = await runGraph(g, { x: tensor("float32", [2, 4], xs) })
    const rms: number[] = []
    const ln: number[] = []
    for (let r = 0; r < 2; r++) {
      const row = xs.slice(r * 4, r * 4 + 4)
      const ms = row.reduce((a, v) => a + v * v, 0) / 4
      const mean = row.reduce((a, v) => a + v, 0) / 4
      const vr = row.reduce((a, v) => a + (v - mean) ** 2, 0) / 4
      row.forEach((v, i) => {
        rms.push((v / Math.sqrt(ms + 1e-6)) * (i + 1))
        ln.push(((v - mean) / Math.sqrt(vr + 1e-6)) * (i + 1) + [0.5, 0, 0, -0.5][i])
      })
    }
    close(toNumbers(out.rms), rms, 1e-4)
    close(toNumbers(out.ln), ln, 1e-4)
  })

  it("casts bfloat16 and float16 weights to float32 on the CPU provider (raw uint16 bits in)", async () => {
    const g = new Graph()
    const x = g.input("x", "float32", [2])
    const bf = g.initializer("bf", "bfloat16", [2], { kind: "inline", data: Uint16Array.from([0x3f80, 0xc040]) }) // 1, -3
    const hf = g.initializer("hf", "float16", [2], { kind: "inline", data: Uint16Array.from([0x3800, 0x4000]) }) // 0.5, 2
    g.outputAs("y", g.add(g.mul(x, g.cast(bf, "float32")), g.cast(hf, "float32")))
    const out = await runGraph(g, { x: tensor("float32", [2], [2, 2]) })
    expect(toNumbers(out.y)).toEqual([2.5, -4])
  })

  it("computes a Hugging Face linear layer ([out, in] weight) followed by a head split", async () => {
    const g = new Graph()
    const x = g.input("x", "float32", ["B", "T", 3])
    const w = g.initializer("w", "float32", [4, 3], { kind: "inline", data: Float32Array.from([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]) })
    const b = g.constant("float32", [4], [0, 0, 0, 0.5])
    const heads = g.reshape(g.linear(x, w, b), [0, 0, 2, 2])
    expect(heads.shape).toEqual(["B", "T", 2, 2])
    g.outputAs("y", heads)
    const out = await runGraph(g, { x: tensor("float32", [1, 2, 3], [1, 2, 3, -1, 0, 2]) })
    expect(out.y.dims).toEqual([1, 2, 2, 2])
    close(toNumbers(out.y), [1, 2, 3, 6.5, -1, 0, 2, 1.5])
  })

  it("runs a Loop subgraph that reads an outer value, with carried and scan outputs", async () => {
    const g = new Graph()
    const x = g.input("x", "float64", [3])
    const [acc, scans] = g.loop(g.constant("int64", [], [4]), null, [g.constant("float64", [3], [0, 0, 0])], (sub, iter, [a]) => {
      const i = sub.cast(iter, "float64")
      const next = sub.add(a, sub.mul(x, i)) // a + x * i, x from the enclosing graph
      return { carried: [next], scans: [sub.reduceSum(next)] }
    })
    g.outputAs("acc", acc)
    g.outputAs("scans", scans)
    const out = await runGraph(g, { x: tensor("float64", [3], [1, 2, 3]) })
    close(toNumbers(out.acc), [6, 12, 18]) // x * (0+1+2+3)
    close(toNumbers(out.scans), [0, 6, 18, 36])
  })

  it("runs an If subgraph", async () => {
    const g = new Graph()
    const x = g.input("x", "float32", [2])
    const c = g.input("c", "bool", [])
    const [y] = g.if_(c, (s) => [s.exp(x)], (s) => [s.neg(x)])
    g.outputAs("y", y)
    const t = await runGraph(g, { x: tensor("float32", [2], [0, 1]), c: tensor("bool", [], [1]) })
    close(toNumbers(t.y), [1, Math.E])
    const f = await runGraph(g, { x: tensor("float32", [2], [0, 1]), c: tensor("bool", [], [0]) })
    close(toNumbers(f.y), [-0, -1])
  })
})

describe("external data", () => {
  // A safetensors file: u64 little-endian header length, JSON header, then the data; a
  // tensor's data_offsets are relative to the end of the header.
  const writeSafetensors = (file: string, tensors: Record<string, Float32Array>) => {
    let at = 0
    const header: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(tensors)) {
      header[k] = { dtype: "F32", shape: [v.length], data_offsets: [at, at + v.byteLength] }
      at += v.byteLength
    }
    const h = Buffer.from(JSON.stringify(header))
    const buf = Buffer.alloc(8 + h.length + at)
    buf.writeBigUInt64LE(BigInt(h.length), 0)
    h.copy(buf, 8)
    let o = 8 + h.length
    for (const v of Object.values(tensors)) {
      Buffer.from(v.buffer).copy(buf, o)
      o += v.byteLength
    }
    writeFileSync(file, buf)
    return 8 + h.length
  }

  it("reads an initializer from inside a safetensors file next to the .onnx", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pipe-ext-"))
    mkdirSync(join(dir, "weights"))
    const file = join(dir, "weights", "model.safetensors")
    const dataStart = writeSafetensors(file, { a: Float32Array.from([9, 9]), w: Float32Array.from([1, 2, 3]) })
    const g = new Graph()
    const x = g.input("x", "float32", [3])
    const w = g.initializer("w", "float32", [3], externalSource(dir, file, dataStart + 8, 12))
    g.outputAs("y", g.mul(x, w))
    const bytes = serialize(g)
    // The protobuf holds the reference, not the data.
    expect(bytes.length).toBeLessThan(400)
    const modelPath = join(dir, "model.onnx")
    writeFileSync(modelPath, bytes)
    const out = await Effect.runPromise(Effect.flatMap(createSession(modelPath), (s) => runSession(s, { x: tensor("float32", [3], [1, 1, 2]) })))
    expect(toNumbers(out.y)).toEqual([1, 2, 6])
  })

  it("refuses weights outside the model directory with a clear error (onnxruntime would reject them)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pipe-ext-"))
    mkdirSync(join(dir, "model"))
    const file = join(dir, "w.safetensors")
    const start = writeSafetensors(file, { w: Float32Array.from([1, 2, 3]) })
    expect(() => externalSource(join(dir, "model"), file, start, 12)).toThrow(/outside .*model: onnxruntime only reads external data under/)
    expect(() => externalSource(dir, join(dir, "missing.safetensors"), 0, 4)).toThrow(/cannot resolve the weights file .*missing.safetensors/)
    // and onnxruntime itself rejects a location that escapes the model directory
    const g = new Graph()
    const x = g.input("x", "float32", [3])
    g.outputAs("y", g.mul(x, g.initializer("w", "float32", [3], { kind: "external", location: "../w.safetensors", offset: start, length: 12 })))
    writeFileSync(join(dir, "model", "m.onnx"), serialize(g))
    const err = await Effect.runPromise(Effect.flip(createSession(join(dir, "model", "m.onnx"))))
    expect(err._tag).toBe("SessionError")
    expect(err.message).toMatch(/escapes model directory/)
  })
})
